"""The model runtime: fetch, verify, load and call a scikit-learn model stored with skops.

XGBoost and LightGBM models (bare or as a Pipeline's last step) come from the same file: skops
holds the wrapper, the booster rides beside it in its native format
(:mod:`kubeloop.trust.boosters`); their fast path calls the booster's own in-memory predict.

The interface is deliberately tiny (``load_model`` and ``ServedModel.predict``) so the HTTP
layer, the batcher and the tests all talk to the model the same way. Nothing here knows
about HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from kubeloop.drift.profile import Profile
from kubeloop.serving.inputs import needs_dataframe, text_features
from kubeloop.trust import boosters, model_types

log = logging.getLogger("kubeloop.serve")

MODEL_FILE = "model.skops"
PROFILE_FILE = "profile.json"
# Exit codes of `kubeloop serve`, documented in its --help.
EXIT_CHECKSUM_MISMATCH = 3
EXIT_MODEL_UNUSABLE = 4

Array = npt.NDArray[Any]


class ModelArtifactError(Exception):
    """The stored model cannot be served; ``exit_code`` tells the supervisor why."""

    exit_code = EXIT_MODEL_UNUSABLE


class ChecksumMismatchError(ModelArtifactError):
    """The bytes fetched are not the bytes the deployment pinned."""

    exit_code = EXIT_CHECKSUM_MISMATCH


@dataclass(frozen=True)
class ModelArtifact:
    """The raw, verified bytes of a model and its optional reference profile."""

    model_uri: str
    model_bytes: bytes
    sha256: str
    profile: Profile | None


def model_file_uri(model_uri: str) -> str:
    """The URI of model.skops, given either the run directory or the file itself."""
    uri = model_uri.rstrip("/")
    return uri if uri.endswith(".skops") else f"{uri}/{MODEL_FILE}"


def default_profile_uri(model_uri: str) -> str:
    """profile.json next to the model, where the trainer writes it."""
    return model_file_uri(model_uri).rsplit("/", 1)[0] + "/" + PROFILE_FILE


def _local_path(uri: str) -> str | None:
    """The file-system path of a plain path or ``file://`` URI; None for anything remote."""
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" not in uri and "::" not in uri:
        return uri
    return None


