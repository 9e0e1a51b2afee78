"""Notifications: which Event is which trigger, who is told, what the payloads carry (pure,
tables), and delivery to a real HTTP receiver on 127.0.0.1 (retries, drops, dead sinks)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubeloop.notifications import triggers as t
from kubeloop.notifications.delivery import Metrics, Notifier, SinkConfigError, resolve_url
from kubeloop.notifications.payloads import cloudevent_request, slack_message
from kubeloop.notifications.settings import NotificationSettings, SinkSettings
from kubeloop.notifications.triggers import Notification, derive, subscribers, trigger_of
from kubeloop.trust.urls import notification_url_problem
from webhook_receiver import HANG, WebhookReceiver

NOW = "2026-12-06T11:00:00Z"

# --- trigger derivation -------------------------------------------------------------------

TRIGGERS = [
    # kind, event type, reason, message, status -> trigger
    ("TrainingRun", "Normal", "Succeeded", "trained", {"phase": "Succeeded"}, t.RUN_SUCCEEDED),
    ("TrainingRun", "Warning", "GateFailed", "gate", {"phase": "Failed"}, t.RUN_GATE_FAILED),
    ("TrainingRun", "Warning", "DataValidationFailed", "rows", {"phase": "Failed"}, t.RUN_FAILED),
    ("TrainingRun", "Warning", "BackoffLimitExceeded", "x", {"phase": "Failed"}, t.RUN_FAILED),
    ("TrainingRun", "Normal", "JobCreated", "job", {"phase": "Pending"}, None),
    ("TrainingRun", "Warning", "ImagePullFailed", "pull", {"phase": "Pending"}, None),
    (
        "ModelDeployment",
        "Normal",
        "RolloutStarted",
        "r",
        {"canary": {"sha256": "b"}},
        t.ROLLOUT_STARTED,
    ),
    (
        "ModelDeployment",
        "Normal",
        "RolledBack",
        "undo",
        {"canary": {"sha256": "a"}},
        t.ROLLOUT_STARTED,
    ),
    (
        "ModelDeployment",
        "Normal",
        "StepAdvanced",
        "step 1",
        {"currentStep": 1},
        t.ROLLOUT_STEP_REACHED,
    ),
    ("ModelDeployment", "Normal", "Paused", "paused", {}, t.ROLLOUT_PAUSED),
    # too many inconclusive rounds pause the rollout for a human
    (
        "ModelDeployment",
        "Warning",
        "AnalysisInconclusive",
        "paused with the current weights",
        {"analysis": {"pausedInconclusive": True}},
        t.ROLLOUT_PAUSED,
    ),
    ("ModelDeployment", "Warning", "AnalysisInconclusive", "x", {"analysis": {}}, None),
    (
        "ModelDeployment",
        "Normal",
        "Promoted",
        "now stable",
        {"stable": {"sha256": "b"}},
        t.ROLLOUT_PROMOTED,
    ),
    # promote-full posts Promoted while the canary still runs: not the promotion yet
    ("ModelDeployment", "Normal", "Promoted", "promote-full", {"canary": {"sha256": "b"}}, None),
    ("ModelDeployment", "Warning", "Aborted", "by request", {"aborted": True}, t.ROLLOUT_ABORTED),
    (
        "ModelDeployment",
        "Warning",
        "AnalysisFailed",
        "error_rate",
        {"aborted": True},
        t.ROLLOUT_ABORTED,
    ),
    ("ModelDeployment", "Warning", "AnalysisFailed", "step failed", {"aborted": False}, None),
    ("ModelDeployment", "Normal", "AnalysisPassed", "ok", {}, None),
    ("DriftPolicy", "Warning", "DriftDetected", "drift", {"drifted": True}, t.DRIFT_DETECTED),
    # a performance policy turns Drifted with its own reason: the same trigger, so a
    # subscription to drift.detected hears of it (data.signal says which)
    (
        "DriftPolicy",
        "Warning",
        "PerformanceDegraded",
        "performance degraded: live accuracy 0.61 ...",
        {"drifted": True, "performance": {"metric": "accuracy", "degraded": True}},
        t.DRIFT_DETECTED,
    ),
    # and recovers without a notification, as a feature policy does
    ("DriftPolicy", "Normal", "PerformanceHeld", "performance held", {"drifted": False}, None),
    ("DriftPolicy", "Normal", "NoDrift", "no drift", {"drifted": False}, None),
    (
        "DriftPolicy",
        "Normal",
        "RetrainCreated",
        "created TrainingRun p-1 (drift)",
        {},
        t.RETRAIN_CREATED,
    ),
    (
        "DriftPolicy",
        "Normal",
        "RetrainCreated",
        "created TrainingRun p-4 (performance)",
        {},
        t.RETRAIN_CREATED,
    ),
    (
        "DriftPolicy",
        "Normal",
        "ScheduledRetrain",
        "created TrainingRun p-2 (schedule)",
        {},
        t.RETRAIN_CREATED,
    ),
    (
        "DriftPolicy",
        "Normal",
        "ManualRetrain",
        "created TrainingRun p-3 (manual)",
        {},
        t.RETRAIN_CREATED,
    ),
    # the same reason says a retrain was skipped: not a new one
    (
        "DriftPolicy",
        "Normal",
        "RetrainCreated",
        "drift retrain skipped: p-1 is still Pending",
        {},
        None,
    ),
    ("DriftPolicy", "Normal", "RetrainRejected", "champion stays", {}, t.RETRAIN_REFUSED),
    ("DriftPolicy", "Normal", "CooldownActive", "skipped", {}, None),
]


@pytest.mark.parametrize(("kind", "type_", "reason", "message", "status", "expected"), TRIGGERS)
def test_trigger_of_an_event(
    kind: str, type_: str, reason: str, message: str, status: dict[str, Any], expected: str | None
) -> None:
    assert trigger_of(kind, type_, reason, message, status) == expected


def test_every_trigger_is_derivable_from_some_event() -> None:
    assert {row[-1] for row in TRIGGERS} - {None} == set(t.ALL_TRIGGERS)


# --- subscriptions --------------------------------------------------------------------------

SINKS = ("ops", "slack", "audit")
SUBSCRIPTIONS = [
    # annotations, defaults, trigger -> (sinks, unknown)
    ({}, {}, t.ROLLOUT_ABORTED, ((), ())),
    ({}, {"*": ["audit"]}, t.ROLLOUT_ABORTED, (("audit",), ())),
    ({}, {"*": ["audit"], "rollout.aborted": ["slack"]}, t.ROLLOUT_ABORTED, (("slack",), ())),
    (
        {"notifications.kubeloop.io/subscribe.rollout.aborted": "ops, slack"},
        {"*": ["audit"]},
        t.ROLLOUT_ABORTED,
        (("ops", "slack"), ()),
    ),
    # an annotation for one trigger leaves the others at the defaults
    (
        {"notifications.kubeloop.io/subscribe.rollout.aborted": "ops"},
        {"*": ["audit"]},
        t.ROLLOUT_PROMOTED,
        (("audit",), ()),
    ),
    (
        {"notifications.kubeloop.io/subscribe": "slack"},
        {"rollout.promoted": ["audit"]},
        t.ROLLOUT_PROMOTED,
        (("slack",), ()),
    ),
    (
        {"notifications.kubeloop.io/subscribe": "none"},
        {"*": ["audit"]},
        t.DRIFT_DETECTED,
        ((), ()),
    ),
    (
        {"notifications.kubeloop.io/subscribe.drift.detected": ""},
        {"*": ["audit"]},
        t.DRIFT_DETECTED,
        ((), ()),
    ),
    (
        {"notifications.kubeloop.io/subscribe.drift.detected": "ops,nope"},
        {},
        t.DRIFT_DETECTED,
        (("ops",), ("nope",)),
    ),
    (
        {"notifications.kubeloop.io/subscribe.drift.detected": "ops,ops"},
        {},
        t.DRIFT_DETECTED,
        (("ops",), ()),
    ),
    ({"other.io/subscribe.drift.detected": "ops"}, {}, t.DRIFT_DETECTED, ((), ())),
    # a namespace user names sinks, never URLs: a URL is an unknown sink, never requested
    (
        {"notifications.kubeloop.io/subscribe": "http://169.254.169.254/latest/meta-data"},
        {"*": ["audit"]},
        t.DRIFT_DETECTED,
        ((), ("http://169.254.169.254/latest/meta-data",)),
    ),
]


@pytest.mark.parametrize(("annotations", "defaults", "trigger", "expected"), SUBSCRIPTIONS)
def test_subscribers(
    annotations: dict[str, str],
    defaults: dict[str, list[str]],
    trigger: str,
    expected: tuple[Any, Any],
) -> None:
    chosen = subscribers(trigger, annotations, defaults, SINKS)
    assert (chosen.sinks, chosen.unknown) == expected
    # the annotation that decided: the trigger's own, else the one for every trigger
    own = next((k for k in (t.ANNOTATION_PREFIX + trigger, t.ANNOTATION) if k in annotations), None)
    assert chosen.annotation == own


# --- the numbers --------------------------------------------------------------------------


def _obj(
    kind: str, spec: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": kind,
        "metadata": {
            "namespace": "ml",
            "name": "churn",
            "uid": "u-1",
            "annotations": annotations or {},
        },
        "spec": spec or {},
    }


RUN_SPEC = {
    "model": {"name": "churn"},
    "evaluation": {"metric": "f1", "threshold": 0.7, "compareTo": "champion"},
}


def test_gate_failed_carries_the_metric_against_the_champion() -> None:
    status = {
        "phase": "Failed",
        "model": {"metrics": {"f1": 0.71, "accuracy": 0.8}, "championMetrics": {"f1": 0.74}},
        "lastFailure": {"reason": "GateFailed", "message": "the champion stays"},
    }
    note = derive(_obj("TrainingRun", RUN_SPEC), "Warning", "GateFailed", "gate", NOW, status)
    assert note is not None and note.trigger == t.RUN_GATE_FAILED
    assert {
        k: note.data[k] for k in ("metric", "value", "championValue", "threshold", "modelName")
    } == {
        "metric": "f1",
        "value": 0.71,
        "championValue": 0.74,
        "threshold": 0.7,
        "modelName": "churn",
    }
    assert note.data["failure"]["reason"] == "GateFailed"


def test_abort_carries_the_failing_analysis_metric_and_value() -> None:
    status = {
        "phase": "Degraded",
        "aborted": True,
        "canaryWeight": 0,
        "currentStep": 1,
        "stable": {"uri": "s3://m/a", "sha256": "a" * 64, "revision": "a-1", "readyReplicas": 2},
        "canary": {"uri": "s3://m/b", "sha256": "b" * 64, "revision": "b-1"},
        "analysis": {
            "runs": [
                {
                    "name": "error_rate",
                    "passed": False,
                    "value": 0.2,
                    "max": 0.05,
                    "step": 1,
                    "time": NOW,
                },
                {
                    "name": "latency_p99",
                    "passed": True,
                    "value": 0.1,
                    "max": 0.5,
                    "step": 1,
                    "time": NOW,
                },
                {
                    "name": "error_rate",
                    "passed": False,
                    "value": 0.3,
                    "max": 0.05,
                    "step": 1,
                    "time": NOW,
                },
            ]
        },
        "lastFailure": {"reason": "AnalysisFailed", "message": "error_rate 0.3 > 0.05"},
    }
    note = derive(_obj("ModelDeployment"), "Warning", "AnalysisFailed", "aborted", NOW, status)
    assert note is not None and note.trigger == t.ROLLOUT_ABORTED
    assert note.data["failedAnalysis"] == [
        {"name": "error_rate", "value": 0.3, "max": 0.05, "step": 1}
    ]
    assert note.data["canary"] == {"uri": "s3://m/b", "sha256": "b" * 64, "revision": "b-1"}
    assert note.data["stable"]["revision"] == "a-1" and note.data["canaryWeight"] == 0
    assert note.data["failure"]["reason"] == "AnalysisFailed"


def test_drift_carries_drifted_features_first_and_the_retrain_numbers() -> None:
    status = {
        "drifted": True,
        "driftedFeatures": ["x2"],
        "driftedShare": 0.5,
        "samples": 900,
        "scores": [
            {"feature": "x1", "test": "psi", "score": 0.01, "threshold": 0.2, "drifted": False},
            {
                "feature": "x2",
                "test": "ks",
                "score": 0.4,
                "alpha": 0.05,
                "pValue": 0.0001,
                "drifted": True,
            },
        ],
        "lastRetrain": {
            "name": "churn-retrain-1",
            "reason": "Drift",
            "outcome": "Rejected",
            "message": "champion stays",
        },
    }
    retrain_run = {
        **_obj("TrainingRun", RUN_SPEC),
        "status": {
            "phase": "Failed",
            "model": {"metrics": {"f1": 0.6}, "championMetrics": {"f1": 0.7}},
        },
    }
    note = derive(
        _obj("DriftPolicy", {"targetRef": {"name": "churn"}}),
        "Normal",
        "RetrainRejected",
        "r",
        NOW,
        status,
        {"retrain": retrain_run},
    )
    assert note is not None and note.trigger == t.RETRAIN_REFUSED
    assert [s["feature"] for s in note.data["scores"]] == ["x2", "x1"]
    assert note.data["scores"][0] == {
        "feature": "x2",
        "test": "ks",
        "score": 0.4,
        "alpha": 0.05,
        "pValue": 0.0001,
        "drifted": True,
    }
    assert note.data["retrain"] == {
        "name": "churn-retrain-1",
        "reason": "Drift",
        "outcome": "Rejected",
        "message": "champion stays",
        "metric": "f1",
        "value": 0.6,
        "championValue": 0.7,
        "threshold": 0.7,
    }
    assert note.data["targetRef"] == "churn"


def test_feature_drift_says_its_signal() -> None:
    status = {"drifted": True, "driftedFeatures": ["x2"], "driftedShare": 0.5, "samples": 900}
    note = derive(_obj("DriftPolicy", {"targetRef": {"name": "churn"}}), "Warning",
                  "DriftDetected", "drift: 1/2 features moved (x2)", NOW, status)  # fmt: skip
    assert note is not None and note.trigger == t.DRIFT_DETECTED
    assert note.data["signal"] == "features" and "performance" not in note.data


def _performance_drift() -> Notification:
    status = {
        "drifted": True,
        "samples": None,
        "performance": {
            "metric": "accuracy",
            "labels": 480,
            "reference": 0.93,
            "live": 0.61,
            "limit": 0.837,
            "degraded": True,
        },
        "lastRetrain": {"name": "churn-r1", "reason": "Performance", "outcome": "Pending"},
    }
    spec = {"targetRef": {"name": "churn"}, "performance": {"metric": "accuracy"}}
    note = derive(
        _obj("DriftPolicy", spec),
        "Warning",
        "PerformanceDegraded",
        "performance degraded: live accuracy 0.61 over 480 labels vs reference 0.93 (limit 0.837, tolerance 0.1): below the limit",
        NOW,
        status,
    )
    assert note is not None
    return note


def test_performance_drift_is_drift_detected_with_live_against_reference() -> None:
    note = _performance_drift()
    assert note.trigger == t.DRIFT_DETECTED
    assert note.cloudevent_type == "io.kubeloop.drift.detected"
    assert note.reason == "PerformanceDegraded"  # the CloudEvent's kubeloopreason
    assert note.data["signal"] == "performance" and note.data["drifted"] is True
    assert note.data["performance"] == {
        "metric": "accuracy",
        "live": 0.61,
        "reference": 0.93,
        "limit": 0.837,
        "labels": 480,
        "degraded": True,
    }
    assert note.data["driftedFeatures"] == [] and note.data["scores"] == []
    assert note.data["retrain"]["reason"] == "Performance"
    # An operator subscribed to drift.detected (the docs' example) sends it
    chosen = subscribers(note.trigger, {}, {"drift.detected": ["slack"]}, SINKS)
    assert chosen.sinks == ("slack",)


def test_performance_drift_on_slack_shows_live_limit_and_reference() -> None:
    attachment = slack_message(_performance_drift())["attachments"][0]
    assert attachment["title"] == "DriftPolicy ml/churn: drift.detected"
    assert attachment["color"] == "#ecb22e" and attachment["footer"] == "kubeloop PerformanceDegraded"
    assert {f["title"]: f["value"] for f in attachment["fields"]} == {
        "live accuracy": "0.61",
        "limit": "0.837",
        "reference": "0.93",
        "labels": "480",
        "retrain": "churn-r1 (Pending)",
    }


def test_not_a_number_is_sent_as_null() -> None:
    status = {"phase": "Succeeded", "model": {"metrics": {"f1": float("nan")}}}
    note = derive(_obj("TrainingRun", RUN_SPEC), "Normal", "Succeeded", "ok", NOW, status)
    assert note is not None and note.data["value"] is None
    json.dumps(note.data, allow_nan=False)


# --- payloads -------------------------------------------------------------------------------


def _promoted() -> Notification:
    status = {
        "phase": "Healthy",
        "stable": {"uri": "s3://m/b", "sha256": "b" * 64, "revision": "b-1"},
        "canaryWeight": 0,
    }
    note = derive(
        _obj("ModelDeployment"),
        "Normal",
        "Promoted",
        "b-1 is now stable (previous: a-1)",
        NOW,
        status,
    )
    assert note is not None
    return note


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_cloudevent_parses_with_the_sdk(mode: str) -> None:
    request = cloudevent_request(_promoted(), mode, source_prefix="//prod-eu/")
    if mode == "binary":
        assert request.headers["ce-type"] == "io.kubeloop.rollout.promoted"
        assert request.headers["content-type"] == "application/json"
    else:
        assert request.headers["content-type"] == "application/cloudevents+json"
    from cloudevents.core.bindings.http import HTTPMessage, from_http_event

    event = from_http_event(HTTPMessage(request.headers, request.body))
    assert event.get_type() == "io.kubeloop.rollout.promoted"
    assert (
        event.get_source()
        == "//prod-eu/apis/kubeloop.io/v1alpha1/namespaces/ml/modeldeployments/churn"
    )
    assert event.get_subject() == "churn"
    assert event.get_specversion() == "1.0"
    assert event.get_extension("kubeloopnamespace") == "ml"
    assert event.get_extension("kubeloopreason") == "Promoted"
    assert event.get_time() is not None and event.get_time().isoformat().startswith(
        "2026-12-06T11:00:00"
    )
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["trigger"] == "rollout.promoted" and data["stable"]["sha256"] == "b" * 64
    assert data["message"] == "b-1 is now stable (previous: a-1)"


def test_slack_message_has_text_colour_and_the_numbers() -> None:
    status = {
        "phase": "Failed",
        "model": {"metrics": {"f1": 0.71}, "championMetrics": {"f1": 0.74}},
    }
    note = derive(
        _obj("TrainingRun", RUN_SPEC), "Warning", "GateFailed", "the champion stays", NOW, status
    )
    assert note is not None
    message = slack_message(note)
    assert message["text"] == "TrainingRun ml/churn: run.gate-failed: the champion stays"
    attachment = message["attachments"][0]
    assert attachment["color"] == "#e01e5a"
    assert {f["title"]: f["value"] for f in attachment["fields"]} == {
        "f1": "0.71",
        "champion": "0.74",
        "threshold": "0.7",
    }


# --- settings and the URL policy ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"sinks": {"a": {"type": "slack"}}}, "exactly one of url or urlFile"),
        (
            {"sinks": {"a": {"type": "slack", "url": "http://x", "urlFile": "/f"}}},
            "exactly one of url or urlFile",
        ),
        ({"sinks": {"Bad_Name": {"type": "slack", "url": "http://x"}}}, "must be a DNS label"),
        ({"sinks": {"a": {"type": "sms", "url": "http://x"}}}, "'cloudevents' or 'slack'"),
        ({"subscriptions": {"rollout.done": []}}, "unknown trigger 'rollout.done'"),
        (
            {"sinks": {"a": {"type": "slack", "url": "http://x"}}, "subscriptions": {"*": ["b"]}},
            "subscriptions.*: no sink named b; configured sinks: a",
        ),
    ],
)
def test_settings_refuse_with_the_field_named(value: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=None) as caught:
        NotificationSettings.model_validate(value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.slack.com/services/T0/B0/XYZ", None),
        ("http://receiver.ml.svc:8080/events?token=abc", None),
        ("ftp://host/x", "must start with http:// or https://"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("https://user:secret@host/x", "must not contain user information"),
        ("https:///x", "has no host"),
        ("https://host/x#frag", "must not contain a fragment"),
        ("https://host/a b", "contains spaces or control characters"),
        ("http://host:99999/", "is not a well-formed URL"),
    ],
)
def test_notification_url_policy(url: str, problem: str | None) -> None:
    found = notification_url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)
    if found is not None:
        assert url not in found


def test_url_file_is_read_and_checked_without_repeating_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("https://hooks.example/T0/secret-token\n")
    assert (
        resolve_url("slack", SinkSettings(type="slack", url_file=str(secret)))
        == "https://hooks.example/T0/secret-token"
    )
    secret.write_text("ftp://hooks.example/secret-token")
    with pytest.raises(
        SinkConfigError, match=r"notifications.sinks.slack: the URL must start"
    ) as caught:
        resolve_url("slack", SinkSettings(type="slack", url_file=str(secret)))
    assert "secret-token" not in str(caught.value)
    with pytest.raises(SinkConfigError, match=r"notifications.sinks.slack.urlFile cannot be read"):
        resolve_url("slack", SinkSettings(type="slack", url_file=str(tmp_path / "missing")))


# --- delivery to a real receiver --------------------------------------------------------


class Counted:
    """Metrics recorded in memory, as the operator's registry would count them."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, str, str]] = []
        self.attempts: list[tuple[str, str]] = []
        self.dropped: list[str] = []
        self.lock = threading.Lock()

    def metrics(self) -> Metrics:
        def add(target: list[Any]) -> Any:
            def record(*args: Any) -> None:
                with self.lock:
                    target.append(args if len(args) > 1 else args[0])

            return record

        return Metrics(
            add(self.delivered),
            add(self.attempts),
            add(self.dropped),
            lambda *_: None,
            lambda *_: None,
        )


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)


