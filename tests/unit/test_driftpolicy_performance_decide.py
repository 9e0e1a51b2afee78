"""Table tests of the DriftPolicy decision for spec.performance: verdicts, retrains, references.

A degraded performance retrains by the very path feature drift takes (cooldown, daily limit,
one in flight, champion gate, autoPromote); fewer labels than minLabels gives no verdict.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from kubeloop.api.driftpolicy import DriftPolicySpec
from kubeloop.decide.common import wire_time
from kubeloop.decide.driftpolicy import (
    DriftMeasurement,
    PerformanceReading,
    decide,
    reference_value,
)

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
RUN_SPEC = {
    "model": {
        "name": "cancer",
        "estimator": "sklearn.linear_model.LogisticRegression",
        "task": "classification",
    },
    "data": {"source": "sklearn://breast_cancer", "target": "target"},
    "evaluation": {"metric": "accuracy", "threshold": 0.9},
}


def policy(status: dict[str, Any] | None = None, **performance: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "DriftPolicy",
        "metadata": {
            "name": "cancer-perf",
            "namespace": "ml",
            "uid": "uid-dp",
            "generation": 1,
            "creationTimestamp": "2026-11-23T00:00:00Z",
        },
        "spec": {
            "targetRef": {"name": "cancer"},
            "source": {"live": {}},
            "interval": "1m",
            "performance": {
                "metric": "accuracy",
                "minLabels": 100,
                "tolerance": 0.05,
                **performance,
            },
            "retrain": {
                "template": {"spec": RUN_SPEC},
                "cooldown": "1h",
                "maxRetrainsPerDay": 2,
                "autoPromote": True,
            },
        },
        **({"status": status} if status is not None else {}),
    }


def reading(
    live: float | None, labels: int = 500, reference: float = 0.95, metric: str = "accuracy"
) -> DriftMeasurement:
    return DriftMeasurement(
        performance=PerformanceReading(metric, labels, live, reference), samples=labels
    )


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_degraded_performance_retrains_against_the_champion() -> None:
    decision = decide(policy(), NOW, reading(0.80), {})
    run = decision.create_run
    assert run is not None and run["metadata"]["name"] == "cancer-perf-r1"
    assert run["metadata"]["labels"]["kubeloop.io/retrain-reason"] == "performance"
    assert run["spec"]["evaluation"]["compareTo"] == "champion"
    assert run["spec"]["evaluation"]["championRef"] == {"name": "cancer"}
    status = decision.status
    assert status["performance"] == {
        "metric": "accuracy",
        "labels": 500,
        "reference": 0.95,
        "live": 0.8,
        "limit": 0.9025,
        "degraded": True,
    }
    assert status["drifted"] is True and status["samples"] == 500
    assert status["lastRetrain"] == {
        "name": "cancer-perf-r1",
        "reason": "Performance",
        "time": wire_time(NOW),
        "outcome": "Pending",
    }
    drifted = cond(status, "Drifted")
    assert (drifted["status"], drifted["reason"]) == ("True", "PerformanceDegraded")
    assert "live accuracy 0.8 over 500 labels vs reference 0.95 (limit 0.9025" in drifted["message"]
    assert cond(status, "NotEnoughData")["status"] == "False"
    assert [(e.type, e.reason) for e in decision.events] == [
        ("Warning", "PerformanceDegraded"),
        ("Normal", "RetrainCreated"),
    ]
    assert status["history"][-1] == {
        "time": wire_time(NOW),
        "drifted": True,
        "samples": 500,
        "retrain": "cancer-perf-r1",
    }


@pytest.mark.parametrize(
    ("metric", "reference", "live", "degraded"),
    [
        ("accuracy", 0.95, 0.91, False),  # limit 0.9025
        ("accuracy", 0.95, 0.90, True),
        ("f1", 0.80, 0.77, False),  # limit 0.76
        ("f1", 0.80, 0.75, True),
        ("rmse", 10.0, 10.4, False),  # limit 10.5
        ("rmse", 10.0, 10.6, True),
        ("mae", 4.0, 4.3, True),  # limit 4.2
    ],
)
def test_verdict_table(metric: str, reference: float, live: float, degraded: bool) -> None:
    decision = decide(
        policy(metric=metric), NOW, reading(live, reference=reference, metric=metric), {}
    )
    assert decision.status["performance"]["degraded"] is degraded
    assert (decision.create_run is not None) is degraded
    assert cond(decision.status, "Drifted")["reason"] == (
        "PerformanceDegraded" if degraded else "PerformanceHeld"
    )


@pytest.mark.parametrize("labels", [0, 99])
def test_fewer_labels_than_min_labels_no_verdict_no_retrain(labels: int) -> None:
    decision = decide(policy(), NOW, reading(0.1 if labels else None, labels=labels), {})
    assert decision.create_run is None
    not_enough = cond(decision.status, "NotEnoughData")
    assert (not_enough["status"], not_enough["reason"]) == ("True", "NotEnoughLabels")
    assert (
        f"{labels} labelled rows arrived in the window, fewer than performance.minLabels=100"
        in not_enough["message"]
    )
    assert decision.status["performance"] == {
        "metric": "accuracy",
        "labels": labels,
        "reference": 0.95,
    }
    assert "drifted" not in decision.status and not decision.events


def retrained(minutes_ago: float, outcome: str = "Succeeded", count: int = 1) -> dict[str, Any]:
    return {
        "drifted": True,
        "retrainCount": count,
        "retrainsToday": count,
        "retrainsDay": "2026-11-23",
        "lastRetrain": {
            "name": f"cancer-perf-r{count}",
            "reason": "Performance",
            "time": wire_time(NOW - timedelta(minutes=minutes_ago)),
            "outcome": outcome,
        },
    }


@pytest.mark.parametrize(
    ("status", "blocked_by"),
    [
        (retrained(10), "CooldownActive"),
        (retrained(90, outcome="Running"), "RetrainCreated"),  # one in flight
        (retrained(90, count=2), "RetrainLimitReached"),
    ],
)
def test_degraded_respects_the_retrain_limits(status: dict[str, Any], blocked_by: str) -> None:
    runs = {
        status["lastRetrain"]["name"]: {
            "metadata": {"name": status["lastRetrain"]["name"]},
            "spec": RUN_SPEC,
            "status": {"phase": "Training"},
        }
    }
    decision = decide(policy(status), NOW, reading(0.5), runs)
    assert decision.create_run is None
    assert blocked_by in {e.reason for e in decision.events}
    assert "performance retrain skipped" in decision.status["message"]


def test_a_winning_retrain_is_promoted_and_performance_recovers() -> None:
    status = retrained(90, outcome="Running")
    run = {
        "metadata": {"name": "cancer-perf-r1"},
        "spec": RUN_SPEC,
        "status": {
            "phase": "Succeeded",
            "model": {"metrics": {"accuracy": 0.97}, "championMetrics": {"accuracy": 0.91}},
        },
    }
    decision = decide(policy(status), NOW, reading(0.96), {"cancer-perf-r1": run})
    assert decision.promote == {
        "spec": {"model": {"trainingRunRef": {"name": "cancer-perf-r1"}, "storageUri": None, "sha256": None, "registry": None}}
    }
    assert decision.status["lastRetrain"]["outcome"] == "Promoted"
    assert decision.status["drifted"] is False
    assert "PerformanceHeld" in {e.reason for e in decision.events}


RUN = {
    "metadata": {"name": "cancer-1"},
    "spec": RUN_SPEC,
    "status": {"model": {"metrics": {"accuracy": 0.95, "f1": 0.96}}},
}


@pytest.mark.parametrize(
    ("performance", "run", "run_name", "expected", "problem"),
    [
        ({"metric": "f1"}, RUN, "cancer-1", 0.96, None),
        ({"metric": "accuracy", "reference": 0.9}, RUN, "cancer-1", 0.9, None),
        ({"metric": "accuracy", "reference": 0.9}, None, None, 0.9, None),
        (
            {"metric": "accuracy"},
            None,
            None,
            None,
            ("ReferenceUnavailable", "pinned by storageUri"),
        ),
        ({"metric": "accuracy"}, None, "cancer-1", None, ("ReferenceUnavailable", "is gone")),
        (
            {"metric": "accuracy"},
            {**RUN, "status": {}},
            "cancer-1",
            None,
            ("ReferenceUnavailable", "recorded no holdout accuracy"),
        ),
        (
            {"metric": "rmse", "reference": 3.0},
            RUN,
            "cancer-1",
            None,
            ("InvalidSpec", "spec.performance.metric: rmse is a regression metric"),
        ),
    ],
)
def test_reference_value(
    performance: dict[str, Any],
    run: dict[str, Any] | None,
    run_name: str | None,
    expected: float | None,
    problem: tuple[str, str] | None,
) -> None:
    value, found = reference_value(performance, run, run_name)
    assert value == expected
    if problem is None:
        assert found is None
    else:
        assert found is not None and found[0] == problem[0] and problem[1] in found[1]


BASE_SPEC = {
    "targetRef": {"name": "cancer"},
    "source": {"live": {}},
    "performance": {"metric": "accuracy"},
}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"minSamples": 100}, "spec.minSamples"),
        ({"driftShare": 0.5}, "spec.driftShare"),
        ({"tests": {"numerical": "psi"}}, "spec.tests"),
        ({"features": ["x"]}, "spec.features"),
        ({"source": {"dataset": {"uri": "file:///data/x.csv"}}}, "spec.performance"),
    ],
)
def test_settings_a_performance_policy_would_ignore_are_refused(
    extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        DriftPolicySpec.model_validate({**BASE_SPEC, **extra})


def test_a_performance_policy_with_a_window_from_prometheus_is_valid() -> None:
    spec = DriftPolicySpec.model_validate(
        {
            **BASE_SPEC,
            "source": {"live": {"prometheusUrl": "http://prometheus:9090"}},
            "window": "2h",
        }
    )
    assert spec.performance is not None and spec.performance.min_labels == 200


def test_the_first_scrape_says_it_only_recorded() -> None:
    first = DriftMeasurement(
        performance=PerformanceReading("accuracy", 0, None, 0.95, first_scrape=True)
    )
    decision = decide(policy(), NOW, first, {})
    assert decision.create_run is None
    not_enough = cond(decision.status, "NotEnoughData")
    assert not_enough["reason"] == "NotEnoughLabels"
    assert not_enough["message"].startswith(
        "no verdict yet: the first scrape of the stable pods only records"
    )
