"""Analysis providers: query rendering, thresholds, Prometheus over a real socket, scrape deltas."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from scipy import special

from kubeloop.analysis.base import AnalysisTarget, Measurement, judge
from kubeloop.analysis.builtin import (
    MIN_PREDICTIONS,
    BuiltinProvider,
    Increases,
    from_increases,
    histogram_quantile,
    prediction_shift,
    promql,
)
from kubeloop.analysis.prometheus import PrometheusClient, PrometheusProvider, render_query
from kubeloop.analysis.scrape import PodTarget, ScrapeProvider, parse_metrics, parse_query
from kubeloop.trust.urls import PrometheusUrlPolicy

TARGET = AnalysisTarget("ml", "churn", timedelta(seconds=30))


# --- query rendering ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ('up{namespace="{{namespace}}"}', 'up{namespace="ml"}'),
        ('x{model="{{ name }}",track="{{track}}"}', 'x{model="churn",track="canary"}'),
        ("sum(rate(a[1m]))", "sum(rate(a[1m]))"),
        ("{{name}}{{name}}", "churnchurn"),
    ],
)
def test_render_query_fills_variables(template: str, expected: str) -> None:
    assert render_query(template, "ml", "churn") == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [('up{ns="{{namspace}}"}', "unknown variable {{namspace}}"), ("up{{name", "unclosed")],
)
def test_render_query_refuses_typos(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render_query(template, "ml", "churn")


# --- thresholds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "value", "passed", "inconclusive"),
    [
        ({"max": 0.05}, 0.01, True, False),
        ({"max": 0.05}, 0.05, True, False),  # bounds are inclusive
        ({"max": 0.05}, 0.0500001, False, False),
        ({"min": 0.9}, 0.95, True, False),
        ({"min": 0.9}, 0.5, False, False),
        ({"min": 0.1, "max": 0.2}, 0.15, True, False),
        ({"min": 0.1, "max": 0.2}, 0.25, False, False),
        ({"min": 0.1, "max": 0.2}, 0.05, False, False),
        ({"max": 1.0}, None, False, True),
        ({"max": 1.0}, float("nan"), False, True),
    ],
)
def test_judge(bounds: dict[str, float], value: float | None, passed: bool, inconclusive: bool) -> None:
    verdict = judge({"name": "m", **bounds}, Measurement("m", value, None))
    assert (verdict.passed, verdict.inconclusive) == (passed, inconclusive)
    if not passed and not inconclusive:
        assert verdict.message is not None and "m=" in verdict.message
        assert ("below its minimum" in verdict.message) or ("above its maximum" in verdict.message)


# --- Prometheus over a real HTTP server ------------------------------------------------------


class FakePrometheus:
    """A tiny HTTP server answering /api/v1/query in Prometheus' JSON shape."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parsed = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(parsed.query).get("query", [""])[0]
                outer.queries.append(query)
                code, body = outer.answers.get(query, outer.answers.get("*", (200, vector([]))))
                payload = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def vector(series: list[tuple[dict[str, str], float]]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": labels, "value": [1700000000.0, str(value)]} for labels, value in series],
        },
    }


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.close()


def test_prometheus_provider_sends_the_rendered_query_and_reads_one_number(prometheus: FakePrometheus) -> None:
    prometheus.answers["*"] = (200, vector([({}, 0.25)]))
    metric = {"name": "errors", "provider": "prometheus", "query": 'sum(x{ns="{{namespace}}",t="{{track}}"})', "max": 0.1}
    measurement = PrometheusProvider(prometheus.url).measure(metric, TARGET)
    assert measurement == Measurement("errors", 0.25)
    assert prometheus.queries == ['sum(x{ns="ml",t="canary"})']
    assert not judge(metric, measurement).passed


