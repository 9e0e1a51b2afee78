"""The pure MLflow decisions (issue 17): how a registry source resolves, which aliases move,
what the operator puts on a finished run, and the trainer's MLflow environment."""

from __future__ import annotations

from typing import Any

import pytest

from kubeloop.registry import tags
from kubeloop.registry.decide import (
    REGISTRY_UNAVAILABLE,
    REGISTRY_VERSION_NOT_FOUND,
    REGISTRY_VERSION_REFUSED,
    AliasMove,
    alias_moves,
    resolve_version,
    unavailable,
)
from kubeloop.registry.runs import (
    TrackingSettings,
    experiment_name,
    final_fields,
    tracked,
    version_source,
)
from kubeloop.resources.trainingjob import tracking_env, with_tracking

SHA = "ab" * 32
URI = "file:///var/lib/kubeloop/models/churn/churn-1/model.skops"


def version(number: str = "3", **tag_values: str) -> dict[str, Any]:
    return {
        "name": "churn",
        "version": number,
        "source": "runs:/r1/model.skops",
        "tags": [{"key": k, "value": v} for k, v in tag_values.items()],
    }


ALIAS = {"name": "churn", "alias": "champion"}


@pytest.mark.parametrize(
    ("source", "found", "reason", "waiting", "uri"),
    [
        (ALIAS, version(**{tags.SHA256: SHA, tags.MODEL_URI: URI}), None, False, URI),
        (
            {"name": "churn", "version": 3},
            version(**{tags.SHA256: SHA, tags.MODEL_URI: URI}),
            None,
            False,
            URI,
        ),
        # An object-store source without the uri tag: the source itself.
        (
            ALIAS,
            {**version(**{tags.SHA256: SHA}), "source": "s3://b/churn/model.skops"},
            None,
            False,
            "s3://b/churn/model.skops",
        ),
        (ALIAS, None, REGISTRY_VERSION_NOT_FOUND, True, None),
        ({"name": "churn", "version": 9}, None, REGISTRY_VERSION_NOT_FOUND, True, None),
        (ALIAS, version(**{tags.MODEL_URI: URI}), REGISTRY_VERSION_REFUSED, False, None),
        (
            ALIAS,
            version(**{tags.SHA256: "not-a-digest", tags.MODEL_URI: URI}),
            REGISTRY_VERSION_REFUSED,
            False,
            None,
        ),
        (
            ALIAS,
            version(**{tags.SHA256: SHA.upper(), tags.MODEL_URI: URI}),
            REGISTRY_VERSION_REFUSED,
            False,
            None,
        ),
        # runs:/ is MLflow's, not a storage URI a server can read: refused, not guessed.
        (ALIAS, version(**{tags.SHA256: SHA}), REGISTRY_VERSION_REFUSED, False, None),
        (
            ALIAS,
            version(**{tags.SHA256: SHA, tags.MODEL_URI: "ftp://host/model.skops"}),
            REGISTRY_VERSION_REFUSED,
            False,
            None,
        ),
        (
            ALIAS,
            version(**{tags.SHA256: SHA, tags.MODEL_URI: "file:///a b"}),
            REGISTRY_VERSION_REFUSED,
            False,
            None,
        ),
    ],
)
def test_resolution_outcomes(
    source: dict[str, Any],
    found: dict[str, Any] | None,
    reason: str | None,
    waiting: bool,
    uri: str | None,
) -> None:
    resolution = resolve_version(source, found)
    assert resolution.reason == reason, resolution.message
    assert resolution.waiting is waiting
    assert resolution.uri == uri
    if reason is None:
        assert resolution.sha256 == SHA and resolution.version == "3"
    else:
        assert resolution.message and "spec.model.registry churn" in resolution.message


def test_refusal_names_the_missing_tag_and_the_fix() -> None:
    message = resolve_version(ALIAS, version(**{tags.MODEL_URI: URI})).message or ""
    assert "version 3, which has no kubeloop.sha256 tag" in message
    assert "register the model with a TrainingRun" in message


def test_unreachable_registry_waits() -> None:
    resolution = unavailable(ALIAS, "cannot reach MLflow at http://mlflow:5000: URLError")
    assert (resolution.reason, resolution.waiting) == (REGISTRY_UNAVAILABLE, True)
    assert "rollout waits" in (resolution.message or "")


