"""DriftPolicy: watch a served model's inputs and predictions for drift; retrain and re-roll.

Every ``interval`` the operator compares the recent ``window`` of live traffic (histograms the
model servers export over the reference bins of profile.json) or a dataset with the training
data's reference profile. When the share of drifted features reaches ``driftShare``, the model
is drifted and, with ``retrain`` set, a new TrainingRun is created; with ``autoPromote``, a run
that beats the champion is pointed at by the ModelDeployment, which starts a canary.

A retrain can also be asked for by hand: set the annotation ``kubeloop.io/retrain`` to any new
value (``kubectl kubeloop retrain dp/NAME`` does); the handled value is recorded in
``status.handledRequests.retrain`` so it is acted on once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, Field, StringConstraints, field_validator, model_validator

from kubeloop.api.common import (
    HTTP_URL,
    MAX_COLUMN_NAME_LENGTH,
    MAX_COLUMNS,
    MAX_MESSAGE_LENGTH,
    MAX_URI_LENGTH,
    ColumnName,
    Conditions,
    Credentials,
    DataUri,
    Duration,
    FreeForm,
    KubeModel,
    LastFailure,
    LocalObjectReference,
    cel,
    cel_rules,
)
from kubeloop.api.trainingrun import TrainingRunSpec

KIND: Final = "DriftPolicy"
PLURAL = "driftpolicies"
RETRAIN_ANNOTATION = "kubeloop.io/retrain"
MAX_HISTORY = 50

NumericalTest = Literal["psi", "ks", "wasserstein", "jensenshannon"]
CategoricalTest = Literal["psi", "chi2", "jensenshannon"]

# Five whitespace-separated fields of cron characters, or one of the @-macros. Enough to turn
# away garbage at admission; the operator parses the expression fully (croniter) as well.
_CRON_FIELD = r"[0-9A-Za-z*?/,-]+"
CRON_PATTERN = (
    rf"^(@(yearly|annually|monthly|weekly|daily|hourly)|({_CRON_FIELD} +){{4}}{_CRON_FIELD})$"
)
CRON_MESSAGE = (
    "schedule must be a cron expression with 5 fields (minute hour day-of-month month "
    "day-of-week), e.g. '0 3 * * *', or one of @hourly, @daily, @weekly, @monthly, @yearly"
)
SOURCE_MESSAGE = "set exactly one of live or dataset"
RETRAIN_SOURCE_MESSAGE = "set exactly one of template or fromTrainingRun"
OVERRIDES_MESSAGE = "overrides is only allowed with fromTrainingRun"


class LiveSource(KubeModel):
    """Live traffic: the bin counters the model servers export at /metrics."""

    prometheus_url: (
        Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH), HTTP_URL] | None
    ) = None
    """Read the counters from this Prometheus (aggregated across replicas); empty: the
    operator scrapes the stable pods' /metrics directly. Must be the operator's configured
    Prometheus or one of its allowed URLs (chart values rollout.prometheusUrl,
    rollout.allowedPrometheusUrls; a trailing slash does not matter; no userinfo, query or
    fragment): any other URL is refused with reason PrometheusUrlNotAllowed and never
    requested."""


class DatasetSource(KubeModel):
    """A dataset checked by a Job (``kubeloop drift``), e.g. yesterday's requests."""

    uri: DataUri
    """URI of the dataset (same schemes as a TrainingRun's data.source)."""
    format: Literal["csv", "parquet"] | None = None
    """File format; inferred from the file name when empty."""
    credentials: Credentials | None = None
    """Secret with credentials for reading the dataset."""


class DriftSource(KubeModel):
    """Where the current data comes from: exactly one of live or dataset."""

    model_config = cel_rules(cel("has(self.live) != has(self.dataset)", SOURCE_MESSAGE))

    live: LiveSource | None = None
    """Live traffic of the target's model servers."""
    dataset: DatasetSource | None = None
    """A dataset at a URI."""

    @model_validator(mode="after")
    def _exactly_one(self) -> DriftSource:
        if (self.live is None) == (self.dataset is None):
            raise ValueError(SOURCE_MESSAGE)
        return self


class DriftTests(KubeModel):
    """The statistic used per feature type."""

    numerical: NumericalTest = "psi"
    """For numbers: psi (population stability index), ks (Kolmogorov-Smirnov), wasserstein
    (in units of the reference's standard deviation) or jensenshannon (distance)."""
    categorical: CategoricalTest = "psi"
    """For categories: psi, chi2 (chi-squared test) or jensenshannon."""


