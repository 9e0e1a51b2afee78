"""The chart's monitoring objects are valid and say what the code does.

* The PodMonitor, ServiceMonitor and PrometheusRule pass kubeconform (strict) against JSON
  schemas converted from prometheus-operator's own CRDs (vendored, version in
  ``crds/prometheus-operator/VERSION``; ``hack/chart/prometheus-operator-crds`` refreshes them).
* The PodMonitor selects the pods ``kubeloop.resources.serving`` builds, on the port name the
  server container declares, and keeps the server's ``endpoint`` label.
* Every alert parses with the real ``promtool``, names only series the code exports and only
  Event reasons the code writes; ``promtool test rules`` shows the event alerts fire on a
  first abort (a counter series born at 1) and stay quiet otherwise.
* The plain Prometheus scrape_config in docs/metrics.md passes ``promtool check config``.
* values.schema.json refuses the storage roots the trainer and operator refuse, and accepts
  the ones they accept, on one table.
* The ``helm test`` hook (the chart's only test hook) runs the operator image under its own
  list-only, namespaced RBAC.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError
from test_chart_dashboard import exported_series
from test_chart_support import CHART, REPO, helm, one, render, template_args, tool

from kubeloop.analysis.base import AnalysisTarget
from kubeloop.analysis.builtin import INFERENCE_ENDPOINTS, promql
from kubeloop.api.common import OutputUri
from kubeloop.api.conditions import Reason
from kubeloop.resources.serving import (
    SERVER_CONTAINER,
    ModelRef,
    ServingSettings,
    build_track_deployment,
)
from kubeloop.resources.storage import PodStorage
from kubeloop.training.data import DataError, resolve_uri
from kubeloop.trust.urls import operator_read_problem

PROMETHEUS_OPERATOR_CRDS = Path(__file__).parent / "crds" / "prometheus-operator"
MONITORING_ON = {
    "metrics": {"serviceMonitor": {"enabled": True}},
    "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


# -- kubeconform with prometheus-operator's CRD schemas ------------------------------------------


def json_schema(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as the strict JSON Schema (draft-07) kubeconform reads."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: json_schema(child) for name, child in value.items()}
        elif key.startswith("x-kubernetes-") or key in ("nullable", "default", "example"):
            continue
        else:
            out[key] = json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["oneOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    # Strict: a misspelled field is an error (the API server would prune it silently).
    if "properties" in out and "additionalProperties" not in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def schema_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("schemas")
    kinds = set()
    for path in sorted(PROMETHEUS_OPERATOR_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = json_schema(version["schema"]["openAPIV3Schema"])
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            kind = crd["spec"]["names"]["kind"]
            target = directory / crd["spec"]["group"] / f"{kind.lower()}_{version['name']}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(schema))
            kinds.add(kind)
    assert kinds == {"PodMonitor", "ServiceMonitor", "PrometheusRule"}
    return directory


def kubeconform(schema_dir: Path, manifest: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [tool("kubeconform"), "-strict", "-summary", "-output", "json",
         "-schema-location", str(schema_dir) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
         str(manifest)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(proc.stdout)
    report["returncode"] = proc.returncode
    return report


def monitoring_manifest(tmp_path: Path, values: dict[str, Any]) -> tuple[Path, list[dict[str, Any]]]:
    docs = [d for d in render(tmp_path, values) if d["apiVersion"].startswith("monitoring.coreos.com/")]
    manifest = tmp_path / "monitoring.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    return manifest, docs


def test_vendored_crds_name_their_version() -> None:
    module, version, digest = (PROMETHEUS_OPERATOR_CRDS / "VERSION").read_text().split()
    assert module == "github.com/prometheus-operator/prometheus-operator"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", version) and digest.startswith("h1:")
    for path in PROMETHEUS_OPERATOR_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == version.removeprefix("v")


@pytest.mark.parametrize(
    "values",
    [MONITORING_ON, {**MONITORING_ON, "watchNamespaces": ["ml-a", "ml-b"]},
     {**MONITORING_ON, "monitoring": {**MONITORING_ON["monitoring"],
                                      "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
                                      "prometheusRule": {"enabled": True, "alertLabels": {"team": "ml"}}}}],
    ids=["cluster-wide", "namespaced", "labels"],
)  # fmt: skip
def test_monitoring_objects_are_valid_against_prometheus_operator_crds(
    tmp_path: Path, schema_dir: Path, values: dict[str, Any]
) -> None:
    manifest, docs = monitoring_manifest(tmp_path, values)
    assert sorted(d["kind"] for d in docs) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    report = kubeconform(schema_dir, manifest)
    assert report["returncode"] == 0, json.dumps(report["resources"], indent=1)
    assert report["summary"] == {"valid": 3, "invalid": 0, "errors": 0, "skipped": 0}, report["summary"]


def test_the_crd_schemas_catch_a_broken_monitor(tmp_path: Path, schema_dir: Path) -> None:
    _, docs = monitoring_manifest(tmp_path, MONITORING_ON)
    pod_monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "dropLabel"
    pod_monitor["spec"]["podMetricEndpoints"] = []
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(pod_monitor))
    report = kubeconform(schema_dir, broken)
    assert report["summary"]["invalid"] == 1, report
    message = json.dumps(report["resources"])
    assert "podMetricEndpoints" in message and "/spec/podMetricsEndpoints/0/relabelings/0/action" in message


def test_monitoring_is_off_by_default(tmp_path: Path) -> None:
    docs = render(tmp_path)
    assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]


# -- the PodMonitor scrapes the servers the operator builds --------------------------------------

MD = {
    "apiVersion": "kubeloop.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "churn", "namespace": "ml-a", "uid": "0f0e0d0c-0000-4000-8000-000000000001"},
    "spec": {"model": {"trainingRunRef": {"name": "churn-1"}}, "replicas": 2},
}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        present = expression["key"] in labels
        if expression["operator"] == "Exists" and not present:
            return False
        if expression["operator"] == "In" and labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def relabel_address(relabelings: list[dict[str, Any]], meta: dict[str, str]) -> str | None:
    """The scrape address after the PodMonitor's own ``__address__`` relabeling (Prometheus'
    ``replace``: source values joined by ';', the regex anchored, $n expanded)."""
    for rule in relabelings:
        if rule.get("targetLabel") == "__address__":
            value = ";".join(meta.get(label, "") for label in rule["sourceLabels"])
            match = re.fullmatch(rule["regex"], value)
            if match is None:
                return None
            return match.expand(re.sub(r"\$(\d)", r"\\\1", rule["replacement"]))
    return None


@pytest.mark.parametrize("track", ["stable", "canary"])
@pytest.mark.parametrize("server", [{}, {"port": 9000}, {"metricsPort": 9090}], ids=["default", "port", "metricsPort"])
def test_pod_monitor_scrapes_the_model_server_pods_on_their_metrics_port(
    tmp_path: Path, track: str, server: dict[str, int]
) -> None:
    monitor = one(render(tmp_path, MONITORING_ON), "PodMonitor")
    md = {**MD, "spec": {**MD["spec"], "server": server}}
    model = ModelRef("file:///var/lib/kubeloop/models/churn/churn-1/model.skops", "a" * 64, "churn-1")
    deployment = build_track_deployment(md, track, model, 2, ServingSettings(image="kubeloop:0.1.0"))  # type: ignore[arg-type]
    template = deployment["spec"]["template"]
    assert selects(monitor["spec"]["selector"], template["metadata"]["labels"])
    container = next(c for c in template["spec"]["containers"] if c["name"] == SERVER_CONTAINER)
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in declared, f"the PodMonitor finds port {endpoint['port']!r}, the server declares {sorted(declared)}"
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    # The port that serves /metrics: `metrics` when declared (spec.server.metricsPort; then
    # /metrics is not on `http`), else `http`; the PodMonitor scrapes that one.
    serving_metrics = declared.get("metrics", declared["http"])
    meta = {"__meta_kubernetes_pod_ip": "10.1.2.3",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": template["metadata"]["annotations"]["prometheus.io/port"]}  # fmt: skip
    assert relabel_address(endpoint["relabelings"], meta) == f"10.1.2.3:{serving_metrics}"
    assert ("--metrics-port" in container["args"]) == ("metricsPort" in server)


def test_pod_monitor_selects_no_other_kubeloop_pod(tmp_path: Path) -> None:
    monitor = one(render(tmp_path, MONITORING_ON), "PodMonitor")
    operator_pod = one(render(tmp_path), "Deployment")["spec"]["template"]["metadata"]["labels"]
    training_pod = {"app.kubernetes.io/managed-by": "kubeloop", "app.kubernetes.io/component": "training",
                    "kubeloop.io/trainingrun": "churn-1"}  # fmt: skip
    assert not selects(monitor["spec"]["selector"], operator_pod)
    assert not selects(monitor["spec"]["selector"], training_pod)


def test_pod_monitor_keeps_the_servers_endpoint_label_and_follows_watch_namespaces(tmp_path: Path) -> None:
    monitor = one(render(tmp_path, MONITORING_ON), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    # prometheus-operator appends these after its own relabelings, which set `endpoint` to the
    # port name; dropping it there leaves the server's `endpoint` (predict, infer) unrenamed.
    assert {"action": "labeldrop", "regex": "endpoint"} in endpoint["relabelings"]
    assert not endpoint.get("honorLabels"), "the target's namespace and pod must win over the server's"
    monitor = one(render(tmp_path, {**MONITORING_ON, "watchNamespaces": ["ml-a", "ml-b"]}), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml-a", "ml-b"]}


def test_service_monitor_keeps_the_operators_namespace_label(tmp_path: Path) -> None:
    # kubeloop_canary_weight{namespace="ml-a"} names the ModelDeployment's namespace; without
    # honorLabels Prometheus would rename it exported_namespace and write the operator's.
    monitor = one(render(tmp_path, MONITORING_ON), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert "namespace" in exported_series()["kubeloop_canary_weight"]


# -- the PrometheusRule -----------------------------------------------------------------------------

ISSUE_ALERTS = {"KubeloopRolloutAborted", "KubeloopDriftDetected", "KubeloopModelServerErrorRate", "KubeloopRetrainRefused"}


def rule_spec(tmp_path: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = one(render(tmp_path, values or MONITORING_ON), "PrometheusRule")["spec"]
    return rule


def alerts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in spec["groups"] for r in group["rules"]}


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_spec(tmp_path)))
    proc = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts(rule_spec(tmp_path)))} rules found" in proc.stdout


def test_the_alerts_the_issue_asks_for_are_there(tmp_path: Path) -> None:
    found = alerts(rule_spec(tmp_path))
    assert set(found) >= ISSUE_ALERTS
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_alerts_query_only_exported_series_and_real_reasons(tmp_path: Path) -> None:
    series = exported_series()
    reasons = {v for k, v in vars(Reason).items() if k.isupper() and isinstance(v, str)}
    for name, rule in alerts(rule_spec(tmp_path)).items():
        expr = rule["expr"]
        used = set(re.findall(r"\bkubeloop_\w+", expr))
        assert used and used <= set(series), f"{name}: {used - set(series)} is exported by no code"
        for match in re.findall(r'reason=~?"([^"]+)"', expr):
            assert set(match.split("|")) <= reasons, f"{name}: {match} names a reason no code writes"
        for match in re.findall(r'kind="([^"]+)"', expr):
            assert match in {"TrainingRun", "ModelDeployment", "DriftPolicy"}, name
        for match in re.findall(r'endpoint=~"([^"]+)"', expr):
            assert set(match.split("|")) == set(INFERENCE_ENDPOINTS), name
        for label in re.findall(r"by \(([^)]*)\)", expr):
            for one_label in (x.strip() for x in label.split(",")):
                on_some = any(one_label in series[n] | {"namespace"} for n in used)
                assert on_some, f"{name}: groups by {one_label!r}, which {used} do not carry"


def test_alert_values_reach_the_rules(tmp_path: Path) -> None:
    values = {**MONITORING_ON, "monitoring": {"prometheusRule": {
        "enabled": True, "eventWindow": "2h", "errorRateThreshold": 0.2, "errorRateFor": "3m", "alertLabels": {"team": "ml"},
    }}}  # fmt: skip
    found = alerts(rule_spec(tmp_path, values))
    assert "[2h]" in found["KubeloopRolloutAborted"]["expr"] and "offset 2h" in found["KubeloopDriftDetected"]["expr"]
    assert found["KubeloopModelServerErrorRate"]["expr"].endswith("> 0.2")
    assert found["KubeloopModelServerErrorRate"]["for"] == "3m"
    assert all(rule["labels"]["team"] == "ml" for rule in found.values())


def test_event_alerts_fire_on_a_first_event_and_resolve(tmp_path: Path) -> None:
    """promtool's rule unit tests: a series of kubeloop_events_total that appears at 1 (the
    first abort of a ModelDeployment) fires; an older series that does not move stays quiet;
    the alert resolves after the window. A performance policy turning Drifted
    (PerformanceDegraded) fires the drift alert too, with its own words."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_spec(tmp_path)))
    aborted = 'kubeloop_events_total{namespace="ml-a",kind="ModelDeployment",name="churn",type="Warning",reason="AnalysisFailed"}'
    old_abort = 'kubeloop_events_total{namespace="ml-b",kind="ModelDeployment",name="old",type="Warning",reason="Aborted"}'
    drift = 'kubeloop_events_total{namespace="ml-a",kind="DriftPolicy",name="churn",type="Warning",reason="DriftDetected"}'
    cooldown = 'kubeloop_events_total{namespace="ml-a",kind="DriftPolicy",name="churn",type="Normal",reason="CooldownActive"}'
    limit = 'kubeloop_events_total{namespace="ml-a",kind="DriftPolicy",name="churn",type="Normal",reason="RetrainLimitReached"}'
    degraded = 'kubeloop_events_total{namespace="ml-b",kind="DriftPolicy",name="labels",type="Warning",reason="PerformanceDegraded"}'
    held = 'kubeloop_events_total{namespace="ml-b",kind="DriftPolicy",name="labels",type="Normal",reason="PerformanceHeld"}'
    degraded_alert = {"exp_labels": {"severity": "info", "namespace": "ml-b", "name": "labels", "reason": "PerformanceDegraded"},
                      "exp_annotations": {
                          "summary": "DriftPolicy ml-b/labels detected a performance drop",
                          "description": "The model's live performance on labelled traffic fell below its limit. Live against reference: kubectl kubeloop status dp/labels -n ml-b; with a retrain template the policy retrains on its own."}}
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": aborted, "values": "_x60 1x120"},  # born at minute 60 with value 1
                {"series": old_abort, "values": "1x180"},  # aborted long ago, nothing since
                {"series": drift, "values": "_x10 1x50 2x120"},  # drifted at 10, again at 60
                {"series": cooldown, "values": "1+1x180"},
                {"series": limit, "values": "0x100 1x80"},  # exists, moves at 100
                {"series": degraded, "values": "_x70 1x110"},  # performance fell at 70
                {"series": held, "values": "_x5 1+1x175"},  # recoveries: no alert
            ],
            "alert_rule_test": [
                {"eval_time": "59m", "alertname": "KubeloopRolloutAborted", "exp_alerts": []},
                {"eval_time": "70m", "alertname": "KubeloopRolloutAborted", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "namespace": "ml-a", "name": "churn", "reason": "AnalysisFailed"},
                     "exp_annotations": {"summary": "Rollout of ModelDeployment ml-a/churn aborted (AnalysisFailed)",
                        "description": "The canary was rolled back and all traffic is on stable. See the failing metric with: kubectl kubeloop status md/churn -n ml-a; retry with kubectl kubeloop retry md/churn once fixed."}},
                ]},
                {"eval_time": "100m", "alertname": "KubeloopRolloutAborted", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "KubeloopDriftDetected", "exp_alerts": [
                    {"exp_labels": {"severity": "info", "namespace": "ml-a", "name": "churn", "reason": "DriftDetected"},
                     "exp_annotations": {
                        "summary": "DriftPolicy ml-a/churn detected drift",
                        "description": "The served data moved away from the training data. Scores per feature: kubectl kubeloop status dp/churn -n ml-a; with a retrain template the policy retrains on its own."}},
                ]},
                {"eval_time": "45m", "alertname": "KubeloopDriftDetected", "exp_alerts": []},
                {"eval_time": "65m", "alertname": "KubeloopDriftDetected", "exp_alerts": [
                    {"exp_labels": {"severity": "info", "namespace": "ml-a", "name": "churn", "reason": "DriftDetected"},
                     "exp_annotations": {
                        "summary": "DriftPolicy ml-a/churn detected drift",
                        "description": "The served data moved away from the training data. Scores per feature: kubectl kubeloop status dp/churn -n ml-a; with a retrain template the policy retrains on its own."}},
                ]},
                {"eval_time": "75m", "alertname": "KubeloopDriftDetected", "exp_alerts": [
                    {"exp_labels": {"severity": "info", "namespace": "ml-a", "name": "churn", "reason": "DriftDetected"},
                     "exp_annotations": {
                        "summary": "DriftPolicy ml-a/churn detected drift",
                        "description": "The served data moved away from the training data. Scores per feature: kubectl kubeloop status dp/churn -n ml-a; with a retrain template the policy retrains on its own."}},
                    degraded_alert,
                ]},
                {"eval_time": "150m", "alertname": "KubeloopDriftDetected", "exp_alerts": []},
                {"eval_time": "90m", "alertname": "KubeloopRetrainRefused", "exp_alerts": []},
                {"eval_time": "110m", "alertname": "KubeloopRetrainRefused", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "namespace": "ml-a", "name": "churn", "reason": "RetrainLimitReached"},
                     "exp_annotations": {
                        "summary": "DriftPolicy ml-a/churn could not retrain (RetrainLimitReached)",
                        "description": "The model keeps serving while it drifts. kubectl describe dp/churn -n ml-a shows the Event with the limit or the refused image."}},
                ]},
            ],
        }],
    }  # fmt: skip
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    proc = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_error_rate_alert_fires_on_5xx_of_inference_only(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_spec(tmp_path)))
    base = 'kubeloop_serve_requests_total{namespace="ml-a",pod="churn-canary-0",model="churn",sha="0123456789ab",track="canary"'
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": base + ',endpoint="predict",code="200"}', "values": "0+90x40"},
                {"series": base + ',endpoint="predict",code="500"}', "values": "0+10x40"},  # 10 %
                {"series": base + ',endpoint="health",code="503"}', "values": "0+1000x40"},  # not inference
                {"series": base.replace("canary", "stable") + ',endpoint="infer",code="400"}', "values": "0+1000x40"},  # 4xx
            ],
            "alert_rule_test": [
                {"eval_time": "8m", "alertname": "KubeloopModelServerErrorRate", "exp_alerts": []},  # pending (for: 10m)
                {"eval_time": "20m", "alertname": "KubeloopModelServerErrorRate", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "namespace": "ml-a", "model": "churn", "track": "canary"},
                     "exp_annotations": {
                        "summary": "Model ml-a/churn (canary) answers 10% of inference requests with 5xx",
                        "description": "More than 5 % of the requests to /predict and /v2/models/*/infer failed with a server error for 10m. Look at the server logs: kubectl logs -n ml-a -l kubeloop.io/modeldeployment=churn,kubeloop.io/track=canary"}},
                ]},
            ],
        }],
    }  # fmt: skip
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    proc = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the plain Prometheus scrape_config (no prometheus-operator) ----------------------------------


