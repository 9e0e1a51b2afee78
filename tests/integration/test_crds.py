"""The generated CRDs on a real API server.

Given the CRDs in crds/ applied with server-side apply, then they become Established (so every
CEL rule compiled within the API server's cost budget), the examples are accepted, invalid
manifests are refused by the API server itself with a message naming the field, and kubectl
shows the columns and `explain` text a user expects.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeloop.api import crdgen
from kubeloop.api.conditions import ConditionType, Reason, set_condition
from kubeloop.api.driftpolicy import DriftPolicyStatus, FeatureScore, RetrainRecord
from kubeloop.api.modeldeployment import ModelDeploymentStatus, ServedModel
from kubeloop.api.trainingrun import MlflowStatus, ModelStatus, TrainingRunStatus
from kubeloop.api.wire import InvalidResource, from_wire, to_wire

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = {p.name: p for p in sorted((REPO / "examples").rglob("*.yaml"))}
FIELD_MANAGER = "kubeloop-tests"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

Kubectl = Callable[..., Any]


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLES[name].read_text())
    return document


def install(kubectl: Kubectl) -> None:
    kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
            "-f", str(CRDS))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> None:
    install(kubectl)


def create(kubectl: Kubectl, namespace: str, document: dict[str, Any], *extra: str) -> Any:
    """``kubectl create -f -`` (strict field validation, kubectl's default)."""
    return kubectl("create", "-n", namespace, *extra, "-f", "-", input=json.dumps(document),
                   check=False)


def get(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout
    )
    return document


def patch_status(kubectl: Kubectl, namespace: str, kind: str, name: str, status: Any) -> None:
    kubectl("patch", "-n", namespace, kind, name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": to_wire(status)}))


# -- installing ---------------------------------------------------------------------------------


def test_crds_install_idempotently_and_become_established(kubectl: Kubectl) -> None:
    install(kubectl)
    generations = {}
    for info in crdgen.KIND_INFOS:
        crd = json.loads(kubectl("get", "crd", info.crd_name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        assert crd["status"]["acceptedNames"]["shortNames"] == list(info.short_names)
        generations[info.crd_name] = crd["metadata"]["generation"]

    # Applying the same files again changes nothing.
    again = kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
                    "--force-conflicts", "-f", str(CRDS))
    assert again.stdout.count("serverside-applied") == len(crdgen.KIND_INFOS)
    for name, generation in generations.items():
        crd = json.loads(kubectl("get", "crd", name, "-o", "json").stdout)
        assert crd["metadata"]["generation"] == generation


# -- the examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_is_accepted_and_defaulted_like_the_models(
    kubectl: Kubectl, namespace: str, crds: None, name: str
) -> None:
    path = str(EXAMPLES[name])
    dry = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", path)
    assert "(server dry run)" in dry.stdout
    kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-n", namespace,
            "-f", path)

    document = example(name)
    stored = get(kubectl, namespace, document["kind"], document["metadata"]["name"])
    # The API server fills in the same defaults as the pydantic models: one source of truth.
    expected = to_wire(from_wire(document["kind"], document))["spec"]
    assert stored["spec"] == expected
    assert from_wire(document["kind"], stored).spec == from_wire(document["kind"], document).spec


# -- what the API server refuses ------------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]
DELETE = object()


def at(path: str, value: Any) -> Edit:
    """Set (or DELETE) a dotted path of the manifest; numbers index lists."""

    def edit(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        key: Any = int(last) if last.isdigit() else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value

    return edit


def each(*edits: Edit) -> Edit:
    def edit(document: dict[str, Any]) -> None:
        for one in edits:
            one(document)

    return edit


TR, MD, DP = "trainingrun.yaml", "modeldeployment.yaml", "driftpolicy.yaml"

# (case, example, edit, the API server's message must contain all of these)
REFUSED: list[tuple[str, str, Edit, tuple[str, ...]]] = [
    ("tr-unknown-field", TR, at("spec.model.learningRate", 0.1),
     ('unknown field "spec.model.learningRate"',)),
    ("tr-missing-model", TR, at("spec.model", DELETE), ("spec.model", "Required value")),
    ("tr-missing-estimator", TR, at("spec.model.estimator", DELETE),
     ("spec.model.estimator", "Required value")),
    ("tr-wrong-type", TR, at("spec.backoffLimit", "three"),
     ("spec.backoffLimit", "integer")),
    ("tr-bad-task", TR, at("spec.model.task", "clustering"),
     ("spec.model.task", "Unsupported value")),
    ("tr-test-fraction-1", TR, at("spec.data.split.testFraction", 1),
     ("spec.data.split.testFraction",)),
    ("tr-ftp-source", TR, at("spec.data.source", "ftp://example.com/x.csv"),
     ("spec.data.source",)),
    ("tr-output-https", TR, at("spec.output.storageUri", "https://example.com/models"),
     ("spec.output.storageUri",)),
    ("tr-empty-grid", TR, at("spec.sweep", {"grid": {}}), ("spec.sweep.grid",)),
    ("tr-empty-grid-values", TR, at("spec.sweep", {"grid": {"max_depth": []}}),
     ("spec.sweep.grid.max_depth",)),
    ("tr-metric-for-wrong-task", TR, at("spec.evaluation.metric", "rmse"),
     ("spec.evaluation.metric", "does not suit model.task")),
    ("tr-target-is-feature", TR, at("spec.data.features", ["target", "mean radius"]),
     ("spec.data.features", "must not list the target")),
    ("tr-no-target-for-csv", TR,
     each(at("spec.data.source", "s3://bucket/data.csv"), at("spec.data.target", DELETE)),
     ("spec.data.target", "target is required")),
    ("tr-bad-quantity", TR, at("spec.resources.limits.memory", "lots"),
     ("spec.resources.limits.memory",)),
    ("tr-bad-estimator", TR, at("spec.model.estimator", "RandomForest; rm -rf /"),
     ("spec.model.estimator",)),
    ("md-weight-140", MD, at("spec.rollout.steps.2.setWeight", 140),
     ("spec.rollout.steps[2].setWeight", "less than or equal to 100")),
    ("md-both-model-sources", MD,
     each(at("spec.model.storageUri", "s3://bucket/model.skops"), at("spec.model.sha256", "a" * 64)),
     ("spec.model", "exactly one of trainingRunRef or storageUri")),
    ("md-no-model-source", MD, at("spec.model.trainingRunRef", DELETE),
     ("spec.model", "exactly one of trainingRunRef or storageUri")),
    ("md-storage-uri-without-sha256", MD,
     each(at("spec.model.trainingRunRef", DELETE), at("spec.model.storageUri", "s3://b/m.skops")),
     ("spec.model.sha256", "required with storageUri")),
    ("md-unsupported-scheme", MD,
     each(at("spec.model.trainingRunRef", DELETE), at("spec.model.storageUri", "ftp://b/m.skops"),
          at("spec.model.sha256", "a" * 64)),
     ("spec.model.storageUri",)),
    ("md-bad-sha256", MD,
     each(at("spec.model.trainingRunRef", DELETE), at("spec.model.storageUri", "s3://b/m.skops"),
          at("spec.model.sha256", "not-a-digest")),
     ("spec.model.sha256",)),
    ("md-step-with-two-kinds", MD, at("spec.rollout.steps.2.pause", {"duration": "1m"}),
     ("spec.rollout.steps[2]", "exactly one of shadow, setWeight, pause or analysis")),
    ("md-bad-duration", MD, at("spec.rollout.steps.3.pause.duration", "5 minutes"),
     ("spec.rollout.steps[3].pause.duration",)),
    ("md-two-routers", MD, at("spec.rollout.trafficRouting.istio", {"virtualService": "vs"}),
     ("spec.rollout.trafficRouting", "at most one of replicas, gatewayAPI or istio")),
    ("md-port-0", MD, at("spec.server.port", 0), ("spec.server.port",)),
    ("md-negative-replicas", MD, at("spec.replicas", -1), ("spec.replicas",)),
    ("md-builtin-metric-unnamed", MD, at("spec.rollout.analysis.metrics.0.builtin", DELETE),
     ("spec.rollout.analysis.metrics[0].builtin", "provider builtin needs builtin")),
    ("md-autoscaling-inverted", MD, at("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
     ("spec.autoscaling.minReplicas", "must not be greater than maxReplicas")),
    ("dp-drift-share-1.5", DP, at("spec.driftShare", 1.5),
     ("spec.driftShare", "less than or equal to 1")),
    ("dp-bad-cron", DP, at("spec.schedule", "every sunday at 3"),
     ("spec.schedule", "cron expression with 5 fields")),
    ("dp-six-field-cron", DP, at("spec.schedule", "0 0 3 * * 0"),
     ("spec.schedule", "cron expression with 5 fields")),
    ("dp-bad-window", DP, at("spec.window", "1d"), ("spec.window",)),
    # Settings nothing would read are refused, naming the field and the fix.
    ("dp-window-without-prometheus", DP, at("spec.window", "1h"),
     ("spec.window", "set spec.source.live.prometheusUrl or remove window")),
    ("dp-window-with-a-dataset", DP,
     each(at("spec.source", {"dataset": {"uri": "s3://bucket/today.csv"}}), at("spec.window", "1h")),
     ("spec.window", "a dataset is checked whole")),
    ("dp-threshold-of-a-test-never-picked", DP, at("spec.thresholds.wasserstein", 0.1),
     ("spec.thresholds.wasserstein", "thresholds.wasserstein is never used",
      "set tests.numerical to auto or wasserstein")),
    ("dp-alpha-without-a-hypothesis-test", DP,
     at("spec.tests", {"numerical": "psi", "categorical": "psi"}),
     ("spec.alpha", "alpha is never used")),
    ("dp-score-thresholds-with-only-hypothesis-tests", DP,
     each(at("spec.tests", {"numerical": "ks", "categorical": "chi2"}),
          at("spec.thresholds", {"features": {"mean radius": 0.3}})),
     ("spec.thresholds.features", "move the values to alpha.features")),
    ("dp-alpha-of-1", DP, at("spec.alpha.default", 1), ("spec.alpha.default",)),
    ("dp-wrong-type", DP, at("spec.minSamples", "many"), ("spec.minSamples", "integer")),
    ("dp-both-sources", DP, at("spec.source.dataset", {"uri": "s3://bucket/today.csv"}),
     ("spec.source", "exactly one of live or dataset")),
    ("dp-template-and-from", DP,
     at("spec.retrain.template", {"spec": example(TR)["spec"]}),
     ("spec.retrain", "exactly one of template or fromTrainingRun")),
    ("dp-template-incomplete", DP,
     each(at("spec.retrain.fromTrainingRun", DELETE),
          at("spec.retrain.template", {"spec": {"model": {"estimator": "sklearn.svm.SVC"}}})),
     ("spec.retrain.template.spec.model.name", "Required value")),
]


@pytest.mark.parametrize(
    ("source", "edit", "expected"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_api_server_refuses_invalid_manifest_naming_the_field(
    kubectl: Kubectl, namespace: str, crds: None, source: str, edit: Edit,
    expected: tuple[str, ...],
) -> None:
    document = copy.deepcopy(example(source))
    edit(document)
    refused = create(kubectl, namespace, document)
    assert refused.returncode != 0, f"the API server accepted it:\n{refused.stdout}"
    for text in expected:
        assert text in refused.stderr, refused.stderr
    # The operator's models refuse it too, so nothing the API server stores surprises them.
    with pytest.raises(InvalidResource):
        from_wire(document["kind"], document)
    # ...and nothing was stored.
    name = document["metadata"]["name"]
    missing = kubectl("get", "-n", namespace, document["kind"], name, check=False)
    assert "NotFound" in missing.stderr


def test_driftpolicy_test_left_out_is_auto_and_a_window_with_prometheus_is_accepted(
    kubectl: Kubectl, namespace: str, crds: None
) -> None:
    policy = example(DP)
    policy["spec"]["tests"] = {"numerical": "ks"}
    policy["spec"]["thresholds"] = {"jensenshannon": 0.15}  # categorical auto can pick it
    policy["spec"]["source"] = {"live": {"prometheusUrl": "http://prometheus.monitoring:9090"}}
    policy["spec"]["window"] = "30m"
    created = create(kubectl, namespace, policy)
    assert created.returncode == 0, created.stderr
    stored = get(kubectl, namespace, "driftpolicy", policy["metadata"]["name"])["spec"]
    # The API server fills in what was left out with auto, the same as no tests at all (the
    # old default was psi, which a user who set only numerical never asked for).
    assert stored["tests"] == {"numerical": "ks", "categorical": "auto"}
    assert stored["window"] == "30m"
    assert "window" not in get_default_window_spec(kubectl, namespace)


def get_default_window_spec(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    """The quickstart as stored: no window is filled in (it is only meaningful with Prometheus)."""
    policy = example(DP)
    policy["metadata"]["name"] = "no-window"
    created = create(kubectl, namespace, policy)
    assert created.returncode == 0, created.stderr
    spec: dict[str, Any] = get(kubectl, namespace, "driftpolicy", "no-window")["spec"]
    return spec


def test_trainingrun_spec_cannot_be_edited_but_status_and_labels_can(
    kubectl: Kubectl, namespace: str, crds: None
) -> None:
    run = example(TR)
    assert create(kubectl, namespace, run).returncode == 0

    edited = copy.deepcopy(run)
    edited["spec"]["model"]["params"]["n_estimators"] = 500
    attempts = [
        kubectl("replace", "-n", namespace, "-f", "-", input=json.dumps(edited), check=False),
        kubectl("patch", "-n", namespace, "tr", run["metadata"]["name"], "--type=merge",
                "-p", '{"spec": {"data": {"split": {"seed": 7}}}}', check=False),
        kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
                "-n", namespace, "-f", "-", input=json.dumps(edited), check=False),
    ]
    for refused in attempts:
        assert refused.returncode != 0
        assert "spec: Invalid value" in refused.stderr
        assert "spec is immutable: a TrainingRun is a record; create a new run instead" in (
            refused.stderr
        )

    # A record still gets its status, labels and annotations.
    kubectl("label", "-n", namespace, "tr", run["metadata"]["name"], "team=ml")
    kubectl("annotate", "-n", namespace, "tr", run["metadata"]["name"], "note=first")
    patch_status(kubectl, namespace, "trainingrun", run["metadata"]["name"],
                 TrainingRunStatus(phase="Pending"))
    stored = get(kubectl, namespace, "trainingrun", run["metadata"]["name"])
    assert stored["status"]["phase"] == "Pending"
    assert stored["spec"]["model"]["params"]["n_estimators"] == 100


def test_null_grid_values_and_integer_quantities_survive(
    kubectl: Kubectl, namespace: str, crds: None
) -> None:
    # `max_depth: null` is a common sklearn grid value; `cpu: 2` is how people write CPUs.
    run = example(TR)
    run["spec"]["sweep"] = {"grid": {"max_depth": [None, 4], "n_estimators": [50]}}
    run["spec"]["model"]["params"]["max_depth"] = None
    run["spec"]["resources"]["requests"]["cpu"] = 2
    created = create(kubectl, namespace, run)
    assert created.returncode == 0, created.stderr
    stored = get(kubectl, namespace, "trainingrun", run["metadata"]["name"])
    assert stored["spec"]["sweep"]["grid"]["max_depth"] == [None, 4]
    assert stored["spec"]["model"]["params"] == {"n_estimators": 100, "max_depth": None}
    assert stored["spec"]["resources"]["requests"]["cpu"] == 2


# -- status, columns, explain, scale --------------------------------------------------------------


def trainingrun_status() -> TrainingRunStatus:
    conditions = set_condition([], ConditionType.READY, True, Reason.SUCCEEDED, "done", NOW, 1)
    return TrainingRunStatus(
        phase="Succeeded",
        observed_generation=1,
        conditions=conditions,
        job_name="breast-cancer-1-train",
        start_time=NOW,
        completion_time=NOW,
        model=ModelStatus(
            uri="s3://bucket/breast-cancer/breast-cancer-1/model.skops",
            sha256="3" * 64,
            metrics={"roc_auc": 0.9952, "accuracy": 0.958},
            data_fingerprint="sha256:" + "f" * 64,
            profile_uri="s3://bucket/breast-cancer/breast-cancer-1/profile.json",
        ),
        primary_metric="roc_auc=0.9952",
        message="roc_auc 0.9952; every gate passed",
    )


def test_statuses_from_the_models_are_accepted_and_shown_in_columns(
    kubectl: Kubectl, namespace: str, crds: None
) -> None:
    for name in (TR, MD, DP):
        assert create(kubectl, namespace, example(name)).returncode == 0
    run_status = trainingrun_status().model_copy(update={"mlflow": MlflowStatus(
        experiment_id="7", run_id="0f3c" * 8, registered_model="breast-cancer",
        model_version="3", finished=True)})  # fmt: skip
    patch_status(kubectl, namespace, "trainingrun", "breast-cancer-1", run_status)
    canary = ServedModel(training_run="breast-cancer-2", revision="breast-cancer-2",
                         sha256="4" * 64, ready_replicas=1)
    patch_status(kubectl, namespace, "modeldeployment", "breast-cancer", ModelDeploymentStatus(
        phase="Progressing",
        conditions=set_condition([], ConditionType.READY, True, Reason.HEALTHY, "serving", NOW),
        stable=ServedModel(training_run="breast-cancer-1", revision="breast-cancer-1",
                           sha256="3" * 64, ready_replicas=2),
        canary=canary, current_step=2, canary_weight=20, replicas=2, ready_replicas=2,
        selector="kubeloop.io/deployment=breast-cancer,kubeloop.io/track=stable",
        message="step 3/6: 20% to breast-cancer-2",
    ))
    patch_status(kubectl, namespace, "driftpolicy", "breast-cancer", DriftPolicyStatus(
        conditions=set_condition([], ConditionType.READY, True, Reason.DRIFT_DETECTED, "", NOW),
        last_check_time=NOW, drifted=True, retrain_count=1, drifted_share=0.4,
        scores=[FeatureScore(feature="mean radius", test="psi", score=0.31, threshold=0.2,
                             drifted=True),
                FeatureScore(feature="__prediction__", test="chi2", score=9.5, alpha=0.1,
                             p_value=0.002, drifted=True)],
        last_retrain=RetrainRecord(name="breast-cancer-2", reason="Drift", time=NOW),
        message="4 of 10 features drifted",
    ))

    table = kubectl("get", "-n", namespace, "tr").stdout.splitlines()
    assert re.split(r"\s{2,}", table[0].strip()) == [
        "NAME", "MODEL", "PHASE", "METRIC", "READY", "MESSAGE", "AGE"
    ]
    assert re.split(r"\s{2,}", table[1].strip())[:6] == [
        "breast-cancer-1", "breast-cancer", "Succeeded", "roc_auc=0.9952", "True",
        "roc_auc 0.9952; every gate passed",
    ]
    wide = kubectl("get", "-n", namespace, "trainingruns", "-o", "wide").stdout.splitlines()
    assert re.split(r"\s{2,}", wide[0].strip())[-5:] == [
        "JOB", "ESTIMATOR", "DATA", "SHA256", "MLFLOW-RUN"
    ]
    assert "sklearn.ensemble.RandomForestClassifier" in wide[1] and "3" * 64 in wide[1]
    assert wide[1].rstrip().endswith("0f3c" * 8)

    deployments = kubectl("get", "-n", namespace, "md").stdout.splitlines()
    assert re.split(r"\s{2,}", deployments[0].strip()) == [
        "NAME", "PHASE", "STABLE", "CANARY", "WEIGHT", "STEP", "READY", "MESSAGE", "AGE"
    ]
    assert re.split(r"\s{2,}", deployments[1].strip())[:7] == [
        "breast-cancer", "Progressing", "breast-cancer-1", "breast-cancer-2", "20", "2", "True"
    ]
    policies = kubectl("get", "-n", namespace, "dp").stdout.splitlines()
    assert re.split(r"\s{2,}", policies[0].strip()) == [
        "NAME", "TARGET", "DRIFTED", "RETRAINS", "LASTCHECK", "READY", "MESSAGE", "AGE"
    ]
    assert re.split(r"\s{2,}", policies[1].strip())[:4] == [
        "breast-cancer", "breast-cancer", "true", "1"
    ]

    # One category lists all three kinds.
    everything = kubectl("get", "-n", namespace, "kubeloop", "-o", "name").stdout.split()
    assert sorted(everything) == [
        "driftpolicy.kubeloop.io/breast-cancer",
        "modeldeployment.kubeloop.io/breast-cancer",
        "trainingrun.kubeloop.io/breast-cancer-1",
    ]
    # What the API server stored reads back into the models unchanged.
    stored = get(kubectl, namespace, "trainingrun", "breast-cancer-1")
    assert from_wire("TrainingRun", stored).status == run_status


def test_modeldeployment_scales_through_the_scale_subresource(
    kubectl: Kubectl, namespace: str, crds: None
) -> None:
    assert create(kubectl, namespace, example(MD)).returncode == 0
    patch_status(kubectl, namespace, "md", "breast-cancer", ModelDeploymentStatus(
        replicas=2, selector="kubeloop.io/deployment=breast-cancer"
    ))
    kubectl("scale", "-n", namespace, "md/breast-cancer", "--replicas=5")
    assert get(kubectl, namespace, "md", "breast-cancer")["spec"]["replicas"] == 5
    scale = json.loads(kubectl("get", "-n", namespace, "md", "breast-cancer",
                               "--subresource=scale", "-o", "json").stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 5
    assert scale["status"] == {"replicas": 2, "selector": "kubeloop.io/deployment=breast-cancer"}


def test_kubectl_explain_shows_the_field_docs(kubectl: Kubectl, crds: None) -> None:
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    deadline = time.monotonic() + 60
    while True:
        explained = kubectl("explain", "trainingrun.spec.data", check=False)
        if explained.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert explained.returncode == 0, explained.stderr
    text = " ".join(explained.stdout.split())
    assert "GROUP: kubeloop.io" in text and "VERSION: v1alpha1" in text
    for phrase in ("Where the training data comes from", "sklearn://", "source",
                   "target", "split", "categoricalFeatures"):
        assert phrase in text
    assert "<string> -required-" in text  # source

    metric = " ".join(kubectl("explain", "tr.spec.evaluation.metric").stdout.split())
    assert "rmse" in metric and "ENUM" in metric
    steps = " ".join(kubectl("explain", "modeldeployments.spec.rollout.steps").stdout.split())
    assert "exactly one of shadow, setWeight, pause or analysis" in steps
