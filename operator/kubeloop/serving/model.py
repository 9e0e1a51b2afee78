"""The model runtime: fetch, verify, load and call a scikit-learn model stored with skops.

The interface is deliberately tiny (``load_model`` and ``ServedModel.predict``) so the HTTP
layer, the batcher and the tests all talk to the model the same way. Nothing here knows
about HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt

from kubeloop.drift.profile import Profile

log = logging.getLogger("kubeloop.serve")

MODEL_FILE = "model.skops"
PROFILE_FILE = "profile.json"
# skops refuses any type it was not told to trust; we trust only these module prefixes, so a
# model file can never make the server import and call arbitrary code.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.")
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


def _read_bytes(uri: str) -> bytes:
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
    """The types skops must trust to load these bytes; refuse anything outside the allowlist."""
    import skops.io

    needed: list[str] = list(skops.io.get_untrusted_types(data=model_bytes))
    refused = sorted(t for t in needed if not t.startswith(TRUSTED_MODULE_PREFIXES))
    if refused:
        raise ModelArtifactError(
            f"model.skops needs types outside the trusted modules {TRUSTED_MODULE_PREFIXES}: "
            f"{refused}; retrain with scikit-learn/numpy/scipy objects only"
        )
    return needed


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
        if hasattr(step, "n_jobs"):
            step.n_jobs = None


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
    _column_of: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

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
        """Predictions for a 2-D float array of rows."""
        result: Array = np.asarray(self.estimator.predict(rows))
        return result

    def predict_proba(self, rows: Array) -> Array:
        """Class probabilities (rows x classes) for a classifier."""
        result: Array = np.asarray(self.estimator.predict_proba(rows), dtype=np.float64)
        return result

    def predict_with_proba(self, rows: Array) -> tuple[Array, Array]:
        """Predictions and probabilities, in one model call when the estimator allows it."""
        proba = self.predict_proba(rows)
        if self.proba_from_predict and self.classes is not None:
            return self.classes.take(np.argmax(proba, axis=1), axis=0), proba
        return self.predict(rows), proba


def load_model(artifact: ModelArtifact, name: str) -> ServedModel:
    """Deserialise verified bytes with skops, trusting only scikit-learn/numpy/scipy types."""
    import skops.io
    from sklearn.base import is_classifier

    try:
        estimator = skops.io.loads(
            artifact.model_bytes, trusted=trusted_types(artifact.model_bytes)
        )
    except ModelArtifactError:
        raise
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
    classifier = bool(is_classifier(estimator))
    classes = (
        np.asarray(estimator.classes_) if classifier and hasattr(estimator, "classes_") else None
    )
    return ServedModel(
        name=name,
        sha256=artifact.sha256,
        estimator=estimator,
        profile=artifact.profile,
        feature_names=feature_names,
        task="classification" if classifier else "regression",
        classes=classes,
        proba_from_predict=_predict_is_argmax_of_proba(estimator),
    )


def _feature_names(estimator: Any, profile: Profile | None) -> list[str]:
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names]
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ModelArtifactError("the model does not record n_features_in_; is it fitted?")
    if profile is not None and len(profile.features) == int(n_features):
        return [f.name for f in profile.features]
    return [f"x{i}" for i in range(int(n_features))]