def documented_scrape_config() -> dict[str, Any]:
    text = (REPO / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"```yaml\n(scrape_configs:.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1, "docs/metrics.md needs one ```yaml block starting with scrape_configs:"
    config: dict[str, Any] = yaml.safe_load(blocks[0])
    return config


def prometheus_with_kubernetes_sd() -> str:
    """Prometheus v3 built from its Go module by hack/realnode/helmloop.py (Debian's 2.42 and
    its promtool are built without Kubernetes service discovery)."""
    sys.path.insert(0, str(REPO / "hack" / "realnode"))
    import helmloop

    binary = helmloop.CACHE / "bin" / f"prometheus-{helmloop.PROMETHEUS_VERSION}" / "prometheus"
    if not binary.exists():
        pytest.skip(f"{binary} is not built: hack/realnode/helmloop.py builds it (`make demo`)")
    return str(binary)


def test_documented_scrape_config_loads_in_prometheus(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(documented_scrape_config()))
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [prometheus_with_kubernetes_sd(), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             "--web.listen-address=127.0.0.1:0"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.poll() is None:
            if "Completed loading of configuration file" in log.read_text():
                break
            time.sleep(0.2)
        text = log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Completed loading of configuration file" in text, text
    assert "Error loading config" not in text, text
    # Both jobs got a Kubernetes discoverer (it cannot reach a cluster here, which is fine).
    for job in ("kubeloop-model-servers", "kubeloop-operator"):
        assert f"config={job}" in text, text


def test_documented_scrape_config_selects_what_the_pod_monitor_selects(tmp_path: Path) -> None:
    jobs = {job["job_name"]: job for job in documented_scrape_config()["scrape_configs"]}
    servers, operator = jobs["kubeloop-model-servers"], jobs["kubeloop-operator"]
    assert servers["kubernetes_sd_configs"] == [{"role": "pod"}]
    monitor = one(render(tmp_path, MONITORING_ON), "PodMonitor")
    keeps = {tuple(r["source_labels"]): r["regex"] for r in servers["relabel_configs"] if r.get("action") == "keep"}
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        sanitized = re.sub(r"[^a-zA-Z0-9_]", "_", key)
        assert keeps[(f"__meta_kubernetes_pod_label_{sanitized}",)] == value
    assert keeps[("__meta_kubernetes_pod_labelpresent_kubeloop_io_modeldeployment",)] == "true"
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] == monitor["spec"]["podMetricsEndpoints"][0]["port"]
    address = next(r for r in servers["relabel_configs"] if r.get("target_label") == "__address__")
    pod_monitor_address = next(r for r in monitor["spec"]["podMetricsEndpoints"][0]["relabelings"] if r.get("targetLabel") == "__address__")
    assert (address["source_labels"], address["regex"], address["replacement"]) == (
        pod_monitor_address["sourceLabels"], pod_monitor_address["regex"], pod_monitor_address["replacement"])
    targets = {r.get("target_label") for r in servers["relabel_configs"]}
    assert {"namespace", "pod", "__address__"} <= targets and "endpoint" not in targets
    # The operator's own namespace label wins, as with the ServiceMonitor's honorLabels.
    assert operator["honor_labels"] is True


def test_documented_names_are_those_of_the_readme_release(tmp_path: Path) -> None:
    """The operator job keeps the metrics Service, and the docs name the dashboard ConfigMap,
    as `helm install kubeloop charts/kubeloop -n kubeloop` (the README's command) creates them:
    the chart does not add `-kubeloop` to a release name that already contains it."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"helm install (\S+) charts/kubeloop -n (\S+)", readme)
    assert match, "the README installs the chart with `helm install NAME charts/kubeloop -n NS`"
    release, namespace = match.groups()
    docs = yaml.safe_load_all(
        helm(*template_args(MONITORING_ON, release=release, namespace=namespace,
                            values_file=tmp_path / "values.json")).stdout
    )
    rendered = [doc for doc in docs if doc]
    services = {doc["metadata"]["name"] for doc in rendered if doc["kind"] == "Service"}
    operator = {job["job_name"]: job for job in documented_scrape_config()["scrape_configs"]}["kubeloop-operator"]
    keep = next(r for r in operator["relabel_configs"]
                if r.get("source_labels") == ["__meta_kubernetes_service_name"])
    assert [name for name in services if re.fullmatch(keep["regex"], name)] == [f"{release}-metrics"], services
    assert operator["kubernetes_sd_configs"][0]["namespaces"]["names"] == [namespace]
    dashboards = {doc["metadata"]["name"] for doc in rendered
                  if doc["kind"] == "ConfigMap" and doc["metadata"].get("labels", {}).get("grafana_dashboard")}
    text = (REPO / "docs" / "metrics.md").read_text()
    assert dashboards and all(f"`{name}`" in text for name in dashboards), dashboards


def test_documented_analysis_queries_count_what_the_built_in_checks_count() -> None:
    """The two "Useful queries" named after the built-in errorRate and latencyP99 checks select
    the series the checks select (inference endpoints only; 5xx only for errors), so a
    dashboard built from the docs shows the numbers that gate a rollout."""
    text = (REPO / "docs" / "metrics.md").read_text()
    block = re.search(r"## Useful queries\n\n```promql\n(.*?)```", text, flags=re.DOTALL)
    assert block, "docs/metrics.md has a ```promql block under ## Useful queries"
    queries = {
        name: re.search(rf"built-in {name} analysis.*?\n((?:[^#\n][^\n]*\n)+)", block[1], flags=re.DOTALL)
        for name in ("errorRate", "latencyP99")
    }
    target = AnalysisTarget(namespace="ns", name="m", window=timedelta(minutes=1))
    for name, found in queries.items():
        assert found, f"no query under a comment naming the built-in {name} analysis"
        query, builtin = found[1], promql(name, target)
        endpoints = f'endpoint=~"{"|".join(INFERENCE_ENDPOINTS)}"'
        # Every series the check reads, read with the check's own matchers.
        for series in re.findall(r"(kubeloop_serve_\w+)\{", builtin):
            assert series in query, (name, series, query)
        assert query.count(endpoints) == builtin.count(endpoints), (name, query)
        assert query.count('code=~"5.."') == builtin.count('code=~"5.."'), (name, query)


# -- values.schema.json: the storage roots the trainer and the operator accept --------------------

_OUTPUT_URI = TypeAdapter(OutputUri)
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def python_accepts_storage_root(uri: str) -> bool:
    """Whether the code accepts ``uri`` as the default storage root: the trainer writes under
    it (the API's OutputUri rule for spec.output.storageUri; resolve_uri for pvc://) and the
    operator reads the profiles written there back (operator_read_problem for file://, s3://
    and gs://; a pvc:// root is mounted as a local path, so the same path rules apply to it,
    and its claim must be a name Kubernetes accepts in the pod's volume)."""
    try:
        _OUTPUT_URI.validate_python(uri)
    except ValidationError:
        return False
    if uri.startswith("pvc://"):
        try:
            resolve_uri(uri)
        except DataError:
            return False
        storage = PodStorage()
        local = storage.resolve(uri, read_only=False)
        claim = storage.volumes[0]["persistentVolumeClaim"]["claimName"]
        return bool(_CLAIM.match(claim)) and operator_read_problem(f"file://{local}", "file:///") is None
    profile = uri.rstrip("/") + "/churn/churn-1/profile.json"
    return operator_read_problem(uri, uri) is None and operator_read_problem(profile, uri) is None


STORAGE_ROOTS = [
    # accepted by both
    "file:///var/lib/kubeloop/models",
    "file:///var/lib/kubeloop/models/",
    "file:///",
    "file:///data/.hidden/models",
    "file:///data/..models/x",
    "s3://models",
    "s3://models/",
    "s3://models/kubeloop/root",
    "s3://minio.local:9000/models",
    "gs://bucket-1/prefix",
    "pvc://kubeloop-models/models",
    "pvc://kubeloop-models/",
    "pvc://models.team-a/a/b/c",
    # refused by both
    "/var/lib/kubeloop/models",
    "models",
    "",
    "https://models.example.com/root",
    "http://models/root",
    "sklearn://iris",
    "s3a://bucket/models",
    "S3://bucket/models",
    "file://host/var/models",
    "file://",
    "file:///var/../etc",
    "file:///var/./models",
    "file:///var//models",
    "file:///var/models/..",
    "s3://",
    "s3:///models",
    "s3://user:secret@bucket/models",
    "s3://bucket/models?versionId=1",
    "gs://bucket/models#frag",
    "gs://bucket/a/../b",
    "s3://[bucket/models",
    "file:///var/lib/kube loop",
    "file:///var/lib/kube\tloop",
    "pvc://kubeloop-models",
    "pvc:///kubeloop-models/models",
    "pvc://Kubeloop_Models/models",
    "pvc://kubeloop-models/../../etc",
    "pvc://kubeloop-models//x",
    "gs://bucket/" + "x" * 2048,
]


def test_the_table_has_both_verdicts() -> None:
    verdicts = [python_accepts_storage_root(uri) for uri in STORAGE_ROOTS]
    assert verdicts.count(True) >= 10 and verdicts.count(False) >= 20


@pytest.mark.parametrize("uri", STORAGE_ROOTS)
def test_schema_and_code_agree_on_storage_roots(tmp_path: Path, uri: str) -> None:
    accepted = python_accepts_storage_root(uri)
    proc = helm(*template_args({"storage": {"storageUri": uri}}, values_file=tmp_path / "v.json"), check=False)
    if accepted:
        assert proc.returncode == 0, f"the code accepts {uri!r}, the chart refuses it:\n{proc.stderr}"
    else:
        assert proc.returncode != 0, f"the code refuses {uri!r}, the chart accepts it"
        assert "/storage/storageUri" in proc.stderr, proc.stderr


# -- helm test -------------------------------------------------------------------------------------


def hook_pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]


