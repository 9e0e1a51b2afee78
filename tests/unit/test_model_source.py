"""Which model a ModelDeployment serves, changed by undo and by a DriftPolicy's autoPromote.

spec.model names one source (trainingRunRef, storageUri + sha256, or registry) and the CRD
refuses two. A JSON merge patch keeps what it does not name, so a patch that sets one source
and leaves another in place is refused by the API server (or, worse, silently keeps serving
from the old one). These tests apply each patch the way the API server does (RFC 7386) to
every kind of spec.model and check the result names exactly the source wanted; the same
patches are sent to the real API server in tests/integration/test_mlflow.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from modeldeployment_world import SHA_A, SHA_B, World, model, modeldeployment
from status_schema_guard import status_problems

from kubeloop.api.driftpolicy import DriftPolicyStatus
from kubeloop.api.wire import InvalidResource, from_wire
from kubeloop.decide.driftpolicy import decide as decide_policy
from kubeloop.decide.driftpolicy import promotion_patch, promotion_refused
from kubeloop.decide.model_source import describe_previous, model_source_patch, undo_patch
from kubeloop.registry.decide import Resolution

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
REGISTRY_ALIAS = {"registry": {"name": "churn", "alias": "prod"}}
REGISTRY_VERSION = {"registry": {"name": "churn", "version": 3}}
RUN = {"trainingRunRef": {"name": "churn-1"}}
PINNED = {"storageUri": "s3://models/churn/model.skops", "sha256": "a" * 64}
SOURCES = {"registry alias": REGISTRY_ALIAS, "registry version": REGISTRY_VERSION, "run": RUN, "pinned": PINNED}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies a merge-patch+json body."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def patched(spec: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A ModelDeployment's spec after the API server applied ``patch`` to the object."""
    return dict(merge({"spec": spec}, patch)["spec"])


def spec_with(model_source: dict[str, Any]) -> dict[str, Any]:
    return {"model": {**copy.deepcopy(model_source), "credentials": {"secretRef": {"name": "s3"}}}, "replicas": 1}


