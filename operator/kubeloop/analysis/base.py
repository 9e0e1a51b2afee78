"""What every metric provider shares: the measurement, its bounds, and the small interface.

A provider turns one ``AnalysisMetric`` of the spec (wire form) into a :class:`Measurement`:
a value, or no value and a message saying why none could be had. Judging the value against
``min``/``max`` is pure and the same for every provider (:func:`judge`).

A measurement without a value is *inconclusive*, not failed: right after a canary starts it
has served nothing yet, and an unreachable Prometheus says nothing about the model. The
rollout decision counts only measured values outside their bounds as failures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

STABLE, CANARY = "stable", "canary"


@dataclass(frozen=True)
class Measurement:
    """One metric measured once: ``value`` is None when nothing could be measured."""

    name: str
    value: float | None
    message: str | None = None
    samples: float | None = None
    """How many observations the value rests on (requests, mirrored rows, predictions),
    when the provider knows; a value resting on fewer than ``minSamples`` is inconclusive."""
    refusal: str | None = None
    """The condition reason when the operator refused to measure (e.g. a ``prometheusUrl`` it
    is not configured to query): nothing was requested, and the spec must change."""


@dataclass(frozen=True)
class Verdict:
    """A measurement judged against its bounds."""

    name: str
    value: float | None
    min: float | None
    max: float | None
    passed: bool
    inconclusive: bool
    message: str | None


@dataclass(frozen=True)
class AnalysisTarget:
    """Which ModelDeployment is analysed, and over what recent window."""

    namespace: str
    name: str
    window: timedelta

    @property
    def window_seconds(self) -> int:
        """The window in whole seconds, at least one (PromQL ranges cannot be empty)."""
        return max(1, math.ceil(self.window.total_seconds()))


class MetricProvider(Protocol):
    """Measures metrics of one kind (prometheus, builtin, scrape)."""

    def measure(self, metric: Mapping[str, Any], target: AnalysisTarget) -> Measurement:
        """Measure ``metric`` (an ``AnalysisMetric`` in wire form) for ``target``."""


def judge(metric: Mapping[str, Any], measurement: Measurement, min_samples: int = 0) -> Verdict:
    """Whether the value lies within ``min`` and ``max`` (bounds included).

    No value, a NaN, or a value resting on fewer than ``min_samples`` observations is
    inconclusive: not passed, and not a failure either (an error rate of 0 over two requests
    says nothing about the model).
    """
    low = metric.get("min")
    high = metric.get("max")
    value = measurement.value
    if value is None or math.isnan(value):
        return Verdict(
            measurement.name,
            None,
            low,
            high,
            passed=False,
            inconclusive=True,
            message=measurement.message or "no value was measured",
        )
    if measurement.samples is not None and measurement.samples < min_samples:
        return Verdict(
            measurement.name,
            None,
            low,
            high,
            passed=False,
            inconclusive=True,
            message=(
                f"too few samples: {measurement.name}={value:.6g} rests on "
                f"{int(measurement.samples)} observation(s) in the window, minSamples is {min_samples}"
            ),
        )
    too_low = low is not None and value < float(low)
    too_high = high is not None and value > float(high)
    message = measurement.message
    if too_low:
        message = f"{measurement.name}={value:.6g} is below its minimum {low}"
    elif too_high:
        message = f"{measurement.name}={value:.6g} is above its maximum {high}"
    return Verdict(
        measurement.name,
        value,
        low,
        high,
        passed=not (too_low or too_high),
        inconclusive=False,
        message=message,
    )
