"""The Grafana dashboard queries metrics that exist, with labels they carry, and has the panels
an operator of Kubeloop looks for: canary weights, analysis, training runs by phase and
duration, drift per feature, retrains."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import prometheus_client
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from test_chart_support import CHART

from kubeloop.controllers import metrics as operator_metrics
from kubeloop.serving.metrics import MetricLabels, ServeMetrics

DASHBOARD = json.loads((CHART / "dashboards" / "kubeloop.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "le", "without", "avg", "max", "min",
    "count", "or", "vector", "and", "on", "ignoring", "group_left", "label_values", "topk",
}  # fmt: skip


def exported_series() -> dict[str, set[str]]:
    """Every sample name the operator and the model server export -> its label names."""
    wrappers: list[MetricWrapperBase] = [
        v for v in vars(operator_metrics).values() if isinstance(v, MetricWrapperBase)
    ]
    server = ServeMetrics(MetricLabels("m", "0123456789ab", "stable"))
    wrappers += [v for v in vars(server).values() if isinstance(v, MetricWrapperBase)]
    series: dict[str, set[str]] = {}
    for metric in wrappers:
        labels = set(metric._labelnames)
        for suffix in SUFFIXES[metric._type]:
            series[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


SERIES = exported_series()
SERVER_TARGET_LABELS = {"namespace", "pod", "container", "job", "instance"}
"""Labels a model server's series get from its scrape target, not from the server: the chart's
PodMonitor and the documented scrape_config attach them (test_chart_monitoring.py checks)."""


def labels_of(name: str) -> set[str]:
    """The labels a stored series of ``name`` carries once Prometheus scraped it."""
    return SERIES[name] | (SERVER_TARGET_LABELS if name.startswith("kubeloop_serve_") else set())


def queries() -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every target, and the template variables' queries."""
    found = [
        (p["title"], t["expr"], t.get("legendFormat", "")) for p in PANELS for t in p["targets"]
    ]
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"${variable['name']}", variable["query"]["query"], ""))
    return found


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {t for t in tokens if t.startswith("kubeloop_")}


def test_the_dashboard_queries_only_exported_metrics() -> None:
    used = set()
    for title, expr, _ in queries():
        names = metric_names(expr)
        assert names, f"{title}: no kubeloop metric in {expr}"
        unknown = names - set(SERIES)
        assert not unknown, f"panel {title!r} queries {unknown}, which no code exports"
        used |= names
    # The families the issue asks to see are all on the dashboard.
    assert {
        "kubeloop_canary_weight", "kubeloop_resources", "kubeloop_training_duration_seconds_bucket",
        "kubeloop_drift_score", "kubeloop_retrains_total", "kubeloop_serve_request_errors_total",
        "kubeloop_serve_request_duration_seconds_bucket", "kubeloop_serve_shadow_rows_total",
    } <= used  # fmt: skip


@pytest.mark.parametrize(("title", "expr", "legend"), queries(), ids=[q[0] for q in queries()])
def test_labels_in_queries_and_legends_exist_on_the_metric(
    title: str, expr: str, legend: str
) -> None:
    names = metric_names(expr)
    available = set.intersection(*(labels_of(n) for n in names))
    grouped = set()
    for clause in re.findall(r"by \(([^)]*)\)", expr):
        grouped |= {label.strip() for label in clause.split(",") if label.strip()}
    selected = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*=~?\s*\"", expr))
    for label in grouped | selected:
        assert label in available, f"{title}: label {label!r} is not on {sorted(names)}"
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        source = grouped or available
        assert label in source, (
            f"{title}: legend uses {label!r}, the query keeps only {sorted(source)}"
        )


def test_the_panels_users_ask_for_are_there() -> None:
    titles = " | ".join(p["title"].lower() for p in PANELS)
    for wanted in (
        "canary weight",
        "analysis",
        "trainingruns by phase",
        "training duration",
        "drift score per feature",
        "retrains",
    ):
        assert wanted in titles, f"no panel about {wanted!r}: {titles}"


