"""Every validation rule fires on real data, names its column, and says what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from kubeloop.training.data import load_table
from kubeloop.training.spec import parse_spec
from kubeloop.training.validate import choose_columns, summarise, validate


def _spec(validation: dict[str, Any] | None = None, task: str = "classification",
          data: dict[str, Any] | None = None) -> Any:
    return parse_spec({
        "model": {"name": "m", "estimator": "sklearn.tree.DecisionTreeClassifier", "task": task},
        "data": {"source": "sklearn://wine", **(data or {})},
        "validation": validation or {},
    })


@pytest.fixture
def wine() -> pd.DataFrame:
    frame = load_table("sklearn://wine").frame
    frame["region"] = pd.Series(np.where(frame["alcohol"] > 13, "north", "south"), dtype="str")
    return frame


def _failures(frame: pd.DataFrame, spec: Any) -> list[Any]:
    return validate(frame, spec, choose_columns(frame, spec, "target"))


def test_clean_data_passes_every_rule(wine: pd.DataFrame) -> None:
    spec = _spec({
        "expectedColumns": {"alcohol": "float", "target": "int", "region": "string", "proline": "float"},
        "minRows": 100, "maxMissingFraction": 0.0, "ranges": {"alcohol": {"min": 10, "max": 15}},
        "minClassFraction": 0.2,
    })
    assert _failures(wine, spec) == []


def _break(frame: pd.DataFrame, how: str) -> pd.DataFrame:
    frame = frame.copy()
    if how == "nan_magnesium":
        frame.loc[frame.index[:20], "magnesium"] = np.nan
    elif how == "inf_hue":
        frame.loc[frame.index[3], "hue"] = np.inf
    elif how == "drop_target":
        frame = frame.drop(columns="target")
    elif how == "nan_target":
        frame.loc[frame.index[5], "target"] = np.nan
    elif how == "one_class":
        frame["target"] = 1
    elif how == "rare_class":
        frame = pd.concat([frame[frame["target"] != 2], frame[frame["target"] == 2].head(1)])
    elif how == "text_target":
        frame["target"] = frame["target"].map({0: "a", 1: "b", 2: "c"})
    elif how == "fractional_ash":
        pass
    return frame


# (how the data is broken, the spec's validation/task/data, column, rule)
CASES: list[tuple[str, dict[str, Any], str | None, str]] = [
    ("none", {"validation": {"minRows": 1000}}, None, "min_rows"),
    ("drop_target", {}, "target", "target_present"),
    ("none", {"data": {"features": ["alcohol", "colour"]}}, "colour", "feature_present"),
    ("none", {"data": {"categoricalFeatures": ["grape"]}}, "grape", "feature_present"),
    ("none", {"validation": {"expectedColumns": {"vintage": "int"}}}, "vintage", "expected_column"),
    ("none", {"validation": {"expectedColumns": {"ash": "int"}}}, "ash", "dtype"),
    ("none", {"validation": {"expectedColumns": {"region": "float"}}}, "region", "dtype"),
    ("none", {"validation": {"expectedColumns": {"alcohol": "string"}}}, "alcohol", "dtype"),
    ("none", {"validation": {"expectedColumns": {"alcohol": "bool"}}}, "alcohol", "dtype"),
    ("none", {"validation": {"expectedColumns": {"hue": "category"}}}, "hue", "dtype"),
    ("nan_magnesium", {"validation": {"maxMissingFraction": 0.05}}, "magnesium", "max_missing_fraction"),
    ("nan_target", {}, "target", "target_missing"),
    ("text_target", {"task": "regression"}, "target", "target_dtype"),
    ("inf_hue", {}, "hue", "finite"),
    ("none", {"validation": {"ranges": {"alcohol": {"min": 12.0}}}}, "alcohol", "range"),
    ("none", {"validation": {"ranges": {"proline": {"max": 1000}}}}, "proline", "range"),
    ("none", {"validation": {"ranges": {"acidity": {"min": 0}}}}, "acidity", "range"),
    ("one_class", {}, "target", "min_classes"),
    ("rare_class", {"validation": {"minClassFraction": 0.05}}, "target", "min_class_fraction"),
    ("none", {"data": {"split": {"testFraction": 0.999}}}, None, "holdout_size"),
]


@pytest.mark.parametrize(("how", "patch", "column", "rule"), CASES, ids=[c[3] + "-" + str(c[2]) for c in CASES])
def test_each_rule_fires_and_names_its_column(
    wine: pd.DataFrame, how: str, patch: dict[str, Any], column: str | None, rule: str
) -> None:
    spec = _spec(patch.get("validation"), patch.get("task", "classification"), patch.get("data"))
    failures = _failures(_break(wine, how), spec)
    matching = [f for f in failures if f.rule == rule]
    assert matching, f"rule {rule} did not fire; got {[(f.rule, f.column) for f in failures]}"
    failure = matching[0]
    assert failure.column == column
    if column is not None:
        assert repr(column) in failure.message  # the message names the column
    assert failure.expected is not None and failure.observed is not None
    assert failure.message in summarise(failures)


def test_range_reports_how_many_values_broke_it_never_which(wine: pd.DataFrame) -> None:
    failures = _failures(wine, _spec({"ranges": {"alcohol": {"min": 12.0, "max": 14.0}}}))
    (failure,) = failures
    values = wine["alcohol"].to_numpy()
    assert failure.observed == {"outside": int(((values < 12.0) | (values > 14.0)).sum())}
    assert failure.expected == {"min": 12.0, "max": 14.0}
    # The observed extremes are cell values: neither is repeated (issue 13).
    for value in (values.min(), values.max()):
        assert f"{value:g}" not in failure.message


def test_all_failures_are_reported_not_only_the_first(wine: pd.DataFrame) -> None:
    broken = _break(_break(wine, "nan_magnesium"), "inf_hue")
    failures = _failures(broken, _spec({"minRows": 1000, "maxMissingFraction": 0.01}))
    assert {f.rule for f in failures} == {"min_rows", "max_missing_fraction", "finite"}


def test_text_features_become_categorical(wine: pd.DataFrame) -> None:
    spec = _spec(data={"categoricalFeatures": ["magnesium"]})
    columns = choose_columns(wine, spec, "target")
    assert columns.target == "target"
    assert "target" not in columns.features
    assert set(columns.categorical) == {"region", "magnesium"}


def test_class_messages_give_the_share_never_the_label(wine: pd.DataFrame) -> None:
    wine = wine.assign(target=wine["target"].map({0: "alpha", 1: "beta", 2: "gamma-label"}))
    (failure,) = [f for f in _failures(wine, _spec({"minClassFraction": 0.3})) if f.rule == "min_class_fraction"]
    assert failure.observed == {"fraction": round(48 / 178, 6)}
    assert "rarest class of target 'target' is 26.97%" in failure.message
    assert "gamma-label" not in failure.message