@pytest.mark.parametrize(
    ("recorded", "stable", "canary", "moves", "record"),
    [
        # First sight: champion on the stable version.
        (None, "1", None, [AliasMove("champion", "1")], {"champion": "1"}),
        # Settled: nothing moves (no calls).
        ({"model": "churn", "champion": "1"}, "1", None, [], {"champion": "1"}),
        # A rollout starts: challenger on the canary.
        (
            {"model": "churn", "champion": "1"},
            "1",
            "2",
            [AliasMove("challenger", "2")],
            {"champion": "1", "challenger": "2"},
        ),
        # Promoted: champion moves, challenger goes.
        (
            {"model": "churn", "champion": "1", "challenger": "2"},
            "2",
            None,
            [AliasMove("champion", "2"), AliasMove("challenger", None)],
            {"champion": "2"},
        ),
        # Aborted (canary not counted): challenger goes, champion stays.
        (
            {"model": "churn", "champion": "1", "challenger": "2"},
            "1",
            None,
            [AliasMove("challenger", None)],
            {"champion": "1"},
        ),
        # Undo: champion back to the previous version.
        (
            {"model": "churn", "champion": "2"},
            "1",
            None,
            [AliasMove("champion", "1")],
            {"champion": "1"},
        ),
        # A stable artifact that is not registered moves nothing and forgets nothing.
        ({"model": "churn", "champion": "1"}, None, None, [], {"champion": "1"}),
        # Another registered model than last time: starts afresh.
        (
            {"model": "other", "champion": "7", "challenger": "8"},
            "1",
            None,
            [AliasMove("champion", "1")],
            {"champion": "1"},
        ),
        # Canary of the same version as stable is no challenger.
        ({"model": "churn", "champion": "1"}, "1", "1", [], {"champion": "1"}),
    ],
)
def test_alias_moves(
    recorded: dict[str, str] | None,
    stable: str | None,
    canary: str | None,
    moves: list[AliasMove],
    record: dict[str, str],
) -> None:
    plan = alias_moves("churn", recorded, stable, canary)
    assert plan.moves == moves
    assert plan.record == {"model": "churn", **record}


def test_no_model_name_no_moves() -> None:
    assert alias_moves(None, {"model": "churn", "champion": "1"}, "2", None).moves == []


RUN = {
    "metadata": {"name": "churn-1", "namespace": "team-a", "uid": "u-1"},
    "spec": {"model": {"name": "churn", "estimator": "sklearn.linear_model.LogisticRegression"}},
}


@pytest.mark.parametrize(
    ("uri", "by_default", "enabled", "expected"),
    [
        ("", True, True, False),  # no MLflow configured: never
        ("http://mlflow:5000", True, None, True),
        ("http://mlflow:5000", False, None, False),
        ("http://mlflow:5000", False, True, True),
        ("http://mlflow:5000", True, False, False),
    ],
)
def test_opt_in_per_operator_and_per_run(
    uri: str, by_default: bool, enabled: bool | None, expected: bool
) -> None:
    run = {
        **RUN,
        "spec": {**RUN["spec"], "tracking": {} if enabled is None else {"enabled": enabled}},
    }
    assert tracked(run, TrackingSettings(tracking_uri=uri, track_by_default=by_default)) is expected


def test_experiment_names() -> None:
    settings = TrackingSettings(tracking_uri="http://mlflow:5000")
    assert experiment_name(RUN, settings) == "kubeloop/team-a/churn"
    named = {**RUN, "spec": {**RUN["spec"], "tracking": {"experimentName": "churn-prod"}}}
    assert experiment_name(named, settings) == "churn-prod"


def test_final_fields_of_a_sweep_carry_the_best_trial() -> None:
    status = {
        "phase": "Succeeded",
        "model": {
            "uri": URI,
            "sha256": SHA,
            "metrics": {"accuracy": 0.9},
            "championMetrics": {"accuracy": 0.8},
            "dataFingerprint": "fp",
        },
        "bestTrial": 1,
        "trials": [
            {"index": 0, "params": {"C": 0.1}},
            {"index": 1, "params": {"C": 1.0, "penalty": "l2"}},
        ],
    }
    fields = final_fields(status)
    assert fields["metrics"] == {"accuracy": 0.9, "champion.accuracy": 0.8}
    assert fields["params"] == {"C": "1.0", "penalty": "l2"}
    assert fields["tags"][tags.SHA256] == SHA and fields["tags"]["kubeloop.bestTrial"] == "1"


def test_version_source() -> None:
    assert version_source("s3://b/m/model.skops", "r1") == "s3://b/m/model.skops"
    assert version_source(URI, "r1") == "runs:/r1/model.skops"


def test_trainer_env_takes_only_the_credential_keys_of_the_secret() -> None:
    spec = {"tracking": {"credentials": {"secretRef": {"name": "mlflow-creds"}}}}
    env = tracking_env(spec, "http://mlflow:5000", "r1", "7")
    by_name = {e["name"]: e for e in env}
    assert by_name["KUBELOOP_MLFLOW_RUN_ID"]["value"] == "r1"
    assert by_name["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-creds",
        "key": "MLFLOW_TRACKING_TOKEN",
        "optional": True,
    }
    job = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "env": [
                                {"name": "KUBELOOP_MLFLOW_RUN_ID", "value": ""},
                                {"name": "HOME", "value": "/tmp"},
                            ],
                        }
                    ]
                }
            }
        }
    }
    built = with_tracking(job, env)
    names = [e["name"] for e in built["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.count("KUBELOOP_MLFLOW_RUN_ID") == 1 and "HOME" in names
    assert job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == ""  # not mutated
