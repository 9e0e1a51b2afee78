"""The estimator allowlist: an import path is code, so only allowed packages get imported."""

from __future__ import annotations

import sys

import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from kubeloop.training.estimators import (
    EstimatorNotAllowedError,
    EstimatorSpecError,
    build_estimator,
    is_allowed,
)

DEFAULT = ("sklearn.",)


@pytest.mark.parametrize(
    "path",
    [
        "os.system",
        "subprocess.Popen",
        "builtins.eval",
        "builtins.exec",
        "importlib.import_module",
        "sklearn_evil.Model",  # a prefix is a package, not a string prefix
        "sklearnx.ensemble.Model",
    ],
)
def test_paths_outside_the_allowlist_are_refused_before_import(path: str) -> None:
    module = path.rpartition(".")[0]
    already_loaded = module in sys.modules
    with pytest.raises(EstimatorNotAllowedError, match="not allowed"):
        build_estimator(path, {}, DEFAULT)
    assert (module in sys.modules) == already_loaded  # nothing was imported


def test_attribute_hops_out_of_the_allowed_package_are_refused() -> None:
    # sklearn.base imports the standard library; the object found must itself live in sklearn.
    import sklearn.utils.validation as validation

    assert hasattr(validation, "np")
    with pytest.raises(EstimatorNotAllowedError, match="not an estimator class"):
        build_estimator("sklearn.utils.validation.np", {}, DEFAULT)


def test_nested_estimators_are_checked_too() -> None:
    params = {"steps": [["bad", {"estimator": "subprocess.Popen", "params": {"args": ["true"]}}]]}
    with pytest.raises(EstimatorNotAllowedError, match=r"model\.params\.steps\[0\]\[1\]\.estimator"):
        build_estimator("sklearn.pipeline.Pipeline", params, DEFAULT)


def test_a_non_estimator_under_the_prefix_is_refused() -> None:
    with pytest.raises(EstimatorNotAllowedError, match="not an estimator"):
        build_estimator("sklearn.utils.Bunch", {}, DEFAULT)


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("RandomForestClassifier", {}, "not an import path"),
        ("sklearn.ensemble.RandomForestClasifier", {}, "has no 'RandomForestClasifier'"),
        ("sklearn.nonexistent.Model", {}, "cannot import module"),
        ("sklearn.ensemble.RandomForestClassifier", {"n_trees": 5}, "n_trees"),
    ],
)
def test_bad_paths_and_params_say_what_to_fix(path: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(EstimatorSpecError, match=message):
        build_estimator(path, params, DEFAULT)


def test_estimator_and_pipeline_are_built_with_params() -> None:
    forest = build_estimator("sklearn.ensemble.RandomForestClassifier", {"n_estimators": 7, "max_depth": None}, DEFAULT)
    assert isinstance(forest, RandomForestClassifier)
    assert (forest.n_estimators, forest.max_depth) == (7, None)
    pipeline = build_estimator(
        "sklearn.pipeline.Pipeline",
        {"steps": [
            ["scale", {"estimator": "sklearn.preprocessing.StandardScaler"}],
            ["model", {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.5}}],
        ]},
        DEFAULT,
    )
    assert isinstance(pipeline, Pipeline)
    assert pipeline.named_steps["model"].C == 0.5


def test_the_allowlist_can_be_widened() -> None:
    assert not is_allowed("collections.OrderedDict", DEFAULT)
    assert is_allowed("sklearn.ensemble.RandomForestClassifier", ["sklearn"])
    assert is_allowed("mycompany.models.Churn", ["sklearn.", "mycompany.models"])
    assert not is_allowed("mycompany.modelsx.Churn", ["mycompany.models"])
