"""Which turn of the loop an Event is, who hears of it, and the numbers it carries. Pure.

The controllers already post an Event on every transition (:func:`kubeloop.controllers.kube.
post_event`); a notification is derived from that Event, the object's new status and, for a
DriftPolicy, its retrain run - never from a call sprinkled through the reconcile code.

Subscriptions: the operator's ``subscriptions`` apply to every object; an object overrides
them per trigger with the annotation ``notifications.kubeloop.io/subscribe.<trigger>: <sink>[,<sink>]``
or for every trigger with ``notifications.kubeloop.io/subscribe`` (an empty value or ``none``
mutes). Only sinks the operator is
configured with can be named: a namespace user never chooses a URL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeloop.api.conditions import Reason

RUN_SUCCEEDED = "run.succeeded"
RUN_FAILED = "run.failed"
RUN_GATE_FAILED = "run.gate-failed"
ROLLOUT_STARTED = "rollout.started"
ROLLOUT_STEP_REACHED = "rollout.step-reached"
ROLLOUT_PAUSED = "rollout.paused"
ROLLOUT_PROMOTED = "rollout.promoted"
ROLLOUT_ABORTED = "rollout.aborted"
DRIFT_DETECTED = "drift.detected"
RETRAIN_CREATED = "retrain.created"
RETRAIN_REFUSED = "retrain.refused"
ALL_TRIGGERS: tuple[str, ...] = (
    RUN_SUCCEEDED, RUN_FAILED, RUN_GATE_FAILED,
    ROLLOUT_STARTED, ROLLOUT_STEP_REACHED, ROLLOUT_PAUSED, ROLLOUT_PROMOTED, ROLLOUT_ABORTED,
    DRIFT_DETECTED, RETRAIN_CREATED, RETRAIN_REFUSED,
)  # fmt: skip
EVERY_TRIGGER = "*"
ANNOTATION = "notifications.kubeloop.io/subscribe"
"""An object's sinks for every trigger (an annotation key cannot contain ``*``)."""
ANNOTATION_PREFIX = ANNOTATION + "."
"""``<prefix><trigger>``: an object's sinks for one trigger."""
CLOUDEVENT_TYPE_PREFIX = "io.kubeloop."
PLURALS = {
    "TrainingRun": "trainingruns",
    "ModelDeployment": "modeldeployments",
    "DriftPolicy": "driftpolicies",
}
MUTED = {"", "none", "-"}
REASON_SINK_UNKNOWN = "NotificationSinkUnknown"
"""Event reason: an object's subscribe annotation names a sink the operator does not have."""
MAX_SCORES = 50
"""Most per-feature drift scores a notification carries (the drifted ones first)."""

_RETRAIN_REASONS = {Reason.RETRAIN_CREATED, Reason.SCHEDULED_RETRAIN, Reason.MANUAL_RETRAIN}
_DRIFTED_REASONS = {Reason.DRIFT_DETECTED, Reason.PERFORMANCE_DEGRADED}


@dataclass(frozen=True)
class Notification:
    """One turn of the loop, ready for any sink."""

    trigger: str
    kind: str
    namespace: str
    name: str
    uid: str
    api_version: str
    severity: str  # the Event's type: Normal or Warning
    reason: str
    message: str
    time: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def cloudevent_type(self) -> str:
        return CLOUDEVENT_TYPE_PREFIX + self.trigger

    def source(self, prefix: str = "") -> str:
        """The object's API path (``<prefix>/apis/kubeloop.io/v1alpha1/namespaces/...``)."""
        path = f"/apis/{self.api_version}/namespaces/{self.namespace}/{PLURALS.get(self.kind, self.kind.lower())}/{self.name}"
        return prefix.rstrip("/") + path


# --- which trigger --------------------------------------------------------------------------