class DriftThresholds(KubeModel):
    """When a feature counts as drifted. For psi, wasserstein and jensenshannon, a score above
    the threshold is drift; for ks and chi2 the threshold is a p-value (corrected for testing
    many features) and a p-value below it is drift."""

    default: Annotated[float, Field(ge=0)] | None = None
    """Threshold for every feature without its own; default per test: psi 0.2,
    jensenshannon 0.1, wasserstein 0.1, ks and chi2 p < 0.05."""
    features: (
        Annotated[dict[str, Annotated[float, Field(ge=0)]], Field(max_length=MAX_COLUMNS)] | None
    ) = None
    """Per-feature thresholds, e.g. ``{mean radius: 0.3, __prediction__: 0.1}``."""


class TrainingRunTemplateMetadata(KubeModel):
    """Labels and annotations copied to every TrainingRun the policy creates."""

    labels: Annotated[dict[str, str], Field(max_length=64)] | None = None
    """Labels for the created runs."""
    annotations: Annotated[dict[str, str], Field(max_length=64)] | None = None
    """Annotations for the created runs."""


class TrainingRunTemplate(KubeModel):
    """The TrainingRun to create on each retrain."""

    metadata: TrainingRunTemplateMetadata | None = None
    """Labels and annotations of the created runs (names are generated)."""
    spec: TrainingRunSpec
    """The spec of every created run, exactly like a TrainingRun's spec."""


class RetrainSpec(KubeModel):
    """What to do when the model drifts (or the schedule fires): train a new model."""

    model_config = cel_rules(
        cel("has(self.template) != has(self.fromTrainingRun)", RETRAIN_SOURCE_MESSAGE),
        cel("!has(self.overrides) || has(self.fromTrainingRun)", OVERRIDES_MESSAGE, ".overrides"),
    )

    template: TrainingRunTemplate | None = None
    """A full TrainingRun spec to create."""
    from_training_run: LocalObjectReference | None = None
    """Copy the spec of this TrainingRun (e.g. the one that trained the served model)."""
    overrides: FreeForm | None = None
    """Fields merged over the copied spec (with fromTrainingRun), e.g.
    ``{data: {source: s3://bucket/latest.parquet}}``."""
    cooldown: Duration = "1h"
    """Minimum time between two retrains."""
    max_retrains_per_day: Annotated[int, Field(ge=0, le=100)] = 3
    """At most this many retrains per UTC day; 0 disables automatic retraining."""
    auto_promote: bool = False
    """When the new run succeeds and beats the champion, point the ModelDeployment at it (this
    starts a canary). Off: the run is only recorded, for a person to promote."""

    @model_validator(mode="after")
    def _one_source(self) -> RetrainSpec:
        if (self.template is None) == (self.from_training_run is None):
            raise ValueError(RETRAIN_SOURCE_MESSAGE)
        if self.overrides is not None and self.from_training_run is None:
            raise ValueError(OVERRIDES_MESSAGE)
        return self


Schedule = Annotated[
    str,
    StringConstraints(max_length=128),
    Field(
        json_schema_extra={
            "x-kubernetes-validations": [cel(f"self.matches('{CRON_PATTERN}')", CRON_MESSAGE)]
        }
    ),
]


class DriftPolicySpec(KubeModel):
    """Which deployment to watch, how drift is measured, and what to do about it."""

    target_ref: LocalObjectReference
    """The ModelDeployment whose stable model is watched (its TrainingRun's profile.json is
    the reference)."""
    source: DriftSource
    """live traffic or a dataset."""
    features: Annotated[list[ColumnName], Field(max_length=MAX_COLUMNS)] | None = None
    """Features to check; default: every feature in the profile plus the prediction
    (``__prediction__``)."""
    tests: DriftTests | None = None
    """Statistic per feature type; default: psi for both."""
    thresholds: DriftThresholds | None = None
    """When a feature counts as drifted."""
    drift_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Share of checked features (0-1) that must drift for the model to count as drifted."""
    window: Duration = "1h"
    """Live traffic of this recent span is compared."""
    min_samples: Annotated[int, Field(ge=1)] = 500
    """Fewer samples in the window: no verdict (condition NotEnoughData)."""
    interval: Duration = "5m"
    """Time between checks."""
    schedule: Schedule | None = None
    """Cron schedule (UTC) for retraining even without drift (continuous training),
    e.g. ``0 3 * * 0`` for Sundays at 03:00."""
    retrain: RetrainSpec | None = None
    """The TrainingRun to create on drift or schedule; empty: only watch and report."""

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(CRON_PATTERN, value):
            raise ValueError(CRON_MESSAGE)
        return value


# -- status -------------------------------------------------------------------------------------


class FeatureScore(KubeModel):
    """One feature's drift statistic in the latest check."""

    feature: Annotated[str, StringConstraints(max_length=MAX_COLUMN_NAME_LENGTH)]
    """The feature (``__prediction__`` for the model's output)."""
    test: Literal["psi", "ks", "wasserstein", "jensenshannon", "chi2"]
    """The statistic used."""
    score: float
    """The statistic's value."""
    threshold: float
    """The threshold it was compared with."""
    drifted: bool
    """Whether this feature counts as drifted."""
    p_value: float | None = None
    """The corrected p-value, for ks and chi2."""
    samples: Annotated[int, Field(ge=0)] | None = None
    """Live samples behind the score."""