def test_layout_is_sound() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert DASHBOARD["uid"] and DASHBOARD["title"]
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["description"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


def test_variables_feed_the_queries() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    exprs = " ".join(expr for _, expr, _ in queries())
    assert "$namespace" in exprs and "$policy" in exprs


def test_every_panel_follows_the_namespace_variable() -> None:
    # Serving series carry the namespace their pod runs in (from the scrape target); operator
    # series name the object's namespace themselves. Only cluster-level operator panels
    # (training, reconciles) and the variables' own queries are exempt.
    exempt = {
        "TrainingRuns by phase",
        "Training duration",
        "TrainingRuns finished",
        "Reconciles",
        "Reconcile duration p95",
    }
    for panel in PANELS:
        if panel["title"] in exempt:
            continue
        for target in panel["targets"]:
            expr = target["expr"]
            for name in metric_names(expr):
                selectors = re.findall(re.escape(name) + r"\{([^}]*)\}", expr)
                assert selectors and all('namespace=~"$namespace"' in s for s in selectors), (
                    f"panel {panel['title']!r}: {name} is not filtered by $namespace in {expr}"
                )


def test_promql_words_are_not_mistaken_for_labels() -> None:
    # Guard of the parser above: grouping clauses name labels, never functions.
    for _, expr, _ in queries():
        for clause in re.findall(r"by \(([^)]*)\)", expr):
            assert not {c.strip() for c in clause.split(",")} & (PROMQL_WORDS - {"le"})


def test_every_target_is_a_complete_query() -> None:
    for panel in PANELS:
        for target in panel["targets"]:
            assert set(target) >= {"expr", "refId", "datasource"}
            assert target["expr"].count("(") == target["expr"].count(")")


def _json_roundtrip(document: Any) -> Any:
    return json.loads(json.dumps(document))


def test_dashboard_file_is_canonical_json() -> None:
    text = (CHART / "dashboards" / "kubeloop.json").read_text()
    assert text == json.dumps(_json_roundtrip(DASHBOARD), indent=2) + "\n"


# -- Grafana's own schema -------------------------------------------------------------------------
# A real Grafana cannot run here (AGPL, not installed), so the dashboard is held to the schema
# Grafana publishes: @grafana/schema's dashboard types converted to JSON Schema, vendored with
# their origin and licence in tests/unit/grafana/ (README.md there says how it was made).

GRAFANA_SCHEMA = json.loads(
    (Path(__file__).parent / "grafana" / "dashboard.schema.json").read_text()
)


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors that say what is wrong: for ``anyOf`` (a panel or a row), the errors of the
    alternative that came closest."""
    if not error.context:
        return [error]
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    closest = min(branches.values(), key=len)
    return [leaf for sub in closest for leaf in _leaves(sub)]


def _schema_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(GRAFANA_SCHEMA)
    return sorted(
        f"{'/'.join(map(str, leaf.absolute_path)) or '(top)'}: {leaf.message}"
        for error in validator.iter_errors(document)
        for leaf in _leaves(error)
    )


def test_the_vendored_schema_is_grafanas_dashboard_schema() -> None:
    jsonschema.Draft7Validator.check_schema(GRAFANA_SCHEMA)
    assert GRAFANA_SCHEMA["$ref"] == "#/definitions/Dashboard"
    assert {"Panel", "RowPanel", "VariableModel", "GridPos", "FieldConfigSource"} <= set(
        GRAFANA_SCHEMA["definitions"]
    )


def test_the_dashboard_is_valid_against_grafanas_schema() -> None:
    assert _schema_errors(DASHBOARD) == []


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda d: d.pop("schemaVersion"), "'schemaVersion' is a required property"),
        (lambda d: d["panels"][1]["gridPos"].update(w="12"), "'12' is not of type 'number'"),
        (lambda d: d["panels"][1].update(fieldConfig={"defaults": {}, "overides": []}),
         "Additional properties are not allowed ('overides' was unexpected)"),
        (lambda d: d["templating"]["list"][1].update(type="dropdown"), "'dropdown' is not one of"),
        (lambda d: d["templating"]["list"][1].update(current={}), "'text' is a required property"),
        (lambda d: d.update(graphTooltip=3), "3 is not one of"),
    ],
    ids=["no-schemaVersion", "gridPos-string", "fieldConfig-typo", "variable-type",
         "empty-current", "graphTooltip"],
)  # fmt: skip
def test_the_schema_catches_broken_dashboards(break_it: Any, expected: str) -> None:
    """The check above would fail on real mistakes: each edit breaks one rule of Grafana's."""
    broken = copy.deepcopy(DASHBOARD)
    break_it(broken)
    errors = _schema_errors(broken)
    assert any(expected in e for e in errors), errors


# -- every query against a real Prometheus ----------------------------------------------------------

RATE_INTERVAL = "1m"
"""What Grafana puts for $__rate_interval with a 1s scrape interval is smaller; a minute spans
every sample of the test, so rates and increases see them all."""


def grafana_substituted(expr: str) -> str:
    """The query as Grafana sends it with the variables on "All" (their allValue ``.*``)."""
    values = {"$namespace": ".*", "$policy": ".*", "$__rate_interval": RATE_INTERVAL}
    for variable, value in values.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable this test does not know: {expr}"
    return expr


class _Traffic:
    """The operator's own metric objects and two model servers' (stable and canary) moving as
    in a live rollout: requests with some errors and latencies, shadow rows, predictions, drift
    scores, retrains, reconciles and finished TrainingRuns."""

    NAMESPACE = "dashboard-check"

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.servers = {
            track: ServeMetrics(MetricLabels("churn", "0123456789ab", track))
            for track in ("stable", "canary")
        }
        ns = self.NAMESPACE
        operator_metrics.CANARY_WEIGHT.labels(ns, "churn").set(25)
        operator_metrics.RESOURCES_BY_PHASE.labels("TrainingRun", "Succeeded").set(3)
        operator_metrics.DRIFT_SCORE.labels(ns, "churn-daily", "age", "psi").set(0.31)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def tick(self, step: int) -> None:
        ns = self.NAMESPACE
        for track, server in self.servers.items():
            server.observe_request("/predict", 200, 0.004 * (1 + step % 5))
            if step % 4 == 0:
                server.observe_request("/predict", 500, 0.02)
            server.predictions.inc(8)
            base = server.labels.values()
            if track == "stable":  # the stable server mirrors, so it counts the rows
                server.shadow_rows.labels(*base, "agree").inc(9)
                server.shadow_rows.labels(*base, "disagree").inc(1)
                server.shadow_rows.labels(*base, "error").inc(step % 2)
        operator_metrics.RETRAINS.labels(ns, "churn-daily", "drift").inc()
        operator_metrics.RECONCILES.labels("DriftPolicy", "ok").inc()
        operator_metrics.RECONCILE_SECONDS.labels("DriftPolicy").observe(0.01 * (1 + step % 3))
        operator_metrics.TRAINING_SECONDS.labels("Succeeded").observe(30 + step)

    def forget(self) -> None:
        """Take this test's series out of the operator's registry again."""
        ns = self.NAMESPACE
        operator_metrics.CANARY_WEIGHT.remove(ns, "churn")
        operator_metrics.DRIFT_SCORE.remove(ns, "churn-daily", "age", "psi")
        operator_metrics.RETRAINS.remove(ns, "churn-daily", "drift")

    def _run(self) -> None:
        step = 0
        while not self.stop.wait(0.1):
            self.tick(step)
            step += 1


def _prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _label_values(url: str, query: str) -> list[str]:
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()  # type: ignore[union-attr]
    answer = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10)
    values: list[str] = answer.json()["data"]
    return values