def test_helm_test_hook_runs_the_operator_image_under_its_own_minimal_rbac(tmp_path: Path) -> None:
    docs = render(tmp_path, {"image": {"repository": "registry.example/kubeloop", "tag": "1.2"}}, helm_tests=True)
    # The Pod is the only test hook: `helm test --logs` reads a log for every test hook by its
    # name (helm/helm#9098), and a kept Pod because it reads them after the hooks' cleanup.
    (pod,) = hook_pods(docs)
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    operator = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container = pod["spec"]["containers"][0]
    assert container["image"] == operator["image"] == "registry.example/kubeloop:1.2"
    assert container["command"] == ["python", "-c"]
    assert container["args"] == [(CHART / "files" / "helm-test.py").read_text()]
    # Its identity: release objects (removed by `helm uninstall`), namespaced, list-only.
    own = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "helm-test" and d is not pod]
    assert sorted(d["kind"] for d in own) == ["Role", "RoleBinding", "ServiceAccount"]
    account = one(own, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False and pod["spec"]["automountServiceAccountToken"] is True
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["name"] != one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert one(own, "Role")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
        {"apiGroups": ["kubeloop.io"], "resources": ["trainingruns", "modeldeployments", "driftpolicies"], "verbs": ["list"]},
    ]
    assert one(own, "RoleBinding")["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kubeloop"}]
    assert one(own, "RoleBinding")["roleRef"]["name"] == one(own, "Role")["metadata"]["name"]
    # The restricted Pod Security level, like the operator.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    service = one(docs, "Service")
    assert env["METRICS_URL"] == f"http://{service['metadata']['name']}.kubeloop.svc:8080/metrics"
    assert env["CHECK_API"] == "true" and env["HEALTH_PORT"] == "8081" and env["RELEASE_NAMESPACE"] == "kubeloop"
    selector = dict(pair.split("=") for pair in env["OPERATOR_SELECTOR"].split(","))
    assert selector == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    # The test Pod is neither an operator pod it would probe nor a backend of the Service.
    assert not selects({"matchLabels": selector}, pod["metadata"]["labels"])
    assert not selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])


