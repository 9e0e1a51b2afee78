"""Built-in, model-aware checks over the model servers' own metrics.

Four measurements, each of the canary against its bound, with two ways to get the numbers:

* with a Prometheus (``prometheusUrl`` on the metric or the operator's default), as PromQL
  over the series ``kubeloop serve`` exports (:func:`promql`);
* without one, from two direct scrapes of the pods' ``/metrics`` (:mod:`kubeloop.analysis.scrape`)
  through the same arithmetic on counter increases (:func:`from_increases`).

The checks:

* ``errorRate``: share of the canary's inference requests (``/predict``, v2 ``infer``)
  answered with a 5xx. A 4xx is the client's mistake and says nothing about the model.
* ``latencyP99``: 99th percentile of the canary's inference latency, in seconds.
* ``predictionShift``: PSI between the distributions of stable's and canary's predictions over
  the reference profile's prediction bins (``feature="__prediction__"``): how differently the
  new model answers the same kind of traffic. During a shadow step both saw the same requests.
* ``shadowAgreement``: share of mirrored rows on which the canary gave stable's answer
  (counted by the stable server, which does the mirroring): agree rows over agree, disagree
  and error rows, the rows of a mirror the canary failed or timed out on counting as error
  rows. A row share, not a request share: a batched request with one disagreeing row still
  contributes its agreeing rows, and a canary that fails every mirror measures 0, not "no
  data". Its samples (for ``minSamples``) are those rows.

Series are selected by ``namespace`` (which Prometheus' Kubernetes discovery attaches), and by
the ``model`` (the ModelDeployment's name, passed to the server as ``--model-name``) and
``track`` labels the server itself writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from kubeloop.analysis.base import CANARY, STABLE, AnalysisTarget, Measurement
from kubeloop.analysis.prometheus import (
    PrometheusClient,
    PrometheusError,
    metric_url,
    refused,
    url_policy,
)
from kubeloop.drift.profile import PREDICTION_FEATURE
from kubeloop.drift.stats import psi_from_counts
from kubeloop.trust.urls import PrometheusUrlPolicy, UrlNotAllowed

REQUESTS = "kubeloop_serve_requests_total"
DURATION_BUCKET = "kubeloop_serve_request_duration_seconds_bucket"
FEATURE_BINS = "kubeloop_serve_feature_bin_total"
SHADOW_ROWS = "kubeloop_serve_shadow_rows_total"
INFERENCE_ENDPOINTS = ("infer", "predict", "grpc_infer")  # grpc_infer: gRPC ModelInfer
LATENCY_QUANTILE = 0.99
MIN_PREDICTIONS = 20
"""Fewest predictions per track before a prediction shift is judged (PSI of a handful of
rows is noise)."""

BUILTIN_METRICS = ("errorRate", "latencyP99", "predictionShift", "shadowAgreement")


def selector(target: AnalysisTarget, track: str, *extra: str) -> str:
    """The label matchers of one track's series of this ModelDeployment."""
    parts = [
        f'namespace="{target.namespace}"',
        f'model="{target.name}"',
        f'track="{track}"',
        *extra,
    ]
    return "{" + ",".join(parts) + "}"


def promql(builtin: str, target: AnalysisTarget) -> str:
    """The PromQL of a scalar built-in check (predictionShift is a vector: :func:`shift_promql`)."""
    window = f"[{target.window_seconds}s]"
    endpoints = f'endpoint=~"{"|".join(INFERENCE_ENDPOINTS)}"'
    if builtin == "errorRate":
        errors = selector(target, CANARY, endpoints, 'code=~"5.."')
        everything = selector(target, CANARY, endpoints)
        # `or vector(0)`: no 5xx series at all means no errors, not no data.
        return (
            f"(sum(increase({REQUESTS}{errors}{window})) or vector(0))"
            f" / sum(increase({REQUESTS}{everything}{window}))"
        )
    if builtin == "latencyP99":
        buckets = selector(target, CANARY, endpoints)
        return (
            f"histogram_quantile({LATENCY_QUANTILE}, "
            f"sum by (le) (rate({DURATION_BUCKET}{buckets}{window})))"
        )
    if builtin == "shadowAgreement":
        # Every result (agree, disagree, error) in the denominator: failed mirrors count.
        agreed = selector(target, STABLE, 'result="agree"')
        mirrored = selector(target, STABLE)
        return (
            f"(sum(increase({SHADOW_ROWS}{agreed}{window})) or vector(0))"
            f" / sum(increase({SHADOW_ROWS}{mirrored}{window}))"
        )
    if builtin == "predictionShift":
        return shift_promql(target)
    raise ValueError(f"unknown builtin metric {builtin!r}: use one of {', '.join(BUILTIN_METRICS)}")