@pytest.mark.slow
def test_every_query_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    """Given the operator's and two model servers' real metric objects, exported the way they
    export them and scraped by a real Prometheus, every panel's query (variables on "All") and
    every template variable returns data: finite numbers, not an empty panel."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    traffic = _Traffic()
    # Served as the operator serves them (kubeloop.controllers.main): its own registry.
    exporters = [
        prometheus_client.start_http_server(0, "127.0.0.1", registry=operator_metrics.REGISTRY)
    ]
    exporters += [
        prometheus_client.start_http_server(0, "127.0.0.1", registry=server.registry)
        for server in traffic.servers.values()
    ]
    operator_port = exporters[0][0].server_port
    stable_port, canary_port = (e[0].server_port for e in exporters[1:])
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            # As the chart's ServiceMonitor: the operator names the object's namespace itself.
            {"job_name": "operator", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
            # As the chart's PodMonitor: the server's series get the pod's namespace and name.
            {"job_name": "model-servers", "static_configs": [
                {"targets": [f"127.0.0.1:{stable_port}"],
                 "labels": {"namespace": _Traffic.NAMESPACE, "pod": "churn-stable-0"}},
                {"targets": [f"127.0.0.1:{canary_port}"],
                 "labels": {"namespace": _Traffic.NAMESPACE, "pod": "churn-canary-0"}},
            ]},
        ],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        web = f"127.0.0.1:{sock.getsockname()[1]}"
    url = f"http://{web}"
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={web}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    traffic.thread.start()
    panel_queries = [
        (f"{p['title']} [{t['refId']}]", grafana_substituted(t["expr"]))
        for p in PANELS
        for t in p["targets"]
    ]
    variables = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    try:
        missing: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                httpx.get(f"{url}/-/ready", timeout=1).raise_for_status()
            except httpx.HTTPError:
                assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                continue
            missing = [
                title
                for title, expr in panel_queries
                if not any(
                    math.isfinite(float(s["value"][1])) for s in _prometheus_query(url, expr)
                )
            ]
            missing += [
                f"${v['name']}" for v in variables if not _label_values(url, v["query"]["query"])
            ]
            if not missing:
                break
        targets = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        assert missing == [], (
            f"panels without data from a Prometheus holding the series: {missing}; {health}"
        )
        # The variables offer what the panels are then filtered by.
        namespaces = _label_values(url, variables[0]["query"]["query"])
        assert _Traffic.NAMESPACE in namespaces
    finally:
        traffic.stop.set()
        process.terminate()
        process.wait(timeout=20)
        log.close()
        for server, _thread in exporters:
            server.shutdown()
        traffic.forget()
