"""spec.server's pod-level options (issue 20): who the server pods run as, where they run, their
env, labels and annotations, and the stable track's PodDisruptionBudget.

Pure builders and the decision, table-tested; the same objects on a real API server are in
tests/integration/test_modeldeployment_pod_options.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from kubeloop.api.conditions import Reason
from kubeloop.api.wire import InvalidResource, from_wire
from kubeloop.decide.modeldeployment import Observed, decide
from kubeloop.resources.serving import (
    OWNER_LABEL,
    TRACK_LABEL,
    ModelRef,
    ServingSettings,
    build_pdb,
    build_track_deployment,
    pod_metadata_conflicts,
)
from kubeloop.trust.pod_env import PINNED_NAMES, SET_BY_BUILDERS

SETTINGS = ServingSettings(image="kubeloop:test")
SHA = "a" * 64
MODEL = ModelRef(uri="s3://models/churn/model.skops", sha256=SHA)
NOW = datetime(2030, 1, 1, tzinfo=UTC)

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
ZONE_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-1a", "eu-1b"]}
                ]}
            ]
        }
    },
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {
                "labelSelector": {"matchLabels": {"kubeloop.io/modeldeployment": "churn"}},
                "topologyKey": "kubernetes.io/hostname",
            }}
        ]
    },
}
ALL_OPTIONS: dict[str, Any] = {
    "serviceAccountName": "churn-reader",
    "nodeSelector": {"cloud.example.com/pool": "gpu"},
    "tolerations": [GPU_TOLERATION],
    "affinity": ZONE_AFFINITY,
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
        {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"team": "risk"}}},
    ],
    "env": [
        {"name": "OMP_NUM_THREADS", "value": "4"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ],
    "podLabels": {"team": "risk", "cost-center": "ml-42"},
    "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    "podDisruptionBudget": {"minAvailable": 1},
    "resources": {"limits": {"nvidia.com/gpu": 1}},
}


def modeldeployment(server: dict[str, Any] | None = None, credentials: bool = False) -> dict[str, Any]:
    model: dict[str, Any] = {"storageUri": "s3://models/churn/model.skops", "sha256": SHA}
    if credentials:
        model["credentials"] = {"secretRef": {"name": "s3"}}
    spec: dict[str, Any] = {"model": model, "replicas": 3}
    if server is not None:
        spec["server"] = copy.deepcopy(server)
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": spec,
    }


def template(md: dict[str, Any], track: str = "stable") -> dict[str, Any]:
    deployment = build_track_deployment(md, track, MODEL, 2, SETTINGS)  # type: ignore[arg-type]
    result: dict[str, Any] = deployment["spec"]["template"]
    return result


# -- the pod templates --------------------------------------------------------------------------


@pytest.mark.parametrize("track", ["stable", "canary"])
def test_every_option_reaches_both_tracks_pod_templates(track: str) -> None:
    md = modeldeployment(ALL_OPTIONS)
    from_wire("ModelDeployment", md)  # the spec is valid as written
    pod = template(md, track)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "churn-reader"
    assert spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"cloud.example.com/pool": "gpu"}
    assert spec["tolerations"] == [GPU_TOLERATION]
    assert spec["affinity"] == ZONE_AFFINITY
    own_track = {"matchLabels": {OWNER_LABEL: "churn", TRACK_LABEL: track}}
    assert [c["labelSelector"] for c in spec["topologySpreadConstraints"]] == [
        own_track,  # no selector written: the track's own pods
        {"matchLabels": {"team": "risk"}},  # written: kept
    ]
    assert pod["metadata"]["labels"]["team"] == "risk"
    assert pod["metadata"]["labels"][TRACK_LABEL] == track
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert pod["metadata"]["annotations"]["kubeloop.io/model-sha256"] == SHA
    container = spec["containers"][0]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in container["env"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]


def test_pod_labels_never_reach_the_selector() -> None:
    md = modeldeployment(ALL_OPTIONS)
    deployment = build_track_deployment(md, "stable", MODEL, 2, SETTINGS)
    assert deployment["spec"]["selector"] == {"matchLabels": {OWNER_LABEL: "churn", TRACK_LABEL: "stable"}}
    # ...and the Deployment object itself keeps only the operator's labels.
    assert "team" not in deployment["metadata"]["labels"]


def test_without_options_the_pod_runs_as_before() -> None:
    spec = template(modeldeployment())["spec"]
    assert spec["automountServiceAccountToken"] is False
    for field in ("serviceAccountName", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
        assert field not in spec
    assert [e["name"] for e in spec["containers"][0]["env"]] == ["HOME", "KUBELOOP_SERVE_SHUTDOWN_DELAY_SECONDS"]


def test_the_token_is_mounted_only_when_asked() -> None:
    spec = template(modeldeployment({"serviceAccountName": "churn-reader", "automountServiceAccountToken": True}))["spec"]
    assert spec["automountServiceAccountToken"] is True


def test_user_env_comes_after_the_operators_and_before_the_pins() -> None:
    env = template(modeldeployment({"env": [{"name": "OMP_NUM_THREADS", "value": "4"}]}, credentials=True))[
        "spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names[:3] == ["HOME", "KUBELOOP_SERVE_SHUTDOWN_DELAY_SECONDS", "OMP_NUM_THREADS"]
    assert set(names[3:]) == PINNED_NAMES - {"KUBELOOP_SERVE_SHUTDOWN_DELAY_SECONDS"}
    assert len(names) == len(set(names))


# -- refused env names ----------------------------------------------------------------------------


def _problems(md: dict[str, Any]) -> str:
    with pytest.raises(InvalidResource) as refused:
        from_wire("ModelDeployment", md)
    return str(refused.value)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("PYTHONPATH", "sitecustomize.py"),
        ("LD_PRELOAD", "shared objects"),
        ("KUBELOOP_SERVE_SHA256", "the model's checksum"),
        ("KUBELOOP_SERVE_INSECURE_SKIP_VERIFY", "without checking its sha256"),
        ("KUBELOOP_SERVE_SOMETHING_ADDED_LATER", "KUBELOOP_* variables are the runtime's own settings"),
        ("KUBELOOP_ANYTHING", "KUBELOOP_* variables are the runtime's own settings"),
        ("HOME", "scratch directory"),
        ("PROMETHEUS_MULTIPROC_DIR", "the server chooses it"),
    ],
)
def test_an_env_name_the_operator_sets_is_refused_naming_the_entry(name: str, why: str) -> None:
    env = [{"name": "OMP_NUM_THREADS", "value": "2"}, {"name": name, "value": "/tmp/evil"}]
    message = _problems(modeldeployment({"env": env}))
    assert f"spec.server.env[1].name: {name} is set by the operator and may not be set in env" in message
    assert why in message and message.endswith("remove it")


def test_every_pinned_and_builder_set_name_is_refused() -> None:
    for name in sorted(PINNED_NAMES | set(SET_BY_BUILDERS)):
        assert f"spec.server.env[0].name: {name} is set by the operator" in _problems(
            modeldeployment({"env": [{"name": name, "value": ""}]})
        )


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "AWS_SECRET", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}},
         "spec.server.env[0].valueFrom.secretKeyRef: Extra inputs are not permitted"),
        ({"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
         "spec.server.env[0]: set value or valueFrom, not both"),
        ({"name": "X", "valueFrom": {}}, "spec.server.env[0].valueFrom: set exactly one of fieldRef or resourceFieldRef"),
        ({"name": "1ST", "value": "1"}, "spec.server.env[0].name: '1ST' is not an environment variable name"),
    ],
)
def test_env_entries_are_checked(entry: dict[str, Any], expected: str) -> None:
    assert expected in _problems(modeldeployment({"env": [entry]}))


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "AWS_REGION", "pythonpath", "MY.VAR-1", "KUBELOOPX"])
def test_other_env_names_are_allowed(name: str) -> None:
    from_wire("ModelDeployment", modeldeployment({"env": [{"name": name, "value": "1"}]}))


# -- labels and annotations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({"podLabels": {"kubeloop.io/track": "canary"}},
         "spec.server.podLabels: label 'kubeloop.io/track': label keys starting with kubeloop.io/"),
        ({"podLabels": {"kubeloop.io/modeldeployment": "other"}}, "set by the operator (the selectors"),
        ({"podLabels": {"app.kubernetes.io/managed-by": "me"}}, "set by the operator (the selectors"),
        ({"podLabels": {"team": "not ok!"}}, "label 'team' has value 'not ok!', which is not a label value"),
        ({"podLabels": {"-team": "risk"}}, "label key '-team' is not valid"),
        ({"podAnnotations": {"kubeloop.io/model-sha256": "b" * 64}},
         "spec.server.podAnnotations: annotation 'kubeloop.io/model-sha256': annotation keys starting with "
         "kubeloop.io/ are set by the operator"),
        ({"podAnnotations": {"bad key": "x"}}, "annotation key 'bad key' is not valid"),
    ],
)
def test_the_operators_label_and_annotation_keys_are_refused(server: dict[str, Any], expected: str) -> None:
    assert expected in _problems(modeldeployment(server))


def test_an_annotation_the_operator_sets_is_refused_by_the_decision() -> None:
    md = modeldeployment({"podAnnotations": {"prometheus.io/scrape": "false", "team": "risk"}})
    assert pod_metadata_conflicts(md) == [
        'spec.server.podAnnotations["prometheus.io/scrape"]: the operator sets this key on every server pod; '
        "remove it from the spec"
    ]
    decision = decide(md, Observed(), SETTINGS, NOW)
    assert decision.deployments == [] and decision.services == [] and decision.pdb is None
    ready = next(c for c in decision.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == Reason.INVALID_SPEC
    assert 'spec.server.podAnnotations["prometheus.io/scrape"]' in ready["message"]


def test_other_labels_and_annotations_pass_the_decision() -> None:
    assert pod_metadata_conflicts(modeldeployment(ALL_OPTIONS)) == []


# -- the disruption budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "expected_spec"),
    [
        ({"minAvailable": 1}, {"minAvailable": 1}),
        ({"minAvailable": "50%"}, {"minAvailable": "50%"}),
        ({"maxUnavailable": 0}, {"maxUnavailable": 0}),
        ({"maxUnavailable": "25%"}, {"maxUnavailable": "25%"}),
    ],
)
def test_the_budget_selects_the_stable_track_only(budget: dict[str, Any], expected_spec: dict[str, Any]) -> None:
    md = modeldeployment({"podDisruptionBudget": budget})
    from_wire("ModelDeployment", md)
    pdb = build_pdb(md)
    assert pdb is not None
    assert pdb["apiVersion"] == "policy/v1" and pdb["kind"] == "PodDisruptionBudget"
    assert pdb["metadata"]["name"] == "churn-stable" and pdb["metadata"]["namespace"] == "ml"
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pdb["metadata"]["ownerReferences"][0]["controller"] is True
    assert pdb["spec"] == {"selector": {"matchLabels": {OWNER_LABEL: "churn", TRACK_LABEL: "stable"}}, **expected_spec}


def test_no_budget_without_the_field() -> None:
    assert build_pdb(modeldeployment()) is None
    assert build_pdb(modeldeployment({"workers": 2})) is None


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ({}, "spec.server.podDisruptionBudget: set exactly one of minAvailable or maxUnavailable"),
        ({"minAvailable": 1, "maxUnavailable": 1}, "set exactly one of minAvailable or maxUnavailable"),
        ({"minAvailable": "150%"}, "neither a number of pods"),
        ({"minAvailable": -1}, "neither a number of pods"),
        ({"maxUnavailable": "half"}, "neither a number of pods"),
    ],
)
def test_a_wrong_budget_is_refused(budget: dict[str, Any], expected: str) -> None:
    assert expected in _problems(modeldeployment({"podDisruptionBudget": budget}))


def test_the_decision_creates_and_deletes_the_budget() -> None:
    with_budget = decide(modeldeployment({"podDisruptionBudget": {"maxUnavailable": 1}}), Observed(), SETTINGS, NOW)
    assert with_budget.pdb is not None and with_budget.delete_pdb is None
    assert with_budget.pdb["spec"]["maxUnavailable"] == 1
    # The field is removed: the budget the operator made goes.
    without = decide(modeldeployment(), Observed(pdb=with_budget.pdb), SETTINGS, NOW)
    assert without.pdb is None and without.delete_pdb == "churn-stable"
    # Never made one: nothing to delete.
    assert decide(modeldeployment(), Observed(), SETTINGS, NOW).delete_pdb is None


# -- placement types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({"tolerations": [{"key": "gpu", "operator": "Maybe"}]}, "spec.server.tolerations[0].operator"),
        ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}},
         "spec.server.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"),
        ({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]}}},
         "spec.server.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Field required"),
        ({"topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]},
         "spec.server.topologySpreadConstraints[0].maxSkew"),
        ({"affinity": {"nodeAfinity": {}}}, "spec.server.affinity.nodeAfinity: Extra inputs are not permitted"),
        ({"serviceAccountName": "Not_A_Name"}, "spec.server.serviceAccountName: 'Not_A_Name' is not a valid object name"),
    ],
)
def test_placement_fields_are_typed(server: dict[str, Any], expected: str) -> None:
    assert expected in _problems(modeldeployment(server))
