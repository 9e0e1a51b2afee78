"""Table tests of the DriftPolicy decision: drift verdicts, retrain limits, schedule, outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from kubeloop.decide.common import wire_time
from kubeloop.decide.driftpolicy import (
    DriftMeasurement,
    check_due,
    decide,
    drift_config,
    labelled_counts,
    live_counts_query,
    retrain_run,
    verdict_from_report,
)
from kubeloop.drift.profile import build_profile
from kubeloop.drift.report import counts_from_samples, drift_report

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
# The promotion sets trainingRunRef and deletes every other source (a merge patch keeps what
# it does not name, and the CRD refuses two sources).
PROMOTE_R1 = {
    "spec": {
        "model": {
            "trainingRunRef": {"name": "cancer-drift-r1"},
            "storageUri": None,
            "sha256": None,
            "registry": None,
        }
    }
}
RUN_SPEC = {
    "model": {"name": "cancer", "estimator": "sklearn.linear_model.LogisticRegression", "task": "classification"},
    "data": {"source": "sklearn://breast_cancer", "target": "target"},
    "evaluation": {"metric": "accuracy", "threshold": 0.9},
}


def policy(status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "targetRef": {"name": "cancer"},
        "source": {"live": {"prometheusUrl": "http://127.0.0.1:9090"}},
        "interval": "1m",
        "window": "10m",
        "minSamples": 100,
        "retrain": {"template": {"spec": RUN_SPEC}, "cooldown": "1h", "maxRetrainsPerDay": 3, "autoPromote": True},
    }
    body.update(spec)
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "DriftPolicy",
        "metadata": {
            "name": "cancer-drift", "namespace": "ml", "uid": "uid-dp", "generation": 1,
            "creationTimestamp": "2026-11-23T00:00:00Z", "annotations": annotations or {},
        },
        "spec": body,
        **({"status": status} if status is not None else {}),
    }


def measured(shift: float, rows: int = 5000) -> DriftMeasurement:
    """A real drift report: 4 features, the first two shifted by ``shift`` standard deviations."""
    rng = np.random.default_rng(7)
    reference = {f"x{i}": rng.normal(size=20000) for i in range(4)}
    profile = build_profile(reference)
    current = {f"x{i}": rng.normal(size=rows) + (shift if i < 2 else 0.0) for i in range(4)}
    report = drift_report(profile, counts_from_samples(profile, current), drift_config({"driftShare": 0.5}))
    return DriftMeasurement(verdict=verdict_from_report(report), samples=report.sample_size)


DRIFT = measured(1.0)
CALM = measured(0.0)


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_the_fixture_reports_are_what_they_claim() -> None:
    assert DRIFT.verdict is not None and DRIFT.verdict.drifted
    assert sorted(DRIFT.verdict.drifted_features) == ["x0", "x1"]
    assert CALM.verdict is not None and not CALM.verdict.drifted


def test_drift_creates_one_retrain_judged_against_the_champion() -> None:
    decision = decide(policy(), NOW, DRIFT, {})
    run = decision.create_run
    assert run is not None
    assert run["metadata"]["name"] == "cancer-drift-r1"
    assert run["metadata"]["labels"]["kubeloop.io/retrain-reason"] == "drift"
    assert run["metadata"]["ownerReferences"][0]["uid"] == "uid-dp"
    assert run["spec"]["evaluation"]["compareTo"] == "champion"
    assert run["spec"]["evaluation"]["championRef"] == {"name": "cancer"}
    status = decision.status
    assert status["drifted"] is True
    assert status["driftedFeatures"] == ["x0", "x1"]
    assert status["lastRetrain"] == {"name": "cancer-drift-r1", "reason": "Drift", "time": wire_time(NOW), "outcome": "Pending"}
    assert status["retrainCount"] == 1
    assert cond(status, "Drifted")["status"] == "True"
    assert cond(status, "RetrainInFlight")["status"] == "True"
    assert {e.reason for e in decision.events} == {"DriftDetected", "RetrainCreated"}
    assert status["history"][-1]["retrain"] == "cancer-drift-r1"
    assert {s["feature"] for s in status["scores"]} == {"x0", "x1", "x2", "x3"}


def test_no_drift_no_retrain() -> None:
    decision = decide(policy(), NOW, CALM, {})
    assert decision.create_run is None
    assert decision.status["drifted"] is False
    assert cond(decision.status, "Drifted")["status"] == "False"
    assert decision.requeue_after == pytest.approx(60.0)


def test_a_dataset_check_names_its_html_report_in_the_status_and_the_history() -> None:
    uri = "file:///models/cancer/cancer-1/drift/cancer-drift/1795435200/report.html"
    dataset = policy(source={"dataset": {"uri": "file:///data/today.csv"}}, window=None)
    checked = DriftMeasurement(verdict=CALM.verdict, samples=CALM.samples, report=uri)
    status = decide(dataset, NOW, checked, {}).status
    assert status["report"] == uri
    assert status["history"][-1]["report"] == uri
    # The next check without a page (a live source) drops the old link, and the history keeps it.
    later = decide(policy(status), NOW + timedelta(minutes=5), CALM, {}).status
    assert later["report"] is None
    assert later["history"][-2]["report"] == uri and "report" not in later["history"][-1]
    assert "report" not in decide(policy(), NOW, CALM, {}).status


def test_not_enough_samples_gives_no_verdict() -> None:
    small = DriftMeasurement(verdict=DRIFT.verdict, samples=50)
    decision = decide(policy(), NOW, small, {})
    assert decision.create_run is None
    assert cond(decision.status, "NotEnoughData")["status"] == "True"
    assert "minSamples=100" in decision.status["message"]


def test_measurement_error_is_reported_with_its_reason() -> None:
    error = DriftMeasurement(error="spec.targetRef: ModelDeployment 'x' does not exist", error_reason="TargetNotFound")
    decision = decide(policy(), NOW, error, {})
    assert cond(decision.status, "Ready")["reason"] == "TargetNotFound"
    assert decision.status["lastFailure"]["reason"] == "TargetNotFound"


IN_FLIGHT = {"lastRetrain": {"name": "cancer-drift-r1", "reason": "Drift", "time": wire_time(NOW - timedelta(hours=2)), "outcome": "Pending"}, "retrainCount": 1}
RECENT = {"lastRetrain": {"name": "cancer-drift-r1", "reason": "Drift", "time": wire_time(NOW - timedelta(minutes=10)), "outcome": "Rejected"}, "retrainCount": 1}
OLD = {"lastRetrain": {"name": "cancer-drift-r1", "reason": "Drift", "time": wire_time(NOW - timedelta(hours=2)), "outcome": "Rejected"}, "retrainCount": 1}
LIMIT = {**OLD, "retrainsToday": 3, "retrainsDay": "2026-11-23"}
YESTERDAY_LIMIT = {**OLD, "retrainsToday": 3, "retrainsDay": "2026-11-22"}
PENDING_RUN = {"cancer-drift-r1": {"metadata": {"name": "cancer-drift-r1"}, "spec": RUN_SPEC, "status": {"phase": "Training"}}}


@pytest.mark.parametrize(
    ("case", "status", "annotations", "runs", "creates", "reason"),
    [
        ("in-flight blocks", IN_FLIGHT, {}, PENDING_RUN, None, "RetrainCreated"),
        ("cooldown blocks drift", RECENT, {}, {}, None, "CooldownActive"),
        ("after cooldown", OLD, {}, {}, "cancer-drift-r2", "RetrainCreated"),
        ("daily limit", LIMIT, {}, {}, None, "RetrainLimitReached"),
        ("limit resets next day", YESTERDAY_LIMIT, {}, {}, "cancer-drift-r2", "RetrainCreated"),
        ("manual skips cooldown", RECENT, {"kubeloop.io/retrain": "req-1"}, {}, "cancer-drift-r2", "ManualRetrain"),
        ("manual respects the limit", LIMIT, {"kubeloop.io/retrain": "req-1"}, {}, None, "RetrainLimitReached"),
    ],
)
def test_retrain_limits(case: str, status: dict[str, Any], annotations: dict[str, str], runs: dict[str, Any], creates: str | None, reason: str) -> None:
    decision = decide(policy(status=status, annotations=annotations), NOW, DRIFT, runs)
    created = decision.create_run["metadata"]["name"] if decision.create_run else None
    assert created == creates
    assert reason in {e.reason for e in decision.events}


def test_a_manual_request_is_acted_on_once() -> None:
    first = decide(policy(annotations={"kubeloop.io/retrain": "req-1"}), NOW, None, {})
    assert first.create_run is not None
    assert first.create_run["metadata"]["labels"]["kubeloop.io/retrain-reason"] == "manual"
    later = NOW + timedelta(hours=3)
    done = {**first.status, "lastRetrain": {**first.status["lastRetrain"], "outcome": "Rejected"}}
    second = decide(policy(status=done, annotations={"kubeloop.io/retrain": "req-1"}), later, None, {})
    assert second.create_run is None


@pytest.mark.parametrize(
    ("run_status", "auto_promote", "outcome", "promotes", "event"),
    [
        ({"phase": "Succeeded", "model": {"metrics": {"accuracy": 0.97}, "championMetrics": {"accuracy": 0.93}}}, True, "Promoted", True, "RetrainSucceeded"),
        ({"phase": "Succeeded", "model": {"metrics": {"accuracy": 0.97}, "championMetrics": {"accuracy": 0.93}}}, False, "Succeeded", False, "RetrainSucceeded"),
        ({"phase": "Failed", "lastFailure": {"reason": "GateFailed"}, "model": {"metrics": {"accuracy": 0.90}, "championMetrics": {"accuracy": 0.93}}}, True, "Rejected", False, "RetrainRejected"),
        ({"phase": "Failed", "lastFailure": {"reason": "BackoffLimitExceeded"}, "message": "OOM"}, True, "Failed", False, "RetrainFailed"),
        ({"phase": "Training"}, True, "Running", False, None),
    ],
)
def test_retrain_outcome(run_status: dict[str, Any], auto_promote: bool, outcome: str, promotes: bool, event: str | None) -> None:
    spec = policy()["spec"]
    spec["retrain"]["autoPromote"] = auto_promote
    runs = {"cancer-drift-r1": {"metadata": {"name": "cancer-drift-r1"}, "spec": RUN_SPEC, "status": run_status}}
    decision = decide(policy(status=IN_FLIGHT, retrain=spec["retrain"]), NOW, None, runs)
    assert decision.status["lastRetrain"]["outcome"] == outcome
    assert (decision.promote == PROMOTE_R1) is promotes
    assert (event in {e.reason for e in decision.events}) if event else not decision.events
    if outcome == "Rejected":
        assert "champion stays" in decision.status["lastRetrain"]["message"]
        assert "0.9" in decision.status["lastRetrain"]["message"] and "0.93" in decision.status["lastRetrain"]["message"]


def test_schedule_fires_at_the_cron_time_and_moves_on() -> None:
    hourly = policy(schedule="0 * * * *")
    before = decide(hourly, datetime(2026, 11, 23, 0, 30, tzinfo=UTC), None, {})
    assert before.create_run is None
    assert before.status["nextScheduleTime"] == "2026-11-23T01:00:00Z"
    at = decide(policy(status=before.status, schedule="0 * * * *"), datetime(2026, 11, 23, 1, 0, 5, tzinfo=UTC), None, {})
    assert at.create_run is not None
    assert at.create_run["metadata"]["labels"]["kubeloop.io/retrain-reason"] == "schedule"
    assert at.status["nextScheduleTime"] == "2026-11-23T02:00:00Z"
    assert at.status["lastRetrain"]["reason"] == "Schedule"


def test_check_is_due_after_the_interval() -> None:
    assert check_due(policy(), NOW)
    checked = policy(status={"lastCheckTime": wire_time(NOW)})
    assert not check_due(checked, NOW + timedelta(seconds=59))
    assert check_due(checked, NOW + timedelta(seconds=60))


def test_retrain_from_a_training_run_with_overrides() -> None:
    spec = {"retrain": {"fromTrainingRun": {"name": "cancer-1"}, "overrides": {"data": {"source": "s3://b/new.csv"}}}}
    run = retrain_run(policy(**spec), 4, "Drift", RUN_SPEC)
    assert run["spec"]["data"] == {"source": "s3://b/new.csv", "target": "target"}
    assert run["spec"]["model"] == RUN_SPEC["model"]
    assert run["metadata"]["name"] == "cancer-drift-r4"
    with pytest.raises(ValueError, match="fromTrainingRun"):
        retrain_run(policy(**spec), 4, "Drift", None)


def test_drift_config_from_spec() -> None:
    config = drift_config({
        "tests": {"numerical": "ks", "categorical": "jensenshannon"},
        "thresholds": {"jensenshannon": 0.3, "features": {"city": 0.4}},
        "alpha": {"default": 0.01, "features": {"age": 0.2}}, "driftShare": 0.3,
    })
    assert config.threshold_for("x", "ks") == 0.01
    assert config.threshold_for("age", "ks") == 0.2
    assert config.threshold_for("x", "jensenshannon") == 0.3
    assert config.threshold_for("city", "jensenshannon") == 0.4
    assert config.drift_share == 0.3
    assert (drift_config({}).numerical_test, drift_config({}).categorical_test) == ("auto", "auto")
    assert drift_config({"tests": {"numerical": "ks"}}).categorical_test == "auto"


def test_live_query_and_grouping() -> None:
    query = live_counts_query("cancer", "abcdef123456", timedelta(minutes=10))
    assert 'sha="abcdef123456"' in query and "[600s]" in query
    grouped = labelled_counts([({"feature": "x", "bin": "0"}, 3.0), ({"feature": "x", "bin": "missing"}, 2.0), ({"feature": "x", "bin": "0"}, 1.0)])
    assert grouped == {"x": {"0": 4.0}}
