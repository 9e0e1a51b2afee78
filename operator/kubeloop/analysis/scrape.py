"""The ``scrape`` provider: read the pods' ``/metrics`` directly, for clusters without Prometheus.

The operator fetches each ready server pod's metrics through the API server's pod proxy
(``/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/metrics``), so it needs no network path
to the pods of its own, only RBAC on ``pods/proxy``. Counters only mean something as
increases, so one measurement round compares this scrape with the previous round's (kept in
memory per pod): the window is the time between two rounds, i.e. the analysis interval. The
first round after a start (or after the operator restarts) only records, and its measurements
are inconclusive.

Parsing uses prometheus_client's own text parser; a counter that went down (the pod
restarted) counts from zero, as Prometheus' ``increase`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubeloop.analysis.base import CANARY, AnalysisTarget, Measurement
from kubeloop.analysis.builtin import Increases, from_increases
from kubeloop.trust.urls import error_summary

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
COUNTER_TYPES = {"counter", "histogram", "summary"}


@dataclass(frozen=True)
class PodTarget:
    """A server pod to scrape."""

    name: str
    port: int
    track: str


@dataclass
class Snapshot:
    """One pod's metrics at one moment: value per series, and which series are counters."""

    values: dict[SeriesKey, float] = field(default_factory=dict)
    counters: set[SeriesKey] = field(default_factory=set)


def parse_metrics(text: str) -> Snapshot:
    """A Prometheus text exposition as a :class:`Snapshot`."""
    snapshot = Snapshot()
    for family in text_string_to_metric_families(text):
        counting = family.type in COUNTER_TYPES
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # creation timestamps are not measurements
            key = (sample.name, tuple(sorted(sample.labels.items())))
            snapshot.values[key] = float(sample.value)
            if counting:
                # Every sample of a counter, histogram or summary (buckets, _sum, _count)
                # only ever grows, so each is compared as an increase.
                snapshot.counters.add(key)
    return snapshot


def increases(previous: Snapshot, current: Snapshot) -> Increases:
    """Counter increases from ``previous`` to ``current`` of one pod (a reset counts from 0)."""
    result = Increases()
    for key in current.counters:
        now = current.values[key]
        before = previous.values.get(key, 0.0)
        result.values[key] = now - before if now >= before else now
    return result


def merge(parts: Sequence[Increases]) -> Increases:
    """Increases of several pods added up per series."""
    total = Increases()
    for part in parts:
        for key, value in part.values.items():
            total.values[key] = total.values.get(key, 0.0) + value
    return total


def parse_query(query: str) -> tuple[str, dict[str, str]]:
    """``name`` or ``name{label="value",...}`` (exact matches only) as name and labels."""
    query = query.strip()
    if "{" not in query:
        return query, {}
    if not query.endswith("}"):
        raise ValueError(
            f"scrape query {query!r}: write a metric name, optionally with exact label "
            'matches, e.g. kubeloop_serve_requests_total{code="500"}'
        )
    name, _, body = query[:-1].partition("{")
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        value = value.strip()
        if (
            not eq
            or key.strip().endswith(("!", "~"))
            or len(value) < 2
            or value[0] != '"'
            or value[-1] != '"'
        ):
            raise ValueError(
                f'scrape query {query!r}: only exact matches like label="value" are supported'
            )
        labels[key.strip()] = value[1:-1]
    return name.strip(), labels


def scrape_error_summary(error: BaseException) -> str:
    """What a failed scrape may say: never the pod's answer (a parse error quotes the line it
    could not read, a proxied error carries the pod's body)."""
    if isinstance(error, ValueError):
        return "its /metrics answer is not Prometheus text format (not shown)"
    return f"scrape failed: {error_summary(error)}"


Fetch = Callable[[str, int], str]
"""``fetch(pod_name, port)`` -> the pod's /metrics text (raises on failure)."""


@dataclass
class ScrapeRound:
    """One round of scrapes of a ModelDeployment's pods, and the measurements it supports."""

    increases: Increases
    current: dict[str, Snapshot]
    tracks: dict[str, str]
    compared_pods: int
    errors: list[str]

    def measure(self, metric: Mapping[str, Any], target: AnalysisTarget) -> Measurement:
        name = str(metric["name"])
        if self.compared_pods == 0:
            detail = f" ({'; '.join(self.errors)})" if self.errors else ""
            return Measurement(
                name,
                None,
                "no data yet: the first scrape of these pods only records their counters; the "
                f"next round compares{detail}",
            )
        if metric.get("provider") == "builtin":
            return from_increases(str(metric.get("builtin")), name, self.increases)
        try:
            sample_name, labels = parse_query(str(metric.get("query") or ""))
        except ValueError as error:
            return Measurement(name, None, str(error))
        return self._sum_canary(name, sample_name, labels)

    def _sum_canary(self, name: str, sample_name: str, labels: Mapping[str, str]) -> Measurement:
        # Counters as their increase in the window, anything else as its value now.
        total, seen = 0.0, False
        for pod, snapshot in self.current.items():
            if self.tracks.get(pod) != CANARY:
                continue
            for key, value in snapshot.values.items():
                if key[0] != sample_name or any(
                    dict(key[1]).get(k) != v for k, v in labels.items()
                ):
                    continue
                seen = True
                total += self.increases.values.get(key, 0.0) if key in snapshot.counters else value
        if not seen:
            return Measurement(name, None, f"no data: no canary pod exports {sample_name}")
        return Measurement(name, total)


class ScrapeProvider:
    """Keeps the previous scrape of every pod, so each round can measure increases."""

    def __init__(self) -> None:
        self._previous: dict[tuple[str, str, str], Snapshot] = {}

    def round(self, target: AnalysisTarget, pods: Sequence[PodTarget], fetch: Fetch) -> ScrapeRound:
        """Scrape ``pods`` now and compare with the previous round."""
        parts: list[Increases] = []
        current: dict[str, Snapshot] = {}
        errors: list[str] = []
        for pod in pods:
            try:
                snapshot = parse_metrics(fetch(pod.name, pod.port))
            except Exception as error:  # a pod going away mid-round is normal during a rollout
                # Only a fixed summary: a parse error or a proxied error quotes the pod's answer.
                errors.append(f"pod {pod.name}: {scrape_error_summary(error)}")
                continue
            current[pod.name] = snapshot
            key = (target.namespace, target.name, pod.name)
            previous = self._previous.get(key)
            if previous is not None:
                parts.append(_track_only(increases(previous, snapshot), pod.track))
        # Forget pods that are gone; remember this round for the next one.
        for key in [k for k in self._previous if k[:2] == (target.namespace, target.name)]:
            if key[2] not in current:
                del self._previous[key]
        for pod_name, snapshot in current.items():
            self._previous[(target.namespace, target.name, pod_name)] = snapshot
        return ScrapeRound(
            increases=merge(parts),
            current=current,
            tracks={pod.name: pod.track for pod in pods},
            compared_pods=len(parts),
            errors=errors,
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is remembered of a ModelDeployment (it was deleted, or its rollout ended)."""
        for key in [k for k in self._previous if k[:2] == (namespace, name)]:
            del self._previous[key]


def _track_only(found: Increases, track: str) -> Increases:
    # A pod's series carry the server's own track label; trust the pod's label when it lacks one
    # so a server without the label still counts on the right side.
    fixed = Increases()
    for (sample, pairs), value in found.values.items():
        labels = dict(pairs)
        labels.setdefault("track", track)
        fixed.values[(sample, tuple(sorted(labels.items())))] = value
    return fixed
