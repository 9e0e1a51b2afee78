"""Shadow traffic: mirror a share of requests to a challenger and count agreement.

The user's request only pays for a coin flip and a ``put_nowait`` into a bounded queue; a
few background tasks send the mirrored rows and compare answers. When the queue is full the
mirror is dropped (and counted), so a slow or dead challenger can never slow, block or fail
the user's request.

Agreement is counted per row, in ``kubeloop_serve_shadow_rows_total{result}``: ``agree`` and
``disagree`` for the rows the challenger answered, ``error`` for every row of a mirror it did
not answer (an HTTP error, a timeout, an answer that cannot be read). A challenger that fails
therefore lowers the row share that the built-in ``shadowAgreement`` analysis gates on instead
of leaving it out. ``kubeloop_serve_shadow_requests_total{result}`` counts the same mirrors per
request (``agree`` only when every row agreed).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from kubeloop.serving.metrics import ServeMetrics

log = logging.getLogger("kubeloop.serve.shadow")
Array = npt.NDArray[Any]
RESULTS = ("agree", "disagree", "error")
"""The ``result`` label of the shadow counters, per row and per request."""


@dataclass(frozen=True)
class _Mirror:
    rows: Array
    predictions: Array


def challenger_endpoint(url: str) -> tuple[str, bool]:
    """The URL to POST mirrored rows to, and whether it speaks v2 infer (else /predict)."""
    base = url.rstrip("/")
    if base.endswith("/infer"):
        return base, True
    if base.endswith("/predict"):
        return base, False
    return base + "/predict", False


def agreement(primary: Array, challenger: Array, task: str, tolerance: float) -> Array:
    """Per row: does the challenger give the same answer as the served model?"""
    if challenger.shape[0] != primary.shape[0]:
        return np.zeros(primary.shape[0], dtype=bool)
    if task == "regression":
        return np.isclose(
            primary.astype(np.float64), challenger.astype(np.float64), rtol=tolerance, atol=0.0
        )
    return np.asarray(
        [str(a) == str(b) for a, b in zip(primary.tolist(), challenger.tolist(), strict=True)]
    )


class ShadowMirror:
    """Fire-and-forget mirroring of a sample of requests to a challenger server."""

    def __init__(
        self,
        url: str,
        percent: float,
        metrics: ServeMetrics,
        task: str,
        queue_size: int = 1024,
        concurrency: int = 8,
        timeout_seconds: float = 5.0,
        tolerance: float = 1e-9,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint, self.v2 = challenger_endpoint(url)
        self.percent = percent
        self.metrics = metrics
        self.task = task
        self.concurrency = concurrency
        self.timeout = timeout_seconds
        self.tolerance = tolerance
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[_Mirror] = asyncio.Queue(maxsize=queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._client: Any = None
        base = metrics.labels.values()
        # Every series exists from the start (at 0), so a window with mirrors but no failure
        # still has an error series and the agreement query sees all three.
        self._result = {r: metrics.shadow_requests.labels(*base, r) for r in RESULTS}
        self._rows = {r: metrics.shadow_rows.labels(*base, r) for r in RESULTS}

    def offer(self, rows: Array, predictions: Array) -> None:
        """Maybe mirror this request (never blocks, never raises)."""
        if self.percent <= 0 or self._rng.random() * 100.0 >= self.percent:
            return
        try:
            self._queue.put_nowait(_Mirror(rows, predictions))
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.inc()

    async def start(self) -> None:
        """Open the client and start the sender tasks on the running loop."""
        import httpx

        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=self.concurrency),
        )
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._send_forever(), name=f"shadow-{i}")
            for i in range(self.concurrency)
        ]

    async def stop(self) -> None:
        """Stop sending; mirrors still queued are abandoned (they answer no one)."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send_forever(self) -> None:
        while True:
            mirror = await self._queue.get()
            try:
                answer = await self._ask_challenger(mirror.rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("shadow request to %s failed: %s", self.endpoint, exc)
                self._count_failure(mirror)
                continue
            self._count_answer(mirror, answer)

    def _count_answer(self, mirror: _Mirror, answer: Array) -> None:
        agrees = agreement(mirror.predictions, answer, self.task, self.tolerance)
        agreed = int(agrees.sum())
        self._rows["agree"].inc(agreed)
        self._rows["disagree"].inc(int(agrees.size - agreed))
        self._result["agree" if agreed == agrees.size else "disagree"].inc()

    def _count_failure(self, mirror: _Mirror) -> None:
        # The rows the challenger left unanswered count against it: a challenger that fails
        # (or times out on) every mirror has an agreement of 0, not "no rows, no verdict".
        self._rows["error"].inc(int(mirror.predictions.shape[0]))
        self._result["error"].inc()

    async def _ask_challenger(self, rows: Array) -> Array:
        if self.v2:
            body = {
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": list(rows.shape),
                        # An object matrix holds text (a model that takes text): BYTES.
                        "datatype": "BYTES" if rows.dtype.kind == "O" else "FP64",
                        "data": rows.ravel().tolist(),
                    }
                ]
            }
        else:
            body = {"instances": rows.tolist()}
        response = await self._client.post(
            self.endpoint,
            content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
            headers={"content-type": "application/json"},
        )
        response.raise_for_status()
        payload = orjson.loads(response.content)
        if self.v2:
            outputs = payload["outputs"]
            chosen = next((o for o in outputs if o.get("name") == "predict"), outputs[0])
            return np.asarray(chosen["data"])
        return np.asarray(payload["predictions"])
