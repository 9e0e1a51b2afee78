"""The operator's Prometheus metrics (its own registry, served on ``metrics_port``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "kubeloop_reconcile_total",
    "Reconciles by kind and result (ok, error).",
    ["kind", "result"],
    registry=REGISTRY,
)
RESYNCS = Counter(
    "kubeloop_resyncs_total",
    "Reconciles with no event behind them (the periodic safety net, a rollout's timed steps), by "
    "kind; a standby replica's stays flat.",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "kubeloop_reconcile_duration_seconds",
    "Time one reconcile took, by kind.",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = Counter(
    "kubeloop_api_requests_total",
    "Requests the operator's own client sent to the Kubernetes API server, by verb, resource "
    "and HTTP status code (error: no answer); kopf's watches and peering are not counted here.",
    ["verb", "resource", "code"],
    registry=REGISTRY,
)
API_REQUEST_SECONDS = Histogram(
    "kubeloop_api_request_duration_seconds",
    "Time from sending a request to the API server to its answer's headers, by verb.",
    ["verb"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RESOURCES_BY_PHASE = Gauge(
    "kubeloop_resources",
    "Resources the operator has seen, by kind and phase.",
    ["kind", "phase"],
    registry=REGISTRY,
)
TRAINING_SECONDS = Histogram(
    "kubeloop_training_duration_seconds",
    "Wall time of finished TrainingRuns (Job start to completion), by outcome.",
    ["phase"],
    registry=REGISTRY,
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
CANARY_WEIGHT = Gauge(
    "kubeloop_canary_weight",
    "Share of traffic (percent) the canary of a ModelDeployment receives.",
    ["namespace", "name"],
    registry=REGISTRY,
)
DRIFT_SCORE = Gauge(
    "kubeloop_drift_score",
    "Last drift score of a feature, by DriftPolicy.",
    ["namespace", "policy", "feature", "test"],
    registry=REGISTRY,
)
RETRAINS = Counter(
    "kubeloop_retrains_total",
    "TrainingRuns created by DriftPolicies, by reason (drift, performance, schedule, manual).",
    ["namespace", "policy", "reason"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "kubeloop_events",
    "Events the operator posted, by the object's namespace, kind and name, type (Normal, "
    "Warning) and reason (the chart's alerts on aborted rollouts, drift and refused retrains "
    "count these).",
    ["namespace", "kind", "name", "type", "reason"],
    registry=REGISTRY,
)
EVENT_WRITE_FAILURES = Counter(
    "kubeloop_event_write_failures_total",
    "Events the operator decided but could not write (the API server refused or did not answer).",
    registry=REGISTRY,
)


class PhaseTracker:
    """Keeps ``kubeloop_resources{kind,phase}`` equal to the phases last seen per object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._phase: dict[tuple[str, str], str] = {}

    def observe(self, namespace: str, name: str, phase: str | None) -> None:
        key = (namespace, name)
        previous = self._phase.get(key)
        if previous == phase:
            return
        if previous is not None:
            RESOURCES_BY_PHASE.labels(self.kind, previous).dec()
        if phase is None:
            self._phase.pop(key, None)
            return
        self._phase[key] = phase
        RESOURCES_BY_PHASE.labels(self.kind, phase).inc()


@contextmanager
def reconcile_timer(kind: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILES.labels(kind, "error").inc()
        raise
    else:
        RECONCILES.labels(kind, "ok").inc()
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - start)


NOTIFICATIONS = Counter(
    "kubeloop_notifications_total",
    "Notifications by sink, trigger and result: delivered, failed (every attempt failed) or "
    "unknown_sink (an annotation named a sink the operator does not have; sink '-').",
    ["sink", "trigger", "result"],
    registry=REGISTRY,
)
NOTIFICATION_ATTEMPTS = Counter(
    "kubeloop_notification_attempts_total",
    "HTTP attempts to deliver a notification, by sink and outcome (ok, http_4xx, http_5xx, "
    "timeout, error); retries show as attempts beyond the notifications.",
    ["sink", "outcome"],
    registry=REGISTRY,
)
NOTIFICATIONS_DROPPED = Counter(
    "kubeloop_notifications_dropped_total",
    "Notifications dropped unsent: the sink's queue was full (the oldest goes first), or the "
    "operator was stopping and the sink did not take them in time.",
    ["sink"],
    registry=REGISTRY,
)
NOTIFICATION_QUEUE = Gauge(
    "kubeloop_notification_queue_length",
    "Notifications waiting for a sink.",
    ["sink"],
    registry=REGISTRY,
)
NOTIFICATION_SECONDS = Histogram(
    "kubeloop_notification_delivery_seconds",
    "Time from the Event to the sink's answer, for delivered notifications, by sink.",
    ["sink"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def observe_api_request(verb: str, resource: str, code: str, seconds: float) -> None:
    API_REQUESTS.labels(verb, resource, code).inc()
    API_REQUEST_SECONDS.labels(verb).observe(seconds)
