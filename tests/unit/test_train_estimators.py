"""The estimator policy (kubeloop.trust.estimators) and the builder that obeys it.

An import path is code: only scikit-learn estimator classes under an allowed package are ever
called, and every path of a spec is judged before anything is.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from kubeloop.training.estimators import (
    EstimatorNotAllowedError,
    EstimatorSpecError,
    build_estimator,
    is_allowed,
)
from kubeloop.trust import estimators as trust

DEFAULT = ("sklearn.",)

ACCEPTED = [
    "sklearn.pipeline.Pipeline",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.compose.ColumnTransformer",
    "sklearn.preprocessing.StandardScaler",
    "sklearn.preprocessing.OneHotEncoder",
    "sklearn.impute.SimpleImputer",
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.ensemble.RandomForestRegressor",
    "sklearn.ensemble.GradientBoostingClassifier",
    "sklearn.ensemble.GradientBoostingRegressor",
    "sklearn.ensemble.HistGradientBoostingClassifier",
    "sklearn.ensemble.HistGradientBoostingRegressor",
    "sklearn.linear_model.LogisticRegression",
    "sklearn.linear_model.Ridge",
    "sklearn.neural_network.MLPClassifier",
    "sklearn.neural_network.MLPRegressor",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.multiclass.OneVsRestClassifier",
    # where the class is really defined works too (re-exports are what users write)
    "sklearn.linear_model._logistic.LogisticRegression",
]


@pytest.mark.parametrize("path", ACCEPTED)
def test_real_estimator_classes_are_accepted(path: str) -> None:
    found = trust.resolve_class(path, DEFAULT)
    assert isinstance(found, type) and found.__module__.startswith("sklearn.")
    assert trust.spec_refusal(path, {}, DEFAULT) is None


# (path, what the refusal says): each names something under sklearn. that is not a model class
REFUSED_UNDER_THE_PACKAGE = [
    # the attack: a function that runs the Python source it is given
    ("sklearn.utils._testing.assert_run_python_script_without_output", "it is a function"),
    ("sklearn.pipeline.make_pipeline", "it is a function"),  # a factory: write Pipeline instead
    ("sklearn.datasets.load_iris", "it is a function"),
    ("sklearn.base.clone", "it is a function"),
    ("sklearn.utils.validation.np", "it is a module"),  # an attribute hop into numpy
    ("sklearn.utils.Bunch", "not a scikit-learn estimator"),  # a class, but not an estimator
    ("sklearn.base.BaseEstimator", "has no fit method"),
    ("sklearn.ensemble._forest.BaseForest", "is abstract"),
    ("sklearn.calibration._SigmoidCalibration", "is private"),
    ("sklearn.utils._mocking.CheckingClassifier", "test helpers"),
]


@pytest.mark.parametrize(("path", "why"), REFUSED_UNDER_THE_PACKAGE)
def test_anything_but_an_estimator_class_is_refused_before_it_is_called(path: str, why: str) -> None:
    with pytest.raises(EstimatorNotAllowedError) as refused:
        build_estimator(path, {}, DEFAULT)
    message = str(refused.value)
    assert message.startswith(f"spec.model.estimator {path!r} is not allowed: ")
    assert why in message
    assert "sklearn.ensemble.RandomForestClassifier" in message  # the fix: what to write instead
    assert trust.spec_refusal(path, {}, DEFAULT) == message


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


def test_nested_function_estimators_are_refused_with_their_field() -> None:
    params = {"steps": [
        ["scale", {"estimator": "sklearn.preprocessing.StandardScaler"}],
        ["run", {"estimator": "sklearn.utils._testing.assert_run_python_script_without_output",
                 "params": {"source_code": "raise SystemExit(1)"}}],
    ]}
    with pytest.raises(EstimatorNotAllowedError) as refused:
        build_estimator("sklearn.pipeline.Pipeline", params, DEFAULT)
    assert str(refused.value).startswith(
        "spec.model.params.steps[1][1].estimator "
        "'sklearn.utils._testing.assert_run_python_script_without_output' is not allowed: it is a function"
    )


def test_nested_paths_outside_the_package_are_refused_before_any_import() -> None:
    params = {"steps": [["bad", {"estimator": "subprocess.Popen", "params": {"args": ["true"]}}]]}
    with pytest.raises(EstimatorNotAllowedError, match=r"spec\.model\.params\.steps\[0\]\[1\]\.estimator"):
        build_estimator("sklearn.pipeline.Pipeline", params, DEFAULT)


def test_every_path_is_judged_before_any_estimator_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    # A good outer estimator and a refused inner one: the outer class is never instantiated.
    calls: list[str] = []
    original = Pipeline.__init__

    def counting_init(self: Pipeline, *args: Any, **kwargs: Any) -> None:
        calls.append("Pipeline")
        original(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "__init__", counting_init)
    params = {"steps": [["m", {"estimator": "sklearn.base.clone"}]]}
    with pytest.raises(EstimatorNotAllowedError):
        build_estimator("sklearn.pipeline.Pipeline", params, DEFAULT)
    assert calls == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"steps": [["a", {"estimator": "sklearn.base.clone"}]]}, "spec.model.params.steps[0][1].estimator"),
        ({"estimator": {"estimator": "sklearn.datasets.load_iris"}}, "spec.model.params.estimator.estimator"),
        ({"transformers": [["t", {"estimator": "sklearn.pipeline.Pipeline", "params": {
            "steps": [["x", {"estimator": "sklearn.pipeline.make_pipeline"}]]}}, ["a"]]]},
         "spec.model.params.transformers[0][1].params.steps[0][1].estimator"),
    ],
)
def test_nested_fields_are_named_however_deep(params: dict[str, Any], field: str) -> None:
    refusal = trust.spec_refusal("sklearn.pipeline.Pipeline", params, DEFAULT)
    assert refusal is not None and refusal.startswith(field + " ")


def test_sweep_grid_values_are_judged_too() -> None:
    grid = {"estimator": [{"estimator": "sklearn.linear_model.Ridge"}, {"estimator": "sklearn.base.clone"}]}
    refusal = trust.spec_refusal("sklearn.multiclass.OneVsRestClassifier", {}, DEFAULT, grid)
    assert refusal is not None and refusal.startswith("spec.sweep.grid.estimator[1].estimator 'sklearn.base.clone'")


def test_a_path_this_environment_lacks_is_left_to_the_trainer() -> None:
    # The operator's scikit-learn may be older than a trainer image's: not a refusal there...
    assert trust.spec_refusal("sklearn.ensemble.RandomForestClasifier", {}, DEFAULT) is None
    # ...while the trainer, which would build it, refuses it as a spec error.
    with pytest.raises(EstimatorSpecError, match="has no 'RandomForestClasifier'"):
        build_estimator("sklearn.ensemble.RandomForestClasifier", {}, DEFAULT)


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
            ["prep", {"estimator": "sklearn.compose.ColumnTransformer", "params": {"transformers": [
                ["num", {"estimator": "sklearn.preprocessing.StandardScaler"}, ["a"]],
                ["cat", {"estimator": "sklearn.preprocessing.OneHotEncoder",
                         "params": {"handle_unknown": "ignore"}}, ["b"]],
            ]}}],
            ["model", {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.5}}],
        ]},
        DEFAULT,
    )
    assert isinstance(pipeline, Pipeline)
    assert pipeline.named_steps["model"].C == 0.5
    assert isinstance(pipeline.named_steps["prep"], ColumnTransformer)
    assert pipeline.named_steps["prep"].transformers[1][2] == ["b"]


def test_plain_json_params_stay_values() -> None:
    # A string that looks like a path is just a string unless written as {estimator: ...}.
    scaler = build_estimator("sklearn.preprocessing.FunctionTransformer", {"func": "builtins.exec"}, DEFAULT)
    assert scaler.func == "builtins.exec"


def test_the_allowlist_can_be_widened() -> None:
    assert not is_allowed("collections.OrderedDict", DEFAULT)
    assert is_allowed("sklearn.ensemble.RandomForestClassifier", ["sklearn"])
    assert is_allowed("mycompany.models.Churn", ["sklearn.", "mycompany.models"])
    assert not is_allowed("mycompany.modelsx.Churn", ["mycompany.models"])
    assert trust.normalise_prefixes(["sklearn", "sklearn.", "sklearn.*", " "]) == ("sklearn.",)


def test_an_allowed_package_admits_only_classes_defined_in_it() -> None:
    # Allowing sklearn.ensemble admits its forests, but not sklearn.tree's class that
    # sklearn.ensemble._forest merely imports, nor a nested path from another package.
    only_ensemble = ["sklearn.ensemble"]
    assert trust.spec_refusal("sklearn.ensemble.RandomForestClassifier", {}, only_ensemble) is None
    hop = trust.spec_refusal("sklearn.ensemble._forest.DecisionTreeClassifier", {}, only_ensemble)
    assert hop is not None and "it is really sklearn.tree._classes.DecisionTreeClassifier" in hop
    nested = trust.spec_refusal("sklearn.ensemble.StackingClassifier", {
        "estimators": [["lr", {"estimator": "sklearn.linear_model.LogisticRegression"}]],
    }, only_ensemble)
    assert nested is not None and nested.startswith("spec.model.params.estimators[0][1].estimator")
