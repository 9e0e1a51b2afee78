"""Every example is valid twice: for the pydantic models and for the generated CRD schema.

Invalid manifests are checked here against both layers where each can tell (the CRD schema
cannot evaluate CEL rules: the integration tests show the API server enforcing those).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kubeloop.api import crdgen
from kubeloop.api.wire import InvalidResource, from_wire, to_wire

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as the API server applies it with strict field validation (kubectl's
    default): unknown fields are errors, except under preserve-unknown-fields."""
    out = copy.deepcopy(schema)

    def visit(node: dict[str, Any]) -> None:
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for child in (node.get("properties") or {}).values():
            visit(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                visit(node[key])

    visit(out)
    return out


SCHEMAS = {
    info.kind: strict(crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    for info in crdgen.KIND_INFOS
}


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(
        SCHEMAS[document["kind"]], format_checker=jsonschema.FormatChecker()
    )
    return [
        ".".join(str(p) for p in error.absolute_path) + ": " + error.message
        for error in validator.iter_errors(document)
    ]


def load(name: str) -> dict[str, Any]:
    path = next(p for p in EXAMPLES if p.name == name)
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def test_there_is_one_example_of_each_kind() -> None:
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES)
    assert kinds == ["DriftPolicy", "ModelDeployment", "TrainingRun"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_for_models_and_schema(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert document["apiVersion"] == "kubeloop.io/v1alpha1"
    model = from_wire(document["kind"], document)
    assert schema_errors(document) == []
    # What the operator would write back (defaults filled in) is valid for the API server too.
    rewritten = to_wire(model)
    assert schema_errors(rewritten) == []
    assert from_wire(document["kind"], rewritten) == model


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_commented_for_a_newcomer(path: Path) -> None:
    lines = path.read_text().splitlines()
    comments = [line for line in lines if line.strip().startswith("#") or " # " in line]
    assert len(comments) >= 15
    assert lines[0].startswith("# ")
    assert "sklearn://" in (REPO / "examples" / "quickstart" / "trainingrun.yaml").read_text()


def test_examples_reference_each_other() -> None:
    run, deployment, policy = (
        load("trainingrun.yaml"), load("modeldeployment.yaml"), load("driftpolicy.yaml")
    )
    assert deployment["spec"]["model"]["trainingRunRef"]["name"] == run["metadata"]["name"]
    assert policy["spec"]["targetRef"]["name"] == deployment["metadata"]["name"]
    assert run["spec"]["evaluation"]["championRef"]["name"] == deployment["metadata"]["name"]
    assert policy["spec"]["retrain"]["fromTrainingRun"]["name"] == run["metadata"]["name"]


# -- invalid manifests --------------------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]


def setter(path: str, value: Any) -> Edit:
    """Set (or with value DELETE, remove) a dotted path; ``steps.0`` indexes a list."""

    def edit(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return edit


DELETE = object()


def both(*edits: Edit) -> Edit:
    """Several edits in order."""

    def edit(document: dict[str, Any]) -> None:
        for one in edits:
            one(document)

    return edit

# (example, edit, text the pydantic error must contain, does the plain schema catch it?)
INVALID: list[tuple[str, str, Edit, str, bool]] = [
    ("tr-unknown-field", "trainingrun.yaml", setter("spec.model.learningRate", 0.1),
     "spec.model.learningRate", True),
    ("tr-missing-model", "trainingrun.yaml", setter("spec.model", DELETE), "spec.model", True),
    ("tr-missing-estimator", "trainingrun.yaml", setter("spec.model.estimator", DELETE),
     "spec.model.estimator", True),
    ("tr-bad-task", "trainingrun.yaml", setter("spec.model.task", "clustering"),
     "spec.model.task", True),
    ("tr-test-fraction-1", "trainingrun.yaml", setter("spec.data.split.testFraction", 1.0),
     "spec.data.split.testFraction", True),
    ("tr-ftp-source", "trainingrun.yaml", setter("spec.data.source", "ftp://x/y.csv"),
     "spec.data.source", True),
    ("tr-bad-output-scheme", "trainingrun.yaml",
     setter("spec.output.storageUri", "https://example.com/models"), "spec.output.storageUri",
     True),
    ("tr-empty-grid", "trainingrun.yaml", setter("spec.sweep", {"grid": {}}),
     "spec.sweep.grid", True),
    ("tr-empty-grid-values", "trainingrun.yaml", setter("spec.sweep", {"grid": {"max_depth": []}}),
     "spec.sweep.grid.max_depth", True),
    ("tr-bad-quantity", "trainingrun.yaml", setter("spec.resources.limits.memory", "lots"),
     "spec.resources.limits.memory", True),
    ("tr-replicas-string", "trainingrun.yaml", setter("spec.backoffLimit", "three"),
     "spec.backoffLimit", True),
    ("tr-metric-for-wrong-task", "trainingrun.yaml", setter("spec.evaluation.metric", "rmse"),
     "spec: evaluation.metric does not suit model.task", False),
    ("tr-target-is-feature", "trainingrun.yaml", setter("spec.data.features", ["target"]),
     "spec.data: features must not list the target", False),
    ("tr-no-target-for-csv", "trainingrun.yaml",
     both(setter("spec.data.source", "file:///data/x.csv"), setter("spec.data.target", DELETE)),
     "spec.data: target is required", False),
    ("tr-range-upside-down", "trainingrun.yaml",
     setter("spec.validation.ranges.mean radius", {"min": 5, "max": 1}),
     "min must not be greater than max", False),
    ("md-both-sources", "modeldeployment.yaml",
     setter("spec.model.storageUri", "s3://bucket/model.skops"),
     "spec.model: set exactly one of trainingRunRef or storageUri", False),
    ("md-no-source", "modeldeployment.yaml", setter("spec.model.trainingRunRef", DELETE),
     "spec.model: set exactly one of trainingRunRef or storageUri", False),
    ("md-weight-140", "modeldeployment.yaml", setter("spec.rollout.steps.2.setWeight", 140),
     "spec.rollout.steps[2].setWeight", True),
    ("md-step-two-kinds", "modeldeployment.yaml",
     setter("spec.rollout.steps.2.pause", {"duration": "1m"}), "exactly one of shadow", False),
    ("md-bad-duration", "modeldeployment.yaml",
     setter("spec.rollout.steps.3.pause.duration", "5 minutes"),
     "spec.rollout.steps[3].pause.duration", True),
    ("md-port-0", "modeldeployment.yaml", setter("spec.server.port", 0), "spec.server.port", True),
    ("md-sha-without-uri", "modeldeployment.yaml", setter("spec.model.sha256", "a" * 64),
     "sha256 is required with storageUri", False),
    ("md-builtin-missing", "modeldeployment.yaml",
     setter("spec.rollout.analysis.metrics.0.builtin", DELETE), "provider builtin needs builtin",
     False),
    ("md-two-routers", "modeldeployment.yaml",
     setter("spec.rollout.trafficRouting.istio", {"virtualService": "vs"}),
     "at most one of replicas, gatewayAPI or istio", False),
    ("md-autoscaling-inverted", "modeldeployment.yaml",
     setter("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
     "minReplicas must not be greater than maxReplicas", False),
    ("dp-drift-share-1.5", "driftpolicy.yaml", setter("spec.driftShare", 1.5),
     "spec.driftShare", True),
    ("dp-bad-cron", "driftpolicy.yaml", setter("spec.schedule", "every sunday"),
     "spec.schedule: schedule must be a cron expression", False),
    ("dp-bad-window", "driftpolicy.yaml", setter("spec.window", "1d"), "spec.window", True),
    ("dp-bad-test", "driftpolicy.yaml", setter("spec.tests.numerical", "chi2"),
     "spec.tests.numerical", True),
    ("dp-window-without-prometheus", "driftpolicy.yaml", setter("spec.window", "1h"),
     "spec.window: window only applies to live traffic read from Prometheus", False),
    ("dp-threshold-of-a-test-never-picked", "driftpolicy.yaml",
     setter("spec.thresholds.jensenshannon", 0.1),
     "spec.thresholds.jensenshannon: thresholds.jensenshannon is never used", False),
    ("dp-alpha-without-a-hypothesis-test", "driftpolicy.yaml",
     setter("spec.tests", {"numerical": "psi", "categorical": "jensenshannon"}),
     "spec.alpha: alpha is never used", False),
    ("dp-ks-threshold-under-thresholds", "driftpolicy.yaml", setter("spec.thresholds.ks", 0.05),
     "spec.thresholds.ks", True),
    ("dp-alpha-out-of-range", "driftpolicy.yaml", setter("spec.alpha.default", 0),
     "spec.alpha.default", True),
    ("dp-both-sources", "driftpolicy.yaml",
     setter("spec.source.dataset", {"uri": "s3://bucket/today.csv"}),
     "exactly one of live or dataset", False),
    ("dp-template-and-from", "driftpolicy.yaml",
     setter("spec.retrain.template", {"spec": load("trainingrun.yaml")["spec"]}),
     "exactly one of template or fromTrainingRun", False),
    ("dp-template-bad-spec", "driftpolicy.yaml",
     both(setter("spec.retrain.fromTrainingRun", DELETE),
          setter("spec.retrain.template", {"spec": {"model": {}}})),
     "spec.retrain.template.spec.model.name", True),
]


@pytest.mark.parametrize(
    ("example", "edit", "expected", "schema_catches"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_manifest_is_rejected_naming_the_field(
    example: str, edit: Edit, expected: str, schema_catches: bool
) -> None:
    document = load(example)
    edit(document)
    with pytest.raises(InvalidResource) as caught:
        from_wire(document["kind"], document)
    assert expected in str(caught.value)
    errors = schema_errors(document)
    if schema_catches:
        assert errors, "the CRD schema alone should refuse this"
    else:
        # Only a CEL rule can refuse it; the schema must let it through to that rule.
        assert errors == []