def test_helm_test_script_compiles_and_checks_what_the_code_registers() -> None:
    script = (CHART / "files" / "helm-test.py").read_text()
    compile(script, "helm-test.py", "exec")
    family = re.search(r'METRICS_FAMILY = "# TYPE (\w+) (\w+)"', script)
    assert family is not None and family.group(1) in exported_series()
    kinds = re.search(r"KINDS = \(([^)]*)\)", script)
    assert kinds is not None
    from kubeloop.api import crdgen

    assert set(re.findall(r'"(\w+)"', kinds.group(1))) == {info.crd_name.split(".")[0] for info in crdgen.KIND_INFOS}


def test_helm_test_can_be_left_out(tmp_path: Path) -> None:
    docs = render(tmp_path, {"helmTest": {"enabled": False}}, helm_tests=True)
    assert not hook_pods(docs)
    assert not [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "helm-test"]


@pytest.mark.parametrize("values", [{"rbac": {"create": False}}, {"serviceAccount": {"create": False, "name": "mine"}}])
def test_helm_test_without_its_own_identity_checks_only_the_metrics_service(tmp_path: Path, values: dict[str, Any]) -> None:
    # Whoever installs may not create RBAC (or brings identities): the test brings none, and
    # its Pod mounts no token and asks the API server nothing.
    docs = render(tmp_path, values, helm_tests=True)
    assert [d["kind"] for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "helm-test"] == ["Pod"]
    (pod,) = hook_pods(docs)
    assert "serviceAccountName" not in pod["spec"] and pod["spec"]["automountServiceAccountToken"] is False
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["CHECK_API"] == "false" and env["METRICS_URL"].endswith("/metrics")


