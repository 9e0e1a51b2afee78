"""TrainingRun: train one scikit-learn model (or a sweep of them) in a Job, and keep the record.

A TrainingRun's spec is immutable once created: a run is a record of what was trained, on which
data, with which result. To train again, create a new run (a DriftPolicy does this for you).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from kubeloop.api.common import (
    MAX_COLUMNS,
    MAX_MESSAGE_LENGTH,
    MAX_URI_LENGTH,
    ColumnName,
    Conditions,
    Credentials,
    DataUri,
    FreeForm,
    KubeModel,
    LabelValue,
    LastFailure,
    LocalObjectReference,
    Matches,
    NodeSelector,
    OutputUri,
    ResourceRequirements,
    Sha256,
    Toleration,
    cel,
    cel_rules,
)

KIND: Final = "TrainingRun"
PLURAL = "trainingruns"

CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
LOWER_IS_BETTER = ("log_loss", "rmse", "mae")
MAX_TRIALS = 256
MAX_GRID_VALUES = 100

Metric = Literal["accuracy", "f1", "roc_auc", "log_loss", "rmse", "mae", "r2"]
Task = Literal["classification", "regression"]
# No "Validating": the trainer checks the data inside its pod and has no API access, so the
# operator cannot see validation apart from training (a failure shows as DataValidationFailed).
Phase = Literal["Pending", "Training", "Succeeded", "Failed"]
ColumnType = Literal["float", "int", "string", "bool", "category"]
MetricMap = Annotated[dict[str, float], Field(max_length=64)]

IMMUTABLE_MESSAGE = "spec is immutable: a TrainingRun is a record; create a new run instead"
METRIC_TASK_MESSAGE = (
    "evaluation.metric does not suit model.task: accuracy, f1, roc_auc and log_loss "
    "are for classification; rmse, mae and r2 for regression"
)
CLASS_BALANCE_MESSAGE = (
    "validation.classBalance only applies to classification: remove it or set "
    "model.task to classification"
)
TARGET_MESSAGE = (
    "target is required: name the column to predict (only sklearn:// datasets "
    "imply it: their target column is 'target')"
)
TARGET_IN_FEATURES_MESSAGE = (
    "features must not list the target column: the target is what the model predicts"
)
RANGE_ORDER_MESSAGE = "min must not be greater than max"
RANGE_EMPTY_MESSAGE = "a range needs min, max or both"


class ModelSpec(KubeModel):
    """What to train."""

    name: LabelValue
    """The model's lineage key: runs of the same model share it, so they can be compared and
    the champion found (a DNS label, e.g. ``churn``)."""
    estimator: Annotated[
        str,
        StringConstraints(max_length=256),
        Matches(
            r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
            "is not an import path: write module and class, e.g. "
            "sklearn.ensemble.RandomForestClassifier",
        ),
    ]
    """Import path of a scikit-learn estimator or Pipeline class, e.g.
    ``sklearn.ensemble.RandomForestClassifier``."""
    params: FreeForm | None = None
    """Keyword arguments for the estimator, e.g. ``{n_estimators: 200, max_depth: 8}``."""
    task: Task
    """classification (predict a class) or regression (predict a number); decides which
    evaluation metrics apply."""


class SplitSpec(KubeModel):
    """How the data is split into a training set and a holdout for evaluation."""

    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Share of rows held out for evaluation, between 0 and 1 (exclusive)."""
    seed: Annotated[int, Field(ge=0)] = 42
    """Random seed of the split (and of the estimator when it takes ``random_state``), so a run
    can be repeated exactly."""


class DataSpec(KubeModel):
    """Where the training data comes from and which columns matter."""

    model_config = cel_rules(
        cel("has(self.target) || self.source.startsWith('sklearn://')", TARGET_MESSAGE, ".target"),
        cel(
            "!has(self.features) || !has(self.target) || !(self.target in self.features)",
            TARGET_IN_FEATURES_MESSAGE,
            ".features",
        ),
    )

    source: DataUri
    """URI of the dataset: ``sklearn://<name>`` for a dataset bundled with scikit-learn
    (breast_cancer, iris, wine, diabetes, digits), ``file:///path.csv``,
    ``pvc://<claim>/<path>``, ``s3://bucket/key``, ``gs://bucket/key`` or ``https://...``."""
    format: Literal["csv", "parquet"] | None = None
    """File format; inferred from the file name when empty."""
    target: ColumnName | None = None
    """The column to predict; required except for ``sklearn://`` datasets, whose target
    column is ``target``."""
    features: Annotated[list[ColumnName], Field(max_length=MAX_COLUMNS)] | None = None
    """Columns used as inputs; default: every column except the target."""
    categorical_features: Annotated[list[ColumnName], Field(max_length=MAX_COLUMNS)] | None = None
    """Columns treated as categories (one-hot encoded, profiled by category) instead of
    numbers; default: text columns."""
    split: SplitSpec | None = None
    """Train/holdout split; default: 20 % holdout with seed 42."""

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> DataSpec:
        if self.target is None and not self.source.startswith("sklearn://"):
            raise ValueError(TARGET_MESSAGE)
        if self.features is not None and self.target in self.features:
            raise ValueError(TARGET_IN_FEATURES_MESSAGE)
        return self


