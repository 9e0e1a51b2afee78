"""What one request may cost a worker: its body, its credentials, its share of the worker.

The HTTP adapter (``app.py``) asks this module before doing any work for a request:

- :class:`BodyReader` reads a body under two limits: one request's body (``max_body_bytes``,
  413, refused from ``Content-Length`` before a byte of it is read, or as soon as a chunked
  body passes it) and every body the worker holds at once (``max_buffered_body_bytes``, 503,
  the rest of that body read and dropped): a flood of large requests costs at most that
  budget, not one body per connection.
- :class:`Admission` counts the prediction and feedback requests a worker is handling and
  refuses those beyond ``max_concurrent_requests`` at once (503 with ``Retry-After``) instead
  of queueing them without bound.
- :func:`authorized` checks a bearer token in constant time.

Slow clients (slow headers, slow bodies, idle keep-alive) are cut by the connection protocol
in ``connection.py``, below the ASGI application.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from kubeloop.serving.dataplane import ProtocolError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# Where a request's scope records the body bytes it holds, released when it is answered.
HELD_KEY = "kubeloop.body_bytes"


class Disconnected(Exception):
    """The client went away before sending its whole request."""


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), as text."""
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


class BodyReader:
    """Reads request bodies within one worker's byte limits."""

    def __init__(self, max_body_bytes: int, max_buffered_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered = 0  # bytes of bodies read and not yet answered, all requests together

    def _too_large(self, size: str) -> ProtocolError:
        return ProtocolError(
            413,
            f"request body is {size}; this server takes at most {self.max_body_bytes} bytes "
            "(--max-body-bytes): send fewer rows per request",
            close=True,
        )

    async def read(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, or a 413/503 :class:`ProtocolError` (the connection then closes)."""
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large(f"{declared} bytes (Content-Length)")
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            body: bytes = message.get("body", b"")
            total += len(body)
            if total > self.max_body_bytes:
                raise self._too_large(f"more than {self.max_body_bytes} bytes")
            self.buffered += len(body)
            scope[HELD_KEY] = scope.get(HELD_KEY, 0) + len(body)
            if self.buffered > self.max_buffered_bytes:
                # Let go of this body at once, and read the rest without keeping it: the
                # client then reads its 503 on a healthy connection (closing on an unread
                # body resets it before the client sees the answer).
                self.release(scope)
                chunks.clear()
                more = message.get("more_body", False)
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Disconnected
                    total += len(message.get("body", b""))
                    if total > self.max_body_bytes:
                        raise self._too_large(f"more than {self.max_body_bytes} bytes")
                    more = message.get("more_body", False)
                raise ProtocolError(
                    503,
                    "overloaded: this worker holds too many request bodies at once "
                    "(--max-buffered-body-bytes); retry later",
                )
            chunks.append(body)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def release(self, scope: Scope) -> None:
        """The request is answered: its body no longer counts."""
        self.buffered -= scope.pop(HELD_KEY, 0)


class Admission:
    """At most ``limit`` guarded requests at once in this worker."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


def authorized(scope: Scope, token: bytes) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, given = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)
    return False
