"""Data validation before training: every broken rule, not only the first, with its column.

Rules (the ``rule`` field of a :class:`~kubeloop.training.result.ValidationFailure`):

==========================  ================================================================
rule                        fires when
==========================  ================================================================
``target_present``          the target column is not in the data
``feature_present``         a column named in ``data.features`` / ``categoricalFeatures`` is
                            not in the data
``expected_column``         a column of ``validation.expectedColumns`` is not in the data
``dtype``                   a column's values are not of the kind ``expectedColumns`` says
``min_rows``                the table has fewer rows than ``validation.minRows``
``max_missing_fraction``    a feature or the target misses more values than allowed
``target_missing``          the target has missing values (rows without a label cannot train)
``target_dtype``            a regression target is not numerical
``finite``                  a numerical feature holds +/-inf
``range``                   values fall outside ``validation.ranges[col]`` (min/max inclusive)
``min_classes``             a classification target has fewer than two classes
``min_class_fraction``      the rarest class is rarer than ``validation.classBalance.
                            minFraction`` (or ``validation.minClassFraction``)
``holdout_size``            the seeded holdout would hold no rows
==========================  ================================================================

Messages and ``observed`` values never carry the data's cells: a rule says how many values
broke it and in which column, not which values (the data may hold secrets, and the message
reaches the TrainingRun's status). Column names are repeated sanitised and capped
(:func:`kubeloop.trust.data_paths.column_names`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kubeloop.training.result import ValidationFailure
from kubeloop.training.spec import ColumnKind, TrainingRunSpec
from kubeloop.trust.data_paths import column_name, column_names

if TYPE_CHECKING:
    import pandas as pd


class DataValidationError(Exception):
    """The data broke at least one rule; ``failures`` lists them all."""

    def __init__(self, failures: Sequence[ValidationFailure]) -> None:
        self.failures = list(failures)
        super().__init__(summarise(self.failures))


@dataclass(frozen=True)
class Columns:
    """Which columns the model uses, decided from the spec and the data."""

    target: str
    features: list[str]
    categorical: list[str]  # declared, plus any non-numerical feature


def summarise(failures: Sequence[ValidationFailure]) -> str:
    """One readable paragraph of every failure."""
    if not failures:
        return "data validation passed"
    lines = [f"data validation failed ({len(failures)} rule(s) broken):"]
    lines += [f"  - {failure.message}" for failure in failures]
    return "\n".join(lines)


def choose_columns(frame: pd.DataFrame, spec: TrainingRunSpec, default_target: str | None) -> Columns:
    """Target, features and categorical features; missing columns are left to :func:`validate`."""
    import pandas as pd

    target = spec.data.target or default_target or ""
    features = (
        list(spec.data.features)
        if spec.data.features is not None
        else [str(c) for c in frame.columns if c != target]
    )
    declared = list(spec.data.categorical_features)
    inferred = [
        name
        for name in features
        if name in frame.columns
        and name not in declared
        and not (pd.api.types.is_numeric_dtype(frame[name]) or pd.api.types.is_bool_dtype(frame[name]))
    ]
    categorical = [name for name in features if name in declared or name in inferred]
    return Columns(target=target, features=features, categorical=categorical)


def validate(frame: pd.DataFrame, spec: TrainingRunSpec, columns: Columns) -> list[ValidationFailure]:
    """Every rule the data breaks (empty when the data may be trained on). Pure."""
    import pandas as pd

    failures: list[ValidationFailure] = []
    rules = spec.validation
    present = set(map(str, frame.columns))
    rows = len(frame)

    if not columns.target:
        failures.append(_fail(
            None, "target_present", None, "a target column",
            "no target column given: set spec.data.target to the column to predict",
        ))
    elif columns.target not in present:
        failures.append(_fail(
            columns.target, "target_present", "missing", "present",
            f"target column {column_name(columns.target)} is not in the data; columns are "
            f"{column_names(sorted(present))} (fix spec.data.target)",
        ))
    for name in [*columns.features, *spec.data.categorical_features]:
        if name not in present:
            failures.append(_fail(
                name, "feature_present", "missing", "present",
                f"feature column {column_name(name)} is not in the data (fix spec.data.features or "
                "spec.data.categoricalFeatures)",
            ))

    for name, kind in rules.expected_columns.items():
        if name not in present:
            failures.append(_fail(
                name, "expected_column", "missing", kind,
                f"expected column {column_name(name)} ({kind}) is not in the data",
            ))
            continue
        observed = _kind_mismatch(frame[name], kind)
        if observed is not None:
            failures.append(_fail(
                name, "dtype", observed, kind,
                f"column {column_name(name)} should be {kind} but holds {observed} "
                "(fix the data or validation.expectedColumns)",
            ))

    if rules.min_rows is not None and rows < rules.min_rows:
        failures.append(_fail(
            None, "min_rows", rows, rules.min_rows,
            f"the data has {rows} rows, fewer than validation.minRows={rules.min_rows}",
        ))

    used = [n for n in dict.fromkeys([*columns.features, columns.target]) if n in present]
    if rules.max_missing_fraction is not None and rows > 0:
        for name in used:
            fraction = float(frame[name].isna().mean())
            if fraction > rules.max_missing_fraction:
                failures.append(_fail(
                    name, "max_missing_fraction", round(fraction, 6), rules.max_missing_fraction,
                    f"column {column_name(name)} misses {fraction:.2%} of its values, more than "
                    f"validation.maxMissingFraction={rules.max_missing_fraction}",
                ))

    target = frame[columns.target] if columns.target in present else None
    if target is not None:
        missing_labels = int(target.isna().sum())
        if missing_labels:
            failures.append(_fail(
                columns.target, "target_missing", missing_labels, 0,
                f"target column {column_name(columns.target)} has {missing_labels} missing value(s); "
                "drop or label those rows",
            ))
        if spec.model.task == "regression" and not (
            pd.api.types.is_numeric_dtype(target) and not pd.api.types.is_bool_dtype(target)
        ):
            failures.append(_fail(
                columns.target, "target_dtype", str(target.dtype), "numerical",
                f"regression target {column_name(columns.target)} is {target.dtype}, not numerical "
                "(use task: classification for labels)",
            ))

    for name in columns.features:
        if name in present and name not in columns.categorical and _is_real(frame[name]):
            values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            infinite = int(np.isinf(values).sum())
            if infinite:
                failures.append(_fail(
                    name, "finite", infinite, 0,
                    f"numerical feature {column_name(name)} holds {infinite} infinite value(s)",
                ))

    for name, bounds in rules.ranges.items():
        failures.extend(_range_failures(frame, name, bounds.min, bounds.max, present))

    if spec.model.task == "classification" and target is not None:
        failures.extend(
            _class_failures(target.dropna(), columns.target, rules.smallest_class_fraction)
        )

    test_rows = int(np.ceil(rows * spec.data.split.test_fraction))
    if rows > 0 and (test_rows < 1 or test_rows >= rows):
        failures.append(_fail(
            None, "holdout_size", test_rows, f"1..{rows - 1}",
            f"data.split.testFraction={spec.data.split.test_fraction} of {rows} rows leaves "
            "no holdout or no training rows",
        ))
    return failures


def _range_failures(
    frame: pd.DataFrame, name: str, low: float | None, high: float | None, present: set[str]
) -> list[ValidationFailure]:
    expected = {"min": low, "max": high}
    if name not in present:
        return [_fail(
            name, "range", "missing", expected,
            f"validation.ranges names column {column_name(name)}, which is not in the data",
        )]
    if not _is_real(frame[name]):
        return [_fail(
            name, "range", str(frame[name].dtype), expected,
            f"validation.ranges applies to numbers, but column {column_name(name)} is "
            f"{frame[name].dtype}",
        )]
    values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return []
    outside = np.zeros(values.size, dtype=bool)
    if low is not None:
        outside |= values < low
    if high is not None:
        outside |= values > high
    count = int(outside.sum())
    if not count:
        return []
    # How many, never which: the values themselves may be what must not leak (issue 13).
    return [_fail(
        name, "range", {"outside": count}, expected,
        f"column {column_name(name)} has {count} of {values.size} value(s) outside "
        f"validation.ranges [{_bound(low, '-inf')}, {_bound(high, 'inf')}]",
    )]


def _class_failures(
    labels: pd.Series[Any], target: str, min_fraction: float | None
) -> list[ValidationFailure]:
    frequencies = labels.value_counts(normalize=True)
    if len(frequencies) < 2:
        return [_fail(
            target, "min_classes", len(frequencies), 2,
            f"target {column_name(target)} has {len(frequencies)} class(es); classification needs at "
            "least two",
        )]
    rarest = float(frequencies.iloc[-1])
    if min_fraction is not None and rarest < min_fraction:
        # The label itself is a cell value and is not repeated (issue 13); its share is.
        return [_fail(
            target, "min_class_fraction", {"fraction": round(rarest, 6)}, min_fraction,
            f"the rarest class of target {column_name(target)} is {rarest:.2%} of the rows, "
            f"below validation.classBalance.minFraction={min_fraction}",
        )]
    return []


def _kind_mismatch(column: pd.Series[Any], kind: ColumnKind) -> str | None:
    """None when ``column`` holds values of ``kind``, else a description of what it holds."""
    import pandas as pd

    dtype = column.dtype
    described = str(dtype)
    is_bool = pd.api.types.is_bool_dtype(dtype)
    is_numeric = pd.api.types.is_numeric_dtype(dtype) and not is_bool
    is_integer = pd.api.types.is_integer_dtype(dtype)
    present = column.dropna()
    integral_floats = (
        is_numeric and not is_integer
        and bool(np.all(np.mod(present.to_numpy(dtype=np.float64), 1.0) == 0.0))
    )
    if kind == "float":
        return None if is_numeric else described
    if kind == "int":
        if is_integer or integral_floats:
            return None
        return f"non-integral {described}" if is_numeric else described
    if kind == "bool":
        if is_bool or (is_numeric and set(np.unique(present.to_numpy())) <= {0, 1}):
            return None
        return described
    if kind == "string":
        is_text = pd.api.types.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype)
        return None if is_text else described
    # category: labels of any kind, but not real-valued measurements.
    if is_numeric and not (is_integer or integral_floats):
        return f"non-integral {described}"
    return None


def _is_real(column: pd.Series[Any]) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column))


def _fail(column: str | None, rule: str, observed: Any, expected: Any, message: str) -> ValidationFailure:
    return ValidationFailure(
        column=column, rule=rule, observed=observed, expected=expected, message=message
    )


def _bound(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"