def _read_bytes(uri: str) -> bytes:
    path = _local_path(uri)
    if path is not None:  # local and mounted files need no fsspec (~0.1 s to import)
        with open(path, "rb") as handle:
            return handle.read()
    import fsspec

    with fsspec.open(uri, "rb") as handle:
        data: bytes = handle.read()
    return data


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``, as the trainer writes it to model.sha256."""
    return hashlib.sha256(data).hexdigest()


def fetch_artifact(
    model_uri: str, expected_sha256: str | None, profile_uri: str | None = None
) -> ModelArtifact:
    """Fetch the model bytes, verify them against ``expected_sha256`` and fetch the profile.

    The checksum is checked on the bytes before anything is deserialised. ``expected_sha256``
    None means the operator explicitly chose to skip verification. A missing profile at the
    default location only disables the drift counters; an explicit one that is missing is an
    error.
    """
    uri = model_file_uri(model_uri)
    try:
        data = _read_bytes(uri)
    except FileNotFoundError as exc:
        raise ModelArtifactError(
            f"model_uri: no model at {uri}; point --model-uri at the run directory or its "
            f"{MODEL_FILE}"
        ) from exc
    except OSError as exc:
        raise ModelArtifactError(f"model_uri: cannot read {uri}: {exc}") from exc
    actual = sha256_hex(data)
    if expected_sha256 is not None and actual != expected_sha256:
        raise ChecksumMismatchError(
            f"sha256 mismatch for {uri}: expected {expected_sha256}, got {actual}; the artifact "
            "changed since it was pinned, refusing to load it (fix --sha256 or the artifact)"
        )
    profile = _fetch_profile(profile_uri, default_profile_uri(model_uri))
    return ModelArtifact(model_uri=uri, model_bytes=data, sha256=actual, profile=profile)


def _fetch_profile(explicit_uri: str | None, default_uri: str) -> Profile | None:
    uri = explicit_uri or default_uri
    try:
        payload = _read_bytes(uri)
    except (FileNotFoundError, OSError) as exc:
        if explicit_uri:
            raise ModelArtifactError(f"profile_uri: cannot read {uri}: {exc}") from exc
        log.warning("no reference profile at %s: drift counters are disabled", uri)
        return None
    try:
        return Profile.from_json_bytes(payload)
    except ValueError as exc:
        raise ModelArtifactError(
            f"profile_uri: {uri} is not a kubeloop profile.json: {exc}"
        ) from exc


def trusted_types(model_bytes: bytes) -> list[str]:
    """The types skops must trust to load these bytes, as :mod:`kubeloop.trust.model_types`
    decides; anything it refuses makes the model unusable (exit code 4)."""
    try:
        boosters.read_manifest(model_bytes)
        return model_types.trusted_types(model_bytes)
    except (model_types.UntrustedModelTypesError, boosters.BoosterArtifactError) as exc:
        raise ModelArtifactError(str(exc)) from exc
    except Exception as exc:
        raise ModelArtifactError(f"model.skops cannot be read as a skops file: {exc}") from exc


def _final_estimator(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def _predict_is_argmax_of_proba(estimator: Any) -> bool:
    """True when ``predict`` is by definition ``classes_[argmax(predict_proba)]``.

    Then a request asking for both outputs costs one model call, not two. Only estimators whose
    scikit-learn source defines predict that way are listed; others get two calls.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.tree import BaseDecisionTree

    final = _final_estimator(estimator)
    if not hasattr(final, "classes_") or not hasattr(final, "predict_proba"):
        return False
    return isinstance(final, ForestClassifier | HistGradientBoostingClassifier) or (
        isinstance(final, BaseDecisionTree) and hasattr(final, "predict_proba")
    )


def _single_threaded(estimator: Any) -> None:
    # The server parallelises with processes and batches; joblib threads inside every
    # predict call would oversubscribe the CPUs and add per-call overhead.
    for step in [estimator, *[s for _, s in getattr(estimator, "steps", [])]]:
        if boosters.type_name(step) in boosters.BOOSTER_TYPES:
            # For XGBoost and LightGBM n_jobs=None means every core (OpenMP), not one.
            step.n_jobs = 1
            if boosters.BOOSTER_TYPES[boosters.type_name(step)] is boosters.XGBOOST:
                step.get_booster().set_param({"nthread": 1})
        elif hasattr(step, "n_jobs"):
            step.n_jobs = None


Predict = Callable[[Array], Array]


@dataclass(frozen=True)
class FastPath:
    """Direct calls into a fitted estimator's parts, skipping per-call framework overhead.

    scikit-learn's forest predict dispatches every tree through joblib, and its linear
    predict goes through array-API dispatch; for a single row that overhead is most of the
    cost. These paths do the same arithmetic in the same order. They are only used after a
    self-check at load time gave bit-identical results to the estimator's own methods.
    """

    predict: Predict
    predict_proba: Predict | None


def _forest_fast_path(forest: Any) -> FastPath | None:
    from sklearn.ensemble._forest import ForestClassifier, ForestRegressor

    if getattr(forest, "n_outputs_", 1) != 1:
        return None
    trees = list(forest.estimators_)
    if isinstance(forest, ForestClassifier):
        n_classes = int(forest.n_classes_)
        classes = forest.classes_

        def proba(rows: Array) -> Array:
            # Same validation (dtype float32, finiteness per the model's tags) as sklearn.
            checked = forest._validate_X_predict(rows)
            total = np.zeros((checked.shape[0], n_classes), dtype=np.float64)
            for tree in trees:  # summed in estimator order, as joblib does with one job
                total += tree.predict_proba(checked, check_input=False)
            total /= len(trees)
            return total

        def predict(rows: Array) -> Array:
            result: Array = classes.take(np.argmax(proba(rows), axis=1), axis=0)
            return result

        return FastPath(predict, proba)
    if isinstance(forest, ForestRegressor):

        def regress(rows: Array) -> Array:
            checked = forest._validate_X_predict(rows)
            total = np.zeros(checked.shape[0], dtype=np.float64)
            for tree in trees:
                total += tree.predict(checked, check_input=False)
            total /= len(trees)
            return total

        return FastPath(regress, None)
    return None


