"""The server's Prometheus metrics, on its own registry, correct across worker processes.

With one worker the metrics live in memory in a private ``CollectorRegistry``. With N worker
processes each process writes its samples to memory-mapped files in a shared directory
(prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor
before any worker starts) and a scrape, whichever worker answers it, merges every process's
files: counters and histograms are summed, so totals are exact, not one worker's share. The
supervisor deletes a dead worker's gauge files; its counters stay, as they must for rate().

Every series carries ``model``, ``sha`` (short sha256) and ``track`` so stable and canary are
distinct in PromQL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from kubeloop.serving.feedback import FeedbackScore

PREFIX = "kubeloop_serve_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BASE_LABELS = ("model", "sha", "track")
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_dir() -> str | None:
    """The shared metrics directory when running with several worker processes."""
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass(frozen=True)
class MetricLabels:
    """Identity of this server in every series."""

    model: str
    sha: str
    track: str

    def values(self) -> tuple[str, str, str]:
        return (self.model, self.sha, self.track)


class ServeMetrics:
    """All metrics of one server process; bind label values once, increment cheaply."""

    def __init__(self, labels: MetricLabels) -> None:
        self.labels = labels
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values go to the shared files; registering them too would
        # export this process's share next to the merged total.
        self.registry = CollectorRegistry(auto_describe=True)
        reg = None if self.multiprocess else self.registry
        base = labels.values()
        self.requests = Counter(
            PREFIX + "requests",
            "HTTP requests by endpoint and status code.",
            [*BASE_LABELS, "endpoint", "code"],
            registry=reg,
        )
        self.request_errors = Counter(
            PREFIX + "request_errors",
            "Requests answered with a 4xx or 5xx status.",
            [*BASE_LABELS, "endpoint", "code"],
            registry=reg,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from request received to response sent.",
            [*BASE_LABELS, "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size",
            "Rows per model call after micro-batching.",
            BASE_LABELS,
            buckets=BATCH_BUCKETS,
            registry=reg,
        ).labels(*base)
        self.predictions = Counter(
            PREFIX + "predictions", "Rows predicted.", BASE_LABELS, registry=reg
        ).labels(*base)
        self.feature_bins = Counter(
            PREFIX + "feature_bin",
            "Served rows per reference-profile bin, per feature and for __prediction__.",
            [*BASE_LABELS, "feature", "bin"],
            registry=reg,
        )
        self.feedback = Counter(
            PREFIX + "feedback",
            "Labels received on /feedback, by whether the id was known.",
            [*BASE_LABELS, "result"],
            registry=reg,
        )
        self.feedback_rows = Counter(
            PREFIX + "feedback_rows",
            "Labelled rows matched to a served prediction.",
            BASE_LABELS,
            registry=reg,
        ).labels(*base)
        self.feedback_correct = Counter(
            PREFIX + "feedback_correct",
            "Labelled rows whose prediction was right (classifiers).",
            BASE_LABELS,
            registry=reg,
        ).labels(*base)
        self.feedback_abs_error_sum = Counter(
            PREFIX + "feedback_abs_error_sum",
            "Sum of |prediction - label| (regressors).",
            BASE_LABELS,
            registry=reg,
        ).labels(*base)
        self.feedback_squared_error_sum = Counter(
            PREFIX + "feedback_squared_error_sum",
            "Sum of (prediction - label)^2 (regressors).",
            BASE_LABELS,
            registry=reg,
        ).labels(*base)
        self.feedback_class = Counter(
            PREFIX + "feedback_class",
            "Labelled rows per class (classifiers), by outcome: tp (predicted and true), fp "
            "(predicted, not true), fn (true, not predicted); role says how F1 uses the class "
            "(positive/negative: a two-class model's F1 is the positive class's; macro: the "
            "mean over classes).",
            [*BASE_LABELS, "class", "role", "outcome"],
            registry=reg,
        )
        self.shadow_requests = Counter(
            PREFIX + "shadow_requests",
            "Mirrored requests by comparison result (agree: every row agreed; error: the "
            "challenger did not answer).",
            [*BASE_LABELS, "result"],
            registry=reg,
        )
        self.shadow_rows = Counter(
            PREFIX + "shadow_rows",
            "Mirrored rows by comparison result (error: rows of a mirror the challenger did "
            "not answer); shadowAgreement is agree over all three.",
            [*BASE_LABELS, "result"],
            registry=reg,
        )
        self.shadow_dropped = Counter(
            PREFIX + "shadow_dropped",
            "Requests not mirrored because the shadow queue was full.",
            BASE_LABELS,
            registry=reg,
        ).labels(*base)
        self.model_info = Gauge(
            PREFIX + "model_info",
            "The model this server serves (value 1).",
            [*BASE_LABELS, "sha256"],
            registry=reg,
            multiprocess_mode="max",
        )
        self._endpoint_children: dict[tuple[str, int], tuple[Counter, Counter | None]] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._class_children: dict[tuple[str, str, str], Counter] = {}

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        """One request answered: count it, its error if any, and its latency."""
        children = self._endpoint_children.get((endpoint, code))
        if children is None:
            base = self.labels.values()
            children = (
                self.requests.labels(*base, endpoint, str(code)),
                self.request_errors.labels(*base, endpoint, str(code)) if code >= 400 else None,
            )
            self._endpoint_children[(endpoint, code)] = children
        children[0].inc()
        if children[1] is not None:
            children[1].inc()
        duration = self._duration_children.get(endpoint)
        if duration is None:
            duration = self.request_duration.labels(*self.labels.values(), endpoint)
            self._duration_children[endpoint] = duration
        duration.observe(seconds)

    def count_feedback(self, result: FeedbackScore) -> None:
        """One request's labels matched to its predictions: count them, at label time (so a
        window over these counters is a window over label arrival, not prediction time)."""
        self.feedback_rows.inc(result.rows)
        self.feedback_correct.inc(result.correct)
        self.feedback_abs_error_sum.inc(result.abs_error_sum)
        self.feedback_squared_error_sum.inc(result.squared_error_sum)
        for name, outcomes in result.classes.items():
            for outcome, count in (
                ("tp", outcomes.true_positives),
                ("fp", outcomes.false_positives),
                ("fn", outcomes.false_negatives),
            ):
                if count:
                    self._class_child(name, outcomes.role, outcome).inc(count)

    def start_feedback_classes(self, roles: dict[str, str]) -> None:
        """Export every class's tp/fp/fn at 0 from the start: Prometheus' increase() takes a
        series' first sample as its baseline, so a series born with its first label would
        lose that label's count (the scrape path counts from zero either way)."""
        for name, role in roles.items():
            for outcome in ("tp", "fp", "fn"):
                self._class_child(name, role, outcome)

    def _class_child(self, name: str, role: str, outcome: str) -> Counter:
        key = (name, role, outcome)
        child = self._class_children.get(key)
        if child is None:
            child = self.feedback_class.labels(*self.labels.values(), name, role, outcome)
            self._class_children[key] = child
        return child

    def render(self) -> bytes:
        """The Prometheus text exposition of every process's metrics."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
