"""DriftPolicy: watch a served model's inputs and predictions for drift; retrain and re-roll.

Every ``interval`` the operator compares recent live traffic (histograms the model servers
export over the reference bins of profile.json: over ``window`` when read from Prometheus,
else since the previous check) or a dataset with the training data's reference profile. When the share of drifted features reaches ``driftShare``, the model
is drifted and, with ``retrain`` set, a new TrainingRun is created; with ``autoPromote``, a run
that beats the champion is pointed at by the ModelDeployment, which starts a canary.

A retrain can also be asked for by hand: set the annotation ``kubeloop.io/retrain`` to any new
value (``kubectl kubeloop retrain dp/NAME`` does); the handled value is recorded in
``status.handledRequests.retrain`` so it is acted on once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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
from kubeloop.drift.defaults import (
    AUTO_RULE,
    AUTO_TESTS,
    CATEGORICAL_TESTS,
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLDS,
    DISTANCE_TESTS,
    NUMERICAL_TESTS,
    P_VALUE_TESTS,
    SMALL_SAMPLE_MAX,
    possible_tests,
)
from kubeloop.drift.performance import PerformanceMetric

KIND: Final = "DriftPolicy"
PLURAL = "driftpolicies"
RETRAIN_ANNOTATION = "kubeloop.io/retrain"
MAX_HISTORY = 50
DEFAULT_PROMETHEUS_WINDOW: Final = "1h"
DEFAULT_DRIFT_SHARE: Final = 0.5
DEFAULT_MIN_SAMPLES: Final = 500

NumericalTest = Literal["auto", "psi", "ks", "wasserstein", "jensenshannon"]
CategoricalTest = Literal["auto", "psi", "chi2", "jensenshannon"]

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


def _auto_text(kind: str) -> str:
    small, large = AUTO_TESTS[kind]
    return f"{small} for at most {SMALL_SAMPLE_MAX:,} current values, {large} for more"


class DriftTests(KubeModel):
    """The statistic per feature type. Distance tests (psi, wasserstein, jensenshannon) are
    judged by thresholds (drifted when score >= threshold); hypothesis tests (ks, chi2) by
    alpha (drifted when the corrected p-value < alpha)."""

    numerical: NumericalTest = Field(
        default="auto",
        description="For numbers: psi (population stability index), ks (Kolmogorov-Smirnov), "
        "wasserstein (in units of the reference's standard deviation), jensenshannon "
        f"(distance) or auto: {_auto_text('numerical')}.",
    )
    categorical: CategoricalTest = Field(
        default="auto",
        description="For categories: psi, chi2 (chi-squared test), jensenshannon or auto: "
        f"{_auto_text('categorical')}.",
    )


_PSI_DEFAULT = DEFAULT_THRESHOLDS["psi"]
_WASSERSTEIN_DEFAULT = DEFAULT_THRESHOLDS["wasserstein"]
_JS_DEFAULT = DEFAULT_THRESHOLDS["jensenshannon"]
ScoreThreshold = Annotated[float, Field(gt=0)]
Alpha = Annotated[float, Field(gt=0, lt=1)]


class DriftThresholds(KubeModel):
    """Score thresholds of the distance tests: a feature judged by psi, wasserstein or
    jensenshannon drifted when its score is at or above the threshold. Not for ks and chi2
    (see alpha). A threshold for a test that tests can never pick is refused."""

    psi: ScoreThreshold | None = Field(
        default=None, description=f"Threshold of psi; default {_PSI_DEFAULT}."
    )
    wasserstein: ScoreThreshold | None = Field(
        default=None,
        description=f"Threshold of wasserstein, in reference standard deviations; default "
        f"{_WASSERSTEIN_DEFAULT}.",
    )
    jensenshannon: ScoreThreshold | None = Field(
        default=None,
        description=f"Threshold of jensenshannon (base 2, 0 to 1); default {_JS_DEFAULT}.",
    )
    features: Annotated[dict[str, ScoreThreshold], Field(max_length=MAX_COLUMNS)] | None = None
    """Per-feature score thresholds, replacing the test's for that feature, e.g.
    ``{mean radius: 0.3}``. Each feature must be in the reference profile and able to get a
    distance test; otherwise the policy reports InvalidSpec."""


class DriftAlpha(KubeModel):
    """Significance of the hypothesis tests: a feature judged by ks or chi2 drifted when its
    p-value, corrected across features with Benjamini-Hochberg, is below alpha. Refused when
    tests can pick neither ks nor chi2."""

    default: Alpha | None = Field(
        default=None,
        description=f"Alpha of every feature without its own; default {DEFAULT_ALPHA}.",
    )
    features: Annotated[dict[str, Alpha], Field(max_length=MAX_COLUMNS)] | None = None
    """Per-feature alpha, e.g. ``{__prediction__: 0.1}``. Each feature must be in the reference
    profile and able to get ks or chi2; otherwise the policy reports InvalidSpec."""


DEFAULT_MIN_LABELS: Final = 200
DEFAULT_TOLERANCE: Final = 0.05


class PerformanceSignal(KubeModel):
    """Watch the model's live performance on labelled traffic instead of its inputs (concept
    drift). Labels reach the servers on ``/feedback`` (by the request id of the prediction,
    possibly long after it); each server counts a label when it arrives, so the window is over
    label arrival. The policy compares the live metric with the reference (by default the
    holdout metric of the TrainingRun that trained the stable model) and counts as drifted
    (reason PerformanceDegraded) when live is worse by more than tolerance; retrains then
    follow the same rules as feature drift (cooldown, maxRetrainsPerDay, one in flight,
    champion gate, autoPromote)."""

    metric: PerformanceMetric = Field(
        description="accuracy or f1 for a classifier (f1 of the second of the sorted classes for "
        "two classes, macro-averaged otherwise: as the trainer computes it), mae or rmse for a "
        "regressor. Must fit the model's task, and the reference TrainingRun must have "
        "recorded it (status.model.metrics)."
    )
    min_labels: Annotated[int, Field(ge=1)] = DEFAULT_MIN_LABELS
    """Fewer labelled rows than this in the span compared (the window with Prometheus, else
    the time since the previous check): no verdict (condition NotEnoughData, reason
    NotEnoughLabels), no retrain."""
    tolerance: Annotated[float, Field(ge=0, lt=1)] = DEFAULT_TOLERANCE
    """How much worse than the reference live performance may be, relative to the reference:
    0.05 accepts accuracy down to 95 % of the reference (e.g. 0.95 -> 0.9025), or RMSE up to
    105 % of it. Degraded beyond that."""
    reference: Annotated[float, Field(ge=0)] | None = None
    """The value live performance is compared with; default: metric in status.model.metrics
    of the TrainingRun that trained the stable model. Set it for a model pinned by storageUri
    (no TrainingRun) or to hold the model to a business target."""


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


# -- settings that would be ignored ---------------------------------------------------------------
# Each rule is one text, used three ways: the CRD's CEL rule (refused on apply), the pydantic
# validator (examples, the docs) and the operator (a CRD installed before the rule).

_NUMERICAL_SETTINGS = ("auto", *sorted(NUMERICAL_TESTS))
_CATEGORICAL_SETTINGS = ("auto", *sorted(CATEGORICAL_TESTS))
_NUMERICAL_CEL = "(has(self.tests) && has(self.tests.numerical) ? self.tests.numerical : 'auto')"
_CATEGORICAL_CEL = (
    "(has(self.tests) && has(self.tests.categorical) ? self.tests.categorical : 'auto')"
)
WINDOW_MESSAGE = (
    "window only applies to live traffic read from Prometheus (its increase() over the window): "
    "without source.live.prometheusUrl the operator compares the pods' counters between two "
    "checks (the span is interval), and a dataset is checked whole; set "
    "spec.source.live.prometheusUrl or remove window"
)


def _settings_that_pick(tests: frozenset[str]) -> tuple[list[str], list[str]]:
    """The tests.numerical and tests.categorical values under which one of ``tests`` is used."""
    return (
        [s for s in _NUMERICAL_SETTINGS if possible_tests("numerical", s) & tests],
        [s for s in _CATEGORICAL_SETTINGS if possible_tests("categorical", s) & tests],
    )


def _fix(tests: frozenset[str]) -> str:
    numerical, categorical = _settings_that_pick(tests)
    options = [
        *([f"tests.numerical to {' or '.join(numerical)}"] if numerical else []),
        *([f"tests.categorical to {' or '.join(categorical)}"] if categorical else []),
    ]
    return "set " + ", or ".join(options)


def _picks_cel(tests: frozenset[str]) -> str:
    numerical, categorical = _settings_that_pick(tests)
    parts = [
        *([f"{_NUMERICAL_CEL} in {numerical!r}"] if numerical else []),
        *([f"{_CATEGORICAL_CEL} in {categorical!r}"] if categorical else []),
    ]
    return "(" + " || ".join(parts) + ")"


def _threshold_message(test: str) -> str:
    return (
        f"thresholds.{test} is never used: neither tests.numerical nor tests.categorical can "
        f"pick {test}; remove thresholds.{test} or {_fix(frozenset({test}))}"
    )


FEATURE_THRESHOLDS_MESSAGE = (
    "thresholds.features is never used: it holds score thresholds of psi, wasserstein and "
    "jensenshannon, and tests picks only ks and chi2 (judged by alpha); move the values to "
    f"alpha.features or {_fix(DISTANCE_TESTS)}"
)
ALPHA_MESSAGE = (
    "alpha is never used: it judges ks and chi2, and tests picks neither (psi, wasserstein and "
    f"jensenshannon are judged by thresholds); remove alpha or {_fix(P_VALUE_TESTS)}"
)


PERFORMANCE_SOURCE_MESSAGE = (
    "performance needs source.live: labels reach the model servers on /feedback, and the "
    "operator reads their counters (from Prometheus or the pods); a dataset has no labels to "
    "judge; set source.live or remove performance"
)
FEATURE_DRIFT_FIELDS: Final = (
    "features",
    "tests",
    "thresholds",
    "alpha",
    "driftShare",
    "minSamples",
)


def _feature_drift_message(name: str) -> str:
    return (
        f"{name} configures feature drift, which a policy with performance does not check "
        f"(it judges labelled outcomes; its minimum is performance.minLabels): remove {name}, "
        "or watch feature drift with a second DriftPolicy on the same targetRef"
    )


def _spec_rules() -> list[tuple[str, str, str]]:
    """(CEL rule on spec, message, field under spec) for every setting that would be ignored."""
    rules = [
        (
            f"!has(self.thresholds) || !has(self.thresholds.{test}) || "
            f"{_picks_cel(frozenset({test}))}",
            _threshold_message(test),
            f".thresholds.{test}",
        )
        for test in sorted(DISTANCE_TESTS)
    ]
    rules += [
        (
            "!has(self.thresholds) || !has(self.thresholds.features) || "
            f"{_picks_cel(DISTANCE_TESTS)}",
            FEATURE_THRESHOLDS_MESSAGE,
            ".thresholds.features",
        ),
        (f"!has(self.alpha) || {_picks_cel(P_VALUE_TESTS)}", ALPHA_MESSAGE, ".alpha"),
        (
            "!has(self.window) || (has(self.source.live) && has(self.source.live.prometheusUrl))",
            WINDOW_MESSAGE,
            ".window",
        ),
        (
            "!has(self.performance) || has(self.source.live)",
            PERFORMANCE_SOURCE_MESSAGE,
            ".performance",
        ),
    ]
    rules += [
        (f"!has(self.performance) || !has(self.{name})", _feature_drift_message(name), f".{name}")
        for name in FEATURE_DRIFT_FIELDS
    ]
    return rules


def usable_tests(spec: Mapping[str, Any]) -> frozenset[str]:
    """Every test a policy with this (wire) spec can pick, for some feature and sample size."""
    tests = spec.get("tests") or {}
    return possible_tests("numerical", tests.get("numerical", "auto")) | possible_tests(
        "categorical", tests.get("categorical", "auto")
    )


def ignored_settings(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each setting of this wire-format spec that nothing would use."""
    usable = usable_tests(spec)
    thresholds = spec.get("thresholds") or {}
    problems = [
        (f"spec.thresholds.{test}", _threshold_message(test))
        for test in sorted(DISTANCE_TESTS)
        if thresholds.get(test) is not None and test not in usable
    ]
    if thresholds.get("features") is not None and not usable & DISTANCE_TESTS:
        problems.append(("spec.thresholds.features", FEATURE_THRESHOLDS_MESSAGE))
    if spec.get("alpha") is not None and not usable & P_VALUE_TESTS:
        problems.append(("spec.alpha", ALPHA_MESSAGE))
    live = (spec.get("source") or {}).get("live")
    if spec.get("window") is not None and not (live or {}).get("prometheusUrl"):
        problems.append(("spec.window", WINDOW_MESSAGE))
    if spec.get("performance") is not None:
        if live is None:
            problems.append(("spec.performance", PERFORMANCE_SOURCE_MESSAGE))
        problems += [
            (f"spec.{name}", _feature_drift_message(name))
            for name in FEATURE_DRIFT_FIELDS
            if spec.get(name) is not None
        ]
    return problems