def trigger_of(
    kind: str, event_type: str, reason: str, message: str, status: Mapping[str, Any]
) -> str | None:
    """The trigger an Event is, given the object's status after the reconcile that posted it
    (None: not a turn anyone subscribes to)."""
    if kind == "TrainingRun":
        if reason == Reason.SUCCEEDED and status.get("phase") == "Succeeded":
            return RUN_SUCCEEDED
        if reason == Reason.GATE_FAILED:
            return RUN_GATE_FAILED
        if event_type == "Warning" and status.get("phase") == "Failed":
            return RUN_FAILED
        return None
    if kind == "ModelDeployment":
        if reason in (Reason.ROLLOUT_STARTED, Reason.ROLLED_BACK):
            return ROLLOUT_STARTED
        if reason == Reason.STEP_ADVANCED:
            return ROLLOUT_STEP_REACHED
        if reason == Reason.PAUSED:
            return ROLLOUT_PAUSED
        # Too many inconclusive analysis rounds pause the rollout until someone decides.
        if reason == Reason.ANALYSIS_INCONCLUSIVE and (status.get("analysis") or {}).get(
            "pausedInconclusive"
        ):
            return ROLLOUT_PAUSED
        # A promote-full request posts Promoted before the canary is stable: only the end counts.
        if reason == Reason.PROMOTED and not status.get("canary"):
            return ROLLOUT_PROMOTED
        if (
            event_type == "Warning"
            and status.get("aborted")
            and reason in (Reason.ABORTED, Reason.ANALYSIS_FAILED)
        ):
            return ROLLOUT_ABORTED
        return None
    if kind == "DriftPolicy":
        # Both ways a policy turns Drifted: its features moved, or (spec.performance) its live
        # performance on labelled traffic fell; data["signal"] says which.
        if reason in _DRIFTED_REASONS:
            return DRIFT_DETECTED
        # RetrainCreated is also the reason of "skipped: a retrain is still running".
        if reason in _RETRAIN_REASONS and message.startswith("created TrainingRun "):
            return RETRAIN_CREATED
        if reason == Reason.RETRAIN_REJECTED:
            return RETRAIN_REFUSED
    return None


# --- who is subscribed ----------------------------------------------------------------------


@dataclass(frozen=True)
class Subscribers:
    """The sinks a notification goes to, and what an object's annotations named wrongly."""

    sinks: tuple[str, ...]
    unknown: tuple[str, ...] = ()
    annotation: str | None = None  # the annotation that chose them (None: the operator's defaults)


def subscribers(
    trigger: str,
    annotations: Mapping[str, str] | None,
    defaults: Mapping[str, Sequence[str]],
    known_sinks: Iterable[str],
) -> Subscribers:
    """Sinks for ``trigger`` on an object: its annotation for the trigger, else its annotation
    for every trigger, else the operator's default for the trigger, else the default for ``*``."""
    known = set(known_sinks)
    own = {
        k[len(ANNOTATION_PREFIX) :]: v
        for k, v in (annotations or {}).items()
        if k.startswith(ANNOTATION_PREFIX)
    }
    if ANNOTATION in (annotations or {}):
        own[EVERY_TRIGGER] = (annotations or {})[ANNOTATION]
    for key in (trigger, EVERY_TRIGGER):
        if key in own:
            annotation = ANNOTATION if key == EVERY_TRIGGER else ANNOTATION_PREFIX + key
            value = own[key].strip()
            if value.lower() in MUTED:
                return Subscribers((), annotation=annotation)
            named = [part.strip() for part in value.split(",") if part.strip()]
            return Subscribers(
                tuple(dict.fromkeys(n for n in named if n in known)),
                tuple(dict.fromkeys(n for n in named if n not in known)),
                annotation,
            )
    for key in (trigger, EVERY_TRIGGER):
        if key in defaults:
            return Subscribers(tuple(dict.fromkeys(s for s in defaults[key] if s in known)))
    return Subscribers(())


# --- the numbers that matter ----------------------------------------------------------------


