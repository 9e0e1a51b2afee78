"""A model the trainer stores is a model the server loads, for every estimator the policy admits.

The estimator policy (``kubeloop.trust.estimators``) and the model-type policy
(``kubeloop.trust.model_types``) are two lists; when they disagreed, a TrainingRun with
``sklearn.neighbors.KNeighborsClassifier`` ended Succeeded and ``kubeloop serve`` then exited 4
on its model (KDTree, EuclideanDistance64), and so did GaussianProcess*, CalibratedClassifierCV,
Voting* and Stacking*.

The classes are not listed by hand: every class defined in a scikit-learn module that the
policy's ``resolve_class`` admits, plus the XGBoost/LightGBM wrappers it admits. Given one,
when the trainer's own code builds it from JSON params (``training.estimators``), fits it on a
tiny table loaded as a run loads one (``sklearn://...``) and writes ``model.skops``
(``training.artifacts.dump_model``), then the server's loader
(``kubeloop.trust.model_types.load_trusted``) loads it. A class the policy refuses as
unloadable (``UNLOADABLE_ESTIMATORS``) is refused with the field named, and its model really
cannot be written or loaded, so the refusal list cannot go stale unnoticed. A class the trainer
cannot fit on a one-target table at all is in :data:`CANNOT_FIT` with the reason, and its fits
really fail.

And the second guard, for what params decide (a ``metric``, a ``scoring``): the trainer loads
what it wrote with the server's loader before it reports success. Against a deliberately
narrowed model-type policy, a run whose model holds a type that policy refuses fails, names the
type and writes no report; against the real policy the same run succeeds. A model skops cannot
write at all fails the run the same way instead of crashing the trainer.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from threadpoolctl import threadpool_limits

from kubeloop.trust.skops_io import skops_io

skops_io()  # as the runtimes import it: skops then trusts no estimator by itself

from kubeloop.runtime.train import main as train_main  # noqa: E402
from kubeloop.training import estimators as trainer_estimators  # noqa: E402
from kubeloop.training.artifacts import REPORT_FILE, dump_model  # noqa: E402
from kubeloop.training.data import load_table  # noqa: E402
from kubeloop.training.result import parse_result  # noqa: E402
from kubeloop.trust import estimators as trust_estimators  # noqa: E402
from kubeloop.trust import model_types  # noqa: E402
from kubeloop.trust.estimators import (  # noqa: E402
    BOOSTER_ESTIMATORS,
    DEFAULT_ALLOWED_PREFIXES,
    TEST_HELPER_MODULES,
    UNLOADABLE_ESTIMATORS,
    EstimatorModelNotLoadableError,
    EstimatorNotAllowedError,
    EstimatorNotFoundError,
    resolve_class,
)


def _est(path: str, **params: Any) -> dict[str, Any]:
    return {"estimator": path, "params": params}


LOGISTIC = _est("sklearn.linear_model.LogisticRegression", max_iter=300)
RIDGE = _est("sklearn.linear_model.Ridge")
SCALER = _est("sklearn.preprocessing.StandardScaler")
TREE_CLASSIFIER = _est("sklearn.tree.DecisionTreeClassifier", max_depth=2)
TREE_REGRESSOR = _est("sklearn.tree.DecisionTreeRegressor", max_depth=2)
SEARCH = {"estimator": LOGISTIC, "cv": 2}

# real class name -> params, as a spec writes them, for the classes that cannot be built or fit
# on a four-column table with their defaults: meta-estimators need their parts.
PARAMS: dict[str, dict[str, Any]] = {
    "sklearn.compose._column_transformer.ColumnTransformer": {
        "transformers": [["scale", SCALER, [0, 1]]], "remainder": "passthrough"},
    "sklearn.cross_decomposition._pls.CCA": {"n_components": 1},
    "sklearn.cross_decomposition._pls.PLSCanonical": {"n_components": 1},
    "sklearn.cross_decomposition._pls.PLSSVD": {"n_components": 1},
    "sklearn.ensemble._stacking.StackingClassifier": {
        "estimators": [["logistic", LOGISTIC], ["tree", TREE_CLASSIFIER]], "cv": 2},
    "sklearn.ensemble._stacking.StackingRegressor": {
        "estimators": [["ridge", RIDGE], ["tree", TREE_REGRESSOR]], "cv": 2},
    "sklearn.ensemble._voting.VotingClassifier": {
        "estimators": [["logistic", LOGISTIC], ["tree", TREE_CLASSIFIER]], "voting": "soft"},
    "sklearn.ensemble._voting.VotingRegressor": {
        "estimators": [["ridge", RIDGE], ["tree", TREE_REGRESSOR]]},
    "sklearn.feature_selection._from_model.SelectFromModel": {"estimator": LOGISTIC},
    "sklearn.feature_selection._rfe.RFE": {"estimator": LOGISTIC},
    "sklearn.feature_selection._rfe.RFECV": {"estimator": LOGISTIC, "cv": 2},
    "sklearn.feature_selection._sequential.SequentialFeatureSelector": {
        "estimator": LOGISTIC, "n_features_to_select": 2, "cv": 2},
    "sklearn.model_selection._classification_threshold.FixedThresholdClassifier": {
        "estimator": LOGISTIC},
    "sklearn.model_selection._classification_threshold.TunedThresholdClassifierCV": {
        "estimator": LOGISTIC, "cv": 2},
    "sklearn.model_selection._search.GridSearchCV": {**SEARCH, "param_grid": {"C": [0.5, 1.0]}},
    "sklearn.model_selection._search.RandomizedSearchCV": {
        **SEARCH, "param_distributions": {"C": [0.5, 1.0]}, "n_iter": 2},
    "sklearn.model_selection._search_successive_halving.HalvingGridSearchCV": {
        **SEARCH, "param_grid": {"C": [0.5, 1.0]}},
    "sklearn.model_selection._search_successive_halving.HalvingRandomSearchCV": {
        **SEARCH, "param_distributions": {"C": [0.5, 1.0]}},
    "sklearn.multioutput.ClassifierChain": {"estimator": LOGISTIC},
    "sklearn.multioutput.RegressorChain": {"estimator": RIDGE},
    "sklearn.multioutput.MultiOutputClassifier": {"estimator": LOGISTIC},
    "sklearn.multioutput.MultiOutputRegressor": {"estimator": RIDGE},
    "sklearn.frozen._frozen.FrozenEstimator": {"estimator": LOGISTIC},
    "sklearn.model_selection._classification_threshold.BaseThresholdClassifier": {
        "estimator": LOGISTIC},
    "sklearn.decomposition._dict_learning.SparseCoder": {"dictionary": [[1.0, 0.0, 0.0, 0.0]]},
    "sklearn.multiclass.OneVsOneClassifier": {"estimator": LOGISTIC},
    "sklearn.multiclass.OneVsRestClassifier": {"estimator": LOGISTIC},
    "sklearn.multiclass.OutputCodeClassifier": {"estimator": LOGISTIC},
    "sklearn.pipeline.FeatureUnion": {
        "transformer_list": [["scale", SCALER], ["pca", _est("sklearn.decomposition.PCA",
                                                               n_components=1)]]},
    "sklearn.pipeline.Pipeline": {"steps": [["scale", SCALER], ["model", LOGISTIC]]},
    "sklearn.random_projection.GaussianRandomProjection": {"n_components": 2},
    "sklearn.random_projection.SparseRandomProjection": {"n_components": 2},
    "sklearn.semi_supervised._self_training.SelfTrainingClassifier": {"estimator": LOGISTIC},
    "xgboost.sklearn.XGBClassifier": {"n_estimators": 3, "max_depth": 2},
    "xgboost.sklearn.XGBRegressor": {"n_estimators": 3, "max_depth": 2},
    "lightgbm.sklearn.LGBMClassifier": {"n_estimators": 3, "min_child_samples": 2,
                                        "verbose": -1},
    "lightgbm.sklearn.LGBMRegressor": {"n_estimators": 3, "min_child_samples": 2, "verbose": -1},
}  # fmt: skip

# real class name -> why the trainer can never fit it on a table with one target column, so no
# run stores its model (the test checks that every fit of it raises)
CANNOT_FIT: dict[str, str] = {
    "sklearn.multioutput.ClassifierChain": "needs a target of several columns",
    "sklearn.multioutput.RegressorChain": "needs a target of several columns",
    "sklearn.multioutput.MultiOutputClassifier": "needs a target of several columns",
    "sklearn.multioutput.MultiOutputRegressor": "needs a target of several columns",
    "sklearn.linear_model._coordinate_descent.MultiTaskElasticNet": "needs several targets",
    "sklearn.linear_model._coordinate_descent.MultiTaskElasticNetCV": "needs several targets",
    "sklearn.linear_model._coordinate_descent.MultiTaskLasso": "needs several targets",
    "sklearn.linear_model._coordinate_descent.MultiTaskLassoCV": "needs several targets",
    "sklearn.preprocessing._label.LabelBinarizer": "fits a target alone: fit(y)",
    "sklearn.preprocessing._label.LabelEncoder": "fits a target alone: fit(y)",
    "sklearn.preprocessing._label.MultiLabelBinarizer": "fits a target alone: fit(y)",
    "sklearn.feature_extraction._dict_vectorizer.DictVectorizer": "reads dicts, not a table",
    "sklearn.preprocessing._data.KernelCenterer": "reads a square kernel matrix, not a table",
    "sklearn.frozen._frozen.FrozenEstimator": "wraps an estimator fitted already; a spec "
    "can only build unfitted ones",
    "sklearn.decomposition._dict_learning.SparseCoder": "its dictionary must be an array; "
    "JSON params give a list",
    "sklearn.isotonic.IsotonicRegression": "takes exactly one feature",
    "sklearn.model_selection._classification_threshold.BaseThresholdClassifier": "a base "
    "class: fit is its subclasses'",
}


def _defined_classes(package: str) -> Iterator[str]:
    """Real names of the classes defined in ``package``'s modules (test helpers left out, as
    the policy refuses them; ``experimental`` only switches re-exports on)."""
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        parts = set(info.name.split("."))
        if parts & (TEST_HELPER_MODULES | {"experimental", "externals", "_build_utils"}):
            continue
        module = importlib.import_module(info.name)
        for name, found in vars(module).items():
            if inspect.isclass(found) and found.__module__ == info.name:
                yield f"{info.name}.{name}"


@cache
def admitted_classes() -> tuple[str, ...]:
    """Every class the estimator policy would build, or refuses only as unloadable."""
    candidates = sorted(BOOSTER_ESTIMATORS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates += list(_defined_classes("sklearn"))
    admitted = []
    for path in candidates:
        try:
            resolve_class(path, DEFAULT_ALLOWED_PREFIXES)
        except EstimatorModelNotLoadableError:
            admitted.append(path)
        except (EstimatorNotAllowedError, EstimatorNotFoundError):
            continue
        else:
            admitted.append(path)
    return tuple(admitted)


@cache
def tables() -> dict[str, tuple[Any, Any]]:
    """Tiny tables loaded as a run loads them: three classes, two classes, a number."""
    iris = load_table("sklearn://iris").frame.iloc[::3]
    diabetes = load_table("sklearn://diabetes").frame.iloc[:60]
    binary = iris[iris["target"] != 2]
    return {
        name: (frame.drop(columns="target"), frame["target"])
        for name, frame in {"multiclass": iris, "binary": binary, "regression": diabetes}.items()
    }


def _tables_for(estimator_class: type) -> list[str]:
    from sklearn.base import ClassifierMixin, RegressorMixin

    if issubclass(estimator_class, ClassifierMixin):
        return ["multiclass", "binary"]
    if issubclass(estimator_class, RegressorMixin):
        return ["regression"]
    return ["multiclass", "regression"]  # transformers, clusterers, pipelines, ...


def fitted_models(path: str) -> tuple[list[bytes | BaseException], list[str]]:
    """What the trainer would write for ``path`` on each table: model.skops bytes, or the
    exception writing it raised; and why each fit that failed, failed.

    Built as the policy without its refusal list would build it, so that a refused class's
    model can be shown to be unloadable."""
    params = PARAMS.get(path, {})
    written: list[bytes | BaseException] = []
    fit_failures = []
    with patch.dict(trust_estimators.UNLOADABLE_ESTIMATORS, clear=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated classes say so when built
        estimator_class = trainer_estimators.check_spec(path, params, DEFAULT_ALLOWED_PREFIXES)
        models = {
            table: trainer_estimators.build_estimator(path, params, DEFAULT_ALLOWED_PREFIXES)
            for table in _tables_for(estimator_class[path])
        }
    for table, model in models.items():
        features, target = tables()[table]
        trainer_estimators.seed_unset_random_states(model, params, 11)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(features, target)
        except Exception as exc:  # the trainer's FitFailed: nothing is written
            fit_failures.append(f"{table}: {type(exc).__name__}: {exc}")
            continue
        try:
            written.append(dump_model(model, list(features.columns)))
        except Exception as exc:
            written.append(exc)
    return written, fit_failures


def _refusal(path: str) -> EstimatorModelNotLoadableError | None:
    try:
        trainer_estimators.check_spec(
            "sklearn.pipeline.Pipeline", {"steps": [["model", _est(path)]]},
            DEFAULT_ALLOWED_PREFIXES,
        )  # fmt: skip
    except EstimatorModelNotLoadableError as exc:
        return exc
    return None


@pytest.fixture(autouse=True)
def _one_thread_per_native_pool() -> Iterator[None]:
    # Two shared cores: OpenMP/BLAS pools spinning against other jobs make small fits crawl.
    with threadpool_limits(limits=1):
        yield


def test_the_walk_finds_the_estimators_the_audit_named() -> None:
    admitted = set(admitted_classes())
    for name in (
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.gaussian_process._gpc.GaussianProcessClassifier",
        "sklearn.calibration.CalibratedClassifierCV",
        "sklearn.ensemble._voting.VotingClassifier",
        "sklearn.ensemble._stacking.StackingClassifier",
        "sklearn.ensemble._forest.RandomForestClassifier",
    ):
        assert name in admitted
    assert len(admitted) > 150
    assert set(UNLOADABLE_ESTIMATORS) <= admitted  # every refusal names a real class
    assert set(CANNOT_FIT) <= admitted and set(PARAMS) - admitted <= set(BOOSTER_ESTIMATORS)


@pytest.mark.parametrize("path", admitted_classes())
def test_what_the_trainer_stores_the_server_loads_or_the_policy_refuses_up_front(
    path: str,
) -> None:
    written, fit_failures = fitted_models(path)
    if path in CANNOT_FIT:
        assert not written, f"{path} fits after all; take it off CANNOT_FIT"
        return
    assert written, f"{path} fits on no table: {fit_failures}"
    refusal = _refusal(path)
    if path in UNLOADABLE_ESTIMATORS:
        # refused up front, naming the field and why, and rightly: no server would load it
        assert refusal is not None
        assert "spec.model.params.steps[0][1].estimator" in str(refusal)
        assert UNLOADABLE_ESTIMATORS[path] in str(refusal)
        # ...and by the operator, before it creates a Job
        assert trust_estimators.spec_refusal(
            "sklearn.pipeline.Pipeline", {"steps": [["model", _est(path)]]},
            DEFAULT_ALLOWED_PREFIXES,
        ) == str(refusal)  # fmt: skip
        for payload in written:
            if isinstance(payload, bytes):
                with pytest.raises(model_types.UntrustedModelTypesError):
                    model_types.load_trusted(payload)
        return
    assert refusal is None
    for payload in written:
        assert isinstance(payload, bytes), f"{path}: the trainer cannot write it: {payload!r}"
        model = model_types.load_trusted(payload)  # raises, naming the types, if refused
        assert type(model).__name__ == path.rpartition(".")[2]


# --- the trainer's own check, for what params decide ------------------------------------------


def _train(tmp_path: Path, run: str, estimator: str, params: dict[str, Any]) -> tuple[int, Any]:
    spec = {
        "model": {"name": "iris", "estimator": estimator, "params": params,
                  "task": "classification"},
        "data": {"source": "sklearn://iris", "split": {"testFraction": 0.3, "seed": 11}},
        "evaluation": {"metric": "accuracy"},
    }  # fmt: skip
    spec_file = tmp_path / f"{run}.json"
    spec_file.write_bytes(orjson.dumps(spec))
    termination = tmp_path / f"{run}.termination"
    code = train_main(
        ["--spec", str(spec_file), "--run-name", run, "--storage-uri",
         f"file://{tmp_path}/models", "--termination-log", str(termination), "--quiet"],
        env={},
    )  # fmt: skip
    return code, parse_result(termination.read_bytes())


def test_the_trainer_fails_a_run_whose_model_the_server_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimator, params = "sklearn.neighbors.KNeighborsClassifier", {"metric": "manhattan"}
    # Weakened (narrowed): the server's policy without the KD tree's distance metric.
    narrowed = dict(model_types.VETTED_TYPES)
    del narrowed["sklearn.metrics._dist_metrics.ManhattanDistance64"]
    with monkeypatch.context() as patch:
        patch.setattr(model_types, "VETTED_TYPES", narrowed)
        code, result = _train(tmp_path, "narrowed", estimator, params)
    assert (code, result.status, result.reason) == (4, "TrainingFailed", "EstimatorNotAllowed")
    assert "sklearn.metrics._dist_metrics.ManhattanDistance64" in result.message
    assert "the model server will not load" in result.message
    assert result.uri is None and result.sha256 is None
    assert not list((tmp_path / "models").rglob(REPORT_FILE))  # no finished run left behind

    # The real policy: the same run succeeds, and its model loads.
    code, result = _train(tmp_path, "real", estimator, params)
    assert (code, result.status) == (0, "Succeeded"), result.message
    assert result.uri is not None
    model_types.load_trusted(Path(result.uri.removeprefix("file://")).read_bytes())


def test_a_model_skops_cannot_write_fails_the_run_instead_of_crashing_the_trainer(
    tmp_path: Path,
) -> None:
    # With early stopping on a named scoring, the fitted model holds a scorer that holds the
    # model's own bound method: skops recurses until Python gives up.
    params = {"early_stopping": True, "scoring": "accuracy", "max_iter": 5}
    code, result = _train(tmp_path, "scorer", "sklearn.ensemble.HistGradientBoostingClassifier",
                          params)  # fmt: skip
    assert (code, result.status, result.reason) == (4, "TrainingFailed", "EstimatorNotAllowed")
    assert "cannot be stored: skops cannot write its fitted model (RecursionError" in result.message
    assert not list((tmp_path / "models").rglob(REPORT_FILE))