class RetrainRecord(KubeModel):
    """A TrainingRun the policy created."""

    name: Annotated[str, StringConstraints(max_length=253)]
    """Name of the TrainingRun."""
    reason: Literal["Drift", "Schedule", "Manual"]
    """What triggered it."""
    time: AwareDatetime
    """When it was created."""
    outcome: Literal["Pending", "Running", "Succeeded", "Failed", "Promoted", "Rejected"] = (
        "Pending"
    )
    """Where it stands: Promoted when the ModelDeployment was pointed at it, Rejected when it
    did not beat the champion."""


class DriftCheck(KubeModel):
    """A past check, for the bounded history."""

    time: AwareDatetime
    """When the check ran."""
    drifted: bool
    """The verdict."""
    drifted_share: Annotated[float, Field(ge=0, le=1)] | None = None
    """Share of checked features that drifted."""
    samples: Annotated[int, Field(ge=0)] | None = None
    """Samples in the window."""
    retrain: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Name of the TrainingRun this check created, if any."""


class HandledRequests(KubeModel):
    """The last value of each request annotation the operator has acted on."""

    retrain: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Last handled kubeloop.io/retrain."""


class DriftPolicyStatus(KubeModel):
    """The latest drift verdict and the retrains it caused, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this status describes."""
    conditions: Conditions | None = None
    """Ready, Drifted, NotEnoughData, RetrainInFlight."""
    last_check_time: AwareDatetime | None = None
    """When drift was last checked."""
    next_check_time: AwareDatetime | None = None
    """When the next check is due."""
    samples: Annotated[int, Field(ge=0)] | None = None
    """Samples in the last check's window."""
    scores: Annotated[list[FeatureScore], Field(max_length=2 * MAX_COLUMNS)] | None = None
    """Per-feature scores of the last check."""
    drifted: bool | None = None
    """The last verdict: is the model drifted?"""
    drifted_features: (
        Annotated[
            list[Annotated[str, StringConstraints(max_length=MAX_COLUMN_NAME_LENGTH)]],
            Field(max_length=2 * MAX_COLUMNS),
        ]
        | None
    ) = None
    """Features that drifted in the last check."""
    drifted_share: Annotated[float, Field(ge=0, le=1)] | None = None
    """Share of checked features that drifted in the last check."""
    last_retrain: RetrainRecord | None = None
    """The latest TrainingRun the policy created."""
    retrain_count: Annotated[int, Field(ge=0)] | None = None
    """TrainingRuns created by this policy so far."""
    retrains_today: Annotated[int, Field(ge=0)] | None = None
    """TrainingRuns created on the UTC day retrainsDay."""
    retrains_day: Annotated[str, StringConstraints(max_length=10)] | None = None
    """The UTC day (YYYY-MM-DD) that retrainsToday counts."""
    next_schedule_time: AwareDatetime | None = None
    """When the schedule fires next."""
    history: Annotated[list[DriftCheck], Field(max_length=MAX_HISTORY)] | None = None
    """The latest checks, newest last (at most 50)."""
    handled_requests: HandledRequests | None = None
    """Request annotations already acted on."""
    last_failure: LastFailure | None = None
    """The most recent failure (profile not found, source unavailable, retrain failed...)."""
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)] | None = None
    """A one-line summary for people."""


class DriftPolicy(KubeModel):
    """A DriftPolicy resource as stored in the API server."""

    api_version: Literal["kubeloop.io/v1alpha1"] = "kubeloop.io/v1alpha1"
    kind: Literal["DriftPolicy"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: DriftPolicySpec
    status: DriftPolicyStatus | None = None
