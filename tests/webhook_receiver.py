"""A real HTTP receiver for notification tests: a threaded server on 127.0.0.1 that records
every request and answers as the test scripts it (a status per request, or hang).

    with WebhookReceiver(statuses=[500, 500]) as receiver:   # then 200 for every later request
        ... receiver.url ... receiver.cloudevents() ...
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

HANG = -1
"""A scripted status that never answers (the request hangs until the receiver closes)."""


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    time: float  # time.monotonic() at arrival
    status: int  # what the receiver answered (HANG: nothing)

    def cloudevent(self) -> BaseCloudEvent:
        """The request parsed by the cloudevents SDK (binary or structured mode)."""
        return from_http_event(HTTPMessage(self.headers, self.body))


class WebhookReceiver:
    def __init__(self, statuses: Iterable[int] = (), default_status: int = 200, delay: float = 0.0) -> None:
        self.script = list(statuses)
        self.default_status = default_status
        # Seconds each answer waits (a slow sink): what is queued behind it waits too.
        self.delay = delay
        self.received: list[Received] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.default_status
                    receiver.received.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                            status,
                        )
                    )
                if status == HANG:
                    receiver.closing.wait(60)
                    return
                if receiver.delay:
                    receiver.closing.wait(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def cloudevents(self) -> list[BaseCloudEvent]:
        return [r.cloudevent() for r in self.snapshot() if r.status == 200]

    def wait_for(self, check: Callable[[list[Received]], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check(self.snapshot())
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"receiver: condition not met in {timeout} s; got {len(self.snapshot())} request(s)"
        )
