"""The ``notifications`` block of the operator's configuration (``KUBELOOP_NOTIFICATIONS``, JSON).

The chart renders ``.Values.notifications`` into it; sink URLs are credentials, so the chart
mounts them from a Secret and a sink names the file (``urlFile``) instead of the URL.
Pure: no I/O (the URL files are read when the notifier starts, :mod:`.delivery`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubeloop.notifications.triggers import ALL_TRIGGERS, EVERY_TRIGGER

SINK_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class SinkSettings(_Model):
    """One place notifications go to."""

    type: Literal["cloudevents", "slack"] = Field(
        description="cloudevents: a CloudEvent over HTTP (webhook); slack: a Slack-compatible "
        "incoming-webhook message (Slack, Mattermost, Rocket.Chat)."
    )
    url: str = Field(
        "", description="The webhook URL (prefer urlFile: webhook URLs are credentials)."
    )
    url_file: str = Field(
        "", description="A file holding the URL (the chart mounts the sink's Secret there)."
    )
    mode: Literal["structured", "binary"] = Field(
        "structured", description="CloudEvents HTTP content mode (cloudevents sinks only)."
    )

    @model_validator(mode="after")
    def _one_url(self) -> SinkSettings:
        if bool(self.url) == bool(self.url_file):
            raise ValueError("a sink needs exactly one of url or urlFile")
        return self


class NotificationSettings(_Model):
    """Sinks, who is told what by default, and how hard delivery tries."""

    sinks: dict[str, SinkSettings] = Field(
        default_factory=dict, description="Sinks by name; annotations and subscriptions name them."
    )
    subscriptions: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Default subscriptions for every object: trigger (or '*' for all) -> sink names. "
            "An object's notifications.kubeloop.io/subscribe[.<trigger>] annotations override them."
        ),
    )
    source: str = Field(
        "",
        description="Prefix of the CloudEvents source, e.g. //prod-eu/ to tell clusters apart "
        "(the source is <prefix>/apis/kubeloop.io/v1alpha1/namespaces/<ns>/<plural>/<name>).",
    )
    queue_size: int = Field(
        1000, ge=1, description="Notifications waiting per sink; when full the oldest is dropped."
    )
    max_attempts: int = Field(
        5, ge=1, le=20, description="Attempts per notification (the first included)."
    )
    backoff_seconds: float = Field(
        1.0, gt=0, description="Wait before the first retry; doubled each retry."
    )
    max_backoff_seconds: float = Field(30.0, gt=0, description="Longest wait between two attempts.")
    timeout_seconds: float = Field(5.0, gt=0, description="Time one HTTP attempt may take.")

    @field_validator("sinks")
    @classmethod
    def _sink_names(cls, sinks: dict[str, SinkSettings]) -> dict[str, SinkSettings]:
        for name in sinks:
            if not SINK_NAME.match(name):
                raise ValueError(f"sink name {name!r} must be a DNS label (a-z, 0-9, '-')")
        return sinks

    @model_validator(mode="after")
    def _known_names(self) -> NotificationSettings:
        for trigger, sinks in self.subscriptions.items():
            if trigger != EVERY_TRIGGER and trigger not in ALL_TRIGGERS:
                raise ValueError(
                    f"subscriptions: unknown trigger {trigger!r}; use '*' or one of {', '.join(ALL_TRIGGERS)}"
                )
            unknown = [s for s in sinks if s not in self.sinks]
            if unknown:
                raise ValueError(
                    f"subscriptions.{trigger}: no sink named {', '.join(unknown)}; "
                    f"configured sinks: {', '.join(self.sinks) or 'none'}"
                )
        return self