def _linear_fast_path(model: Any) -> FastPath | None:
    coef = getattr(model, "coef_", None)
    intercept = getattr(model, "intercept_", None)
    classes = getattr(model, "classes_", None)
    if not isinstance(coef, np.ndarray) or classes is None or intercept is None:
        return None
    coef_t = coef.T if coef.ndim == 2 else coef
    binary = coef.ndim == 1 or coef.shape[0] == 1
    slow = model.predict

    def predict(rows: Array) -> Array:
        if not np.isfinite(rows).all():
            return np.asarray(slow(rows))  # sklearn raises its own, well-worded error
        scores = rows @ coef_t + intercept
        # sklearn: binary -> class 1 where the score is > 0; multiclass -> highest score.
        indices = (scores.reshape(-1) > 0).astype(np.intp) if binary else np.argmax(scores, axis=1)
        result: Array = classes.take(indices, axis=0)
        return result

    return FastPath(predict, None)


def _xgboost_fast_path(model: Any) -> FastPath | None:
    """The booster's ``inplace_predict`` on the batch, as XGBModel.predict calls it, without
    the wrapper's per-call checks and config context."""
    booster = model.get_booster()
    options = {"iteration_range": model._get_iteration_range(None), "missing": model.missing}
    if not hasattr(model, "n_classes_"):

        def regress(rows: Array) -> Array:
            result: Array = booster.inplace_predict(rows, **options)
            return result

        return FastPath(regress, None)
    if model.objective not in ("binary:logistic", "multi:softprob"):
        return None
    binary = int(model.n_classes_) == 2

    def proba(rows: Array) -> Array:
        values: Array = booster.inplace_predict(rows, **options)
        if binary and values.ndim == 1:
            return np.vstack((1 - values, values)).transpose()
        return values

    def predict(rows: Array) -> Array:
        values: Array = booster.inplace_predict(rows, **options)
        if values.ndim > 1:
            return np.asarray(np.argmax(values, axis=1))
        indexes: Array = np.repeat(0, values.shape[0])
        indexes[values > 0.5] = 1
        return indexes

    return FastPath(predict, proba)


def _lightgbm_fast_path(model: Any) -> FastPath | None:
    """The booster's own ``predict`` on the batch, without the wrapper's validation."""
    booster = model.booster_
    options = {"num_threads": 1, "validate_features": False}
    if not hasattr(model, "classes_"):

        def regress(rows: Array) -> Array:
            result: Array = booster.predict(rows, **options)
            return result

        return FastPath(regress, None)
    encoder = model._le

    def proba(rows: Array) -> Array:
        values: Array = booster.predict(rows, **options)
        if values.ndim == 1:
            return np.vstack((1.0 - values, values)).transpose()
        return values

    def predict(rows: Array) -> Array:
        result: Array = encoder.inverse_transform(np.argmax(proba(rows), axis=1))
        return result

    return FastPath(predict, proba)


def fast_path(estimator: Any) -> FastPath | None:
    """A faster, equivalent way to call ``estimator``, for the estimators we know."""
    from sklearn.ensemble._forest import BaseForest
    from sklearn.linear_model._base import LinearClassifierMixin

    name = boosters.type_name(estimator)
    if name in boosters.BOOSTER_TYPES:
        framework = boosters.BOOSTER_TYPES[name]
        if framework is boosters.XGBOOST:
            return _xgboost_fast_path(estimator)
        return _lightgbm_fast_path(estimator)
    if isinstance(estimator, BaseForest):
        return _forest_fast_path(estimator)
    if isinstance(estimator, LinearClassifierMixin):
        return _linear_fast_path(estimator)
    return None


