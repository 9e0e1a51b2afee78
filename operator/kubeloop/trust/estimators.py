"""Which import paths a TrainingRun may name as its estimator: the policy decides, never the spec.

``spec.model.estimator`` is a dotted path the trainer imports and *calls* with
``spec.model.params`` as keyword arguments, so the paths a spec may name are exactly the code a
spec may run. ``sklearn.utils._testing.assert_run_python_script_without_output`` with
``params: {source_code: ...}`` is a function under ``sklearn.`` that runs the Python it is given;
a check made on what the call *returned* comes too late. A path is therefore accepted only when
the object it names is, before anything is called:

* a **class** (never a function, method, module or instance),
* a subclass of ``sklearn.base.BaseEstimator`` (its constructor only stores its parameters),
* whose ``__module__``, where it is really defined, lies under an allowed package (default
  ``sklearn``; a package admits its submodules, so ``sklearn.`` never admits ``sklearn_evil``).
  Re-exports are fine - ``sklearn.linear_model.LogisticRegression`` is defined in
  ``sklearn.linear_model._logistic`` - but an attribute hop out of the package is not
  (``sklearn.utils.validation.np`` is numpy);
* for the booster packages (``xgboost``, ``lightgbm``, allowed by default): exactly one of
  ``XGBClassifier``, ``XGBRegressor``, ``LGBMClassifier``, ``LGBMRegressor``, the wrappers whose
  boosters the artifact stores in their native formats (a ``Booster``, ``XGBRanker`` or a dask
  wrapper is refused);
* public and concrete: not named with a leading underscore, not abstract, with a ``fit``
  method (``sklearn.base.BaseEstimator`` itself has none), and not one of
  scikit-learn's test helpers (modules ``tests``, ``_testing``, ``_mocking``), which exist to
  check the library and take callables as parameters;
* not one of :data:`UNLOADABLE_ESTIMATORS`: classes whose fitted model holds types the model
  server will not load (:mod:`kubeloop.trust.model_types`), or that skops cannot write at
  all. A run with one would train, end Succeeded and leave a model no ModelDeployment could
  serve and no champion comparison could read; refusing the class says so before any Job.
  Which types a fitted model holds can also depend on its params, so the trainer loads every
  artifact it wrote with the server's own loader before it reports success
  (``training.trainer``).

A parameter value written as ``{estimator: <path>, params: {...}}`` is an estimator too (a
Pipeline's steps, a ColumnTransformer's transformers, a meta-estimator's base estimator), and
its path is judged by the same rule; :func:`check_spec` judges *every* path of a spec before
the caller builds anything. The module of a path is imported only after the path passed the
package check, so only modules of the allowed packages are ever imported. Parameters stay JSON
values: nothing but a nested ``{estimator, params}`` becomes an object.

The trainer (``training.estimators``) builds only what :func:`check_spec` returned; the
operator (``controllers.trainingrun`` → ``decide.trainingrun``) asks :func:`spec_refusal`
before it creates a Job. A refusal names the spec field and says what to write instead.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubeloop.trust.boosters import BOOSTER_PACKAGES, BOOSTER_TYPES

DEFAULT_ALLOWED_PREFIXES: tuple[str, ...] = ("sklearn.", "xgboost.", "lightgbm.")
BOOSTER_ESTIMATORS = frozenset(BOOSTER_TYPES)
"""The only classes of the booster packages a spec may name (by their real names): the ones
whose boosters the artifact stores natively (:mod:`kubeloop.trust.boosters`)."""
NESTED_ESTIMATOR_KEYS = frozenset({"estimator", "params"})
TEST_HELPER_MODULES = frozenset({"tests", "_testing", "_mocking"})
"""Module names whose classes are scikit-learn's own test doubles, never a model to train."""


def _holds(types: str) -> str:
    return f"its fitted model holds types the model server will not load: {types}"