class ValueRange(KubeModel):
    """Inclusive bounds for a column's values."""

    model_config = cel_rules(
        cel("has(self.min) || has(self.max)", RANGE_EMPTY_MESSAGE),
        cel("!has(self.min) || !has(self.max) || self.min <= self.max", RANGE_ORDER_MESSAGE),
    )

    min: float | None = None
    """Smallest allowed value."""
    max: float | None = None
    """Largest allowed value."""

    @model_validator(mode="after")
    def _ordered(self) -> ValueRange:
        if self.min is None and self.max is None:
            raise ValueError(RANGE_EMPTY_MESSAGE)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(RANGE_ORDER_MESSAGE)
        return self


class ClassBalance(KubeModel):
    """A check that no class is too rare to learn (classification only)."""

    min_fraction: Annotated[float, Field(ge=0, le=1)]
    """Every class of the target must make up at least this share of the rows."""


class ValidationSpec(KubeModel):
    """Data checks that gate training: when one fails, the run fails with the column and rule
    in its status, before any time is spent fitting."""

    expected_columns: Annotated[dict[str, ColumnType], Field(max_length=MAX_COLUMNS)] | None = None
    """Columns that must be present, with their type: float, int, string, bool or category
    (int also accepts whole numbers stored as floats)."""
    min_rows: Annotated[int, Field(ge=1)] | None = None
    """The dataset must have at least this many rows."""
    max_missing_fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    """No column may have a larger share of missing values."""
    ranges: Annotated[dict[str, ValueRange], Field(max_length=MAX_COLUMNS)] | None = None
    """Allowed value range per column, e.g. ``{age: {min: 0, max: 120}}``."""
    class_balance: ClassBalance | None = None
    """Minimum share of every class of the target (classification only)."""


class EvaluationSpec(KubeModel):
    """How the trained model is judged on the holdout, and when it is good enough."""

    metric: Metric
    """The metric that decides: accuracy, f1, roc_auc or log_loss (classification); rmse, mae
    or r2 (regression)."""
    threshold: float | None = None
    """Absolute gate: the model must reach at least this value (at most, for log_loss, rmse and
    mae, where lower is better). Empty: no absolute gate."""
    compare_to: Literal["none", "champion"] = "none"
    """champion: also evaluate the current champion (see championRef) on the same fresh
    holdout, and pass only if the new model is better by at least minImprovement."""
    min_improvement: Annotated[float, Field(ge=0)] = 0.0
    """How much better than the champion the new model must be (in units of the metric)."""
    champion_ref: LocalObjectReference | None = None
    """With compareTo: champion, the ModelDeployment whose stable model is the champion;
    default (or when it serves nothing yet): the latest Succeeded TrainingRun with the same
    model.name. No champion at all: only the absolute threshold applies."""


GridValues = Annotated[
    list[Any],
    Field(
        min_length=1,
        max_length=MAX_GRID_VALUES,
        json_schema_extra={
            "items": {"x-kubernetes-preserve-unknown-fields": True, "nullable": True}
        },
    ),
]


class SweepSpec(KubeModel):
    """A parameter grid, run as one Indexed Job: one index per combination; the best trial by
    the evaluation metric becomes the run's model."""

    grid: Annotated[dict[str, GridValues], Field(min_length=1, max_length=16)]
    """Estimator parameter -> values to try, e.g. ``{max_depth: [4, 8, null]}``. At least one
    parameter, each with at least one value; combined with model.params (the grid wins)."""
    parallelism: Annotated[int, Field(ge=1, le=64)] = 1
    """How many trials run at the same time."""
    max_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS)] | None = None
    """Stop after this many combinations (in grid order); default: all, up to 256."""