def _notifier(url: str, counted: Counted, **settings: Any) -> Notifier:
    config = NotificationSettings.model_validate(
        {
            "sinks": {"hook": {"type": "cloudevents", "url": url}},
            "subscriptions": {"*": ["hook"]},
            "backoffSeconds": 0.05,
            "maxBackoffSeconds": 0.2,
            "timeoutSeconds": 1,
            **settings,
        }
    )
    return Notifier(config, counted.metrics())


def _notify_promoted(notifier: Notifier, name: str = "churn") -> None:
    obj = _obj("ModelDeployment")
    obj["metadata"]["name"] = name
    notifier(
        obj,
        "Normal",
        "Promoted",
        f"{name} promoted",
        NOW,
        status={"phase": "Healthy", "stable": {"revision": "b"}},
    )


def test_a_sink_answering_500_gets_retried_with_backoff_until_it_answers() -> None:
    counted = Counted()
    with WebhookReceiver(statuses=[500, 503]) as receiver:
        notifier = _notifier(receiver.url, counted)
        _notify_promoted(notifier)
        got = receiver.wait_for(lambda r: len(r) >= 3 and r, timeout=10)
        notifier.stop()
    assert [r.status for r in got] == [500, 503, 200]
    assert got[1].time - got[0].time >= 0.05 and got[2].time - got[1].time >= 0.1  # doubled
    # the same CloudEvent each time (same id), parsed by the SDK
    assert len({r.cloudevent().get_id() for r in got}) == 1
    assert counted.attempts == [("hook", "http_5xx"), ("hook", "http_5xx"), ("hook", "ok")]
    assert counted.delivered == [("hook", "rollout.promoted", "delivered")]


