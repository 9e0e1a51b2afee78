"""The trainer's own reading of a TrainingRun spec (camelCase, as on the wire).

The operator's API models (``kubeloop.api``) are the source of truth for the resource; the
trainer deliberately keeps its own small models that *ignore* unknown keys, so an image built
from an older release keeps working when the resource gains fields, and the trainer can run
on a laptop from a plain YAML file without the operator's package tree.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

Task = Literal["classification", "regression"]
ColumnKind = Literal["float", "int", "category", "string", "bool"]
MetricName = Literal["accuracy", "f1", "roc_auc", "log_loss", "rmse", "mae", "r2"]

CLASSIFICATION_METRICS: tuple[MetricName, ...] = ("accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS: tuple[MetricName, ...] = ("rmse", "mae", "r2")


class SpecError(ValueError):
    """The spec cannot be used as given; the message names the field and the fix."""


class _Model(BaseModel):
    # Unknown keys are ignored (forward compatibility); both camelCase and snake_case accepted.
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, value: Any) -> Any:
        # An explicit null (as serialisers of optional fields write) means "not given".
        if isinstance(value, Mapping):
            return {key: item for key, item in value.items() if item is not None}
        return value


class ModelSpec(_Model):
    name: str = Field(min_length=1)
    estimator: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    task: Task

    @field_validator("name")
    @classmethod
    def _name_is_a_path_segment(cls, value: str) -> str:
        # The name becomes a directory of the output root.
        if "/" in value or value in {".", ".."}:
            raise ValueError("must be a single path segment (no '/'), e.g. 'churn'")
        return value


class SplitSpec(_Model):
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 42


class DataSpec(_Model):
    source: str = Field(min_length=1)
    format: Literal["csv", "parquet"] | None = None
    target: str | None = None
    features: list[str] | None = None
    categorical_features: list[str] = Field(default_factory=list)
    split: SplitSpec = Field(default_factory=SplitSpec)


class RangeSpec(_Model):
    min: float | None = None
    max: float | None = None


class ClassBalanceSpec(_Model):
    min_fraction: float = Field(ge=0.0, le=1.0)


class ValidationSpec(_Model):
    expected_columns: dict[str, ColumnKind] = Field(default_factory=dict)
    min_rows: int | None = Field(default=None, ge=0)
    max_missing_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    ranges: dict[str, RangeSpec] = Field(default_factory=dict)
    min_class_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    # The resource spells it ``classBalance: {minFraction: ...}``; both forms are read.
    class_balance: ClassBalanceSpec | None = None

    @property
    def smallest_class_fraction(self) -> float | None:
        """The class-balance rule's minimum share, from either spelling (the stricter wins)."""
        given = [f for f in (self.min_class_fraction,
                             self.class_balance.min_fraction if self.class_balance else None)
                 if f is not None]
        return max(given) if given else None


class EvaluationSpec(_Model):
    metric: MetricName | None = None
    threshold: float | None = None
    compare_to: Literal["none", "champion"] = "none"
    min_improvement: float = 0.0


class SweepSpec(_Model):
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    parallelism: int = Field(default=1, ge=1)
    max_trials: int | None = Field(default=None, ge=1)

    @field_validator("grid")
    @classmethod
    def _non_empty_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"sweep.grid.{key} is empty; give at least one value")
        return grid

    def combinations(self) -> list[dict[str, Any]]:
        """Every combination of the grid in the documented order.

        Order: ``itertools.product`` over the grid's keys sorted by name, each key's values in
        the order written; ``maxTrials`` keeps the first ones. Index ``i`` of a sweep's Indexed
        Job trains ``combinations()[i]``.
        """
        keys = sorted(self.grid)
        combinations = [dict(zip(keys, values, strict=True)) for values in itertools.product(
            *(self.grid[k] for k in keys))]
        return combinations if self.max_trials is None else combinations[: self.max_trials]


class OutputSpec(_Model):
    storage_uri: str | None = None


class TrainingRunSpec(_Model):
    """The fields of a TrainingRun spec the trainer reads; everything else is ignored."""

    model: ModelSpec
    data: DataSpec
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    sweep: SweepSpec | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)

    @model_validator(mode="after")
    def _metric_fits_task(self) -> TrainingRunSpec:
        metric = self.evaluation.metric
        allowed = (
            CLASSIFICATION_METRICS if self.model.task == "classification" else REGRESSION_METRICS
        )
        if metric is not None and metric not in allowed:
            raise ValueError(
                f"evaluation.metric {metric!r} does not apply to task {self.model.task!r}; "
                f"use one of {', '.join(allowed)}"
            )
        return self

    @property
    def primary_metric(self) -> MetricName:
        """The metric the gates use: the spec's, else accuracy / rmse by task."""
        if self.evaluation.metric is not None:
            return self.evaluation.metric
        return "accuracy" if self.model.task == "classification" else "rmse"


def parse_spec(document: Mapping[str, Any]) -> TrainingRunSpec:
    """Read a spec from a mapping: either the spec itself or a whole TrainingRun object."""
    if "spec" in document and isinstance(document["spec"], Mapping) and "model" not in document:
        document = document["spec"]
    try:
        return TrainingRunSpec.model_validate(dict(document))
    except ValidationError as exc:
        raise SpecError(_describe_validation_error(exc)) from None


def parse_spec_text(text: str) -> TrainingRunSpec:
    """Read a spec from JSON or YAML text (JSON is YAML, but JSON is tried first: faster)."""
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError:
        import yaml  # only when needed: JSON is what the operator passes

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"the spec is neither JSON nor YAML: {exc}") from None
    if not isinstance(document, Mapping):
        raise SpecError("the spec must be a mapping with at least 'model' and 'data'")
    return parse_spec(document)


def load_spec_file(path: str | Path) -> TrainingRunSpec:
    """Read a spec from a JSON or YAML file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the spec file {str(path)!r}: {exc.strerror}") from None
    return parse_spec_text(text)


def _describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "spec"
        problems.append(f"spec.{location}: {error['msg']}")
    return "invalid TrainingRun spec: " + "; ".join(problems)
