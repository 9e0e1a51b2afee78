"""Estimators from import paths, behind an allowlist: an arbitrary import path is arbitrary code.

``model.estimator`` is the import path of a class (or a factory function) that returns a
scikit-learn-compatible estimator; ``model.params`` are its keyword arguments. A parameter
value written as ``{"estimator": "<import path>", "params": {...}}`` is built the same way,
so Pipelines and meta-estimators can be spelled in plain YAML::

    estimator: sklearn.pipeline.Pipeline
    params:
      steps:
        - [scale, {estimator: sklearn.preprocessing.StandardScaler}]
        - [model, {estimator: sklearn.linear_model.LogisticRegression, params: {C: 0.5}}]

Every path, nested ones included, is checked **before** anything is imported: its module
must fall under an allowed prefix (default ``sklearn.``; a prefix names a package and its
submodules, so ``sklearn.`` never admits ``sklearn_evil``). After import, the object found
must itself be defined under an allowed prefix, which stops attribute hops such as
``sklearn.base.os.system`` (``os.system`` is defined in ``posix``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_ALLOWED_PREFIXES: tuple[str, ...] = ("sklearn.",)
NESTED_ESTIMATOR_KEYS = frozenset({"estimator", "params"})


class EstimatorNotAllowedError(ValueError):
    """The import path is outside the allowlist (or is not an estimator)."""


class EstimatorSpecError(ValueError):
    """The import path or params cannot make an estimator; the message says what to fix."""


def normalise_prefixes(prefixes: Sequence[str]) -> tuple[str, ...]:
    """Prefixes as package names ending in ``.``: ``sklearn`` and ``sklearn.`` mean the same."""
    cleaned = []
    for prefix in prefixes:
        prefix = prefix.strip()
        if prefix:
            cleaned.append(prefix if prefix.endswith(".") else prefix + ".")
    return tuple(dict.fromkeys(cleaned))


def is_allowed(path: str, prefixes: Sequence[str]) -> bool:
    """Whether ``path`` (a dotted name) lies under one of the package ``prefixes``."""
    return any(
        path.startswith(prefix) or path == prefix[:-1] for prefix in normalise_prefixes(prefixes)
    )


def check_import_path(path: str, prefixes: Sequence[str], field: str = "model.estimator") -> None:
    """Refuse ``path`` unless it is a well-formed dotted name under an allowed prefix."""
    parts = path.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise EstimatorSpecError(
            f"spec.{field} {path!r} is not an import path; write module.Class, e.g. "
            "sklearn.ensemble.RandomForestClassifier"
        )
    if not is_allowed(path, prefixes):
        raise EstimatorNotAllowedError(
            f"spec.{field} {path!r} is not allowed: import paths must start with one of "
            f"{', '.join(normalise_prefixes(prefixes))} (an operator can widen the list with "
            "--allowed-estimator-prefix / KUBELOOP_ALLOWED_ESTIMATOR_PREFIXES)"
        )


def collect_import_paths(params: Any, field: str = "model.params") -> list[tuple[str, str]]:
    """Every nested estimator import path in ``params``, with the spec field it sits at."""
    found: list[tuple[str, str]] = []
    if _is_nested_estimator(params):
        found.append((str(params["estimator"]), f"{field}.estimator"))
        found += collect_import_paths(params.get("params", {}), f"{field}.params")
    elif isinstance(params, Mapping):
        for key, value in params.items():
            found += collect_import_paths(value, f"{field}.{key}")
    elif isinstance(params, list | tuple):
        for index, value in enumerate(params):
            found += collect_import_paths(value, f"{field}[{index}]")
    return found


def check_spec_paths(estimator: str, params: Mapping[str, Any], prefixes: Sequence[str]) -> None:
    """Check the top-level and every nested path before anything is imported."""
    check_import_path(estimator, prefixes)
    for path, field in collect_import_paths(dict(params)):
        check_import_path(path, prefixes, field)


def resolve(path: str, prefixes: Sequence[str], field: str = "model.estimator") -> Any:
    """Import the object at ``path`` after checking the allowlist, then check where it lives."""
    check_import_path(path, prefixes, field)
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EstimatorSpecError(
            f"spec.{field} {path!r}: cannot import module {module_name!r} ({exc})"
        ) from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise EstimatorSpecError(
            f"spec.{field} {path!r}: module {module_name!r} has no {attribute!r}"
        ) from None
    defined_in = getattr(target, "__module__", None) or ""
    if not (inspect.isclass(target) or inspect.isfunction(target)) or not is_allowed(
        defined_in, prefixes
    ):
        raise EstimatorNotAllowedError(
            f"spec.{field} {path!r} resolves to {defined_in}.{getattr(target, '__qualname__', '?')},"
            " which is not an estimator class or factory under an allowed prefix"
        )
    return target


def build_estimator(
    estimator: str, params: Mapping[str, Any], prefixes: Sequence[str]
) -> Any:
    """A fresh, unfitted estimator; nested ``{estimator, params}`` values are built too."""
    check_spec_paths(estimator, params, prefixes)
    return _build(estimator, dict(params), prefixes, "model")


def _build(path: str, params: dict[str, Any], prefixes: Sequence[str], field: str) -> Any:
    factory = resolve(path, prefixes, f"{field}.estimator")
    arguments = {
        key: _materialise(value, prefixes, f"{field}.params.{key}") for key, value in params.items()
    }
    try:
        instance = factory(**arguments)
    except TypeError as exc:
        raise EstimatorSpecError(f"spec.{field}.params do not fit {path}: {exc}") from None
    if not ((hasattr(instance, "fit") and hasattr(instance, "predict")) or
            (hasattr(instance, "fit") and hasattr(instance, "transform"))):
        raise EstimatorNotAllowedError(
            f"spec.{field}.estimator {path!r} made a {type(instance).__name__}, which has no "
            "fit/predict (or fit/transform): not an estimator"
        )
    return instance


def _materialise(value: Any, prefixes: Sequence[str], field: str) -> Any:
    if _is_nested_estimator(value):
        return _build(str(value["estimator"]), dict(value.get("params") or {}), prefixes, field)
    if isinstance(value, list):
        items = [_materialise(item, prefixes, f"{field}[{i}]") for i, item in enumerate(value)]
        # Pipeline steps / ColumnTransformer transformers are (name, estimator, ...) tuples.
        if items and isinstance(items[0], str) and len(items) in {2, 3} and any(
            hasattr(item, "fit") for item in items[1:]
        ):
            return tuple(items)
        return items
    if isinstance(value, Mapping):
        return {key: _materialise(item, prefixes, f"{field}.{key}") for key, item in value.items()}
    return value


def _is_nested_estimator(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and "estimator" in value
        and isinstance(value["estimator"], str)
        and set(value) <= NESTED_ESTIMATOR_KEYS
    )


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
