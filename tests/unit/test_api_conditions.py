"""set_condition: the transition time moves only with the status; the list stays bounded."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from kubeloop.api.common import MAX_CONDITIONS, REASON_PATTERN, Condition
from kubeloop.api.conditions import (
    ConditionType,
    Reason,
    find_condition,
    is_condition_true,
    set_condition,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def ready(status: str, reason: str = "JobCreated", at: datetime = T0) -> Condition:
    return Condition(
        type="Ready", status=status, reason=reason, message="m",  # type: ignore[arg-type]
        last_transition_time=at, observed_generation=1,
    )


@pytest.mark.parametrize(
    ("before", "status", "reason", "expected_time"),
    [
        # first time: the condition appears at `now`
        (None, "False", "JobCreated", T1),
        # same status, new reason and message: when it *became* False has not changed
        ("False", "False", "Training", T0),
        # status flips: the transition is now
        ("False", "True", "Succeeded", T1),
        ("True", "False", "GateFailed", T1),
        ("Unknown", "True", "Succeeded", T1),
        # booleans are accepted for True/False
        ("True", True, "Succeeded", T0),
        ("True", False, "GateFailed", T1),
    ],
)
def test_transition_time_moves_only_when_the_status_changes(
    before: str | None, status: str | bool, reason: str, expected_time: datetime
) -> None:
    existing = [] if before is None else [ready(before, at=T0)]
    updated = set_condition(existing, "Ready", status, reason, "new message", T1, generation=2)  # type: ignore[arg-type]
    (condition,) = updated
    assert condition.last_transition_time == expected_time
    assert condition.status == ("True" if status is True else "False" if status is False else status)
    assert (condition.reason, condition.message, condition.observed_generation) == (
        reason, "new message", 2,
    )


def test_input_is_not_changed_and_order_is_kept() -> None:
    progressing = Condition(
        type="Progressing", status="True", reason="Training", last_transition_time=T0
    )
    existing = [ready("False"), progressing]
    snapshot = [c.model_copy() for c in existing]
    updated = set_condition(existing, "Ready", "True", "Succeeded", "done", T1)
    assert existing == snapshot
    assert [c.type for c in updated] == ["Ready", "Progressing"]
    added = set_condition(updated, ConditionType.DEGRADED, "False", "Healthy", "", T1)
    assert [c.type for c in added] == ["Ready", "Progressing", "Degraded"]


def test_time_is_kept_to_the_second_as_kubernetes_stores_it() -> None:
    (condition,) = set_condition([], "Ready", "True", "Succeeded", "", T1 + timedelta(microseconds=7))
    assert condition.last_transition_time == T1
    assert condition.model_dump(mode="json", by_alias=True)["lastTransitionTime"] == (
        "2025-03-01T12:05:00Z"
    )


def test_the_list_never_outgrows_its_bound() -> None:
    conditions: list[Condition] = []
    for i in range(MAX_CONDITIONS):
        conditions = set_condition(conditions, f"Type{i}", "True", "Ok", "", T0 + timedelta(i))
    assert len(conditions) == MAX_CONDITIONS
    grown = set_condition(conditions, "Newest", "True", "Ok", "", T0 + timedelta(days=100))
    assert len(grown) == MAX_CONDITIONS
    assert find_condition(grown, "Type0") is None  # the one that changed longest ago
    assert find_condition(grown, "Newest") is not None
    # Updating an existing type never drops anything.
    assert len(set_condition(grown, "Type5", "False", "Bad", "", T1)) == MAX_CONDITIONS


def test_long_messages_are_cut_to_the_schema_bound() -> None:
    (condition,) = set_condition([], "Ready", "False", "Bad", "x" * 40000, T0)
    assert len(condition.message) == 32768


@pytest.mark.parametrize(
    ("status", "reason", "now", "error"),
    [
        ("Maybe", "Ok", T0, "True, False or Unknown"),
        ("True", "not camel case", T0, "CamelCase"),
        ("True", "", T0, "CamelCase"),
        ("True", "Ok", datetime(2025, 1, 1), "timezone-aware"),
    ],
)
def test_bad_arguments_are_refused(status: str, reason: str, now: datetime, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        set_condition([], "Ready", status, reason, "", now)  # type: ignore[arg-type]


def test_find_and_is_true() -> None:
    conditions = set_condition([], "Ready", "True", "Succeeded", "", T0)
    conditions = set_condition(conditions, "Degraded", "False", "Healthy", "", T0)
    assert is_condition_true(conditions, ConditionType.READY)
    assert not is_condition_true(conditions, ConditionType.DEGRADED)
    assert not is_condition_true(conditions, ConditionType.DRIFTED)
    found = find_condition(conditions, "Degraded")
    assert found is not None and found.reason == "Healthy"


def test_vocabulary_is_camel_case_and_unique() -> None:
    for vocabulary in (ConditionType, Reason):
        values = [member.value for member in vocabulary]
        assert len(values) == len(set(values))
        for value in values:
            assert re.fullmatch(REASON_PATTERN, value) and value[0].isupper(), value
    for required in ("Ready", "Progressing", "Degraded", "StableReady", "CanaryReady",
                     "AnalysisPassing", "Drifted", "NotEnoughData", "RetrainInFlight"):
        assert required in {t.value for t in ConditionType}
    for required in ("DataValidationFailed", "GateFailed", "DeadlineExceeded",
                     "BackoffLimitExceeded", "ImagePullFailed", "Unschedulable", "JobCreated",
                     "Succeeded"):
        assert required in {r.value for r in Reason}
