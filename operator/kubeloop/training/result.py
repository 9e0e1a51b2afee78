"""The trainer's result: one compact JSON document in the container's termination message.

Kubernetes keeps at most 4096 bytes of a termination message, so :func:`render_result`
trims (failures first, then the message, then params) until the document fits, and marks it
``"trimmed": true``. The operator reads it back with :func:`parse_result`; this module
imports nothing heavier than pydantic so the controller can use it cheaply.

Exit codes (also the pod's, so a Job's ``podFailurePolicy`` can tell them apart):

====  =====================  =========================================================
code  status                 meaning
====  =====================  =========================================================
0     Succeeded              artifact written, every gate passed
2     DataValidationFailed   the data broke a validation rule; nothing was written
3     GateFailed             artifact written as a record, but a gate refused it
4     TrainingFailed         the run cannot succeed as written: ``SpecInvalid`` (a data
                             source refused by policy, an unknown ``sklearn://`` dataset,
                             a bad synthetic parameter, a format that cannot be told,
                             a malformed ``pvc://`` URI included), ``EstimatorNotAllowed``,
                             ``FitFailed``, ``ChampionUnavailable`` (the champion is
                             corrupt, untrusted or cannot score this holdout)
5     TrainingFailed         something the run needs could not be reached:
                             ``DataUnavailable`` (missing, unreachable or unreadable
                             now), ``StorageFailed``,
                             ``ChampionUnavailable`` (its storage); a retry may succeed
====  =====================  =========================================================

Codes 2, 3 and 4 are final (:data:`FINAL_EXIT_CODES`: the training Job's ``podFailurePolicy``
fails the Job on them, so a refused spec costs one pod); 5, and a crash (1, or 137 when the
kernel kills the pod for memory), are retried up to the run's ``backoffLimit``. ``reason`` is
one of :data:`FAILURE_REASONS`; the operator repeats it as the run's condition reason.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

TERMINATION_MESSAGE_LIMIT = 4096

Status = Literal["Succeeded", "DataValidationFailed", "GateFailed", "TrainingFailed"]

EXIT_CODES: dict[str, int] = {
    "Succeeded": 0,
    "DataValidationFailed": 2,
    "GateFailed": 3,
    "TrainingFailed": 4,
}
EXIT_UNAVAILABLE = 5
"""A TrainingFailed that a retry may fix: storage or data could not be reached (see above)."""
FINAL_EXIT_CODES = (EXIT_CODES["DataValidationFailed"], EXIT_CODES["GateFailed"], EXIT_CODES["TrainingFailed"])
"""Exit codes no retry can change: the same spec on the same data gives the same answer."""

# Finer reasons inside TrainingFailed, as CamelCase constants for conditions and events.
REASON_SUCCEEDED = "Succeeded"
REASON_VALIDATION_FAILED = "DataValidationFailed"
REASON_GATE_FAILED = "GateFailed"
REASON_SPEC_INVALID = "SpecInvalid"
REASON_ESTIMATOR_NOT_ALLOWED = "EstimatorNotAllowed"
REASON_DATA_UNAVAILABLE = "DataUnavailable"
REASON_CHAMPION_UNAVAILABLE = "ChampionUnavailable"
REASON_FIT_FAILED = "FitFailed"
REASON_STORAGE_FAILED = "StorageFailed"

FAILURE_REASONS = frozenset({
    REASON_VALIDATION_FAILED,
    REASON_GATE_FAILED,
    REASON_SPEC_INVALID,
    REASON_ESTIMATOR_NOT_ALLOWED,
    REASON_DATA_UNAVAILABLE,
    REASON_CHAMPION_UNAVAILABLE,
    REASON_FIT_FAILED,
    REASON_STORAGE_FAILED,
})
"""Every reason a failed trainer writes. A termination message is written by a pod, so a
reader repeats a reason only when it is one of these."""


class _Wire(BaseModel):
    model_config = ConfigDict(
        extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class Gate(_Wire):
    """One evaluation gate: ``threshold`` (absolute) or ``minImprovement`` (over the champion)."""

    name: Literal["threshold", "minImprovement"]
    passed: bool
    metric: str
    value: float | None = None
    required: float | None = Field(
        default=None, description="The value the metric had to reach (direction-aware)."
    )
    message: str = ""


class ValidationFailure(_Wire):
    """One broken data-validation rule; ``column`` is None for table-wide rules (min rows)."""

    column: str | None
    rule: str
    observed: Any = None
    expected: Any = None
    message: str


class TrainingResult(_Wire):
    """What a trainer reports back; ``parse_result`` reads it from a termination message."""

    status: Status
    exit_code: int
    reason: str = ""
    uri: str | None = None
    sha256: str | None = None
    metric: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None
    gates: list[Gate] = Field(default_factory=list)
    data_fingerprint: str | None = None
    profile_uri: str | None = None
    report_uri: str | None = None
    trial: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    failures: list[ValidationFailure] = Field(default_factory=list)
    message: str = ""
    mlflow_run_id: str | None = None
    """The MLflow run this result was logged to (a sweep trial: its nested run)."""
    tracking_error: str | None = None
    """Why logging to MLflow failed (the run's outcome is unchanged)."""
    trimmed: bool = False

    @property
    def failed_gates(self) -> list[Gate]:
        return [gate for gate in self.gates if not gate.passed]


def parse_result(text: str | bytes) -> TrainingResult:
    """Read a trainer's termination message (pure; raises ``pydantic.ValidationError``)."""
    return TrainingResult.model_validate_json(text)


def to_json_bytes(result: TrainingResult) -> bytes:
    """The compact wire form, camelCase, without trimming."""
    return orjson.dumps(result.model_dump(mode="json", by_alias=True))


def render_result(result: TrainingResult, limit: int = TERMINATION_MESSAGE_LIMIT) -> bytes:
    """The compact JSON of ``result``, trimmed to stay under ``limit`` bytes.

    Trimming order keeps what the operator acts on (status, uri, sha256, metrics, gates) to
    the end: first validation failures beyond the first few, then the message, then params,
    then the gates' messages, then everything but the essentials.
    """
    payload = to_json_bytes(result)
    if len(payload) < limit:
        return payload
    for trimmed in _trimmings(result):
        payload = to_json_bytes(trimmed)
        if len(payload) < limit:
            return payload
    raise AssertionError("unreachable: the last trimming always fits")  # pragma: no cover


def _trimmings(result: TrainingResult) -> list[TrainingResult]:
    steps: list[TrainingResult] = []
    current = result.model_copy(update={"trimmed": True})
    if len(current.failures) > 5:
        extra = len(current.failures) - 5
        current = current.model_copy(update={
            "failures": current.failures[:5],
            "message": f"{current.message} (+{extra} more validation failures in the logs)",
        })
        steps.append(current)
    for keep in (1, 0):
        if len(current.failures) > keep:
            current = current.model_copy(update={"failures": current.failures[:keep]})
            steps.append(current)
    current = current.model_copy(update={"message": _shorten(current.message, 512)})
    steps.append(current)
    current = current.model_copy(update={"params": {}})
    steps.append(current)
    current = current.model_copy(update={
        "gates": [gate.model_copy(update={"message": ""}) for gate in current.gates],
    })
    steps.append(current)
    current = current.model_copy(update={"message": _shorten(current.message, 128)})
    steps.append(current)
    primary = {k: v for k, v in current.metrics.items() if k == current.metric}
    champion_primary = (
        {k: v for k, v in current.champion_metrics.items() if k == current.metric}
        if current.champion_metrics is not None
        else None
    )
    steps.append(current.model_copy(update={
        "metrics": primary, "champion_metrics": champion_primary,
    }))
    # Last resort: what the operator cannot do without.
    steps.append(TrainingResult(
        status=result.status,
        exit_code=result.exit_code,
        reason=result.reason[:64],
        uri=_shorten_optional(result.uri, 1024),
        sha256=result.sha256,
        message=_shorten(result.message, 128),
        trimmed=True,
    ))
    return steps


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shorten_optional(text: str | None, limit: int) -> str | None:
    return None if text is None else _shorten(text, limit)