def _probe_rows(n_features: int, profile: Profile | None) -> Array:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(257, n_features))
    if profile is not None and len(profile.features) == n_features:
        for i, feature in enumerate(profile.features):
            if feature.mean is not None and feature.std is not None:
                rows[:, i] = rows[:, i] * (feature.std or 1.0) * 1.5 + feature.mean
    return rows


def checked_fast_path(estimator: Any, n_features: int, profile: Profile | None) -> FastPath | None:
    """The fast path, only if it gives exactly the estimator's answers on probe rows."""
    path = fast_path(estimator)
    if path is None:
        return None
    rows = _probe_rows(n_features, profile)
    try:
        same = all(
            np.array_equal(path.predict(rows[:n]), estimator.predict(rows[:n])) for n in (1, 7, 257)
        )
        if path.predict_proba is not None:
            same = same and all(
                np.array_equal(path.predict_proba(rows[:n]), estimator.predict_proba(rows[:n]))
                for n in (1, 257)
            )
    except Exception as exc:
        log.warning("fast path of %s disabled: %s", type(estimator).__name__, exc)
        return None
    if not same:
        log.warning("fast path of %s disabled: results differ", type(estimator).__name__)
        return None
    return path


@dataclass
class ServedModel:
    """A loaded model with what the protocol needs to describe it."""

    name: str
    sha256: str
    estimator: Any
    profile: Profile | None
    feature_names: list[str]
    task: str  # "classification" | "regression"
    classes: Array | None
    proba_from_predict: bool = False
    fast: FastPath | None = None
    # Features taken as text (see kubeloop.serving.inputs); when there are any, rows are an
    # object matrix (floats in numeric columns, str or NaN in text columns).
    text_features: list[str] = field(default_factory=list)
    # Builds the DataFrame a model with a by-name ColumnTransformer needs; None: a matrix.
    to_frame: Callable[[Array], Any] | None = field(default=None, repr=False)
    _column_of: dict[str, int] = field(default_factory=dict, repr=False)
    _text_columns: list[bool] = field(default_factory=list, repr=False)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def takes_text(self) -> bool:
        return bool(self.text_features)

    @property
    def text_columns(self) -> list[bool]:
        """Per column, in feature order: does the model take this feature as text?"""
        if len(self._text_columns) != self.n_features:
            text = set(self.text_features)
            self._text_columns = [name in text for name in self.feature_names]
        return self._text_columns

    def _model_input(self, rows: Array) -> Any:
        return rows if self.to_frame is None else self.to_frame(rows)

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]

    @property
    def has_proba(self) -> bool:
        return self.classes is not None and hasattr(self.estimator, "predict_proba")

    def column_of(self, feature: str) -> int | None:
        """Column index of a feature name, None when the model has no such feature."""
        if not self._column_of:
            self._column_of = {n: i for i, n in enumerate(self.feature_names)}
        return self._column_of.get(feature)

    def predict(self, rows: Array) -> Array:
        """Predictions for a 2-D array of rows (float64, or object for a model taking text)."""
        if self.fast is not None:
            return self.fast.predict(rows)
        result: Array = np.asarray(self.estimator.predict(self._model_input(rows)))
        return result

    def predict_proba(self, rows: Array) -> Array:
        """Class probabilities (rows x classes) for a classifier."""
        # C order: XGBoost and LightGBM build binary probabilities as a transposed stack,
        # and the JSON/binary encoders write C-ordered buffers.
        if self.fast is not None and self.fast.predict_proba is not None:
            return np.ascontiguousarray(self.fast.predict_proba(rows), dtype=np.float64)
        result: Array = np.ascontiguousarray(
            self.estimator.predict_proba(self._model_input(rows)), dtype=np.float64
        )
        return result

    def predict_with_proba(self, rows: Array) -> tuple[Array, Array]:
        """Predictions and probabilities, in one model call when the estimator allows it."""
        proba = self.predict_proba(rows)
        if self.proba_from_predict and self.classes is not None:
            return self.classes.take(np.argmax(proba, axis=1), axis=0), proba
        return self.predict(rows), proba