# -- docs --------------------------------------------------------------------------------------------


def test_every_new_value_is_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node: Any, path: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for key, child in node.items() for leaf in leaves(child, f"{path}.{key}" if path else key)]
        return [path]

    for leaf in leaves({"monitoring": values["monitoring"], "helmTest": values["helmTest"]}, ""):
        assert f"`{leaf}`" in readme, f"charts/kubeloop/README.md does not document {leaf}"


# -- the PodMonitor's relabelings on a real Prometheus scraping a real model server ---------------


def operator_generated_relabelings(port_name: str, job: str) -> list[dict[str, Any]]:
    """What prometheus-operator (pkg/prometheus/promcfg.go, generatePodMonitorConfig, v0.85)
    puts before a PodMonitor endpoint's own relabelings: keep the named port, then namespace,
    container and pod, the job, and the port name as `endpoint`."""
    return [
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port_name},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": job},
        {"target_label": "endpoint", "replacement": port_name},
    ]


def prometheus_relabeling(rule: dict[str, Any]) -> dict[str, Any]:
    """A PodMonitor relabeling (camelCase) as Prometheus writes it (snake_case)."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {names.get(key, key): value for key, value in rule.items()}


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert response["status"] == "success", response
    result: list[dict[str, Any]] = response["data"]["result"]
    return result


@pytest.mark.slow
def test_pod_monitor_relabelings_keep_namespace_and_the_servers_endpoint_on_real_prometheus(tmp_path: Path) -> None:
    """Given a real `kubeloop serve` answering inference requests and a real Prometheus that
    scrapes it through the relabelings prometheus-operator generates for the chart's PodMonitor
    (the pod's Kubernetes metadata given as the target's labels: the only stand-in here, for
    the service discovery), then the stored series carry `namespace` and `pod` and keep the
    server's `endpoint`, so the dashboard's serving panels and the canary analysis' PromQL find
    them. The same scrape without the chart's relabelings loses `endpoint` (renamed
    exported_endpoint): the PodMonitor's labeldrop is what keeps it."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    from serve_fixtures import free_port, serving, store_model, v2_request
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    from kubeloop.analysis.base import AnalysisTarget
    from kubeloop.analysis.builtin import promql

    monitor = one(render(tmp_path, MONITORING_ON), "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    data = load_breast_cancer()
    model = store_model(tmp_path / "churn" / "run-1", LogisticRegression(max_iter=5000), data.data, data.target,
                        [f"f{i}" for i in range(data.data.shape[1])], classification=True)  # fmt: skip
    with serving(model, tmp_path / "logs", "--model-name", "churn", "--track", "canary") as server:
        for _ in range(20):
            answer = httpx.post(f"{server.url}/v2/models/churn/infer", json=v2_request(data.data[:5]), timeout=10)
            assert answer.status_code == 200, answer.text
        port = server.url.rsplit(":", 1)[1]
        pod_metadata = {
            "__meta_kubernetes_namespace": "ml-a",
            "__meta_kubernetes_pod_name": "churn-canary-7d9f-abcde",
            "__meta_kubernetes_pod_container_name": "server",
            "__meta_kubernetes_pod_container_port_name": endpoint["port"],
            "__meta_kubernetes_pod_ip": "127.0.0.1",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": port,
        }
        job = "kubeloop/kl-kubeloop-model-servers"
        # The target is found on a port that serves nothing: only the address relabeling
        # (to the annotated port) makes the scrape reach the server.
        static = [{"targets": [f"127.0.0.1:{free_port()}"], "labels": pod_metadata}]
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "metrics_path": endpoint["path"], "static_configs": static,
                 "relabel_configs": operator_generated_relabelings(endpoint["port"], job)
                 + [prometheus_relabeling(r) for r in endpoint["relabelings"]]},
                {"job_name": "without-chart-relabelings", "metrics_path": "/metrics",
                 "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": pod_metadata}],
                 "relabel_configs": operator_generated_relabelings(endpoint["port"], "without-chart-relabelings")},
            ],
        }  # fmt: skip
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        web = f"127.0.0.1:{free_port()}"
        log = (tmp_path / "prometheus.log").open("w")
        process = subprocess.Popen(
            [prometheus, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={web}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://{web}"
        try:
            deadline = time.monotonic() + 60
            found: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                time.sleep(1)
                # Traffic while Prometheus scrapes: increase() over the window sees it.
                httpx.post(f"{server.url}/v2/models/churn/infer", json=v2_request(data.data[:5]), timeout=10)
                with contextlib.suppress(httpx.HTTPError):
                    found = query(url, f'kubeloop_serve_requests_total{{job="{job}"}}')
                    if found and len(query(url, f'kubeloop_serve_requests_total{{job="{job}"}}[30s]')[0]["values"]) >= 8:
                        break
            assert found, (tmp_path / "prometheus.log").read_text()[-3000:]
            inference = [s["metric"] for s in found if s["metric"].get("endpoint") == "infer"]
            assert inference, found
            labels = inference[0]
            assert (labels["namespace"], labels["pod"], labels["container"]) == ("ml-a", "churn-canary-7d9f-abcde", "server")
            assert (labels["model"], labels["track"]) == ("churn", "canary") and "exported_endpoint" not in labels
            # The canary analysis' PromQL (rollout.prometheusUrl) and the dashboard find them.
            target = AnalysisTarget(namespace="ml-a", name="churn", window=timedelta(seconds=30))
            assert query(url, promql("errorRate", target))[0]["value"][1] == "0"
            served = query(url, 'sum by (namespace, model, track) (rate(kubeloop_serve_predictions_total{namespace=~"ml-a"}[30s]))')
            assert served and served[0]["metric"] == {"namespace": "ml-a", "model": "churn", "track": "canary"}
            # Without the chart's relabelings, the server's endpoint label is renamed.
            plain = query(url, 'kubeloop_serve_requests_total{job="without-chart-relabelings"}')
            assert plain and all(s["metric"]["endpoint"] == "http" and "exported_endpoint" in s["metric"] for s in plain)
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