class DriftPolicySpec(KubeModel):
    """Which deployment to watch, how drift is measured, and what to do about it."""

    model_config = cel_rules(*(cel(rule, message, path) for rule, message, path in _spec_rules()))

    target_ref: LocalObjectReference
    """The ModelDeployment whose stable model is watched (its TrainingRun's profile.json is
    the reference)."""
    source: DriftSource
    """live traffic or a dataset."""
    features: Annotated[list[ColumnName], Field(max_length=MAX_COLUMNS)] | None = None
    """Features to check; default: every feature in the profile plus the prediction
    (``__prediction__``)."""
    tests: DriftTests | None = Field(
        default=None,
        description="Statistic per feature type; a type left out (or no tests at all) is auto: "
        f"{AUTO_RULE}.",
    )
    thresholds: DriftThresholds | None = None
    """Score thresholds of psi, wasserstein and jensenshannon (drifted when score >= it)."""
    alpha: DriftAlpha | None = None
    """Significance of ks and chi2 (drifted when the corrected p-value < alpha)."""
    drift_share: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None,
        description=f"Share of checked features (0-1) that must drift for the model to count "
        f"as drifted; default {DEFAULT_DRIFT_SHARE}.",
    )
    window: Duration | None = Field(
        default=None,
        description="With source.live.prometheusUrl: the span of recent traffic compared "
        f"(Prometheus' increase() over it); default {DEFAULT_PROMETHEUS_WINDOW}. Refused "
        "otherwise: without Prometheus the operator compares the pods' counters between two "
        "checks (the span is interval), and a dataset is checked whole.",
    )
    min_samples: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="Fewer samples in the span compared (the window with Prometheus, else the "
        "time since the previous check): no verdict (condition NotEnoughData); default "
        f"{DEFAULT_MIN_SAMPLES}.",
    )
    performance: PerformanceSignal | None = None
    """Judge the model by its live performance on labelled traffic (/feedback) instead of by
    feature drift; then features, tests, thresholds, alpha, driftShare and minSamples are
    refused (one signal per policy)."""
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

    @model_validator(mode="after")
    def _nothing_ignored(self) -> DriftPolicySpec:
        problems = ignored_settings(self.model_dump(mode="json", by_alias=True, exclude_none=True))
        if problems:
            raise ValueError("; ".join(f"{field}: {message}" for field, message in problems))
        return self