def load_model(artifact: ModelArtifact, name: str, fast_paths: bool = True) -> ServedModel:
    """Deserialise verified bytes with skops, trusting only what kubeloop.trust.model_types allows."""
    from sklearn.base import is_classifier

    try:
        estimator = model_types.load_trusted(artifact.model_bytes)
    except (model_types.UntrustedModelTypesError, boosters.BoosterArtifactError) as exc:
        raise ModelArtifactError(f"model_uri: {artifact.model_uri}: {exc}") from exc
    except Exception as exc:
        raise ModelArtifactError(
            f"model_uri: {artifact.model_uri} is not a loadable skops file: {exc}"
        ) from exc
    if not hasattr(estimator, "predict"):
        raise ModelArtifactError(
            f"model_uri: {artifact.model_uri} holds a {type(estimator).__name__}, "
            "which has no predict(); store a fitted estimator or Pipeline"
        )
    _single_threaded(estimator)
    # Models fitted on a DataFrame warn on every array input; the server always sends columns
    # in the fitted order, so the warning is noise that would cost time on every call.
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    feature_names = _feature_names(estimator, artifact.profile)
    text = text_features(estimator)
    to_frame = (
        _frame_builder(feature_names, text, artifact.model_uri)
        if text or needs_dataframe(estimator)
        else None
    )
    classifier = bool(is_classifier(estimator))
    classes = (
        np.asarray(estimator.classes_) if classifier and hasattr(estimator, "classes_") else None
    )
    if text:
        log.info("features taken as text: %s", ", ".join(text))
    return ServedModel(
        name=name,
        sha256=artifact.sha256,
        estimator=estimator,
        profile=artifact.profile,
        feature_names=feature_names,
        task="classification" if classifier else "regression",
        classes=classes,
        proba_from_predict=_predict_is_argmax_of_proba(estimator),
        fast=checked_fast_path(estimator, len(feature_names), artifact.profile)
        if fast_paths and to_frame is None
        else None,
        text_features=text,
        to_frame=to_frame,
    )


def _frame_builder(
    feature_names: list[str], text: list[str], model_uri: str
) -> Callable[[Array], Any]:
    """rows -> the DataFrame the model was fitted on: named columns, text kept as text."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ModelArtifactError(
            f"model_uri: {model_uri} needs pandas DataFrames (it selects columns by name), "
            f"but pandas cannot be imported: {exc}"
        ) from exc
    if not text:

        def numeric_frame(rows: Array) -> Any:
            return pd.DataFrame(rows, columns=feature_names, copy=False)

        return numeric_frame
    is_text = set(text)
    columns = [(i, name, name in is_text) for i, name in enumerate(feature_names)]

    def mixed_frame(rows: Array) -> Any:
        # Text columns stay object columns (str or NaN), whatever pandas would infer from a
        # batch (an all-missing batch must not become a float column); encoders read object.
        return pd.DataFrame(
            {
                name: pd.Series(rows[:, i], dtype=object, copy=False)
                if text_column
                else rows[:, i].astype(np.float64)
                for i, name, text_column in columns
            },
            copy=False,
        )

    return mixed_frame


def _feature_names(estimator: Any, profile: Profile | None) -> list[str]:
    names = boosters.feature_names_in(estimator)
    if names is not None:
        return names
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ModelArtifactError("the model does not record n_features_in_; is it fitted?")
    if profile is not None and len(profile.features) == int(n_features):
        return [f.name for f in profile.features]
    return [f"x{i}" for i in range(int(n_features))]