def samples_promql(builtin: str, target: AnalysisTarget) -> str | None:
    """How many observations a scalar check rests on in the window: the canary's inference
    requests (errorRate, latencyP99) or the rows stable mirrored, answered or not
    (shadowAgreement): the denominator of the value."""
    window = f"[{target.window_seconds}s]"
    if builtin in ("errorRate", "latencyP99"):
        endpoints = f'endpoint=~"{"|".join(INFERENCE_ENDPOINTS)}"'
        return f"sum(increase({REQUESTS}{selector(target, CANARY, endpoints)}{window}))"
    if builtin == "shadowAgreement":
        return f"sum(increase({SHADOW_ROWS}{selector(target, STABLE)}{window}))"
    return None


def shift_promql(target: AnalysisTarget) -> str:
    """Per track and bin, how many predictions fell into each prediction bin in the window."""
    matchers = (
        f'namespace="{target.namespace}",model="{target.name}",'
        f'track=~"{STABLE}|{CANARY}",feature="{PREDICTION_FEATURE}"'
    )
    return f"sum by (track, bin) (increase({FEATURE_BINS}{{{matchers}}}[{target.window_seconds}s]))"


def prediction_shift(stable: Mapping[str, float], canary: Mapping[str, float]) -> Measurement:
    """PSI of the canary's prediction bins against stable's (bins matched by label)."""
    name = "predictionShift"
    bins = sorted(set(stable) | set(canary))
    reference = np.rint([max(0.0, stable.get(b, 0.0)) for b in bins])
    current = np.rint([max(0.0, canary.get(b, 0.0)) for b in bins])
    if reference.sum() < MIN_PREDICTIONS or current.sum() < MIN_PREDICTIONS:
        return Measurement(
            name,
            None,
            f"not enough predictions to compare: stable {int(reference.sum())}, canary "
            f"{int(current.sum())} in the window (need {MIN_PREDICTIONS} each)",
        )
    return Measurement(
        name, psi_from_counts(reference, current).statistic,
        samples=float(min(reference.sum(), current.sum())),
    )


def measure_with_prometheus(
    builtin: str, name: str, client: PrometheusClient, target: AnalysisTarget
) -> Measurement:
    """A built-in check through PromQL."""
    try:
        if builtin == "predictionShift":
            per_track: dict[str, dict[str, float]] = {STABLE: {}, CANARY: {}}
            for series in client.vector(shift_promql(target)):
                track = series.labels.get("track", "")
                if track in per_track and not math.isnan(series.value):
                    per_track[track][series.labels.get("bin", "")] = series.value
            shift = prediction_shift(per_track[STABLE], per_track[CANARY])
            return Measurement(name, shift.value, shift.message, shift.samples)
        query = promql(builtin, target)
        value = client.scalar(query)
        count_query = samples_promql(builtin, target)
        samples = client.scalar(count_query) if value is not None and count_query else None
    except (PrometheusError, ValueError) as error:
        return Measurement(name, None, f"query failed: {error}")
    if value is None:
        return Measurement(name, None, _no_data(builtin))
    return Measurement(name, value, samples=samples)


def _no_data(builtin: str) -> str:
    if builtin == "shadowAgreement":
        return "no data: the stable server mirrored no row in the window"
    return "no data: the canary answered no inference request in the window"


# --- the same checks from counter increases (direct scrape) ------------------------------------