_SCORE_FUNC = _holds(
    "the function sklearn.feature_selection._univariate_selection.f_classif (score_func)"
)
_SEARCH = _holds(
    "scorer objects and CV splitters (sklearn.metrics._scorer._PassthroughScorer, "
    "sklearn.model_selection._split.KFold/StratifiedKFold); spec.sweep searches a parameter "
    "grid instead and keeps the best trial"
)
UNLOADABLE_ESTIMATORS: dict[str, str] = {
    # real name -> why: the types its fitted model holds that kubeloop.trust.model_types
    # refuses (functions, or objects that hold callables or are not vetted), or that skops
    # cannot write it at all. tests/security/test_trainer_models_load.py fits every class this
    # module admits and checks both ways: the rest load, and these really do not.
    "sklearn.cluster._birch.Birch": "skops cannot write its fitted model at all (Birch's tree "
    "of subclusters)",
    "sklearn.cluster._bisect_k_means.BisectingKMeans": _holds(
        "sklearn.cluster._bisect_k_means._BisectingTree and the function "
        "sklearn.cluster._kmeans._kmeans_single_lloyd"
    ),
    "sklearn.cluster._agglomerative.FeatureAgglomeration": _holds(
        "the function numpy.mean (pooling_func)"
    ),
    "sklearn.feature_selection._univariate_selection.GenericUnivariateSelect": _SCORE_FUNC,
    "sklearn.feature_selection._univariate_selection.SelectFdr": _SCORE_FUNC,
    "sklearn.feature_selection._univariate_selection.SelectFpr": _SCORE_FUNC,
    "sklearn.feature_selection._univariate_selection.SelectFwe": _SCORE_FUNC,
    "sklearn.feature_selection._univariate_selection.SelectKBest": _SCORE_FUNC,
    "sklearn.feature_selection._univariate_selection.SelectPercentile": _SCORE_FUNC,
    "sklearn.preprocessing._polynomial.SplineTransformer": _holds(
        "scipy.interpolate._bsplines.BSpline and the function "
        "scipy._lib.array_api_compat.numpy._aliases.asarray"
    ),
    "sklearn.model_selection._search.GridSearchCV": _SEARCH,
    "sklearn.model_selection._search.RandomizedSearchCV": _SEARCH,
    "sklearn.model_selection._search_successive_halving.HalvingGridSearchCV": _SEARCH,
    "sklearn.model_selection._search_successive_halving.HalvingRandomSearchCV": _SEARCH,
    "sklearn.model_selection._classification_threshold.TunedThresholdClassifierCV": _holds(
        "scorer objects (sklearn.metrics._scorer._CurveScorer) and metric functions"
    ),
}
"""Estimator classes refused because the model server could not load what they fit."""

_FIX = (
    "name a scikit-learn estimator class (a subclass of sklearn.base.BaseEstimator), e.g. "
    "sklearn.ensemble.RandomForestClassifier, and write nested estimators explicitly as "
    "{estimator: <class>, params: {...}} (a Pipeline's steps: [[name, {estimator: ...}], ...])"
)


class EstimatorNotAllowedError(ValueError):
    """The path names something Kubeloop will not call; the message names the field and the fix."""


class EstimatorModelNotLoadableError(EstimatorNotAllowedError):
    """The class is one of :data:`UNLOADABLE_ESTIMATORS`: no server could load its model."""


class EstimatorSpecError(ValueError):
    """The path is not a well-formed import path; the message says what to write."""


class EstimatorNotFoundError(EstimatorSpecError):
    """The path is well-formed and allowed, but this environment has no such module or attribute."""


def normalise_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    """Prefixes as package names ending in ``.``: ``sklearn``, ``sklearn.`` and ``sklearn.*`` agree."""
    cleaned = []
    for prefix in prefixes:
        prefix = prefix.strip().rstrip("*").rstrip(".")
        if prefix:
            cleaned.append(prefix + ".")
    return tuple(dict.fromkeys(cleaned))


