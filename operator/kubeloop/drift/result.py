"""The dataset check's result: one compact JSON document in the Job's termination message.

``kubeloop drift`` writes it; the DriftPolicy controller reads it back with
:func:`parse_result`. Kubernetes keeps at most 4096 bytes of a termination message, so
:func:`render_result` drops per-feature detail (first the non-drifted features, then all)
until it fits and marks the document ``"trimmed": true``; the verdict fields always stay.

Document (camelCase)::

    {"status": "Checked", "drifted": false, "predictionDrifted": false, "share": 0.25,
     "driftShare": 0.5, "driftedFeatures": ["age", "city"], "sampleSize": 1000,
     "mode": "binned", "features": {"age": ["wasserstein", 0.31, null, true], ...},
     "skipped": ["notes"]}

``features`` maps each feature to ``[test, score, corrected p-value or null, drifted]``. On
failure: ``{"status": "Failed", "reason": "DataUnavailable", "message": "..."}``.

Exit codes of ``kubeloop drift``: 0 when the check ran (drift or not: read ``drifted``), 2 when
the input was unusable (reason ``DataUnavailable``, ``ProfileUnavailable``, ``ConfigInvalid``
or ``DataMismatch``), 3 only with ``--fail-on-drift`` when the model drifted, 64 on bad usage.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel, to_snake

from kubeloop.drift.report import DriftReport, FeatureDrift

TERMINATION_MESSAGE_LIMIT = 4096
EXIT_CHECKED = 0
EXIT_INPUT_INVALID = 2
EXIT_DRIFTED = 3
EXIT_USAGE = 64

REASON_DATA_UNAVAILABLE = "DataUnavailable"
REASON_PROFILE_UNAVAILABLE = "ProfileUnavailable"
REASON_CONFIG_INVALID = "ConfigInvalid"
REASON_DATA_MISMATCH = "DataMismatch"


class DriftCheckResult(BaseModel):
    """What the dataset Job reports back to the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    status: Literal["Checked", "Failed"]
    reason: str | None = None
    message: str | None = None
    drifted: bool = False
    prediction_drifted: bool = False
    share: float = 0.0
    drift_share: float | None = None
    drifted_features: list[str] = Field(default_factory=list)
    sample_size: int = 0
    mode: Literal["exact", "binned"] | None = None
    features: dict[str, tuple[str, float, float | None, bool]] = Field(default_factory=dict)
    skipped: list[str] = Field(default_factory=list)
    trimmed: bool = False


def _feature_row(feature: FeatureDrift) -> tuple[str, float, float | None, bool]:
    p_value = feature.p_value_adjusted if feature.p_value_adjusted is not None else feature.p_value
    return (
        feature.test,
        _short(feature.score),
        None if p_value is None else _short(p_value),
        feature.drifted,
    )


def _short(value: float) -> float:
    # Six significant digits are plenty for a status page and keep the message small.
    return float(f"{value:.6g}")


def result_from_report(report: DriftReport) -> DriftCheckResult:
    """The full result of a finished check (before any trimming)."""
    features = {f.feature: _feature_row(f) for f in report.features}
    if report.prediction is not None:
        features[report.prediction.feature] = _feature_row(report.prediction)
    return DriftCheckResult(
        status="Checked",
        drifted=report.drifted,
        prediction_drifted=report.prediction_drifted,
        share=_short(report.share),
        drift_share=report.drift_share,
        drifted_features=report.drifted_features,
        sample_size=report.sample_size,
        mode=report.mode,
        features=features,
        skipped=[s.feature for s in report.skipped],
    )


def failure(reason: str, message: str) -> DriftCheckResult:
    """The result of a check that could not run."""
    return DriftCheckResult(status="Failed", reason=reason, message=message)


def _dump(result: DriftCheckResult) -> bytes:
    payload: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    payload["status"] = result.status
    if result.status == "Checked":
        # The verdict is always spelled out, even where it equals the default.
        for key in ("drifted", "predictionDrifted", "share", "driftedFeatures"):
            payload[key] = getattr(result, to_snake(key))
    return orjson.dumps(payload)


def render_result(result: DriftCheckResult, limit: int = TERMINATION_MESSAGE_LIMIT) -> bytes:
    """Compact JSON of ``result`` in at most ``limit`` bytes."""
    encoded = _dump(result)
    if len(encoded) <= limit:
        return encoded
    drifted_only = {name: row for name, row in result.features.items() if row[3]}
    for features in (drifted_only, {}):
        candidate = result.model_copy(update={"features": features, "trimmed": True})
        encoded = _dump(candidate)
        if len(encoded) <= limit:
            return encoded
    # Hundreds of drifted names: keep as many as fit, the verdict fields are what matter.
    names = list(result.drifted_features)
    message = (result.message or "")[:1000]
    while True:
        candidate = result.model_copy(
            update={
                "features": {},
                "drifted_features": names,
                "skipped": [],
                "message": message or None,
                "trimmed": True,
            }
        )
        encoded = _dump(candidate)
        if len(encoded) <= limit or (not names and not message):
            return encoded
        if names:
            names = names[: len(names) // 2]
        else:
            message = message[: len(message) // 2]


def parse_result(payload: bytes | str) -> DriftCheckResult:
    """Read a termination message written by :func:`render_result`."""
    return DriftCheckResult.model_validate(orjson.loads(payload))
