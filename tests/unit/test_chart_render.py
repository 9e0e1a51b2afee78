"""The Helm chart renders what a cluster admin expects: lint-clean, restricted pods, the
operator configured through the same settings it reads, CRDs in sync, peering with replicas,
and bad values refused by values.schema.json with the value named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart_support import CHART, by_kind, helm, one, render, render_text, template_args

from kubeloop.api import crdgen
from kubeloop.config import OperatorConfig
from kubeloop.resources.trainingjob import RUNTIME_UID


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# -- lint -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"replicaCount": 3, "watchNamespaces": ["a", "b"]},
        {"metrics": {"serviceMonitor": {"enabled": True}}, "storage": {"modelsPvc": {"name": "models", "create": True}}},
    ],
    ids=["defaults", "namespaced-ha", "monitoring-pvc"],
)
def test_helm_lint_is_clean(tmp_path: Path, values: dict[str, Any]) -> None:
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    proc = helm("lint", str(CHART), "--strict", "--values", str(values_file))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# -- the operator Deployment --------------------------------------------------------------------


def test_operator_pod_meets_the_restricted_pod_security_level(tmp_path: Path) -> None:
    docs = render(tmp_path)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The image's user (Dockerfile) and the runtime pods' user are the same uid.
    assert pod["securityContext"]["runAsUser"] == RUNTIME_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert "hostNetwork" not in pod and "hostPID" not in pod
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_liveness_probe_is_kopfs_health_endpoint(tmp_path: Path) -> None:
    container = operator_container(render(tmp_path, {"health": {"port": 9091}}))
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 9091}
    assert env_of(container)["KUBELOOP_HEALTH_PORT"] == "9091"


def test_operator_runs_kubeloop_operator(tmp_path: Path) -> None:
    container = operator_container(render(tmp_path, {"verbose": True}))
    assert container["args"] == ["operator", "--verbose"]
    assert container["image"] == "kubeloop:0.1.0"  # appVersion by default
    container = operator_container(
        render(tmp_path, {"image": {"repository": "r/k", "digest": "sha256:" + "a" * 64}})
    )
    assert container["image"] == "r/k@sha256:" + "a" * 64


def test_every_operator_setting_is_set_by_the_chart_and_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "runtime": {"image": "registry.example/kubeloop:1.2", "pullPolicy": "Always", "podLabels": {"team": "ml"}},
        "storage": {"storageUri": "s3://models/root", "modelsPvc": {"name": "models"}},
        "training": {"allowedEstimatorPrefixes": ["sklearn.", "xgboost."], "jobTtlSeconds": 600},
        "watchNamespaces": ["ml-a", "ml-b"],
        "replicaCount": 2,
        "resyncSeconds": 12.5,
        "rollout": {"tickSeconds": 2, "prometheusUrl": "http://prometheus.monitoring.svc:9090"},
    }
    env = env_of(operator_container(render(tmp_path, values)))
    # Every field of OperatorConfig has its variable in the chart (a new setting fails here
    # until the chart sets it), and nothing else with the prefix is set.
    expected = {f"KUBELOOP_{name.upper()}" for name in OperatorConfig.model_fields}
    assert set(env) == expected
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig()
    assert config.runtime_image == "registry.example/kubeloop:1.2"
    assert config.image_pull_policy == "Always"
    assert config.default_storage_uri == "s3://models/root"
    assert config.models_pvc == "models"
    assert config.allowed_estimator_prefixes == ["sklearn.", "xgboost."]
    assert config.namespaces == ["ml-a", "ml-b"]
    assert config.pod_labels == {"team": "ml"}
    assert config.job_ttl_seconds == 600
    assert config.resync_seconds == 12.5
    assert config.rollout_tick_seconds == 2
    assert config.prometheus_url == "http://prometheus.monitoring.svc:9090"
    assert config.peering == "kubeloop"
    assert (config.metrics_port, config.health_port) == (8080, 8081)


def test_defaults_give_a_cluster_wide_standalone_operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(tmp_path)
    env = env_of(operator_container(docs))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig()
    assert config.namespaces == [] and config.peering == ""
    assert config.runtime_image == "kubeloop:0.1.0"  # the runtime image is the operator's
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(docs, "KopfPeering") and not by_kind(docs, "ClusterKopfPeering")


def test_the_models_claim_is_created_and_not_mounted_in_the_operator(tmp_path: Path) -> None:
    docs = render(tmp_path, {"storage": {"storageUri": "file:///var/lib/kubeloop/models/", "modelsPvc": {"name": "models", "create": True, "size": "5Gi"}}})
    # The operator reads nothing from storage (docs/storage.md): only runtime pods mount it.
    assert [m["name"] for m in operator_container(docs)["volumeMounts"]] == ["tmp"]
    assert all(v["name"] != "models" for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"])
    assert env_of(operator_container(docs))["KUBELOOP_MODELS_PVC"] == "models"
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "models"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"


# -- peering ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "peering"),
    [({"replicaCount": 1}, False), ({"replicaCount": 2}, True), ({"peering": {"enabled": True}}, True)],
)
def test_peering_follows_replicas(tmp_path: Path, values: dict[str, Any], peering: bool) -> None:
    docs = render(tmp_path, values)
    env = env_of(operator_container(docs))
    assert env["KUBELOOP_PEERING"] == ("kubeloop" if peering else "")
    crd_names = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    assert ("clusterkopfpeerings.kopf.dev" in crd_names) is peering
    assert len(by_kind(docs, "ClusterKopfPeering")) == (1 if peering else 0)
    strategy = one(docs, "Deployment")["spec"]["strategy"]["type"]
    assert strategy == ("RollingUpdate" if peering else "Recreate")


def test_namespaced_peering_has_one_peering_object_per_namespace(tmp_path: Path) -> None:
    docs = render(tmp_path, {"replicaCount": 2, "watchNamespaces": ["a", "b"], "peering": {"installCRDs": False}})
    peerings = by_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["a", "b"]
    # Created after the CRDs exist: Helm cannot map a kind it installs in the same release.
    assert all("post-install" in p["metadata"]["annotations"]["helm.sh/hook"] for p in peerings)
    assert not [d for d in by_kind(docs, "CustomResourceDefinition") if "kopf" in d["metadata"]["name"]]


# -- CRDs ---------------------------------------------------------------------------------------


def test_chart_crds_are_the_generated_ones(tmp_path: Path) -> None:
    docs = render(tmp_path)
    rendered = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    generated = {info.crd_name: crdgen.crd(info) for info in crdgen.KIND_INFOS}
    assert set(rendered) == set(generated)
    for name, crd in generated.items():
        chart_crd = rendered[name]
        assert chart_crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        # Same object after Helm's rendering: escaped braces in descriptions come out intact.
        assert chart_crd == crd, f"{name}: chart copy differs; run `make crds`"


def test_chart_crd_templates_are_up_to_date() -> None:
    assert crdgen.differences(crdgen.default_chart_directory(), crdgen.generate_chart()) == []


def test_crds_can_be_left_to_someone_else(tmp_path: Path) -> None:
    docs = render(tmp_path, {"crds": {"install": False}})
    assert not by_kind(docs, "CustomResourceDefinition")


# -- metrics and dashboard ------------------------------------------------------------------------


def test_metrics_service_and_service_monitor(tmp_path: Path) -> None:
    docs = render(tmp_path, {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert not by_kind(render(tmp_path), "ServiceMonitor")


def test_dashboard_configmap_has_the_sidecar_label_and_valid_json(tmp_path: Path) -> None:
    config_map = one(render(tmp_path, {"dashboards": {"namespace": "monitoring"}}), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(config_map["data"]["kubeloop.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "kubeloop.json").read_text())
    assert not by_kind(render(tmp_path, {"dashboards": {"enabled": False}}), "ConfigMap")


# -- values.schema.json -------------------------------------------------------------------------

BAD_VALUES = [
    ({"replicaCount": 0}, "/replicaCount"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"imag": {"tag": "x"}}, "imag"),
    ({"storage": {"storageUri": "/var/models"}}, "/storage/storageUri"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
    ({"training": {"allowedEstimatorPrefixes": []}}, "/training/allowedEstimatorPrefixes"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    ({"crds": {"install": "yes"}}, "/crds/install"),
    ({"rollout": {"prometheusUrl": "prometheus:9090"}}, "/rollout/prometheusUrl"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
]


@pytest.mark.parametrize(("values", "named"), BAD_VALUES, ids=[v[1] for v in BAD_VALUES])
def test_bad_values_are_refused_naming_the_value(tmp_path: Path, values: dict[str, Any], named: str) -> None:
    proc = helm(*template_args(values, values_file=tmp_path / "bad.json"), check=False)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert named in proc.stderr, proc.stderr


def test_bad_value_from_a_yaml_file_is_refused(tmp_path: Path) -> None:
    # (tests/integration/test_chart.py shows `helm install` refusing it on a real cluster.)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"watchNamespaces": "ml"}))
    proc = helm("template", "kl", str(CHART), "--values", str(bad), check=False)
    assert proc.returncode != 0
    assert "/watchNamespaces" in proc.stderr and "array" in proc.stderr, proc.stderr


def test_service_monitor_without_service_is_a_clear_error(tmp_path: Path) -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    proc = helm(*template_args(values, values_file=tmp_path / "v.json"), check=False)
    assert proc.returncode != 0 and "metrics.service.enabled" in proc.stderr


def test_existing_service_account_must_be_named(tmp_path: Path) -> None:
    proc = helm(*template_args({"serviceAccount": {"create": False}}, values_file=tmp_path / "v.json"), check=False)
    assert proc.returncode != 0 and "serviceAccount.name" in proc.stderr
    docs = render(tmp_path, {"serviceAccount": {"create": False, "name": "mine"}})
    assert not by_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_every_value_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> None:
        assert "description" in node or node.get("type") == "object", f"{path}: no description"
        if isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key}: not in values.schema.json"
                walk(node["properties"][key], child, f"{path}.{key}")

    walk(schema, values, "")


def test_render_is_deterministic(tmp_path: Path) -> None:
    assert render_text(tmp_path) == render_text(tmp_path)