class OutputSpec(KubeModel):
    """Where the run's artifacts are stored."""

    storage_uri: OutputUri
    """Base URI; artifacts go to ``<storageUri>/<model name>/<run name>/`` (model.skops,
    report.json, profile.json). Schemes: file, pvc, s3, gs."""


class TrackingSpec(KubeModel):
    """MLflow tracking of this run (docs/mlflow.md). Needs an operator with an MLflow tracking
    URI (chart value ``mlflow.trackingUri``); the URI itself is never part of a spec."""

    enabled: bool | None = None
    """Track this run in MLflow; default: the operator's ``mlflow.trackByDefault``."""
    experiment_name: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    """MLflow experiment; default ``<prefix>/<namespace>/<model.name>`` (prefix ``kubeloop``)."""
    credentials: Credentials | None = None
    """Secret whose keys ``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD``, authenticate the trainer to MLflow (other keys are ignored).
    Like every Secret a spec names, the admission policy checks you may read it."""


class TrainingRunSpec(KubeModel):
    """What to train, on which data, how to judge it, and where it runs.

    Immutable once created: a run is a record. To train again, create a new TrainingRun.
    """

    model_config = cel_rules(
        cel(
            "!has(self.evaluation) || ((self.model.task == 'regression') == "
            "(self.evaluation.metric in ['rmse', 'mae', 'r2']))",
            METRIC_TASK_MESSAGE,
            ".evaluation.metric",
        ),
        cel(
            "!has(self.validation) || !has(self.validation.classBalance) || "
            "self.model.task == 'classification'",
            CLASS_BALANCE_MESSAGE,
            ".validation.classBalance",
        ),
    )

    model: ModelSpec
    """The estimator to train and its lineage name."""
    data: DataSpec
    """Where the training data comes from (a dataset URI), which column is the target and which
    columns are features, and how rows are split for evaluation."""
    validation: ValidationSpec | None = None
    """Data checks run before training; a failure names the column and the rule."""
    evaluation: EvaluationSpec | None = None
    """Metric and gates; default: accuracy (classification) or rmse (regression), no gate."""
    sweep: SweepSpec | None = None
    """Optional parameter grid; without it, one model is trained with model.params."""
    resources: ResourceRequirements | None = None
    """CPU, memory and GPU (``nvidia.com/gpu``) for each training pod."""
    node_selector: NodeSelector | None = None
    """Labels a node must have to run the training pods."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Taints the training pods tolerate, e.g. for GPU nodes."""
    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Trainer container image; default: the operator's configured kubeloop image."""
    backoff_limit: Annotated[int, Field(ge=0, le=20)] = 2
    """Retries of a failed training pod before the run fails."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """Wall-clock limit of the training Job; past it the run fails with DeadlineExceeded."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    """Delete the finished Job (not the run or its artifacts) after this many seconds."""
    output: OutputSpec | None = None
    """Where artifacts are written; default: the operator's configured storage."""
    credentials: Credentials | None = None
    """Secret with storage credentials for reading data and writing artifacts."""
    cleanup_policy: Literal["Retain", "Delete"] = "Retain"
    """What happens to the artifacts when the run is deleted: Retain keeps them, Delete removes
    them (never while a ModelDeployment serves them)."""
    tracking: TrackingSpec | None = None
    """MLflow tracking and model registration of this run (operator with MLflow only)."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainingRunSpec:
        regression_metric = (
            self.evaluation is not None and self.evaluation.metric in REGRESSION_METRICS
        )
        if self.evaluation is not None and (self.model.task == "regression") != regression_metric:
            raise ValueError(METRIC_TASK_MESSAGE)
        if (
            self.validation is not None
            and self.validation.class_balance is not None
            and self.model.task != "classification"
        ):
            raise ValueError(CLASS_BALANCE_MESSAGE)
        return self

    def primary_metric(self) -> Metric:
        """The metric that decides: the configured one, or the task's default."""
        if self.evaluation is not None:
            return self.evaluation.metric
        return "accuracy" if self.model.task == "classification" else "rmse"


# -- status -------------------------------------------------------------------------------------