def test_prometheus_metric_url_overrides_the_default_when_the_operator_allows_it(prometheus: FakePrometheus) -> None:
    prometheus.answers["*"] = (200, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3.5"]}})
    metric = {"name": "m", "query": "vector(3.5)", "prometheusUrl": prometheus.url + "/"}
    policy = PrometheusUrlPolicy.from_settings("http://127.0.0.1:9", [prometheus.url])
    assert PrometheusProvider(policy=policy).measure(metric, TARGET).value == 3.5


def test_prometheus_metric_url_the_operator_does_not_allow_is_refused_unrequested(prometheus: FakePrometheus) -> None:
    prometheus.answers["*"] = (200, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3.5"]}})
    metric = {"name": "m", "query": "vector(3.5)", "prometheusUrl": prometheus.url}
    measurement = PrometheusProvider("http://127.0.0.1:9").measure(metric, TARGET)
    assert measurement.value is None and measurement.refusal == "PrometheusUrlNotAllowed"
    assert "prometheusUrl of analysis metric 'm'" in (measurement.message or "")
    assert "http://127.0.0.1:9" in (measurement.message or "")
    assert prometheus.queries == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((200, vector([])), "no data"),
        ((200, vector([({"pod": "a"}, 1.0), ({"pod": "b"}, 2.0)])), "2 series"),
        ((400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}), "parse error"),
        ((200, vector([({}, float("nan"))])), "no data"),
    ],
)
def test_prometheus_answers_without_one_number_are_inconclusive_with_reason(
    prometheus: FakePrometheus, answer: tuple[int, dict[str, Any]], message: str
) -> None:
    prometheus.answers["*"] = answer
    measurement = PrometheusProvider(prometheus.url).measure({"name": "m", "query": "q"}, TARGET)
    assert measurement.value is None
    assert measurement.message is not None and message in measurement.message


def test_unreachable_prometheus_is_inconclusive_and_names_the_url() -> None:
    measurement = PrometheusProvider("http://127.0.0.1:9", timeout_seconds=2).measure({"name": "m", "query": "q"}, TARGET)
    assert measurement.value is None and "127.0.0.1:9" in (measurement.message or "")


def test_no_prometheus_url_says_which_setting() -> None:
    measurement = PrometheusProvider(None).measure({"name": "m", "query": "q"}, TARGET)
    assert measurement.value is None and "prometheusUrl" in (measurement.message or "")


# --- built-in checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builtin", "fragments"),
    [
        ("errorRate", ['track="canary"', 'code=~"5.."', "or vector(0)", "[30s]", 'endpoint=~"infer|predict|grpc_infer"']),
        ("latencyP99", ["histogram_quantile(0.99", "kubeloop_serve_request_duration_seconds_bucket", "by (le)"]),
        ("shadowAgreement", ['track="stable"', 'result="agree"', "kubeloop_serve_shadow_rows_total", "or vector(0)"]),
        ("predictionShift", ['feature="__prediction__"', "by (track, bin)", 'track=~"stable|canary"']),
    ],
)
def test_builtin_promql_selects_this_deployment(builtin: str, fragments: list[str]) -> None:
    query = promql(builtin, TARGET)
    assert 'namespace="ml"' in query and 'model="churn"' in query
    for fragment in fragments:
        assert fragment in query


def test_unknown_builtin_is_refused() -> None:
    with pytest.raises(ValueError, match="errorRate"):
        promql("accuracy", TARGET)


def psi_by_scipy(reference: np.ndarray, current: np.ndarray) -> float:
    e = np.maximum(reference / reference.sum(), 1e-4)
    a = np.maximum(current / current.sum(), 1e-4)
    return float(np.sum(special.rel_entr(a, e) + special.rel_entr(e, a)))


def test_prediction_shift_through_prometheus_is_psi_of_the_bin_increases(prometheus: FakePrometheus) -> None:
    stable = {"0": 400.0, "1": 350.0, "2": 250.0}
    canary = {"0": 100.0, "1": 300.0, "2": 600.0}
    series = [({"track": "stable", "bin": b}, v) for b, v in stable.items()]
    series += [({"track": "canary", "bin": b}, v) for b, v in canary.items()]
    prometheus.answers["*"] = (200, vector(series))
    metric = {"name": "shift", "provider": "builtin", "builtin": "predictionShift", "max": 0.2}
    measurement = BuiltinProvider(prometheus.url).measure(metric, TARGET)
    expected = psi_by_scipy(np.array(list(stable.values())), np.array(list(canary.values())))
    assert measurement.value == pytest.approx(expected, rel=1e-9)
    assert not judge(metric, measurement).passed
    same = prediction_shift(stable, stable)
    assert same.value == pytest.approx(0.0, abs=1e-12)


