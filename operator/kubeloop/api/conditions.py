"""Condition types, reasons, and the pure arithmetic of a conditions list.

Controllers never spell a condition type or reason inline: they use these constants, so a typo
is a NameError rather than a status that no printer column or test ever matches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from kubeloop.api.common import (
    MAX_CONDITIONS,
    MAX_MESSAGE_LENGTH,
    REASON_PATTERN,
    Condition,
    ConditionStatus,
)


class ConditionType(StrEnum):
    """The condition types Kubeloop writes."""

    READY = "Ready"
    """Aggregate: the object does what it was asked (run succeeded, model served, policy checking)."""
    PROGRESSING = "Progressing"
    """Work is under way: a run is training, a rollout is moving through its steps."""
    DEGRADED = "Degraded"
    """Something failed and needs a person: an aborted rollout, an invalid spec, a retrain
    promotion the API server refused."""
    STABLE_READY = "StableReady"
    """The stable model's pods are ready."""
    CANARY_READY = "CanaryReady"
    """The canary model's pods are ready."""
    ANALYSIS_PASSING = "AnalysisPassing"
    """The latest canary analysis measurements are within their bounds."""
    DRIFTED = "Drifted"
    """The live (or checked) data no longer looks like the training data, or (a performance
    policy) the model's live performance on labelled traffic fell below its reference."""
    NOT_ENOUGH_DATA = "NotEnoughData"
    """Fewer samples than minSamples (or labels than performance.minLabels) were seen in the
    window; no verdict was made."""
    RETRAIN_IN_FLIGHT = "RetrainInFlight"
    """A TrainingRun created by the policy is still running."""


class Reason(StrEnum):
    """CamelCase reasons for conditions, lastFailure and Events."""

    # TrainingRun
    PENDING = "Pending"
    JOB_CREATED = "JobCreated"
    TRAINING = "Training"
    SUCCEEDED = "Succeeded"
    DATA_VALIDATION_FAILED = "DataValidationFailed"
    GATE_FAILED = "GateFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    UNSCHEDULABLE = "Unschedulable"
    TRAINER_FAILED = "TrainerFailed"
    # any kind
    INVALID_SPEC = "InvalidSpec"
    RECONCILE_ERROR = "ReconcileError"
    # ModelDeployment
    MODEL_NOT_READY = "ModelNotReady"
    MODEL_NOT_FOUND = "ModelNotFound"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    MODEL_UNUSABLE = "ModelUnusable"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    REPLICAS_READY = "ReplicasReady"
    HEALTHY = "Healthy"
    ROLLOUT_STARTED = "RolloutStarted"
    STEP_ADVANCED = "StepAdvanced"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ABORTED = "Aborted"
    ANALYSIS_PASSED = "AnalysisPassed"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_PENDING = "AnalysisPending"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    ROLLED_BACK = "RolledBack"
    # DriftPolicy
    NO_DRIFT = "NoDrift"
    DRIFT_DETECTED = "DriftDetected"
    NOT_ENOUGH_SAMPLES = "NotEnoughSamples"
    NOT_ENOUGH_LABELS = "NotEnoughLabels"
    PERFORMANCE_DEGRADED = "PerformanceDegraded"
    PERFORMANCE_HELD = "PerformanceHeld"
    REFERENCE_UNAVAILABLE = "ReferenceUnavailable"
    TARGET_NOT_FOUND = "TargetNotFound"
    PROFILE_NOT_FOUND = "ProfileNotFound"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    RETRAIN_CREATED = "RetrainCreated"
    RETRAIN_SUCCEEDED = "RetrainSucceeded"
    RETRAIN_FAILED = "RetrainFailed"
    RETRAIN_REJECTED = "RetrainRejected"
    PROMOTION_FAILED = "PromotionFailed"
    SCHEDULED_RETRAIN = "ScheduledRetrain"
    MANUAL_RETRAIN = "ManualRetrain"
    COOLDOWN_ACTIVE = "CooldownActive"
    RETRAIN_LIMIT_REACHED = "RetrainLimitReached"
    # Outgoing URLs and reads refused by the operator's trust policy (kubeloop.trust.urls)
    PROMETHEUS_URL_NOT_ALLOWED = "PrometheusUrlNotAllowed"
    STORAGE_URI_NOT_ALLOWED = "StorageUriNotAllowed"
    # Images and ownership (kubeloop.trust.images, kubeloop.trust.ownership)
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    RESOURCE_CONFLICT = "ResourceConflict"


_REASON = re.compile(REASON_PATTERN)


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of the given type, or None when the list has none."""
    return next((c for c in conditions if c.type == type_), None)


def is_condition_true(conditions: Sequence[Condition], type_: str) -> bool:
    """Whether the condition of the given type exists and is True."""
    found = find_condition(conditions, type_)
    return found is not None and found.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[Condition]:
    """A new conditions list with the condition of ``type_`` set; the input is not changed.

    ``lastTransitionTime`` moves to ``now`` only when the status changes, so it tells when the
    object last became (un)ready rather than when it was last reconciled. The list keeps its
    order, a new type is appended, and it never grows past the schema's bound: when full, the
    condition that changed longest ago gives way.
    """
    if isinstance(status, bool):
        status = "True" if status else "False"
    if status not in ("True", "False", "Unknown"):
        raise ValueError(f"condition status must be True, False or Unknown, got {status!r}")
    if not _REASON.fullmatch(reason):
        raise ValueError(f"condition reason must be one CamelCase word, got {reason!r}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (use datetime.now(timezone.utc))")
    # Kubernetes stores times to the second; truncating here keeps a re-read status equal.
    now = now.replace(microsecond=0)
    message = message[:MAX_MESSAGE_LENGTH]

    previous = find_condition(conditions, type_)
    transition_time = (
        previous.last_transition_time if previous is not None and previous.status == status else now
    )
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition_time,
        observed_generation=generation,
    )
    if previous is not None:
        return [updated if c.type == type_ else c for c in conditions]
    result = [*conditions, updated]
    while len(result) > MAX_CONDITIONS:
        oldest = min((c for c in result if c.type != type_), key=lambda c: c.last_transition_time)
        result.remove(oldest)
    return result
