"""Adaptive micro-batching: concurrent requests merged into one model call.

A tree ensemble pays most of its cost per call (one Python-level pass over 100 trees),
not per row, so 64 rows cost little more than one. The batcher is one asyncio task per
worker process:

- It flushes **immediately** when no other request is in flight: a lone client never waits.
- Under load, requests pile up while the previous batch is computed (the model runs on the
  event loop, so sockets are read between batches) and the next call takes all of them, up to
  ``max_batch_size`` rows.
- When other requests are in flight but have not reached the queue yet (their clients are
  reading the previous answer and sending the next request), it waits for them, at most
  ``max_latency`` after the first request of the batch, and never for more requests than
  were recently in flight at once. "In flight" is counted by the HTTP layer
  (``request_started`` / ``request_finished``); the recent peak decays within 0.2 s, so after
  a burst a lone request is again answered at once.

The model is called on the event loop thread on purpose: it is CPU-bound and holds the GIL
for much of its time, so a thread hop would add latency without adding parallelism; the
parallelism comes from worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("kubeloop.serve")
Array = npt.NDArray[Any]
ModelCall = Callable[[Array, bool], tuple[Array, Array | None]]
BatchObserver = Callable[[Array, Array], None]


class QueueFull(Exception):
    """More rows are waiting for the model than ``max_queued_rows``: answer 503, not wait."""


class ModelInputError(Exception):
    """The model refused the rows of one request (e.g. NaN for a model that needs values)."""


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one request's rows."""

    predictions: Array
    probabilities: Array | None


@dataclass
class _Pending:
    rows: Array
    want_proba: bool
    future: asyncio.Future[Prediction]


class MicroBatcher:
    """Merges concurrent ``predict`` calls into batched model calls."""

    def __init__(
        self,
        model_call: ModelCall,
        max_batch_size: int,
        max_latency_seconds: float,
        observe_batch: BatchObserver | None = None,
        max_queued_rows: int | None = None,
    ) -> None:
        self._model_call = model_call
        self.max_queued_rows = max_queued_rows
        self.queued_rows = 0
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_seconds
        self._observe_batch = observe_batch
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.in_flight = 0  # prediction requests the HTTP layer has started, not yet answered
        self._peak_now = 0
        self._peak_before = 0
        self._window_started = time.monotonic()
        self.batches = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Answer everything queued, then stop."""
        while self._queue:
            await asyncio.sleep(0.001)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- the request side -------------------------------------------------------------------

    def request_started(self) -> None:
        """The HTTP layer began a prediction request (counts toward "in flight")."""
        self.in_flight += 1
        if self.in_flight > self._peak_now:
            self._peak_now = self.in_flight

    def request_finished(self) -> None:
        """The HTTP layer answered a prediction request."""
        self.in_flight -= 1

    def recent_concurrency(self) -> int:
        """Most requests in flight at once over the last 0.1-0.2 s."""
        now = time.monotonic()
        if now - self._window_started > 0.1:
            self._peak_before, self._peak_now = self._peak_now, self.in_flight
            self._window_started = now
        return max(self._peak_before, self._peak_now, self.in_flight)

    async def predict(self, rows: Array, want_proba: bool = False) -> Prediction:
        """Predictions for ``rows`` (2-D float64), computed together with concurrent requests."""
        count = rows.shape[0]
        limit = self.max_queued_rows
        # One request alone is always taken (its size is limited by the HTTP layer).
        if limit is not None and self.queued_rows and self.queued_rows + count > limit:
            raise QueueFull(f"{self.queued_rows} rows are waiting for the model (limit {limit})")
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rows, want_proba, future))
        self.queued_rows += count
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        return await future

    # -- the batching task ------------------------------------------------------------------

    async def _wait_for_work(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        try:
            if timeout is None:
                await self._wakeup
            else:
                await asyncio.wait_for(self._wakeup, timeout)
        except TimeoutError:
            pass
        finally:
            self._wakeup = None

    def _take(self, batch: list[_Pending], rows: int) -> int:
        while self._queue and rows + self._queue[0].rows.shape[0] <= self.max_batch_size:
            item = self._queue.popleft()
            self.queued_rows -= item.rows.shape[0]
            batch.append(item)
            rows += item.rows.shape[0]
        return rows

    async def _run(self) -> None:
        while True:
            if not self._queue:
                await self._wait_for_work(None)
                continue
            first = self._queue.popleft()
            self.queued_rows -= first.rows.shape[0]
            batch = [first]
            rows = self._take(batch, first.rows.shape[0])
            deadline = time.monotonic() + self.max_latency
            # Wait only while other requests are in flight; a lone request goes right now.
            while len(batch) < self.recent_concurrency() and rows < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await self._wait_for_work(remaining)
                rows = self._take(batch, rows)
                if self._queue:  # the next one does not fit
                    break
            self._answer(batch)

    def _answer(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.future.cancelled()]
        if not batch:
            return
        try:
            self._answer_together(batch)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            # One request's bad rows must not fail its neighbours: retry each alone.
            for pending in batch:
                try:
                    self._answer_together([pending])
                except Exception as single_exc:
                    _fail(pending, single_exc)

    def _answer_together(self, batch: list[_Pending]) -> None:
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        want_proba = any(p.want_proba for p in batch)
        predictions, probabilities = self._model_call(rows, want_proba)
        self.batches += 1
        if self._observe_batch is not None:
            try:
                self._observe_batch(rows, predictions)
            except Exception:  # metrics must never fail a prediction
                log.exception("observing a batch for metrics failed")
        start = 0
        for pending in batch:
            end = start + pending.rows.shape[0]
            if not pending.future.done():
                pending.future.set_result(
                    Prediction(
                        predictions[start:end],
                        probabilities[start:end]
                        if probabilities is not None and pending.want_proba
                        else None,
                    )
                )
            start = end


def _fail(pending: _Pending, exc: Exception) -> None:
    if pending.future.done():
        return
    if isinstance(exc, ValueError | TypeError):
        pending.future.set_exception(ModelInputError(str(exc)))
    else:
        pending.future.set_exception(exc)