# -- status -------------------------------------------------------------------------------------


class FeatureScore(KubeModel):
    """One feature's drift statistic in the latest check."""

    feature: Annotated[str, StringConstraints(max_length=MAX_COLUMN_NAME_LENGTH)]
    """The feature (``__prediction__`` for the model's output)."""
    test: Literal["psi", "ks", "wasserstein", "jensenshannon", "chi2"]
    """The statistic used."""
    score: float
    """The statistic's value."""
    threshold: float | None = None
    """For psi, wasserstein and jensenshannon: the score threshold (drifted when score >= it)."""
    alpha: float | None = None
    """For ks and chi2: the significance (drifted when pValue < it)."""
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
    reason: Literal["Drift", "Performance", "Schedule", "Manual"]
    """What triggered it (Performance: live performance fell, see spec.performance)."""
    time: AwareDatetime
    """When it was created."""
    outcome: Literal["Pending", "Running", "Succeeded", "Failed", "Promoted", "Rejected"] = (
        "Pending"
    )
    """Where it stands: Promoted when the ModelDeployment was pointed at it, Rejected when it
    did not beat the champion."""
    message: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """How it ended, in words: its metric against the champion's, what the promotion replaced,
    or why it failed or was not promoted."""


class DriftCheck(KubeModel):
    """A past check, for the bounded history."""

    time: AwareDatetime
    """When the check ran."""
    drifted: bool
    """The verdict."""
    drifted_share: Annotated[float, Field(ge=0, le=1)] | None = None
    """Share of checked features that drifted."""
    samples: Annotated[int, Field(ge=0)] | None = None
    """Samples in the span compared."""
    retrain: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Name of the TrainingRun this check created, if any."""
    report: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """Dataset checks: the URI of the check's HTML report (the check Job's
    kubeloop.io/drift-report annotation)."""


class PerformanceStatus(KubeModel):
    """The latest performance check (policies with spec.performance)."""

    metric: PerformanceMetric
    """The metric compared."""
    labels: Annotated[int, Field(ge=0)]
    """Labelled rows that arrived in the span compared."""
    reference: float | None = None
    """The reference value (spec.performance.reference, else the TrainingRun's holdout metric)."""
    live: float | None = None
    """The metric over those labels; empty when there were fewer than minLabels."""
    limit: float | None = None
    """The worst live value still accepted (reference and tolerance)."""
    degraded: bool | None = None
    """Whether live is worse than limit; empty without a verdict."""


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
    """Samples in the span the last check compared."""
    scores: Annotated[list[FeatureScore], Field(max_length=2 * MAX_COLUMNS)] | None = None
    """Per-feature scores of the last check."""
    drifted: bool | None = None
    """The last verdict: is the model drifted (with spec.performance: has its performance
    degraded)?"""
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
    report: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """Dataset checks: the URI of the last check's self-contained HTML report (``kubeloop drift
    --html``), copied from the check Job's kubeloop.io/drift-report annotation."""
    performance: PerformanceStatus | None = None
    """Live and reference performance and the label count of the last check (policies with
    spec.performance)."""
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