def test_a_sink_that_keeps_failing_is_given_up_after_max_attempts_and_4xx_is_not_retried() -> None:
    counted = Counted()
    with (
        WebhookReceiver(default_status=500) as failing,
        WebhookReceiver(default_status=404) as missing,
    ):
        for done, url in enumerate((failing.url, missing.url), start=1):
            notifier = _notifier(url, counted, maxAttempts=3)
            _notify_promoted(notifier)
            _until(lambda done=done: len(counted.delivered) == done)  # type: ignore[misc]
            notifier.stop()
        assert len(failing.snapshot()) == 3 and len(missing.snapshot()) == 1
    assert [d[2] for d in counted.delivered] == ["failed", "failed"]


def test_a_hanging_sink_never_delays_the_caller_and_a_full_queue_drops_the_oldest() -> None:
    counted = Counted()
    with WebhookReceiver(default_status=HANG) as hanging:
        notifier = _notifier(hanging.url, counted, queueSize=3, maxAttempts=1, timeoutSeconds=5)
        try:
            _notify_promoted(notifier, "md-0")
            # md-0 must be the request that hangs: until the worker has taken it, it is the
            # oldest in the queue and the first dropped (the worker's thread starts on first use)
            hanging.wait_for(lambda r: r, timeout=5)
            start = time.perf_counter()
            for i in range(1, 10):
                _notify_promoted(notifier, f"md-{i}")
            elapsed = time.perf_counter() - start
            worker = notifier.workers["hook"]
            assert worker.pending() == 3
            # md-0 is stuck in the hanging request; md-1..md-6 were dropped, md-7..md-9 wait
            assert [item.notification.name for item in worker._queue] == ["md-7", "md-8", "md-9"]
        finally:
            hanging.closing.set()  # the hanging request ends, so the worker stops at once
            notifier.stop()
    assert elapsed < 0.5, f"notifying took {elapsed:.3f} s with a hanging sink"
    assert len(counted.dropped) == 6