def is_allowed(path: str, prefixes: Iterable[str]) -> bool:
    """Whether ``path`` (a dotted name) is one of the packages ``prefixes`` or lies under one."""
    return any(
        path.startswith(prefix) or path == prefix[:-1] for prefix in normalise_prefixes(prefixes)
    )


def check_path(path: str, prefixes: Sequence[str], field: str = "spec.model.estimator") -> None:
    """The string part of the policy, importing nothing: a dotted name whose module is allowed."""
    parts = path.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise EstimatorSpecError(
            f"{field} {path!r} is not an import path; write module.Class, e.g. "
            "sklearn.ensemble.RandomForestClassifier"
        )
    module_name = path.rpartition(".")[0]
    if not is_allowed(module_name, prefixes):
        raise EstimatorNotAllowedError(
            f"{field} {path!r} is not allowed: estimator classes must come from the packages "
            f"{', '.join(normalise_prefixes(prefixes))} (an administrator can widen the list: chart "
            "value training.allowedEstimatorPrefixes, KUBELOOP_ALLOWED_ESTIMATOR_PREFIXES); " + _FIX
        )


def resolve_class(path: str, prefixes: Sequence[str], field: str = "spec.model.estimator") -> type:
    """The estimator class at ``path``, or an error; nothing found is called.

    Raises :class:`EstimatorNotAllowedError` for anything but an allowed estimator class,
    :class:`EstimatorSpecError` for a malformed path and :class:`EstimatorNotFoundError` when the
    module or attribute does not exist here.
    """
    check_path(path, prefixes, field)
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EstimatorNotFoundError(
            f"{field} {path!r}: cannot import module {module_name!r} ({exc})"
        ) from None
    try:
        found = getattr(module, attribute)  # a module's own lookup: code of an allowed package
    except AttributeError:
        raise EstimatorNotFoundError(
            f"{field} {path!r}: module {module_name!r} has no {attribute!r}"
        ) from None
    problem = _not_an_estimator_class(found, prefixes)
    if problem is not None:
        raise EstimatorNotAllowedError(f"{field} {path!r} is not allowed: {problem}; " + _FIX)
    assert isinstance(found, type)
    real_name = f"{found.__module__}.{found.__qualname__}"
    why = UNLOADABLE_ESTIMATORS.get(real_name)
    if why is not None:
        raise EstimatorModelNotLoadableError(
            f"{field} {path!r} is not allowed: {why}; no ModelDeployment could serve what the "
            "run trains, nor a later run compare against it; choose another estimator"
        )
    return found


def _not_an_estimator_class(found: object, prefixes: Sequence[str]) -> str | None:
    if not inspect.isclass(found):
        kind = "function" if inspect.isroutine(found) else type(found).__name__
        defined = getattr(found, "__module__", None)
        where = f" ({defined}.{getattr(found, '__qualname__', '?')})" if defined else ""
        return f"it is a {kind}{where}, not a class, and calling it could run any code"
    defined_in = str(getattr(found, "__module__", "") or "")
    real_name = f"{defined_in}.{found.__qualname__}"
    if not is_allowed(defined_in, prefixes):
        return (
            f"it is really {real_name}, defined outside {', '.join(normalise_prefixes(prefixes))}"
        )
    from sklearn.base import BaseEstimator

    if not issubclass(found, BaseEstimator):
        return f"{real_name} is a class but not a scikit-learn estimator (BaseEstimator subclass)"
    if found.__name__.startswith("_"):
        return f"{real_name} is private (its name starts with an underscore)"
    if inspect.isabstract(found):
        return f"{real_name} is abstract"
    if not callable(getattr(found, "fit", None)):
        return f"{real_name} has no fit method: a base class, not a model"
    if TEST_HELPER_MODULES & set(defined_in.split(".")):
        return f"{real_name} is one of scikit-learn's test helpers, not a model"
    if defined_in.split(".")[0] in BOOSTER_PACKAGES and real_name not in BOOSTER_ESTIMATORS:
        return (
            f"{real_name} is not one of the boosters Kubeloop stores in their native formats "
            f"({', '.join(sorted(BOOSTER_ESTIMATORS))})"
        )
    return None