@dataclass
class Increases:
    """Counter increases over one window, per series, from the pods of both tracks.

    Keys are ``(sample name, sorted label pairs)``; histogram buckets keep their ``le``.
    """

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def select(
        self, name: str, **labels: str | Iterable[str]
    ) -> list[tuple[dict[str, str], float]]:
        """Series of ``name`` whose labels match (a string exactly, an iterable as a set)."""
        found = []
        for (sample, pairs), value in self.values.items():
            if sample != name:
                continue
            series = dict(pairs)
            if all(
                series.get(key) == want if isinstance(want, str) else series.get(key) in set(want)
                for key, want in labels.items()
            ):
                found.append((series, value))
        return found

    def total(self, name: str, **labels: str | Iterable[str]) -> float:
        return sum(value for _, value in self.select(name, **labels))


def histogram_quantile(quantile: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative bucket counts keyed by ``le``."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    total = counts[-1]
    if total <= 0 or not math.isinf(bounds[-1]):
        return None
    rank = quantile * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                # As Prometheus: a quantile in the +Inf bucket is the largest finite bound.
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return bounds[-2] if len(bounds) > 1 else None


def from_increases(builtin: str, name: str, increases: Increases) -> Measurement:
    """A built-in check from counter increases between two scrapes."""
    common = {"endpoint": INFERENCE_ENDPOINTS}
    if builtin == "errorRate":
        everything = increases.select(REQUESTS, track=CANARY, **common)
        total = sum(v for _, v in everything)
        if total <= 0:
            return Measurement(name, None, _no_data(builtin))
        errors = sum(v for labels, v in everything if labels.get("code", "").startswith("5"))
        return Measurement(name, errors / total, samples=total)
    if builtin == "latencyP99":
        buckets: dict[float, float] = {}
        for labels, value in increases.select(DURATION_BUCKET, track=CANARY, **common):
            bound = float(labels.get("le", "+Inf"))
            buckets[bound] = buckets.get(bound, 0.0) + value
        quantile = histogram_quantile(LATENCY_QUANTILE, buckets)
        if quantile is None:
            return Measurement(name, None, _no_data(builtin))
        return Measurement(name, quantile, samples=buckets[math.inf])
    if builtin == "shadowAgreement":
        mirrored = increases.select(SHADOW_ROWS, track=STABLE)
        total = sum(v for _, v in mirrored)
        if total <= 0:
            return Measurement(name, None, _no_data(builtin))
        agreed = sum(v for labels, v in mirrored if labels.get("result") == "agree")
        return Measurement(name, agreed / total, samples=total)
    if builtin == "predictionShift":
        per_track: dict[str, dict[str, float]] = {STABLE: {}, CANARY: {}}
        for labels, value in increases.select(FEATURE_BINS, feature=PREDICTION_FEATURE):
            track = labels.get("track", "")
            if track in per_track:
                bin_label = labels.get("bin", "")
                per_track[track][bin_label] = per_track[track].get(bin_label, 0.0) + value
        shift = prediction_shift(per_track[STABLE], per_track[CANARY])
        return Measurement(name, shift.value, shift.message, shift.samples)
    raise ValueError(f"unknown builtin metric {builtin!r}: use one of {', '.join(BUILTIN_METRICS)}")


class BuiltinProvider:
    """Built-in checks through Prometheus when a URL is known (see module docstring), only
    against Prometheus URLs the operator's policy allows."""

    def __init__(
        self,
        default_url: str | None = None,
        timeout_seconds: float = 10.0,
        policy: PrometheusUrlPolicy | None = None,
    ) -> None:
        self.policy = url_policy(default_url, policy)
        self.default_url = self.policy.default
        self.timeout = timeout_seconds

    def uses_prometheus(self, metric: Mapping[str, object]) -> bool:
        # A metric naming a Prometheus goes through measure(), which refuses it if it is not
        # allowed: it never falls back to scraping silently.
        return bool(metric.get("prometheusUrl") or self.default_url)

    def measure(self, metric: Mapping[str, object], target: AnalysisTarget) -> Measurement:
        name = str(metric["name"])
        builtin = str(metric.get("builtin") or "")
        try:
            url = metric_url(metric, self.policy)
        except UrlNotAllowed as error:
            return refused(name, error)
        if not url:
            return Measurement(name, None, "no Prometheus URL for a builtin check")
        return measure_with_prometheus(builtin, name, PrometheusClient(url, self.timeout), target)
