"""The trainer's MLflow side (kubeloop.runtime.tracking): when it logs, what it logs, and that
an unreachable server never changes a run's outcome."""

from __future__ import annotations

import socket

import pytest

from kubeloop.registry import tags
from kubeloop.runtime.tracking import (
    ENV_EXPERIMENT_ID,
    ENV_RUN_ID,
    ENV_TRACKING_URI,
    TrackingTarget,
    log_result,
    run_fields,
    target_from_env,
)
from kubeloop.training.result import TrainingResult

SHA = "cd" * 32


def result(trial: int | None = None) -> TrainingResult:
    return TrainingResult(
        status="Succeeded",
        exit_code=0,
        uri="file:///m/churn/r/model.skops",
        sha256=SHA,
        metric="accuracy",
        metrics={"accuracy": 0.9, "f1": 0.8},
        champion_metrics={"accuracy": 0.85},
        data_fingerprint="fp1",
        trial=trial,
        params={"C": 1.0, "penalty": "l2", "layers": [8, 4]},
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({ENV_TRACKING_URI: "http://mlflow:5000"}, None),  # no run: the operator did not turn it on
        ({ENV_TRACKING_URI: "", ENV_RUN_ID: "r1"}, None),  # pinned empty by the operator
        (
            {ENV_TRACKING_URI: "http://mlflow:5000", ENV_RUN_ID: "r1", ENV_EXPERIMENT_ID: "4"},
            TrackingTarget("http://mlflow:5000", "r1", "4"),
        ),
    ],
)
def test_tracking_only_when_the_operator_turned_it_on(
    env: dict[str, str], expected: TrackingTarget | None
) -> None:
    assert target_from_env(env) == expected


def test_run_fields() -> None:
    fields = run_fields(result(trial=2), {"model": {"estimator": "sklearn.svm.SVC"}})
    assert fields["params"] == {
        "C": "1.0",
        "penalty": "l2",
        "layers": "[8,4]",
        "estimator": "sklearn.svm.SVC",
    }
    assert fields["metrics"] == {"accuracy": 0.9, "f1": 0.8, "champion.accuracy": 0.85}
    assert fields["tags"][tags.SHA256] == SHA and fields["tags"][tags.TRIAL] == "2"
    assert fields["tags"][tags.DATA_FINGERPRINT] == "fp1"


def test_an_unreachable_server_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = TrackingTarget(f"http://127.0.0.1:{port}", "r1", "1")
    run_id, error = log_result(target, result(), None, "churn-1")
    assert run_id == "r1"
    assert error is not None and error.startswith(
        f"logging to MLflow at http://127.0.0.1:{port} failed: "
    )
