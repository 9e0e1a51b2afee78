"""The HTTP adapter: a small raw ASGI application over the data plane.

It routes by path, reads the body, calls the data plane, writes JSON, and records request
metrics. A raw ASGI callable (rather than a framework router) keeps the per-request overhead
to a dictionary lookup, which matters at tens of thousands of requests per second; the
protocol logic itself lives in ``dataplane.py``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from kubeloop.serving.batching import MicroBatcher
from kubeloop.serving.dataplane import DataPlane, ProtocolError, dumps
from kubeloop.serving.drift_counters import DriftCounts
from kubeloop.serving.feedback import RecentPredictions
from kubeloop.serving.metrics import CONTENT_TYPE, MetricLabels, ServeMetrics
from kubeloop.serving.model import ModelArtifact, ServedModel, load_model
from kubeloop.serving.openapi import openapi_document
from kubeloop.serving.settings import ServeSettings
from kubeloop.serving.shadow import ShadowMirror

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("kubeloop.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
FORWARDED_HEADER = b"x-kubeloop-forwarded"


@dataclass
class Reply:
    """What the adapter writes back."""

    status: int
    body: bytes
    request_id: str | None = None
    content_type: bytes = b"application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


# Visible ASCII, inner spaces allowed: what h11 accepts as a header value.
_HEADER_SAFE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def _error(status: int, message: str) -> Reply:
    return Reply(status, orjson.dumps({"error": message}))


@dataclass
class ServerState:
    """Everything one worker process holds; built once at start-up."""

    settings: ServeSettings
    model: ServedModel
    metrics: ServeMetrics
    dataplane: DataPlane
    batcher: MicroBatcher
    drift: DriftCounts | None
    shadow: ShadowMirror | None
    sibling_sockets: list[str] = field(default_factory=list)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def flush_drift(self) -> None:
        """Move accumulated drift counts into the Prometheus counters."""
        if self.drift is None:
            return
        base = self.metrics.labels.values()
        for feature, bin_label, count in self.drift.take():
            self.metrics.feature_bins.labels(*base, feature, bin_label).inc(count)


def build_state(
    settings: ServeSettings,
    artifact: ModelArtifact,
    version: str = "0",
    sibling_sockets: list[str] | None = None,
) -> ServerState:
    """Load the model and wire the batcher, metrics, drift counters, feedback and shadow."""
    model = load_model(artifact, settings.model_name, settings.fast_paths)
    labels = MetricLabels(model=model.name, sha=model.short_sha, track=settings.track)
    metrics = ServeMetrics(labels)
    metrics.model_info.labels(*labels.values(), model.sha256).set(1)
    drift = None
    if model.profile is not None:
        drift = DriftCounts(model.profile, model.feature_names, model.classes)
        if drift.untracked:
            log.warning("profile features not in the model, not counted: %s", drift.untracked)
        base = labels.values()
        for feature, bin_label in drift.series():
            metrics.feature_bins.labels(*base, feature, bin_label)

    def observe_batch(rows: Any, predictions: Any) -> None:
        metrics.batch_size.observe(rows.shape[0])
        metrics.predictions.inc(rows.shape[0])
        if drift is not None:
            drift.observe(rows, predictions)

    def model_call(rows: Any, want_proba: bool) -> tuple[Any, Any]:
        if want_proba:
            return model.predict_with_proba(rows)
        return model.predict(rows), None

    batcher = MicroBatcher(
        model_call,
        settings.max_batch_size,
        settings.max_batch_latency_ms / 1000.0,
        observe_batch,
    )
    shadow = None
    if settings.shadow_url and settings.shadow_percent > 0:
        shadow = ShadowMirror(
            settings.shadow_url,
            settings.shadow_percent,
            metrics,
            model.task,
            queue_size=settings.shadow_queue_size,
            concurrency=settings.shadow_concurrency,
            timeout_seconds=settings.shadow_timeout_seconds,
            tolerance=settings.shadow_tolerance,
        )
    dataplane = DataPlane(
        model,
        batcher,
        metrics,
        RecentPredictions(settings.feedback_capacity),
        mirror=shadow.offer if shadow is not None else None,
        version=version,
    )
    return ServerState(
        settings=settings,
        model=model,
        metrics=metrics,
        dataplane=dataplane,
        batcher=batcher,
        drift=drift,
        shadow=shadow,
        sibling_sockets=list(sibling_sockets or []),
    )


class ServeApp:
    """The ASGI application of ``kubeloop serve``."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.dataplane = state.dataplane
        self._openapi = dumps(openapi_document(state.model.name))
        self._exact: dict[tuple[str, str], tuple[str, Callable[..., Awaitable[Reply]]]] = {
            ("GET", "/v2/health/live"): ("health_live", self._live),
            ("GET", "/v2/health/ready"): ("health_ready", self._ready),
            ("GET", "/v2"): ("server_metadata", self._server_metadata),
            ("GET", "/metrics"): ("metrics", self._metrics),
            ("POST", "/predict"): ("predict", self._predict),
            ("POST", "/feedback"): ("feedback", self._feedback),
            ("GET", "/v2/openapi.json"): ("openapi", self._openapi_json),
            ("GET", "/openapi.json"): ("openapi", self._openapi_json),
        }
        self._exact_paths = {path for _, path in self._exact}
        self.grpc_server: grpc.aio.Server | None = None

    def begin_drain(self) -> None:
        """SIGTERM received: readiness answers 503 from now on; requests are still served."""
        self.dataplane.draining = True

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start the batcher, the shadow senders and the drift flush timer."""
        state = self.state
        state.batcher.start()
        if state.shadow is not None:
            await state.shadow.start()
        state.background.append(asyncio.get_running_loop().create_task(self._flush_forever()))
        settings = state.settings
        if settings.grpc_port:
            # gRPC runs in this event loop: the same data plane, batcher, metrics and drift.
            from kubeloop.serving.grpc_server import start_server

            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            self.grpc_server = await start_server(
                self.dataplane,
                f"{host}:{settings.grpc_port}",
                reuse_port=settings.workers > 1,
                max_message_bytes=64 * 1024 * 1024,
            )

    async def shutdown(self) -> None:
        """Answer what is queued, stop background work, flush the last drift counts."""
        state = self.state
        if self.grpc_server is not None:  # in-flight calls are answered, new ones refused
            await self.grpc_server.stop(state.settings.drain_timeout_seconds)
        await state.batcher.stop()
        for task in state.background:
            task.cancel()
        await asyncio.gather(*state.background, return_exceptions=True)
        if state.shadow is not None:
            await state.shadow.stop()
        state.flush_drift()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.state.settings.metrics_flush_seconds)
            self.state.flush_drift()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        route = self._exact.get((method, path))
        endpoint = route[0] if route is not None else "unknown"
        try:
            if route is not None:
                reply = await route[1](scope, receive)
            else:
                endpoint, reply = await self._model_route(method, path, scope, receive)
        except ProtocolError as exc:
            reply = _error(exc.status, exc.message)
        except _Disconnected:
            return
        except Exception as exc:  # a bug, not a bad request: say so, keep serving
            log.exception("unexpected error on %s %s", method, path)
            reply = _error(500, f"internal error: {type(exc).__name__}")
        headers = [
            (b"content-type", reply.content_type),
            (b"content-length", str(len(reply.body)).encode()),
            *reply.headers,
        ]
        if reply.request_id is not None and _HEADER_SAFE.fullmatch(reply.request_id):
            # An id with control or non-ASCII characters cannot be a header value
            # (h11 drops the connection); the body still carries it exactly.
            headers.append((b"x-request-id", reply.request_id.encode("ascii")))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
        self.state.metrics.observe_request(endpoint, reply.status, time.perf_counter() - started)

    async def _model_route(
        self, method: str, path: str, scope: Scope, receive: Receive
    ) -> tuple[str, Reply]:
        parts = path.split("/")
        # /v2/models/{name}[/versions/{version}][/ready|/infer]
        if len(parts) < 4 or parts[1] != "v2" or parts[2] != "models" or not parts[3]:
            if path in self._exact_paths:
                return "unknown", _error(405, f"method {method} is not allowed on {path}")
            return "unknown", _error(404, f"no such endpoint: {path}")
        name, rest = parts[3], parts[4:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            version, rest = rest[1], rest[2:]
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        endpoint = {"infer": "infer", "ready": "model_ready", "": "model_metadata"}.get(
            action or "", "unknown"
        )
        if action not in {"infer", "ready", ""}:
            return "unknown", _error(404, f"no such endpoint: {path}")
        expected_method = "POST" if action == "infer" else "GET"
        if method != expected_method:
            return endpoint, _error(405, f"use {expected_method} for {path}")
        try:
            if action == "infer":
                return endpoint, await self._infer(scope, receive, name, version)
            if action == "ready":
                self.dataplane.check_model(name, version)
                return endpoint, self._readiness_reply()
            return endpoint, Reply(200, dumps(self.dataplane.model_metadata(name, version)))
        except ProtocolError as exc:
            return endpoint, _error(exc.status, exc.message)

    # -- handlers ---------------------------------------------------------------------------

    async def _live(self, scope: Scope, receive: Receive) -> Reply:
        return Reply(200, b'{"live":true}')

    def _readiness_reply(self) -> Reply:
        if self.dataplane.ready:
            return Reply(200, b'{"ready":true}')
        return Reply(503, b'{"ready":false,"error":"shutting down"}')

    async def _ready(self, scope: Scope, receive: Receive) -> Reply:
        return self._readiness_reply()

    async def _server_metadata(self, scope: Scope, receive: Receive) -> Reply:
        return Reply(200, dumps(self.dataplane.server_metadata()))

    async def _openapi_json(self, scope: Scope, receive: Receive) -> Reply:
        return Reply(200, self._openapi)

    async def _metrics(self, scope: Scope, receive: Receive) -> Reply:
        self.state.flush_drift()
        return Reply(200, self.state.metrics.render(), content_type=CONTENT_TYPE.encode())

    async def _infer(self, scope: Scope, receive: Receive, name: str, version: str | None) -> Reply:
        # The batcher sizes its waits by how many prediction requests are in flight.
        batcher = self.state.batcher
        batcher.request_started()
        try:
            body = await _read_body(receive)
            request_id, reply, json_length = await self.dataplane.infer_http(
                name,
                body,
                _header(scope, b"inference-header-content-length"),
                _header(scope, b"x-request-id"),
                version,
            )
            if json_length is None:
                return Reply(200, reply, request_id)
            # Binary tensor data: the JSON header, then the outputs' bytes.
            return Reply(
                200,
                reply,
                request_id,
                content_type=b"application/octet-stream",
                headers=[(b"inference-header-content-length", str(json_length).encode())],
            )
        finally:
            batcher.request_finished()

    async def _predict(self, scope: Scope, receive: Receive) -> Reply:
        batcher = self.state.batcher
        batcher.request_started()
        try:
            body = await _read_body(receive)
            request_id, document = await self.dataplane.predict(
                body, _header(scope, b"x-request-id")
            )
            return Reply(200, dumps(document), request_id)
        finally:
            batcher.request_finished()

    async def _feedback(self, scope: Scope, receive: Receive) -> Reply:
        body = await _read_body(receive)
        items = self.dataplane.parse_feedback(body)
        forwarded = _header(scope, FORWARDED_HEADER) is not None
        outcome = self.dataplane.feedback(items, count_unknown=False)
        matched = list(outcome.matched)
        unknown = outcome.unknown
        if unknown and not forwarded and self.state.sibling_sockets:
            found = await self._ask_siblings(unknown)
            matched += found
            unknown = [item for item in unknown if item["id"] not in set(found)]
        if not forwarded:
            self.dataplane.count_unknown_feedback(len(unknown))
        return Reply(200, dumps({"matched": matched, "unknown": [item["id"] for item in unknown]}))

    async def _ask_siblings(self, items: list[dict[str, Any]]) -> list[str]:
        """Offer labels this worker did not serve to the other workers of this server."""
        import httpx

        found: list[str] = []
        remaining = items
        for socket_path in self.state.sibling_sockets:
            if not remaining:
                break
            try:
                transport = httpx.AsyncHTTPTransport(uds=socket_path)
                async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
                    response = await client.post(
                        "http://worker/feedback",
                        content=orjson.dumps(remaining),
                        headers={FORWARDED_HEADER.decode(): "1"},
                    )
            except httpx.HTTPError as exc:
                log.warning("feedback: sibling worker at %s did not answer: %s", socket_path, exc)
                continue
            if response.status_code == 200:
                got = orjson.loads(response.content)["matched"]
                found += got
                remaining = [item for item in remaining if item["id"] not in set(got)]
        return found


class _Disconnected(Exception):
    """The client went away before sending its whole request."""


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None
