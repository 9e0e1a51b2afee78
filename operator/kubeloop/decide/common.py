"""Small pieces every decision module shares: conditions on the wire form, events, times."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubeloop.api.common import Condition
from kubeloop.api.conditions import set_condition


@dataclass(frozen=True)
class Event:
    """An Event to post on the object: type is Normal or Warning."""

    type: str
    reason: str
    message: str


def set_wire_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str | bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """:func:`set_condition` over the wire form that statuses hold."""
    parsed = [Condition.model_validate(c) for c in conditions]
    updated = set_condition(parsed, type_, status, reason, message, now, generation)  # type: ignore[arg-type]
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in updated]


def wire_time(moment: datetime) -> str:
    """RFC 3339 to the second, as Kubernetes stores times."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_wire_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