def test_stopping_delivers_what_is_queued_first() -> None:
    # An operator stopping (SIGTERM, a rolling upgrade) has its last decisions' notifications
    # queued behind a slow sink: they are sent before it ends, not dropped.
    counted = Counted()
    with WebhookReceiver(delay=0.1) as slow:
        notifier = _notifier(slow.url, counted)
        for i in range(5):
            _notify_promoted(notifier, f"md-{i}")
        start = time.perf_counter()
        notifier.stop(timeout=5.0)
        elapsed = time.perf_counter() - start
        names = [r.cloudevent().get_subject() for r in slow.snapshot()]
    assert len(names) == 5, names
    assert [d[2] for d in counted.delivered] == ["delivered"] * 5
    assert counted.dropped == []
    assert elapsed < 2.0, f"stopping took {elapsed:.2f} s for 5 answers of 0.1 s"


def test_stopping_gives_a_hanging_sink_the_timeout_then_counts_what_is_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted = Counted()
    with WebhookReceiver(default_status=HANG) as hanging:
        notifier = _notifier(hanging.url, counted, maxAttempts=1, timeoutSeconds=30)
        try:
            for i in range(4):
                _notify_promoted(notifier, f"md-{i}")
            hanging.wait_for(lambda r: r, timeout=5)  # md-0 hangs; md-1..md-3 wait behind it
            start = time.perf_counter()
            with caplog.at_level(logging.WARNING, logger="kubeloop.notifications"):
                notifier.stop(timeout=0.5)
            elapsed = time.perf_counter() - start
        finally:
            hanging.closing.set()
    assert 0.4 <= elapsed < 1.5, f"stop took {elapsed:.2f} s with a 0.5 s timeout"
    assert counted.dropped == ["hook"] * 3
    assert "dropped 3 notification(s)" in caplog.text
    assert hanging.url not in caplog.text


