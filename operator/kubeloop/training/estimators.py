"""Estimators from import paths, built only after :mod:`kubeloop.trust.estimators` trusts them.

``model.estimator`` is the import path of a scikit-learn estimator class; ``model.params`` are
its keyword arguments. A parameter value written as ``{"estimator": "<import path>", "params":
{...}}`` is built the same way, so Pipelines and meta-estimators can be spelled in plain YAML::

    estimator: sklearn.pipeline.Pipeline
    params:
      steps:
        - [scale, {estimator: sklearn.preprocessing.StandardScaler}]
        - [model, {estimator: sklearn.linear_model.LogisticRegression, params: {C: 0.5}}]

Which paths may be imported and called is decided in one place, the trust module: every path,
nested ones included, is judged there (classes only, ``BaseEstimator`` subclasses defined under
an allowed package) **before** anything is called. This module only builds what it returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubeloop.trust.estimators import (
    DEFAULT_ALLOWED_PREFIXES,
    EstimatorNotAllowedError,
    EstimatorSpecError,
    check_spec,
    is_allowed,
    is_nested_estimator,
    normalise_prefixes,
)

__all__ = [
    "DEFAULT_ALLOWED_PREFIXES",
    "EstimatorNotAllowedError",
    "EstimatorSpecError",
    "build_estimator",
    "check_spec",
    "is_allowed",
    "normalise_prefixes",
    "seed_unset_random_states",
    "wrap_for_categorical",
]


def build_estimator(
    estimator: str, params: Mapping[str, Any], prefixes: Sequence[str]
) -> Any:
    """A fresh, unfitted estimator; nested ``{estimator, params}`` values are built too.

    Every path is judged by :func:`kubeloop.trust.estimators.check_spec` first; only the
    classes it returned are called.
    """
    classes = check_spec(estimator, params, prefixes)
    return _build(estimator, dict(params), classes, "spec.model")


def _build(path: str, params: dict[str, Any], classes: Mapping[str, type], field: str) -> Any:
    estimator_class = classes[path]
    arguments = {
        key: _materialise(value, classes, f"{field}.params.{key}") for key, value in params.items()
    }
    try:
        return estimator_class(**arguments)
    except TypeError as exc:
        raise EstimatorSpecError(f"{field}.params do not fit {path}: {exc}") from None


def _materialise(value: Any, classes: Mapping[str, type], field: str) -> Any:
    if is_nested_estimator(value):
        return _build(str(value["estimator"]), dict(value.get("params") or {}), classes, field)
    if isinstance(value, list):
        items = [_materialise(item, classes, f"{field}[{i}]") for i, item in enumerate(value)]
        # Pipeline steps / ColumnTransformer transformers are (name, estimator, ...) tuples.
        if items and isinstance(items[0], str) and len(items) in {2, 3} and any(
            hasattr(item, "fit") for item in items[1:]
        ):
            return tuple(items)
        return items
    if isinstance(value, Mapping):
        return {key: _materialise(item, classes, f"{field}.{key}") for key, item in value.items()}
    return value


def wrap_for_categorical(estimator: Any, categorical: Sequence[str]) -> Any:
    """Put a one-hot encoder for the categorical features in front of a bare estimator.

    The served model then takes the raw feature values (text categories included), exactly
    as the training data had them. A Pipeline the user built is left alone: it is assumed
    to encode its own inputs.
    """
    if not categorical:
        return estimator  # without importing the encoders: start-up time counts
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if isinstance(estimator, Pipeline):
        return estimator
    encoder = ColumnTransformer(
        [("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
          list(categorical))],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    return Pipeline([("encode", encoder), ("model", estimator)])


def seed_unset_random_states(estimator: Any, params: Mapping[str, Any], seed: int) -> list[str]:
    """Give every ``random_state`` the spec left unset the split's seed, so a run repeats exactly.

    Only parameters that are ``None`` and were not written in ``model.params`` are set (a
    Pipeline's ``model__random_state`` included). Returns the parameter names it set.
    """
    if not hasattr(estimator, "get_params"):
        return []
    unset = [
        name for name, value in estimator.get_params(deep=True).items()
        if (name == "random_state" or name.endswith("__random_state"))
        and value is None
        and name not in params
    ]
    if unset:
        estimator.set_params(**dict.fromkeys(unset, seed))
    return unset
