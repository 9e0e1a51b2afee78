"""Delivery: one bounded queue and one worker thread per sink; retries with backoff.

:meth:`Notifier.notify` is what the Event hook calls from a reconcile. It derives the
notification (pure), appends it to each subscribed sink's queue and returns: it never waits
for a socket. When a sink's queue is full the oldest waiting notification is dropped and
counted (``kubeloop_notifications_dropped_total``). A worker tries each notification up to
``maxAttempts`` times, ``backoffSeconds`` doubling up to ``maxBackoffSeconds`` between tries,
each try bounded by ``timeoutSeconds``; a 4xx other than 408/429 is not retried. Outcomes are
counted on the operator's registry (:mod:`kubeloop.controllers.metrics`).

A sink's URL is never logged, nor an answer's body (:func:`kubeloop.trust.urls.error_summary`).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeloop.notifications.payloads import Request, cloudevent_request, slack_request
from kubeloop.notifications.settings import NotificationSettings, SinkSettings
from kubeloop.notifications.triggers import REASON_SINK_UNKNOWN, Notification, derive, subscribers
from kubeloop.trust.urls import error_summary, notification_url_problem

log = logging.getLogger("kubeloop.notifications")

RETRIED_STATUSES = {408, 425, 429}
MAX_WARNED = 10_000
"""Most (object, annotation) pairs remembered as warned about (then the memory starts over)."""


class Metrics:
    """The counters delivery reports to (the operator passes its registry's; tests their own)."""

    def __init__(
        self,
        delivered: Callable[[str, str, str], None],
        attempt: Callable[[str, str], None],
        dropped: Callable[[str], None],
        queued: Callable[[str, int], None],
        latency: Callable[[str, float], None],
    ) -> None:
        self.delivered, self.attempt, self.dropped, self.queued, self.latency = (
            delivered,
            attempt,
            dropped,
            queued,
            latency,
        )

    @classmethod
    def none(cls) -> Metrics:
        return cls(
            lambda *_: None, lambda *_: None, lambda *_: None, lambda *_: None, lambda *_: None
        )


class SinkConfigError(ValueError):
    """A sink the operator cannot use: it refuses to start, naming the sink and the setting."""


def resolve_url(name: str, sink: SinkSettings) -> str:
    """The sink's URL (read from ``urlFile`` if set), checked by the one URL policy."""
    if sink.url_file:
        try:
            url = Path(sink.url_file).read_text().strip()
        except OSError as error:
            raise SinkConfigError(
                f"notifications.sinks.{name}.urlFile cannot be read ({error.strerror}); "
                "mount the sink's Secret there (chart: notifications.sinks.<name>.urlSecret)"
            ) from None
    else:
        url = sink.url.strip()
    problem = notification_url_problem(url)
    if problem is not None:
        raise SinkConfigError(f"notifications.sinks.{name}: the URL {problem}")
    return url


@dataclass
class _Item:
    notification: Notification
    request: Request
    enqueued: float


class SinkWorker:
    """One sink: a bounded queue, a daemon thread, retries with backoff."""

    def __init__(
        self,
        name: str,
        sink: SinkSettings,
        url: str,
        settings: NotificationSettings,
        metrics: Metrics,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.name, self.sink, self.url, self.settings, self.metrics = (
            name,
            sink,
            url,
            settings,
            metrics,
        )
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        # Set by stop(): deliver what is queued, then end (a graceful shutdown).
        self._draining = False
        self._thread: threading.Thread | None = None
        self._sleep = sleep or (lambda seconds: self._stopping.wait(seconds))

    def build(self, notification: Notification) -> Request:
        if self.sink.type == "slack":
            return slack_request(notification)
        return cloudevent_request(
            notification, self.sink.mode, self.settings.source, str(uuid.uuid4())
        )

    def put(self, notification: Notification) -> None:
        """Queue without waiting; the oldest waiting notification goes when the queue is full."""
        item = _Item(notification, self.build(notification), time.monotonic())
        with self._cond:
            while len(self._queue) >= self.settings.queue_size:
                dropped = self._queue.popleft()
                self.metrics.dropped(self.name)
                log.warning(
                    "notification sink %s: queue full (%d), dropped %s of %s/%s",
                    self.name,
                    self.settings.queue_size,
                    dropped.notification.trigger,
                    dropped.notification.namespace,
                    dropped.notification.name,
                )
            self._queue.append(item)
            self.metrics.queued(self.name, len(self._queue))
            self._cond.notify()
            # Under the lock: handler threads calling at once start one worker, not several.
            self.start()

    def start(self) -> None:
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(
                target=self._run, name=f"notify-{self.name}", daemon=True
            )
            self._thread.start()

    def drain(self) -> None:
        """Deliver what is queued, then end; see :meth:`stop`."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds (an operator stopping within
        its pod's grace period: the last decisions' notifications are usually still queued),
        then stop; what is still waiting then is dropped, counted and logged."""
        deadline = time.monotonic() + timeout
        self.drain()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stopping.set()  # cuts a retry's wait short
        with self._cond:
            self._cond.notify_all()
            left = list(self._queue)
            self._queue.clear()
            self.metrics.queued(self.name, 0)
        for _ in left:
            self.metrics.dropped(self.name)
        if left:
            log.warning(
                "notification sink %s: stopping; dropped %d notification(s) not sent within %.1f s",
                self.name,
                len(left),
                timeout,
            )

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                while not self._queue and not self._stopping.is_set() and not self._draining:
                    self._cond.wait()
                if self._stopping.is_set() or not self._queue:
                    return
                item = self._queue.popleft()
                self.metrics.queued(self.name, len(self._queue))
            self._deliver(item)

    def _deliver(self, item: _Item) -> None:
        notification = item.notification
        delay = self.settings.backoff_seconds
        for attempt in range(1, self.settings.max_attempts + 1):
            outcome, retry = self._attempt(item.request)
            self.metrics.attempt(self.name, outcome)
            if outcome == "ok":
                self.metrics.delivered(self.name, notification.trigger, "delivered")
                self.metrics.latency(self.name, time.monotonic() - item.enqueued)
                return
            if not retry or attempt == self.settings.max_attempts:
                break
            log.info(
                "notification sink %s: %s of %s/%s attempt %d failed (%s); retrying in %.1f s",
                self.name,
                notification.trigger,
                notification.namespace,
                notification.name,
                attempt,
                outcome,
                delay,
            )
            if self._sleep(delay):
                # Stopping: this one is dropped like those still queued.
                self.metrics.dropped(self.name)
                return
            delay = min(delay * 2, self.settings.max_backoff_seconds)
        self.metrics.delivered(self.name, notification.trigger, "failed")
        log.warning(
            "notification sink %s: gave up on %s of %s/%s after %d attempt(s) (%s)",
            self.name,
            notification.trigger,
            notification.namespace,
            notification.name,
            attempt,
            outcome,
        )

    def _attempt(self, request: Request) -> tuple[str, bool]:
        """One POST: (outcome label, worth retrying)."""
        http_request = urllib.request.Request(
            self.url, data=request.body, headers=request.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(
                http_request, timeout=self.settings.timeout_seconds
            ) as answer:
                answer.read(1024)
                return "ok", False
        except urllib.error.HTTPError as error:
            error.close()
            status = error.code
            return f"http_{status // 100}xx", status >= 500 or status in RETRIED_STATUSES
        except (TimeoutError, OSError) as error:
            summary = error_summary(error)
            return ("timeout" if "timed out" in summary else "error"), True


class Notifier:
    """The Event hook: derive, route to subscribed sinks, queue. Never raises, never waits."""

    def __init__(
        self,
        settings: NotificationSettings,
        metrics: Metrics,
        urls: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        resolved = (
            dict(urls)
            if urls is not None
            else {n: resolve_url(n, s) for n, s in settings.sinks.items()}
        )
        self.workers = {
            n: SinkWorker(n, s, resolved[n], settings, metrics) for n, s in settings.sinks.items()
        }
        self._warned: set[tuple[str, str, str]] = set()
        self._warned_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.workers)

    def __call__(
        self,
        obj: Mapping[str, Any],
        event_type: str,
        reason: str,
        message: str,
        time_text: str,
        status: Mapping[str, Any] | None = None,
        related: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> list[tuple[str, str]]:
        """Queue the notification of an Event; returns Warning Events (reason, message) to post
        on the object: an annotation naming a sink the operator does not have, said once per
        object and annotation value."""
        try:
            return self._notify(obj, event_type, reason, message, time_text, status, related)
        except Exception:  # a notification must never fail a reconcile
            log.exception("notification of %s %s not sent", obj.get("kind"), reason)
            return []

    def _notify(
        self,
        obj: Mapping[str, Any],
        event_type: str,
        reason: str,
        message: str,
        time_text: str,
        status: Mapping[str, Any] | None,
        related: Mapping[str, Mapping[str, Any] | None] | None,
    ) -> list[tuple[str, str]]:
        if not self.workers:
            return []
        notification = derive(obj, event_type, reason, message, time_text, status, related)
        if notification is None:
            return []
        meta = obj.get("metadata") or {}
        chosen = subscribers(
            notification.trigger, meta.get("annotations"), self.settings.subscriptions, self.workers
        )
        warnings: list[tuple[str, str]] = []
        if chosen.unknown:
            problem = (
                f"annotation {chosen.annotation} names {', '.join(chosen.unknown)}, which the "
                f"operator has no sink for; configured sinks: {', '.join(self.workers)} (an "
                "administrator adds sinks with the chart value notifications.sinks)"
            )
            log.warning(
                "%s %s/%s: %s",
                notification.kind,
                notification.namespace,
                notification.name,
                problem,
            )
            # One fixed sink label: a name an annotation made up must not grow the series.
            self.metrics.delivered("-", notification.trigger, "unknown_sink")
            key = (notification.uid, str(chosen.annotation), ",".join(chosen.unknown))
            with self._warned_lock:
                if key not in self._warned:
                    if len(self._warned) >= MAX_WARNED:
                        self._warned.clear()
                    self._warned.add(key)
                    warnings.append((REASON_SINK_UNKNOWN, problem))
        for name in chosen.sinks:
            self.workers[name].put(notification)
        return warnings

    def stop(self, timeout: float = 5.0) -> None:
        """Every sink delivers what it has queued, side by side, for up to ``timeout`` seconds
        in all; what is left is dropped and counted (:meth:`SinkWorker.stop`)."""
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.drain()
        for worker in self.workers.values():
            worker.stop(max(0.0, deadline - time.monotonic()))