def test_prediction_shift_needs_enough_predictions() -> None:
    few = {"0": float(MIN_PREDICTIONS - 1)}
    measurement = prediction_shift(few, {"0": 500.0})
    assert measurement.value is None and "not enough predictions" in (measurement.message or "")


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    # 100 observations: 50 in (0, 0.1], 40 in (0.1, 0.5], 10 in (0.5, 1]
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    # rank 99 falls in (0.5, 1]: 0.5 + 0.5 * (99 - 90) / 10
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.95)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, {0.1: 0.0, float("inf"): 0.0}) is None
    # Everything above the last finite bound: Prometheus answers that bound.
    assert histogram_quantile(0.99, {0.1: 0.0, float("inf"): 5.0}) == 0.1


# --- scrape: real exposition text from prometheus_client ----------------------------------------


class ServerMetrics:
    """The server's metric families (same names and labels) on a private registry."""

    def __init__(self, track: str) -> None:
        self.registry = CollectorRegistry()
        base = ["model", "sha", "track"]
        self.track = track
        self.requests = Counter("kubeloop_serve_requests", "r", [*base, "endpoint", "code"], registry=self.registry)
        self.latency = Histogram(
            "kubeloop_serve_request_duration_seconds", "d", [*base, "endpoint"],
            buckets=(0.01, 0.1, 1.0), registry=self.registry,
        )
        self.bins = Counter("kubeloop_serve_feature_bin", "b", [*base, "feature", "bin"], registry=self.registry)
        self.shadow = Counter("kubeloop_serve_shadow_requests", "s", [*base, "result"], registry=self.registry)
        self.shadow_rows = Counter("kubeloop_serve_shadow_rows", "s", [*base, "result"], registry=self.registry)

    def serve(self, code: int, seconds: float, prediction_bin: str, n: int = 1) -> None:
        labels = ("churn", "abc", self.track)
        self.requests.labels(*labels, "predict", str(code)).inc(n)
        for _ in range(n):
            self.latency.labels(*labels, "predict").observe(seconds)
        self.bins.labels(*labels, "__prediction__", prediction_bin).inc(n)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_scrape_round_measures_increases_between_two_scrapes() -> None:
    stable, canary = ServerMetrics("stable"), ServerMetrics("canary")
    stable.serve(200, 0.005, "0", n=500)  # before the first scrape: must not count
    pods = {"churn-stable-1": stable, "churn-canary-1": canary}
    provider = ScrapeProvider()
    targets = [PodTarget("churn-stable-1", 8080, "stable"), PodTarget("churn-canary-1", 8080, "canary")]

    def fetch(pod: str, port: int) -> str:
        assert port == 8080
        return pods[pod].text()

    first = provider.round(TARGET, targets, fetch)
    assert first.measure({"name": "e", "provider": "builtin", "builtin": "errorRate"}, TARGET).value is None

    stable.serve(200, 0.005, "0", n=60)
    stable.serve(200, 0.005, "1", n=40)
    canary.serve(200, 0.05, "0", n=45)
    canary.serve(500, 0.5, "1", n=5)
    canary.serve(200, 0.05, "1", n=50)
    # Mirrored by stable: 10 requests of 10 rows, 3 answered in full agreement, 7 with one
    # disagreeing row each, and one request of 5 rows the canary failed to answer.
    labels = ("churn", "abc", "stable")
    stable.shadow.labels(*labels, "agree").inc(3)
    stable.shadow.labels(*labels, "disagree").inc(7)
    stable.shadow.labels(*labels, "error").inc(1)
    stable.shadow_rows.labels(*labels, "agree").inc(3 * 10 + 7 * 9)
    stable.shadow_rows.labels(*labels, "disagree").inc(7)
    stable.shadow_rows.labels(*labels, "error").inc(5)
    second = provider.round(TARGET, targets, fetch)

    def value(builtin: str) -> float | None:
        return second.measure({"name": builtin, "provider": "builtin", "builtin": builtin}, TARGET).value

    assert value("errorRate") == pytest.approx(5 / 100)
    # The row share (93 of 105 rows), not the request share (3 of 11 requests).
    assert value("shadowAgreement") == pytest.approx(93 / 105)
    agreement = second.measure({"name": "a", "provider": "builtin", "builtin": "shadowAgreement"}, TARGET)
    assert agreement.samples == 105
    # canary latency: 95 in (0.01, 0.1], 5 in (0.1, 1]; rank 99 -> 0.1 + 0.9 * 4/5
    assert value("latencyP99") == pytest.approx(0.1 + 0.9 * 4 / 5)
    expected_psi = psi_by_scipy(np.array([60.0, 40.0]), np.array([45.0, 55.0]))
    assert value("predictionShift") == pytest.approx(expected_psi)
    scraped = second.measure({"name": "raw", "provider": "scrape", "query": 'kubeloop_serve_requests_total{code="500"}'}, TARGET)
    assert scraped.value == pytest.approx(5.0)