class GateResult(KubeModel):
    """The outcome of one evaluation gate."""

    name: Annotated[str, StringConstraints(max_length=253)]
    """Which gate: threshold, champion, or a data validation rule."""
    passed: bool
    """Whether the model passed it."""
    value: float | None = None
    """The measured value."""
    threshold: float | None = None
    """The value it was compared with."""
    message: Annotated[str, StringConstraints(max_length=4096)] | None = None
    """What was compared, in words."""


class ModelStatus(KubeModel):
    """The trained model: where it is, how good it is, and what it was trained on."""

    uri: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """URI of the stored model (``.../model.skops``)."""
    sha256: Sha256 | None = None
    """SHA-256 of the model file; servers verify it before loading."""
    metrics: MetricMap | None = None
    """Holdout metrics of the new model, e.g. ``{accuracy: 0.97, f1: 0.96}``."""
    champion_metrics: MetricMap | None = None
    """The champion's metrics on the same holdout (compareTo: champion)."""
    data_fingerprint: Annotated[str, StringConstraints(max_length=256)] | None = None
    """A digest of the training data, so runs on identical data can be recognised."""
    profile_uri: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """URI of profile.json, the reference distribution drift is measured against."""
    report_uri: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """URI of report.json, the full training and evaluation report."""
    gates: Annotated[list[GateResult], Field(max_length=32)] | None = None
    """The evaluation gates and whether each passed."""


class ChampionStatus(KubeModel):
    """The model a run was compared with (compareTo: champion)."""

    uri: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """URI of the champion's model file."""
    sha256: Sha256 | None = None
    """Its SHA-256."""
    source: Annotated[str, StringConstraints(max_length=512)] | None = None
    """Where it was found, e.g. ``ModelDeployment/churn`` or ``TrainingRun/churn-1``."""


class TrialStatus(KubeModel):
    """One combination of a sweep."""

    index: Annotated[int, Field(ge=0)]
    """Completion index in the Indexed Job (the combination's place in the grid)."""
    params: FreeForm | None = None
    """The parameters this trial used."""
    metrics: MetricMap | None = None
    """Holdout metrics of this trial."""
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    """Where the trial is."""
    uri: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """URI of this trial's model."""


class MlflowStatus(KubeModel):
    """Where the run is in MLflow (docs/mlflow.md)."""

    experiment_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    """The MLflow experiment's id."""
    run_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    """The MLflow run's id (a sweep's trials are its nested runs)."""
    registered_model: Annotated[str, StringConstraints(max_length=256)] | None = None
    """The registered model a Succeeded run's model became a version of (spec.model.name)."""
    model_version: Annotated[str, StringConstraints(max_length=32)] | None = None
    """That model version."""
    finished: bool | None = None
    """Whether the operator has ended the MLflow run and registered the model."""


class TrainingRunStatus(KubeModel):
    """What happened to the run, written by the operator."""

    phase: Phase | None = None
    """Pending (checks, Job created, pod not running yet), Training (the pod runs: it validates
    the data, then fits and evaluates), Succeeded or Failed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this status describes."""
    conditions: Conditions | None = None
    """Ready and Progressing; a failure's reason (e.g. DataValidationFailed, GateFailed) is in
    their reason and in lastFailure."""
    job_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Name of the training Job."""
    start_time: AwareDatetime | None = None
    """When the Job started."""
    completion_time: AwareDatetime | None = None
    """When the run succeeded or failed."""
    model: ModelStatus | None = None
    """The resulting model and its metrics."""
    champion: ChampionStatus | None = None
    """The champion the model was compared with, if any."""
    primary_metric: Annotated[str, StringConstraints(max_length=128)] | None = None
    """The deciding metric for display, e.g. ``accuracy=0.972``."""
    trials: Annotated[list[TrialStatus], Field(max_length=MAX_TRIALS)] | None = None
    """Trials of a sweep, by index."""
    best_trial: Annotated[int, Field(ge=0)] | None = None
    """Index of the trial whose model became the run's model."""
    last_failure: LastFailure | None = None
    """The most recent failure (data validation, gate, deadline, image pull...)."""
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)] | None = None
    """A one-line summary for people."""
    mlflow: MlflowStatus | None = None
    """The run in MLflow, when tracked (a TrackingFailed condition says why logging failed)."""


class TrainingRun(KubeModel):
    """A TrainingRun resource as stored in the API server."""

    api_version: Literal["kubeloop.io/v1alpha1"] = "kubeloop.io/v1alpha1"
    kind: Literal["TrainingRun"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TrainingRunSpec
    status: TrainingRunStatus | None = None