def _number(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def _model_block(block: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not block:
        return None
    return {k: block[k] for k in ("uri", "sha256", "revision", "trainingRun") if block.get(k)}


def run_data(run: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """A TrainingRun: its metric against the threshold and the champion, the artifact, the failure."""
    spec = run.get("spec") or {}
    evaluation = spec.get("evaluation") or {}
    metric = evaluation.get("metric") or "accuracy"
    model = status.get("model") or {}
    metrics = model.get("metrics") or {}
    champion = model.get("championMetrics") or {}
    data: dict[str, Any] = {
        "phase": status.get("phase"),
        "modelName": (spec.get("model") or {}).get("name"),
        "metric": metric,
        "value": _number(metrics.get(metric)),
        "threshold": _number(evaluation.get("threshold")),
        "championValue": _number(champion.get(metric)),
        "metrics": {k: _number(v) for k, v in metrics.items()},
        "championMetrics": {k: _number(v) for k, v in champion.items()},
    }
    if model.get("uri"):
        data["model"] = {
            "uri": model["uri"],
            "sha256": model.get("sha256"),
            "dataFingerprint": model.get("dataFingerprint"),
        }
    if status.get("lastFailure"):
        data["failure"] = {
            "reason": status["lastFailure"].get("reason"),
            "message": status["lastFailure"].get("message"),
        }
    return data


def rollout_data(status: Mapping[str, Any]) -> dict[str, Any]:
    """A ModelDeployment: stable and canary models, step, weight, and analysis that failed."""
    analysis = status.get("analysis") or {}
    runs = analysis.get("runs") or []
    failing = [
        {
            k: _number(r.get(k))
            for k in ("name", "value", "min", "max", "step", "message")
            if r.get(k) is not None
        }
        for r in runs
        if r.get("passed") is False
    ]
    data: dict[str, Any] = {
        "phase": status.get("phase"),
        "stable": _model_block(status.get("stable")),
        "canary": _model_block(status.get("canary")),
        "previous": _model_block(status.get("previous")),
        "currentStep": status.get("currentStep"),
        "canaryWeight": status.get("canaryWeight"),
        "aborted": bool(status.get("aborted")),
        "pausedInconclusive": bool(analysis.get("pausedInconclusive")),
    }
    if failing:
        # The last failing measurement of each metric: the one that decided.
        latest: dict[str, dict[str, Any]] = {}
        for entry in failing:
            latest[str(entry.get("name"))] = entry
        data["failedAnalysis"] = list(latest.values())
    if status.get("lastFailure") and status.get("aborted"):
        data["failure"] = {
            "reason": status["lastFailure"].get("reason"),
            "message": status["lastFailure"].get("message"),
        }
    return data


def drift_data(
    status: Mapping[str, Any],
    retrain_run: Mapping[str, Any] | None,
    spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A DriftPolicy: what it watches (``signal``: ``features``, or ``performance`` with
    spec.performance), drifted features and their scores, the share, live performance against
    its reference, the retrain and its numbers."""
    performance = status.get("performance") or {}
    watches_performance = bool((spec or {}).get("performance") or performance)
    scores = sorted(
        status.get("scores") or [], key=lambda s: (not s.get("drifted"), str(s.get("feature")))
    )
    data: dict[str, Any] = {
        "signal": "performance" if watches_performance else "features",
        "drifted": bool(status.get("drifted")),
        "driftedFeatures": list(status.get("driftedFeatures") or []),
        "driftedShare": _number(status.get("driftedShare")),
        "samples": status.get("samples"),
        "scores": [
            {
                k: _number(s.get(k))
                for k in ("feature", "test", "score", "threshold", "alpha", "pValue", "drifted")
                if k in s
            }
            for s in scores[:MAX_SCORES]
        ],
    }
    if performance:
        data["performance"] = {
            k: _number(performance[k])
            for k in ("metric", "live", "reference", "limit", "labels", "degraded")
            if k in performance
        }
    last = status.get("lastRetrain") or {}
    if last:
        data["retrain"] = {
            k: last[k] for k in ("name", "reason", "outcome", "message") if k in last
        }
        if retrain_run is not None:
            numbers = run_data(retrain_run, retrain_run.get("status") or {})
            data["retrain"].update(
                {k: numbers[k] for k in ("metric", "value", "championValue", "threshold")}
            )
    return data


def derive(
    obj: Mapping[str, Any],
    event_type: str,
    reason: str,
    message: str,
    time: str,
    status: Mapping[str, Any] | None = None,
    related: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Notification | None:
    """The notification of an Event posted on ``obj`` (None: no trigger); ``status`` is the
    object's status after the reconcile (default: the one ``obj`` carries), ``related`` holds
    other objects by role (``retrain``: a DriftPolicy's last retrain run)."""
    kind = str(obj.get("kind"))
    current: Mapping[str, Any] = status if status is not None else (obj.get("status") or {})
    trigger = trigger_of(kind, event_type, reason, message, current)
    if trigger is None:
        return None
    if kind == "TrainingRun":
        data = run_data(obj, current)
    elif kind == "ModelDeployment":
        data = rollout_data(current)
    else:
        data = drift_data(current, (related or {}).get("retrain"), obj.get("spec") or {})
        data["targetRef"] = ((obj.get("spec") or {}).get("targetRef") or {}).get("name")
    meta = obj.get("metadata") or {}
    return Notification(
        trigger=trigger,
        kind=kind,
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        uid=str(meta.get("uid") or ""),
        api_version=str(obj.get("apiVersion") or "kubeloop.io/v1alpha1"),
        severity=event_type,
        reason=reason,
        message=message,
        time=time,
        data=data,
    )