def test_scrape_counter_reset_counts_from_zero_and_dead_pods_are_reported() -> None:
    canary = ServerMetrics("canary")
    canary.serve(200, 0.05, "0", n=100)
    provider = ScrapeProvider()
    pods = [PodTarget("c1", 8080, "canary"), PodTarget("gone", 8080, "canary")]

    def fetch(pod: str, port: int) -> str:
        if pod == "gone":
            raise ConnectionError("pod has no IP")
        return texts.pop(0)

    texts = [canary.text()]
    provider.round(TARGET, pods, fetch)
    restarted = ServerMetrics("canary")  # the pod restarted: counters start again
    restarted.serve(500, 0.05, "0", n=3)
    restarted.serve(200, 0.05, "0", n=7)
    texts = [restarted.text()]
    second = provider.round(TARGET, pods, fetch)
    assert second.errors and "gone" in second.errors[0]
    assert from_increases("errorRate", "e", second.increases).value == pytest.approx(0.3)


def test_parse_metrics_marks_counters() -> None:
    m = ServerMetrics("canary")
    m.serve(200, 0.05, "0")
    snapshot = parse_metrics(m.text())
    names = {key[0] for key in snapshot.counters}
    assert "kubeloop_serve_requests_total" in names
    assert "kubeloop_serve_request_duration_seconds_bucket" in names
    assert not any(name.endswith("_created") for name, _ in snapshot.values)


@pytest.mark.parametrize(
    ("query", "parsed"),
    [
        ("up", ("up", {})),
        ('x_total{code="500", track="canary"}', ("x_total", {"code": "500", "track": "canary"})),
    ],
)
def test_parse_scrape_query(query: str, parsed: tuple[str, dict[str, str]]) -> None:
    assert parse_query(query) == parsed


@pytest.mark.parametrize("query", ['x{code=~"5.."}', "x{code!=\"5\"}", "x{code"])
def test_scrape_query_refuses_what_it_cannot_do(query: str) -> None:
    with pytest.raises(ValueError, match="scrape query"):
        parse_query(query)


@pytest.mark.parametrize(
    ("agree", "disagree", "error", "expected"),
    [
        (0, 0, 0, None),  # nothing mirrored: no data
        (10, 0, 0, 1.0),
        (9, 1, 0, 0.9),
        (0, 0, 12, 0.0),  # a challenger that fails every mirror: 0, not no data
        (9, 1, 10, 0.45),  # failed rows count against it
    ],
)
def test_shadow_agreement_from_increases_is_agree_rows_over_all_rows(
    agree: int, disagree: int, error: int, expected: float | None
) -> None:
    rows = "kubeloop_serve_shadow_rows_total"
    found = Increases({
        (rows, (("result", result), ("track", "stable"))): float(n)
        for result, n in (("agree", agree), ("disagree", disagree), ("error", error))
    })  # fmt: skip
    # Requests say something else (one request that did not agree entirely): not read.
    found.values[("kubeloop_serve_shadow_requests_total", (("result", "disagree"), ("track", "stable")))] = 1.0
    measurement = from_increases("shadowAgreement", "a", found)
    if expected is None:
        assert measurement.value is None and "mirrored no row" in (measurement.message or "")
    else:
        assert measurement.value == pytest.approx(expected)
        assert measurement.samples == agree + disagree + error


def test_increases_select_matches_sets() -> None:
    inc = Increases({("a", (("code", "500"),)): 2.0, ("a", (("code", "200"),)): 3.0})
    assert inc.total("a", code=("500", "200")) == 5.0
    assert inc.total("a", code="500") == 2.0


def test_prometheus_client_vector_from_scalar(prometheus: FakePrometheus) -> None:
    prometheus.answers["*"] = (200, {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "2"]}})
    assert [s.value for s in PrometheusClient(prometheus.url).vector("q")] == [2.0]
