"""The generated CRDs: committed files up to date, structural, documented, bounded, named."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from kubeloop.api import crdgen
from kubeloop.api.common import KubeModel

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
KINDS = {info.kind: info for info in crdgen.KIND_INFOS}


@functools.cache
def load_crds() -> dict[str, dict[str, Any]]:
    """Kind -> CRD, as generated in memory (once; the tests only read it)."""
    return {info.kind: crdgen.crd(info) for info in crdgen.KIND_INFOS}


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its dotted path (``[]`` for list items, ``{}`` for map values)."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def node_at(kind: str, dotted: str) -> dict[str, Any]:
    node = root_schema(load_crds()[kind])
    for part in dotted.split("."):
        if part.endswith("[]"):
            node = node["properties"][part[:-2]]["items"]
        else:
            node = node["properties"][part]
    return node


# -- the committed files ------------------------------------------------------------------------


def test_committed_crds_equal_what_the_models_generate() -> None:
    generated = crdgen.generate()
    assert sorted(generated) == sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    for name, text in generated.items():
        assert (CRD_DIR / name).read_text() == text, f"crds/{name} is stale: run `make crds`"


def test_generation_is_identical_across_processes() -> None:
    # Another interpreter with another hash seed must print byte-identical YAML.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    printed = subprocess.run(
        [sys.executable, "-m", "kubeloop.api.crdgen"],
        capture_output=True, text=True, check=True, env=env,
    ).stdout
    here = "---\n".join(t.removeprefix(crdgen.HEADER) for t in crdgen.generate().values())
    assert printed == here
    documents = list(yaml.safe_load_all(printed))
    assert [d["spec"]["names"]["kind"] for d in documents] == list(KINDS)


def test_check_mode_reports_stale_missing_and_stray_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--write", "--dir", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 0

    stale = tmp_path / "kubeloop.io_trainingruns.yaml"
    stale.write_text(stale.read_text().replace("maxItems: 512", "maxItems: 513", 1))
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "maxItems: 513" in capsys.readouterr().err

    crdgen.main(["--write", "--dir", str(tmp_path)])
    (tmp_path / "kubeloop.io_driftpolicies.yaml").unlink()
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "missing" in capsys.readouterr().err

    crdgen.main(["--write", "--dir", str(tmp_path)])
    (tmp_path / "kubeloop.io_oldkinds.yaml").write_text("stale\n")
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "no longer generated" in capsys.readouterr().err


def test_files_start_with_the_do_not_edit_header() -> None:
    for path in CRD_DIR.glob("*.yaml"):
        assert path.read_text().startswith("# Generated from operator/kubeloop/api")


# -- structure ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_is_structural(kind: str) -> None:
    text = yaml.safe_dump(root_schema(load_crds()[kind]))
    for forbidden in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "additionalProperties: false"):
        assert forbidden not in text
    for path, node in walk(root_schema(load_crds()[kind])):
        free = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        assert "type" in node or free, f"{kind} {path}: no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert set(node) <= crdgen.ALLOWED_KEYWORDS, f"{path}: {set(node) - crdgen.ALLOWED_KEYWORDS}"
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, path


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_field_has_a_description(kind: str) -> None:
    undocumented = [
        path
        for path, node in walk(root_schema(load_crds()[kind]))
        if path and not path.endswith(("[]", "{}")) and path != "metadata"
        and not node.get("description", "").strip()
    ]
    assert undocumented == []


@pytest.mark.parametrize("kind", list(KINDS))
def test_lists_and_maps_are_bounded(kind: str) -> None:
    for path, node in walk(root_schema(load_crds()[kind])):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{kind} {path}: unbounded list"
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{kind} {path}: unbounded map"


@pytest.mark.parametrize("kind", list(KINDS))
def test_what_cel_rules_read_is_bounded(kind: str) -> None:
    # The API server estimates each rule's cost from these bounds and refuses unbounded ones.
    checked = 0
    for path, node in walk(root_schema(load_crds()[kind])):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"], path
            if "oldSelf" in rule["rule"]:
                continue
            if node.get("type") == "string":
                assert "maxLength" in node, f"{path} is read by CEL"
                checked += 1
                continue
            for field in set(re.findall(r"self\.(\w+)", rule["rule"])):
                child = node["properties"][field]
                if child.get("type") == "string" and "enum" not in child:
                    assert "maxLength" in child, f"{path}.{field} is read by CEL"
                if child.get("type") == "array":
                    assert "maxItems" in child, f"{path}.{field} is read by CEL"
                checked += 1
    assert checked > 0


def test_conditions_are_a_map_keyed_by_type() -> None:
    for kind in KINDS:
        conditions = node_at(kind, "status.conditions")
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert conditions["maxItems"] <= 32
        item = conditions["items"]
        assert set(item["required"]) >= {"type", "status", "reason", "lastTransitionTime"}
        assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
        assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
        assert "pattern" in item["properties"]["reason"]


def test_free_form_maps_preserve_unknown_fields() -> None:
    for kind, path in [
        ("TrainingRun", "spec.model.params"),
        ("TrainingRun", "status.trials[].params"),
        ("DriftPolicy", "spec.retrain.overrides"),
    ]:
        node = node_at(kind, path)
        assert node == {**node, "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    grid_values = node_at("TrainingRun", "spec.sweep.grid")["additionalProperties"]
    assert grid_values["minItems"] == 1
    assert grid_values["items"]["x-kubernetes-preserve-unknown-fields"] is True


def test_quantities_are_int_or_string() -> None:
    value = node_at("TrainingRun", "spec.resources.limits")["additionalProperties"]
    assert value["x-kubernetes-int-or-string"] is True
    assert "type" not in value


def test_only_the_trainingrun_spec_is_immutable() -> None:
    spec_rules = node_at("TrainingRun", "spec")["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf", "message": crdgen.trainingrun.IMMUTABLE_MESSAGE} in spec_rules
    template = node_at("DriftPolicy", "spec.retrain.template.spec")
    assert all("oldSelf" not in r["rule"] for r in template.get("x-kubernetes-validations", []))
    # ...but the template is otherwise the same schema as a TrainingRun's spec.
    assert set(template["properties"]) == set(node_at("TrainingRun", "spec")["properties"])


def test_status_has_no_defaults() -> None:
    for kind in KINDS:
        for path, node in walk(node_at(kind, "status")):
            assert "default" not in node, f"{kind} status.{path}"


# -- names, subresources, columns ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural", "short"),
    [("TrainingRun", "trainingruns", "tr"), ("ModelDeployment", "modeldeployments", "md"),
     ("DriftPolicy", "driftpolicies", "dp")],
)
def test_names_scope_and_subresources(kind: str, plural: str, short: str) -> None:
    crd = load_crds()[kind]
    assert crd["metadata"]["name"] == f"{plural}.kubeloop.io"
    spec = crd["spec"]
    assert spec["group"] == "kubeloop.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == plural
    assert spec["names"]["shortNames"] == [short]
    assert spec["names"]["categories"] == ["kubeloop"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"]["status"] == {}
    if kind == "ModelDeployment":
        assert version["subresources"]["scale"] == {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    else:
        assert "scale" not in version["subresources"]


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("TrainingRun", ["Model", "Phase", "Metric", "Ready", "Message", "Age"]),
        ("ModelDeployment",
         ["Phase", "Stable", "Canary", "Weight", "Step", "Ready", "Message", "Age"]),
        ("DriftPolicy",
         ["Target", "Drifted", "Retrains", "LastCheck", "Ready", "Message", "Age"]),
    ],
)
def test_printer_columns(kind: str, columns: list[str]) -> None:
    printed = load_crds()[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in printed if "priority" not in c] == columns
    assert any(c.get("priority") == 1 for c in printed)
    ready = next(c for c in printed if c["name"] == "Ready")
    assert ready["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    status_schema = node_at(kind, "status")
    for column in printed:
        path = column["jsonPath"]
        if path.startswith(".status.") and "[" not in path:
            # Every status column reads a field the schema has (a typo would show nothing).
            node = status_schema
            for part in path.split(".")[2:]:
                node = node["properties"][part]
            assert column["type"] in {"string", "integer", "number", "boolean", "date"}


# -- the models cover design.md section 2 ---------------------------------------------------------

DESIGN_FIELDS = {
    "TrainingRun": [
        "spec.model.name", "spec.model.estimator", "spec.model.params", "spec.model.task",
        "spec.data.source", "spec.data.format", "spec.data.target", "spec.data.features",
        "spec.data.categoricalFeatures", "spec.data.split.testFraction", "spec.data.split.seed",
        "spec.validation.expectedColumns", "spec.validation.minRows",
        "spec.validation.maxMissingFraction", "spec.validation.ranges",
        "spec.validation.classBalance.minFraction", "spec.evaluation.metric",
        "spec.evaluation.threshold", "spec.evaluation.compareTo",
        "spec.evaluation.minImprovement", "spec.evaluation.championRef.name",
        "spec.sweep.grid", "spec.sweep.parallelism", "spec.sweep.maxTrials",
        "spec.resources.requests", "spec.resources.limits", "spec.nodeSelector",
        "spec.tolerations", "spec.image", "spec.backoffLimit", "spec.activeDeadlineSeconds",
        "spec.ttlSecondsAfterFinished", "spec.output.storageUri",
        "spec.credentials.secretRef.name", "spec.cleanupPolicy",
        "status.phase", "status.conditions", "status.observedGeneration", "status.jobName",
        "status.startTime", "status.completionTime", "status.model.uri", "status.model.sha256",
        "status.model.metrics", "status.model.championMetrics", "status.model.dataFingerprint",
        "status.model.profileUri", "status.model.gates", "status.trials[].index",
        "status.trials[].params", "status.trials[].metrics", "status.trials[].phase",
        "status.trials[].uri", "status.bestTrial", "status.lastFailure.reason",
        "status.lastFailure.message", "status.lastFailure.time", "status.message",
        "status.primaryMetric",
    ],
    "ModelDeployment": [
        "spec.model.trainingRunRef.name", "spec.model.storageUri", "spec.model.sha256",
        "spec.replicas", "spec.server.image", "spec.server.resources", "spec.server.port",
        "spec.server.workers", "spec.server.batching.maxBatchSize",
        "spec.server.batching.maxLatencyMs", "spec.autoscaling.minReplicas",
        "spec.autoscaling.maxReplicas", "spec.autoscaling.targetCPUUtilizationPercentage",
        "spec.rollout.steps[].shadow.percent", "spec.rollout.steps[].shadow.duration",
        "spec.rollout.steps[].setWeight", "spec.rollout.steps[].pause.duration",
        "spec.rollout.steps[].analysis.metrics", "spec.rollout.analysis.interval",
        "spec.rollout.analysis.failureLimit", "spec.rollout.analysis.metrics[].name",
        "spec.rollout.analysis.metrics[].provider", "spec.rollout.analysis.metrics[].query",
        "spec.rollout.analysis.metrics[].builtin", "spec.rollout.analysis.metrics[].min",
        "spec.rollout.analysis.metrics[].max", "spec.rollout.trafficRouting.replicas",
        "spec.rollout.trafficRouting.gatewayAPI.httpRoute",
        "spec.rollout.trafficRouting.gatewayAPI.port",
        "spec.rollout.trafficRouting.istio.virtualService",
        "spec.rollout.trafficRouting.istio.routes", "spec.paused",
        "status.phase", "status.observedGeneration", "status.conditions", "status.stable.uri",
        "status.stable.sha256", "status.stable.trainingRun", "status.stable.readyReplicas",
        "status.canary.uri", "status.canary.sha256", "status.canary.readyReplicas",
        "status.previous.uri", "status.previous.sha256", "status.previous.trainingRun",
        "status.currentStep", "status.canaryWeight", "status.stepStartedAt",
        "status.analysis.runs[].name", "status.analysis.runs[].value",
        "status.analysis.runs[].passed", "status.analysis.runs[].time",
        "status.analysis.consecutiveFailures", "status.replicas", "status.readyReplicas",
        "status.selector", "status.lastFailure", "status.message", "status.aborted",
    ],
    "DriftPolicy": [
        "spec.targetRef.name", "spec.source.live.prometheusUrl", "spec.source.dataset.uri",
        "spec.source.dataset.format", "spec.features", "spec.tests.numerical",
        "spec.tests.categorical", "spec.thresholds.psi", "spec.thresholds.wasserstein",
        "spec.thresholds.jensenshannon", "spec.thresholds.features", "spec.alpha.default",
        "spec.alpha.features",
        "spec.driftShare", "spec.window", "spec.minSamples", "spec.interval", "spec.schedule",
        "spec.retrain.template.spec", "spec.retrain.fromTrainingRun.name",
        "spec.retrain.overrides", "spec.retrain.cooldown", "spec.retrain.maxRetrainsPerDay",
        "spec.retrain.autoPromote",
        "status.observedGeneration", "status.conditions", "status.lastCheckTime",
        "status.scores[].feature", "status.scores[].test", "status.scores[].score",
        "status.scores[].threshold", "status.scores[].alpha", "status.scores[].drifted",
        "status.scores[].pValue",
        "status.drifted", "status.driftedFeatures", "status.lastRetrain.name",
        "status.lastRetrain.reason", "status.lastRetrain.time", "status.lastRetrain.outcome",
        "status.retrainCount", "status.retrainsToday", "status.history",
        "status.lastFailure", "status.nextScheduleTime",
    ],
}


@pytest.mark.parametrize("kind", list(DESIGN_FIELDS))
def test_every_field_of_the_design_is_in_the_schema(kind: str) -> None:
    missing = []
    for dotted in DESIGN_FIELDS[kind]:
        try:
            node_at(kind, dotted)
        except KeyError:
            missing.append(dotted)
    assert missing == []


@pytest.mark.parametrize(
    ("kind", "path", "values"),
    [
        ("TrainingRun", "spec.evaluation.metric",
         ["accuracy", "f1", "roc_auc", "log_loss", "rmse", "mae", "r2"]),
        ("TrainingRun", "spec.model.task", ["classification", "regression"]),
        ("TrainingRun", "status.phase", ["Pending", "Training", "Succeeded", "Failed"]),
        ("ModelDeployment", "status.phase", ["Progressing", "Healthy", "Paused", "Degraded"]),
        ("ModelDeployment", "spec.rollout.analysis.metrics[].provider",
         ["prometheus", "builtin", "scrape"]),
        ("ModelDeployment", "spec.rollout.analysis.metrics[].builtin",
         ["errorRate", "latencyP99", "predictionShift", "shadowAgreement"]),
        ("DriftPolicy", "spec.tests.numerical",
         ["auto", "psi", "ks", "wasserstein", "jensenshannon"]),
        ("DriftPolicy", "spec.tests.categorical", ["auto", "psi", "chi2", "jensenshannon"]),
    ],
)
def test_enums(kind: str, path: str, values: list[str]) -> None:
    assert node_at(kind, path)["enum"] == values


def test_kubectl_explain_text_for_spec_data() -> None:
    data = node_at("TrainingRun", "spec.data")
    assert "dataset" in data["description"]
    source = data["properties"]["source"]["description"]
    assert "sklearn://" in source and "``" not in source
    assert data["required"] == ["source"]


# -- the generator refuses what a CRD cannot express ---------------------------------------------


class _Union(KubeModel):
    """A model with a real union."""

    value: int | str
    """Either."""


class _Unknown(BaseModel):
    """A model using a JSON-schema keyword the API server does not know."""

    values: set[int]


def test_generator_refuses_unions_and_unknown_keywords() -> None:
    with pytest.raises(crdgen.SchemaError, match=r"spec\.value: a union of 2 types"):
        crdgen.openapi_schema(_Union, "spec")
    with pytest.raises(crdgen.SchemaError, match="uniqueItems"):
        crdgen.openapi_schema(_Unknown, "spec")