def is_nested_estimator(value: Any) -> bool:
    """Whether a parameter value is written as ``{estimator: <path>, params: {...}}``."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("estimator"), str)
        and set(value) <= NESTED_ESTIMATOR_KEYS
    )


def nested_estimators(params: Any, field: str = "spec.model.params") -> list[tuple[str, str]]:
    """``(path, field)`` of every nested estimator in a params mapping, however deep, in order.

    ``params`` is the keyword arguments themselves (the top-level mapping is never one estimator).
    """
    found: list[tuple[str, str]] = []
    if isinstance(params, Mapping):
        for key, value in params.items():
            found += _walk(value, f"{field}.{key}")
    return found


def _walk(value: Any, field: str) -> list[tuple[str, str]]:
    if is_nested_estimator(value):
        return [
            (str(value["estimator"]), f"{field}.estimator"),
            *nested_estimators(value.get("params") or {}, f"{field}.params"),
        ]
    found: list[tuple[str, str]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            found += _walk(item, f"{field}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += _walk(item, f"{field}[{index}]")
    return found


def spec_paths(
    estimator: str,
    params: Mapping[str, Any] | None,
    sweep_grid: Mapping[str, Sequence[Any]] | None = None,
) -> list[tuple[str, str]]:
    """Every estimator path of a spec with its field: the model's, its params', the sweep's."""
    paths = [(estimator, "spec.model.estimator"), *nested_estimators(params or {})]
    for key, values in (sweep_grid or {}).items():
        if isinstance(values, list | tuple):
            for index, value in enumerate(values):
                paths += _walk(value, f"spec.sweep.grid.{key}[{index}]")
    return paths


def check_spec_paths(
    estimator: str,
    params: Mapping[str, Any] | None,
    prefixes: Sequence[str],
    sweep_grid: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """The string part of the policy for every path of a spec; imports nothing."""
    for path, field in spec_paths(estimator, params, sweep_grid):
        check_path(path, prefixes, field)


def check_spec(
    estimator: str,
    params: Mapping[str, Any] | None,
    prefixes: Sequence[str],
    sweep_grid: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, type]:
    """Judge every path of a spec, then return ``{path: class}``; raises at the first refusal.

    All paths pass the string check before any module is imported, and all are resolved
    before the caller calls anything.
    """
    paths = spec_paths(estimator, params, sweep_grid)
    for path, field in paths:
        check_path(path, prefixes, field)
    return {path: resolve_class(path, prefixes, field) for path, field in paths}


def spec_refusal(
    estimator: str,
    params: Mapping[str, Any] | None,
    prefixes: Sequence[str],
    sweep_grid: Mapping[str, Sequence[Any]] | None = None,
) -> str | None:
    """Why the operator must not start a trainer for this spec, or None.

    The operator judges with its own scikit-learn (the runtime image ships the same one). A path
    its scikit-learn does not have is left to the trainer, which may run a different image
    (``spec.image``) and judges again with the same rule before it builds anything. Without
    scikit-learn installed, only the string check (:func:`check_spec_paths`) is made here.
    """
    paths = spec_paths(estimator, params, sweep_grid)
    try:
        for path, field in paths:
            check_path(path, prefixes, field)
    except (EstimatorNotAllowedError, EstimatorSpecError) as exc:
        return str(exc)
    try:
        import sklearn.base  # noqa: F401
    except ImportError:
        return (
            None  # the string check above is all this operator can judge; the trainer judges fully
        )
    for path, field in paths:
        try:
            resolve_class(path, prefixes, field)
        except EstimatorNotFoundError:
            continue
        except (EstimatorNotAllowedError, EstimatorSpecError) as exc:
            return str(exc)
    return None
