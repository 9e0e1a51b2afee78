"""A DriftPolicy's retrain judged against the MLflow registry's champion (issue 17): which
deployments name a registry champion, and how a retrain waits while MLflow is unreachable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubeloop.decide.common import wire_time
from kubeloop.decide.driftpolicy import (
    DriftMeasurement,
    Verdict,
    check_due,
    decide,
    waiting_for_registry,
)
from kubeloop.registry.champion import champion_label, champion_source
from kubeloop.registry.decide import REGISTRY_UNAVAILABLE, Resolution

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
RUN_SPEC = {
    "model": {
        "name": "churn",
        "estimator": "sklearn.linear_model.LogisticRegression",
        "task": "classification",
    },
    "data": {"source": "sklearn://breast_cancer", "target": "target"},
    "evaluation": {"metric": "accuracy"},
}
DOWN = Resolution(
    reason=REGISTRY_UNAVAILABLE,
    message="cannot read the champion of registered model 'churn' (churn@champion) from MLflow: "
    "connection refused; the retrain waits and is created when MLflow answers",
    waiting=True,
)
UP = Resolution(uri="file:///models/churn/model.skops", sha256="a" * 64, version="3")


def policy(
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "targetRef": {"name": "churn"},
        "source": {"live": {"prometheusUrl": "http://127.0.0.1:9090"}},
        "interval": "5m",
        "minSamples": 10,
        "retrain": {"template": {"spec": RUN_SPEC}, "cooldown": "1h", "maxRetrainsPerDay": 3},
    }
    body.update(spec)
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "DriftPolicy",
        "metadata": {
            "name": "churn-drift",
            "namespace": "ml",
            "uid": "uid-dp",
            "generation": 1,
            "creationTimestamp": "2026-12-06T00:00:00Z",
            "annotations": annotations or {},
        },
        "spec": body,
        **({"status": status} if status is not None else {}),
    }


def drift() -> DriftMeasurement:
    verdict = Verdict(
        drifted=True,
        share=1.0,
        scores=[],
        drifted_features=["x0"],
        feature_count=1,
        prediction_drifted=False,
    )
    return DriftMeasurement(verdict=verdict, samples=100)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        (None, None),
        ({"spec": {"model": {"trainingRunRef": {"name": "churn-1"}}}}, None),
        ({"spec": {"model": {"storageUri": "file:///m.skops", "sha256": "a" * 64}}}, None),
        (
            {"spec": {"model": {"registry": {"name": "churn", "alias": "challenger"}}}},
            {"name": "churn", "alias": "champion"},
        ),
        (
            {"spec": {"model": {"registry": {"name": "churn", "version": "2"}}}},
            {"name": "churn", "alias": "champion"},
        ),
    ],
    ids=["no deployment", "training run", "pinned artifact", "by alias", "by version"],
)
def test_which_deployments_name_a_registry_champion(
    deployment: dict[str, Any] | None, expected: dict[str, str] | None
) -> None:
    # Whatever alias or version the deployment serves, the retrain is judged against the
    # version the registry calls champion.
    assert champion_source(deployment) == expected


def test_the_champion_names_its_registry_version() -> None:
    label = champion_label({"name": "churn", "alias": "champion"}, UP)
    assert label == "MLflow churn@champion (version 3)"


@pytest.mark.parametrize("champion", [None, UP], ids=["not a registry target", "registry answers"])
def test_a_retrain_is_created_when_the_champion_is_known(champion: Resolution | None) -> None:
    decision = decide(policy(), NOW, drift(), {}, registry_champion=champion)
    assert decision.create_run is not None
    evaluation = decision.create_run["spec"]["evaluation"]
    assert evaluation["compareTo"] == "champion"
    assert evaluation["championRef"] == {"name": "churn"}


def test_drift_retrain_waits_for_mlflow_while_the_target_stays_drifted() -> None:
    decision = decide(policy(), NOW, drift(), {}, registry_champion=DOWN)
    assert decision.create_run is None
    status = decision.status
    assert "retrainCount" not in status and "lastRetrain" not in status
    waits = condition(status, "RetrainInFlight")
    assert waits["status"] == "False" and waits["reason"] == REGISTRY_UNAVAILABLE
    assert "drift retrain waits" in waits["message"] and "MLflow" in waits["message"]
    assert status["lastFailure"]["reason"] == REGISTRY_UNAVAILABLE
    assert [(e.type, e.reason) for e in decision.events][-1] == ("Warning", REGISTRY_UNAVAILABLE)
    assert waiting_for_registry(status)
    # No new check is made for it (the next comes at the interval)...
    assert not check_due(policy(status), NOW + timedelta(minutes=4))
    # ...but every reconcile still wants the retrain, so the controller asks MLflow again;
    # while it stays down the status does not change and no second Event is posted.
    later = NOW + timedelta(seconds=30)
    assert decide(policy(status), later, None, {}).create_run is not None
    again = decide(policy(status), later, None, {}, registry_champion=DOWN)
    assert again.create_run is None
    assert again.status == status and again.events == []

    # MLflow answers: the drift retrain is created, and the wait is over.
    back = decide(policy(status), later, None, {}, registry_champion=UP)
    assert back.create_run is not None
    assert back.status["lastRetrain"]["reason"] == "Drift"
    assert condition(back.status, "RetrainInFlight")["status"] == "True"
    assert not waiting_for_registry(back.status)


def test_a_drift_retrain_no_longer_wanted_stops_waiting() -> None:
    waited = decide(policy(), NOW, drift(), {}, registry_champion=DOWN).status
    calm = DriftMeasurement(
        verdict=Verdict(
            drifted=False,
            share=0.0,
            scores=[],
            drifted_features=[],
            feature_count=1,
            prediction_drifted=False,
        ),
        samples=100,
    )
    checked = decide(policy(waited), NOW + timedelta(minutes=5), calm, {})
    assert checked.create_run is None
    assert condition(checked.status, "RetrainInFlight")["reason"] != REGISTRY_UNAVAILABLE
    after = decide(policy(checked.status), NOW + timedelta(minutes=6), None, {})
    assert after.create_run is None


def test_manual_retrain_stays_requested_while_mlflow_is_down() -> None:
    ask = {"kubeloop.io/retrain": "req-1"}
    decision = decide(policy(annotations=ask), NOW, None, {}, registry_champion=DOWN)
    assert decision.create_run is None
    assert "handledRequests" not in decision.status
    assert "manual retrain waits" in decision.status["message"]
    # Tried again on the next reconcile: same status, no second Event while it waits.
    again = decide(
        policy(decision.status, annotations=ask),
        NOW + timedelta(seconds=30),
        None,
        {},
        registry_champion=DOWN,
    )
    assert again.create_run is None
    assert again.status == decision.status and again.events == []
    done = decide(policy(decision.status, annotations=ask), NOW + timedelta(seconds=60), None, {})
    assert done.create_run is not None
    assert done.status["handledRequests"] == {"retrain": "req-1"}


def test_scheduled_retrain_stays_due_while_mlflow_is_down() -> None:
    due = wire_time(NOW - timedelta(seconds=1))
    decision = decide(
        policy({"nextScheduleTime": due}, schedule="0 3 * * *"),
        NOW,
        None,
        {},
        registry_champion=DOWN,
    )
    assert decision.create_run is None
    assert decision.status["nextScheduleTime"] == due
    fired = decide(
        policy(decision.status, schedule="0 3 * * *"), NOW + timedelta(seconds=30), None, {}
    )
    assert fired.create_run is not None
    assert fired.status["lastRetrain"]["reason"] == "Schedule"
