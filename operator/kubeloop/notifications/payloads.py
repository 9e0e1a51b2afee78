"""What a notification looks like on the wire. Pure: bytes and headers, no sockets.

* CloudEvents 1.0 over HTTP (structured or binary content mode), built by the ``cloudevents``
  SDK: ``type`` ``io.kubeloop.<trigger>``, ``source`` the object's API path, ``subject`` its
  name, ``id`` unique per notification, ``time`` the Event's time, JSON ``data`` with the
  numbers, and the extension attributes ``kubeloopnamespace``, ``kubeloopkind`` and
  ``kubeloopreason``.
* A Slack-compatible incoming-webhook message: ``text`` (what notifications and clients
  without attachments show) plus one ``attachments`` entry with a colour and fields.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from kubeloop.notifications.triggers import (
    DRIFT_DETECTED,
    ROLLOUT_ABORTED,
    ROLLOUT_PROMOTED,
    RUN_FAILED,
    RUN_GATE_FAILED,
    RUN_SUCCEEDED,
    Notification,
)


@dataclass(frozen=True)
class Request:
    """One HTTP POST: headers and body."""

    headers: dict[str, str]
    body: bytes


def cloudevent(
    notification: Notification, source_prefix: str = "", event_id: str | None = None
) -> CloudEvent:
    time = datetime.fromisoformat(notification.time.replace("Z", "+00:00"))
    return CloudEvent(
        attributes={
            "id": event_id or str(uuid.uuid4()),
            "type": notification.cloudevent_type,
            "source": notification.source(source_prefix),
            "subject": notification.name,
            "time": time,
            "datacontenttype": "application/json",
            "kubeloopnamespace": notification.namespace,
            "kubeloopkind": notification.kind.lower(),
            "kubeloopreason": notification.reason,
        },
        data=cloudevent_data(notification),
    )


def cloudevent_data(notification: Notification) -> dict[str, Any]:
    return {
        "trigger": notification.trigger,
        "kind": notification.kind,
        "namespace": notification.namespace,
        "name": notification.name,
        "uid": notification.uid,
        "severity": notification.severity,
        "reason": notification.reason,
        "message": notification.message,
        **notification.data,
    }


def cloudevent_request(
    notification: Notification,
    mode: str = "structured",
    source_prefix: str = "",
    event_id: str | None = None,
) -> Request:
    """The HTTP request of a notification as a CloudEvent (``mode``: structured or binary)."""
    event = cloudevent(notification, source_prefix, event_id)
    message = (
        ce_http.to_binary_event(event) if mode == "binary" else ce_http.to_structured_event(event)
    )
    return Request(dict(message.headers), message.body)


# --- Slack ----------------------------------------------------------------------------------

_COLOURS = {"good": "#2eb67d", "bad": "#e01e5a", "warn": "#ecb22e", "info": "#36c5f0"}
_GOOD = {RUN_SUCCEEDED, ROLLOUT_PROMOTED}
_BAD = {RUN_FAILED, RUN_GATE_FAILED, ROLLOUT_ABORTED}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _fields(notification: Notification) -> list[tuple[str, str]]:
    data = notification.data
    kind = notification.kind
    if kind == "TrainingRun":
        fields = [(str(data.get("metric")), _fmt(data.get("value")))]
        if data.get("championValue") is not None:
            fields.append(("champion", _fmt(data.get("championValue"))))
        if data.get("threshold") is not None:
            fields.append(("threshold", _fmt(data.get("threshold"))))
        return fields
    if kind == "ModelDeployment":
        fields = [
            ("stable", _fmt((data.get("stable") or {}).get("revision"))),
            ("canary", _fmt((data.get("canary") or {}).get("revision"))),
            ("step", _fmt(data.get("currentStep"))),
            ("canary weight", f"{_fmt(data.get('canaryWeight'))}%"),
        ]
        for failed in data.get("failedAnalysis") or []:
            bound = ", ".join(f"{k} {_fmt(failed[k])}" for k in ("min", "max") if k in failed)
            fields.append(
                (f"analysis {failed.get('name')}", f"{_fmt(failed.get('value'))} ({bound})")
            )
        return fields
    performance = data.get("performance") or {}
    if data.get("signal") == "performance":
        fields = [
            (f"live {performance.get('metric')}", _fmt(performance.get("live"))),
            ("limit", _fmt(performance.get("limit"))),
            ("reference", _fmt(performance.get("reference"))),
            ("labels", _fmt(performance.get("labels"))),
        ]
    else:
        fields = [
            ("drifted share", _fmt(data.get("driftedShare"))),
            ("samples", _fmt(data.get("samples"))),
        ]
    for score in [s for s in data.get("scores") or [] if s.get("drifted")][:10]:
        fields.append((f"{score.get('feature')} ({score.get('test')})", _fmt(score.get("score"))))
    retrain = data.get("retrain") or {}
    if retrain.get("name"):
        fields.append(("retrain", f"{retrain['name']} ({retrain.get('outcome')})"))
        if retrain.get("value") is not None:
            fields.append(
                (
                    str(retrain.get("metric")),
                    f"{_fmt(retrain['value'])} vs champion {_fmt(retrain.get('championValue'))}",
                )
            )
    return fields


def slack_message(notification: Notification) -> dict[str, Any]:
    """A Slack-compatible incoming-webhook message."""
    if notification.trigger in _GOOD:
        colour = _COLOURS["good"]
    elif notification.trigger in _BAD:
        colour = _COLOURS["bad"]
    elif notification.trigger == DRIFT_DETECTED or notification.severity == "Warning":
        colour = _COLOURS["warn"]
    else:
        colour = _COLOURS["info"]
    title = (
        f"{notification.kind} {notification.namespace}/{notification.name}: {notification.trigger}"
    )
    return {
        "text": f"{title}: {notification.message}",
        "attachments": [
            {
                "color": colour,
                "title": title,
                "text": notification.message,
                "fields": [
                    {"title": t, "value": v, "short": True} for t, v in _fields(notification)
                ],
                "footer": f"kubeloop {notification.reason}",
                "ts": int(
                    datetime.fromisoformat(notification.time.replace("Z", "+00:00")).timestamp()
                ),
            }
        ],
    }


def slack_request(notification: Notification) -> Request:
    return Request({"Content-Type": "application/json"}, orjson.dumps(slack_message(notification)))
