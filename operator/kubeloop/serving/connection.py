"""uvicorn's httptools connection, with the deadlines it lacks: slow clients are cut, not held.

uvicorn 0.55 times out only an idle keep-alive connection (``timeout_keep_alive``, armed after
a response). A client that connects and never sends, or sends its headers or body a byte at a
time (slowloris), holds its connection for as long as it likes, and nothing limits the size of
the headers it sends. This protocol adds, per connection:

- a **header deadline**: from the connection (or the first byte of a later request on it) to
  the end of the request's headers, ``header_timeout``; missed → ``408`` and close;
- a **body deadline**: from the end of the headers to the end of the body, ``body_timeout``;
  missed → ``408`` and close (the application sees the client disconnect);
- a **header size limit**: more than ``max_header_bytes`` before the headers end → ``431`` and
  close;
- the keep-alive timeout of ``keep_alive_timeout``.

A deadline is a total, not an idle timer: a byte a second does not keep it away.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState


def _response(status: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


REQUEST_TIMEOUT = _response(b"408 Request Timeout")
HEADERS_TOO_LARGE = _response(b"431 Request Header Fields Too Large")


class DeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header and body deadlines and a header size limit."""

    header_timeout = 10.0
    body_timeout = 30.0
    keep_alive_timeout = 30.0
    max_header_bytes = 64 * 1024

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.keep_alive_timeout  # type: ignore[assignment]
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # before the end of a request's headers
        self._head_bytes = 0

    @classmethod
    def configured(
        cls,
        header_timeout: float,
        body_timeout: float,
        keep_alive_timeout: float,
        max_header_bytes: int,
    ) -> type[DeadlineProtocol]:
        """A subclass with these limits (uvicorn builds protocols from a class)."""
        return type(
            "ConfiguredDeadlineProtocol",
            (cls,),
            {
                "header_timeout": header_timeout,
                "body_timeout": body_timeout,
                "keep_alive_timeout": keep_alive_timeout,
                "max_header_bytes": max_header_bytes,
            },
        )

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._deadline_missed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, response: bytes) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.transport.close()
                return
            # The application may still be waiting for the body: it now sees a disconnect,
            # and whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(response)
        self.transport.close()

    def _deadline_missed(self) -> None:
        self._deadline = None
        self._refuse(REQUEST_TIMEOUT)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        idle = self.cycle is None or self.cycle.response_complete
        if self._deadline is None and self.timeout_keep_alive_task is None and idle:
            # Bytes that start no request (blank lines) cancelled the keep-alive timer.
            self._arm(self.header_timeout)
        if self._in_head and not self.transport.is_closing():
            # Only chunks that did not finish the headers count: a body sent along is not head.
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(HEADERS_TOO_LARGE)

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
