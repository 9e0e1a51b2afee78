"""Live model performance from the servers' /feedback counters (performance drift).

A model server counts each label when it arrives on ``/feedback`` (``kubeloop_serve_feedback_*``
counters, :mod:`kubeloop.serving.metrics`), so the increase of those counters over a window is
the labelled traffic whose labels *arrived* in that window, however late after the prediction.
This module turns such increases (from Prometheus' ``increase()`` or from two scrapes of the
pods) into accuracy, F1, MAE or RMSE, computed the way the trainer computes its holdout metrics
(:func:`kubeloop.training.evaluate.compute_metrics`), and judges them against a reference.

Pure: no I/O, no Prometheus client; shared by the operator's two paths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

PerformanceMetric = Literal["accuracy", "f1", "mae", "rmse"]
METRIC_TASK: Final[dict[str, str]] = {
    "accuracy": "classification",
    "f1": "classification",
    "mae": "regression",
    "rmse": "regression",
}
LOWER_IS_BETTER: Final = frozenset({"mae", "rmse"})

# Sample names (as prometheus_client's parser and Prometheus name them) of the server's counters.
ROWS: Final = "kubeloop_serve_feedback_rows_total"
CORRECT: Final = "kubeloop_serve_feedback_correct_total"
ABS_ERROR_SUM: Final = "kubeloop_serve_feedback_abs_error_sum_total"
SQUARED_ERROR_SUM: Final = "kubeloop_serve_feedback_squared_error_sum_total"
CLASS_OUTCOMES: Final = "kubeloop_serve_feedback_class_total"
METRIC_SERIES: Final[dict[str, tuple[str, ...]]] = {
    "accuracy": (ROWS, CORRECT),
    "f1": (ROWS, CLASS_OUTCOMES),
    "mae": (ROWS, ABS_ERROR_SUM),
    "rmse": (ROWS, SQUARED_ERROR_SUM),
}
"""The counters each metric is computed from."""


@dataclass
class LabelledCounts:
    """Increases of the feedback counters over one window, summed over the servers."""

    rows: float = 0.0
    correct: float = 0.0
    abs_error_sum: float = 0.0
    squared_error_sum: float = 0.0
    classes: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per class: outcome (tp, fp, fn) -> count."""
    roles: dict[str, str] = field(default_factory=dict)
    """Per class: positive / negative (two-class model) or macro."""

    @property
    def labels(self) -> int:
        """Labelled rows in the window (rounded: Prometheus' increase() extrapolates)."""
        return round(self.rows)


def counts_from_samples(
    samples: Iterable[tuple[str, Mapping[str, str], float]],
) -> LabelledCounts:
    """Add up ``(sample name, labels, increase)`` of the feedback counters; others are skipped.

    A class series without ``class``/``outcome`` labels raises KeyError (not the server's)."""
    counts = LabelledCounts()
    for name, labels, value in samples:
        if name == ROWS:
            counts.rows += value
        elif name == CORRECT:
            counts.correct += value
        elif name == ABS_ERROR_SUM:
            counts.abs_error_sum += value
        elif name == SQUARED_ERROR_SUM:
            counts.squared_error_sum += value
        elif name == CLASS_OUTCOMES:
            cls, outcome = labels["class"], labels["outcome"]
            if outcome not in {"tp", "fp", "fn"}:
                raise KeyError(outcome)
            per_class = counts.classes.setdefault(cls, {})
            per_class[outcome] = per_class.get(outcome, 0.0) + value
            counts.roles[cls] = labels.get("role", "macro")
    return counts


def _f1(tp: float, fp: float, fn: float) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator > 0 else 0.0


def live_value(metric: str, counts: LabelledCounts) -> float | None:
    """The metric over the window's labels; None when there are none.

    F1 as the trainer computes it: a two-class model's is the positive class's (the second of
    its sorted classes); with more classes, the mean over the classes seen in the window
    (predicted or true), like scikit-learn's ``average="macro"`` on a holdout.
    """
    if counts.rows <= 0:
        return None
    if metric == "accuracy":
        return min(1.0, max(0.0, counts.correct / counts.rows))
    if metric == "mae":
        return counts.abs_error_sum / counts.rows
    if metric == "rmse":
        return math.sqrt(max(0.0, counts.squared_error_sum / counts.rows))
    if metric == "f1":
        positive = [c for c, role in counts.roles.items() if role == "positive"]
        if positive or any(role == "negative" for role in counts.roles.values()):
            outcomes = counts.classes.get(positive[0], {}) if positive else {}
            return _f1(outcomes.get("tp", 0.0), outcomes.get("fp", 0.0), outcomes.get("fn", 0.0))
        seen = [o for o in counts.classes.values() if sum(o.values()) > 0]
        if not seen:
            return None
        return sum(_f1(o.get("tp", 0.0), o.get("fp", 0.0), o.get("fn", 0.0)) for o in seen) / len(
            seen
        )
    raise ValueError(f"unknown performance metric {metric!r}")


def limit(metric: str, reference: float, tolerance: float) -> float:
    """The worst live value still accepted: ``tolerance`` (relative) below the reference for
    accuracy and F1, above it for MAE and RMSE."""
    if metric in LOWER_IS_BETTER:
        return reference * (1.0 + tolerance)
    return reference * (1.0 - tolerance)


def degraded(metric: str, live: float, reference: float, tolerance: float) -> bool:
    """Whether ``live`` is worse than the reference by more than ``tolerance`` (relative)."""
    bound = limit(metric, reference, tolerance)
    return live > bound if metric in LOWER_IS_BETTER else live < bound


def increase_query(sample: str, model: str, sha: str, seconds: int) -> str:
    """PromQL: the increase of one feedback counter over the window, summed over replicas
    (per class, role and outcome for the class counter)."""
    by = " by (class, role, outcome)" if sample == CLASS_OUTCOMES else ""
    return f'sum{by} (increase({sample}{{model="{model}",sha="{sha}"}}[{max(seconds, 1)}s]))'