def test_a_closed_port_fails_fast_and_logs_no_url(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    counted = Counted()
    url = f"http://127.0.0.1:{port}/hook?token=s3cr3t"
    notifier = _notifier(url, counted, maxAttempts=2)
    with caplog.at_level(logging.INFO, logger="kubeloop.notifications"):
        start = time.perf_counter()
        _notify_promoted(notifier)
        assert time.perf_counter() - start < 0.2
        _until(lambda: counted.delivered)
        notifier.stop()
    assert counted.attempts == [("hook", "error"), ("hook", "error")]
    assert counted.delivered == [("hook", "rollout.promoted", "failed")]
    assert "s3cr3t" not in caplog.text and "gave up" in caplog.text


def test_an_annotation_naming_an_unknown_sink_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted = Counted()
    with WebhookReceiver() as receiver:
        notifier = _notifier(receiver.url, counted)
        obj = _obj(
            "ModelDeployment",
            annotations={"notifications.kubeloop.io/subscribe.rollout.promoted": "hook,pager"},
        )
        with caplog.at_level(logging.WARNING, logger="kubeloop.notifications"):
            first = notifier(
                obj, "Normal", "Promoted", "p", NOW, status={"stable": {"revision": "b"}}
            )
            again = notifier(
                obj, "Normal", "Promoted", "p", NOW, status={"stable": {"revision": "b"}}
            )
        receiver.wait_for(lambda r: len(r) == 2, timeout=5)  # the known sink still got both
        notifier.stop()
    assert counted.delivered.count(("-", "rollout.promoted", "unknown_sink")) == 2
    # One Warning Event for the object, naming the annotation, the sink and the fix
    assert first == [
        (
            "NotificationSinkUnknown",
            "annotation notifications.kubeloop.io/subscribe.rollout.promoted names pager, which the "
            "operator has no sink for; configured sinks: hook (an administrator adds sinks with the "
            "chart value notifications.sinks)",
        )
    ]
    assert again == []
    assert "names pager, which the operator has no sink for" in caplog.text


def test_the_hook_never_raises() -> None:
    counted = Counted()
    notifier = _notifier("http://127.0.0.1:1/", counted)
    notifier(
        {"kind": "ModelDeployment"}, "Normal", "Promoted", "p", "not a time", status={}
    )  # no metadata, bad time
    notifier.stop()


def test_the_operator_refuses_to_start_with_a_sink_it_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubeloop.controllers.main import main

    secret = tmp_path / "url"
    secret.write_text("https://user:t0ken@hooks.example/x")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # never read: it stops first
    monkeypatch.setenv(
        "KUBELOOP_NOTIFICATIONS",
        json.dumps({"sinks": {"team-slack": {"type": "slack", "urlFile": str(secret)}}}),
    )
    with pytest.raises(SystemExit) as stopped:
        main([])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert (
        "kubeloop operator: notifications.sinks.team-slack: the URL must not contain user information"
        in err
    )
    assert "t0ken" not in err


def test_handler_threads_notifying_at_once_start_one_worker_and_lose_nothing() -> None:
    counted = Counted()
    with WebhookReceiver() as receiver:
        notifier = _notifier(receiver.url, counted)
        barrier = threading.Barrier(8)

        def burst(index: int) -> None:
            barrier.wait()
            for j in range(5):
                _notify_promoted(notifier, f"md-{index}-{j}")

        threads = [threading.Thread(target=burst, args=(i,)) for i in range(8)]
        before = set(threading.enumerate())  # a worker another test left running is not ours
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        started = [t.name for t in set(threading.enumerate()) - before]
        assert started.count("notify-hook") == 1, started
        receiver.wait_for(lambda r: len(r) == 40, timeout=20)
        notifier.stop()
    assert len({r.cloudevent().get_subject() for r in receiver.snapshot()}) == 40