def admitted(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the API models (the CRD's source) admit it: raises when two sources are named."""
    body = {"apiVersion": "kubeloop.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "churn"}, "spec": spec}
    from_wire("ModelDeployment", body)
    return spec


@pytest.mark.parametrize("before", SOURCES.values(), ids=SOURCES.keys())
@pytest.mark.parametrize("after", SOURCES.values(), ids=SOURCES.keys())
def test_a_source_patch_leaves_exactly_that_source_and_keeps_the_rest(before: dict[str, Any], after: dict[str, Any]) -> None:
    after_patch = patched(spec_with(before), model_source_patch(after))
    assert admitted(after_patch)["model"] == {**after, "credentials": {"secretRef": {"name": "s3"}}}


def test_an_old_spec_with_two_sources_is_what_the_models_refuse() -> None:
    # What a patch that forgot a source would leave behind (the bug this module fixes).
    with pytest.raises(InvalidResource, match="set exactly one of trainingRunRef"):
        admitted(spec_with({**REGISTRY_ALIAS, **RUN}))


def test_a_registry_version_replaces_an_alias_whole() -> None:
    patch = model_source_patch({"registry": {"name": "churn", "version": 2}})
    assert patched(spec_with(REGISTRY_ALIAS), patch)["model"]["registry"] == {"name": "churn", "version": 2}


def test_an_unknown_source_field_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not a model source field: trainingRun"):
        model_source_patch({"trainingRun": "x"})


@pytest.mark.parametrize(
    ("previous", "source", "what", "described"),
    [
        (
            {"uri": "s3://m/1/model.skops", "sha256": SHA_A, "trainingRun": "churn-1", "registry": {"name": "churn", "version": 1}},
            {"registry": {"name": "churn", "version": 1}},
            "MLflow registry churn version 1",
            "churn version 1",
        ),
        (
            {"uri": "s3://m/1/model.skops", "sha256": SHA_A, "trainingRun": "churn-1"},
            {"trainingRunRef": {"name": "churn-1"}},
            "TrainingRun churn-1",
            "churn-1",
        ),
        (
            {"uri": "s3://m/1/model.skops", "sha256": SHA_A},
            {"storageUri": "s3://m/1/model.skops", "sha256": SHA_A},
            f"s3://m/1/model.skops (sha256 {SHA_A[:12]})",
            SHA_A[:12],
        ),
    ],
    ids=["registry", "run", "pinned"],
)
@pytest.mark.parametrize("current", SOURCES.values(), ids=SOURCES.keys())
def test_undo_goes_back_to_the_previous_model_from_any_source(
    previous: dict[str, Any], source: dict[str, Any], what: str, described: str, current: dict[str, Any]
) -> None:
    md = {"spec": spec_with(current), "status": {"previous": previous}}
    found = undo_patch(md)
    assert found is not None and found.what == what
    assert admitted(patched(md["spec"], found.patch))["model"] == {**source, "credentials": {"secretRef": {"name": "s3"}}}
    assert describe_previous(previous) == described


def test_undo_with_no_previous_model_is_none() -> None:
    assert undo_patch({"spec": spec_with(RUN), "status": {}}) is None
    assert describe_previous(None) == ""


# --- the ModelDeployment records the registry version it served -------------------------------


def resolved(sha: str, version: str) -> Resolution:
    return Resolution(uri=f"s3://models/{sha[:4]}/model.skops", sha256=sha, version=version)


def test_a_promoted_registry_model_leaves_its_version_in_status_previous_for_undo() -> None:
    # Given a deployment following churn@prod, serving version 1...
    world = World(modeldeployment([{"setWeight": 50}], model={"registry": {"name": "churn", "alias": "prod"}}))
    world.registry = resolved(SHA_A, "1")
    world.run()
    assert world.status["stable"]["registry"] == {"name": "churn", "version": 1}
    # ...when the alias moves to version 2 and the canary is promoted...
    world.registry = resolved(SHA_B, "2")
    world.md["metadata"]["generation"] += 1
    world.run(5)
    assert world.status["stable"]["sha256"] == SHA_B and "canary" not in world.status
    # ...then status.previous pins version 1, and undo asks for it by number (the alias names 2).
    assert world.status["stable"]["registry"] == {"name": "churn", "version": 2}
    assert world.status["previous"]["registry"] == {"name": "churn", "version": 1}
    # The Stable and Previous columns name the versions (not sha256:aaaa...).
    assert (world.status["stable"]["revision"], world.status["previous"]["revision"]) == ("churn/2", "churn/1")
    assert "churn/2 is now stable (previous: churn/1)" in [e.message for e in world.events]
    found = undo_patch(world.md)
    assert found is not None
    assert patched(world.md["spec"], found.patch)["model"] == {"registry": {"name": "churn", "version": 1}}


def test_a_stable_model_recorded_without_its_registry_version_learns_it() -> None:
    world = World(modeldeployment(model={"registry": {"name": "churn", "alias": "prod"}}))
    world.registry = resolved(SHA_A, "4")
    world.run()
    del world.md["status"]["stable"]["registry"]  # as an operator before this change wrote it
    world.run(1)
    assert world.status["stable"]["registry"] == {"name": "churn", "version": 4}


def test_a_model_not_from_the_registry_records_no_registry_version() -> None:
    world = World(modeldeployment([{"setWeight": 50}]))
    world.run()
    world.change_spec(model=model(SHA_B))
    world.run(5)
    assert "registry" not in world.status["stable"] and "registry" not in world.status["previous"]


# --- a DriftPolicy's autoPromote --------------------------------------------------------------

RUN_SPEC = {
    "model": {"name": "churn", "estimator": "sklearn.linear_model.LogisticRegression", "task": "classification"},
    "data": {"source": "sklearn://breast_cancer", "target": "target"},
}
WON = {"phase": "Succeeded", "model": {"metrics": {"accuracy": 0.97}, "championMetrics": {"accuracy": 0.93}}}


def policy(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "DriftPolicy",
        "metadata": {"name": "churn-drift", "namespace": "ml", "uid": "u", "generation": 2, "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {
            "targetRef": {"name": "churn"},
            "source": {"live": {"prometheusUrl": "http://127.0.0.1:9090"}},
            "interval": "1h",
            "retrain": {"template": {"spec": RUN_SPEC}, "autoPromote": True},
        },
        "status": status,
    }


IN_FLIGHT = {"lastRetrain": {"name": "churn-drift-r1", "reason": "Drift", "time": "2026-12-07T10:00:00Z", "outcome": "Pending"}}
RUNS = {"churn-drift-r1": {"metadata": {"name": "churn-drift-r1"}, "spec": RUN_SPEC, "status": WON}}


@pytest.mark.parametrize("source", SOURCES.values(), ids=SOURCES.keys())
def test_autopromote_moves_a_target_from_any_source_to_the_run(source: dict[str, Any]) -> None:
    decision = decide_policy(policy(IN_FLIGHT), NOW, None, RUNS, target_model=spec_with(source)["model"])
    assert decision.promote == promotion_patch("churn-drift-r1")
    promoted = admitted(patched(spec_with(source), decision.promote))
    assert promoted["model"] == {"trainingRunRef": {"name": "churn-drift-r1"}, "credentials": {"secretRef": {"name": "s3"}}}
    assert decision.status["lastRetrain"]["outcome"] == "Promoted"


def test_the_promotion_says_which_source_it_replaces() -> None:
    decision = decide_policy(policy(IN_FLIGHT), NOW, None, RUNS, target_model=REGISTRY_ALIAS)
    message = decision.status["lastRetrain"]["message"]
    assert "leaves its MLflow registry source churn@prod and now rolls it out as a canary" in message


def test_a_refused_promotion_is_degraded_with_a_warning_and_is_not_retried() -> None:
    decision = decide_policy(policy(IN_FLIGHT), NOW, None, RUNS, target_model=RUN)
    refused = promotion_refused(decision, policy(IN_FLIGHT), "it does not exist in namespace ml", NOW)
    assert refused.promote is None
    assert status_problems(DriftPolicyStatus, refused.status) == []  # all of it is stored
    last = refused.status["lastRetrain"]
    assert last["outcome"] == "Succeeded"
    assert "was not promoted" in last["message"] and "it does not exist in namespace ml" in last["message"]
    degraded = next(c for c in refused.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "PromotionFailed")
    assert refused.status["lastFailure"]["reason"] == "PromotionFailed"
    assert [(e.type, e.reason) for e in refused.events if e.reason in ("PromotionFailed", "RetrainSucceeded")] == [
        ("Warning", "PromotionFailed")
    ]
    # The next reconcile: the run is no longer in flight, so nothing is promoted again...
    again = decide_policy(policy(refused.status), NOW, None, RUNS, target_model=RUN)
    assert again.promote is None
    assert next(c for c in again.status["conditions"] if c["type"] == "Degraded")["status"] == "True"
    # ...until a person points the target at the run: Degraded ends.
    by_hand = decide_policy(policy(refused.status), NOW, None, RUNS, target_model={"trainingRunRef": {"name": "churn-drift-r1"}})
    assert next(c for c in by_hand.status["conditions"] if c["type"] == "Degraded")["status"] == "False"
