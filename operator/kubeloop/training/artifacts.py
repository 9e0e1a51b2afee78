"""Model artifacts: atomic writes through fsspec, sha256, and skops save / verified load.

Layout of one run under the output root ``<storageUri>/<model>/<run>/`` (a sweep trial
writes the same files under ``<storageUri>/<model>/<run>/trials/<index>/``)::

    model.skops    the fitted model, skops format (no pickle); an XGBoost or LightGBM booster
                   rides inside it in its native format (kubeloop.trust.boosters)
    model.sha256   "<hex>  model.skops" (sha256sum format)
    profile.json   the drift reference profile (kubeloop.drift.profile)
    report.json    everything about the run; written LAST, as the completion marker

Every file is written to a temporary name in the same directory and then renamed. On a local
or mounted file system the rename is atomic (and the data is fsynced first), so a reader sees
the old file or the whole new one. Object stores (S3) have no rename: fsspec's ``mv`` is a
copy and a delete, and each single PUT is atomic for the object, but the *set* of files is
not. Hence the rule for readers: **a run directory without ``report.json`` is incomplete**
and must be ignored; ``report.json`` is written only after every other file is complete.

Loading (:func:`load_model`) verifies the sha256 first, then asks skops which types in the
file are not trusted by default (``skops.io.get_untrusted_types``) and refuses the file
unless :mod:`kubeloop.trust.model_types` trusts every one (estimator classes really defined
under an allowed package, a short vetted list, and the XGBoost/LightGBM wrappers); only then
is it loaded with exactly those types trusted, and each booster read from its native entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from kubeloop.trust import boosters, model_types, run_directory
from kubeloop.trust.run_directory import temporary_name
from kubeloop.trust.skops_io import skops_io

# Names from the one list of what a run directory holds, which the cleanup reads too.
MODEL_FILE = run_directory.MODEL_FILE
CHECKSUM_FILE = run_directory.CHECKSUM_FILE
PROFILE_FILE = run_directory.PROFILE_FILE
REPORT_FILE = run_directory.REPORT_FILE
DEFAULT_TRUSTED_TYPE_PREFIXES: tuple[str, ...] = model_types.DEFAULT_ESTIMATOR_PACKAGES


class ArtifactIntegrityError(ValueError):
    """The artifact's bytes do not match the expected sha256."""


class UntrustedArtifactError(ValueError):
    """The artifact holds types the reader does not trust (kubeloop.trust.model_types)."""


class StorageError(OSError):
    """Reading or writing the storage failed; the message names the URI."""


def sha256_hex(payload: bytes) -> str:
    """Lower-case hex sha256 of ``payload``."""
    return hashlib.sha256(payload).hexdigest()


def join_uri(root: str, *parts: str) -> str:
    """``root`` and path parts joined with single slashes (works for URIs and paths)."""
    joined = root.rstrip("/")
    for part in parts:
        joined += "/" + part.strip("/")
    return joined


def _filesystem(uri: str, storage_options: Mapping[str, Any]) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri, **dict(storage_options))
    return fs, str(path)


def write_atomic(
    uri: str, payload: bytes, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write ``payload`` to ``uri`` via a temporary sibling and a rename (see module doc)."""
    from kubeloop.training.data import local_path_of

    options = storage_options or {}
    try:
        local = local_path_of(uri)
        if local is not None:
            directory, name = os.path.split(os.path.abspath(local))
            os.makedirs(directory, exist_ok=True)
            temporary = os.path.join(directory, temporary_name(name))
            _write_local_atomic(temporary, os.path.join(directory, name), payload)
            return
        fs, path = _filesystem(uri, options)
        directory, _, name = path.rpartition("/")
        temporary = f"{directory}/{temporary_name(name)}" if directory else temporary_name(name)
        fs.makedirs(directory, exist_ok=True)
        fs.pipe_file(temporary, payload)
        try:
            fs.mv(temporary, path)
        finally:
            if fs.exists(temporary):
                fs.rm_file(temporary)
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from exc


def _write_local_atomic(temporary: str, final: str, payload: bytes) -> None:
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)  # atomic on POSIX within one file system
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    directory = os.path.dirname(final) or "."
    # Persist the rename itself (the directory entry) before anything points at the file.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole content of ``uri``."""
    from kubeloop.training.data import local_path_of

    try:
        local = local_path_of(uri)
        if local is not None:
            with open(local, "rb") as handle:
                return handle.read()
        fs, path = _filesystem(uri, storage_options or {})
        content: bytes = fs.cat_file(path)
    except FileNotFoundError:
        raise StorageError(f"{uri} does not exist") from None
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc
    return content


def exists(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``uri`` exists."""
    from kubeloop.training.data import local_path_of

    local = local_path_of(uri)
    if local is not None:
        return os.path.exists(local)
    fs, path = _filesystem(uri, storage_options or {})
    return bool(fs.exists(path))


def dump_model(model: Any, feature_names: Sequence[str] | None = None) -> bytes:
    """``model.skops``: the skops serialisation of ``model`` (no pickle), with any XGBoost or
    LightGBM booster in its native format beside it (:mod:`kubeloop.trust.boosters`).

    ``feature_names``: the columns the model was fitted on (kept for a LightGBM wrapper,
    which renames them)."""
    try:
        sklearn_part, booster_entries = boosters.split(model, feature_names)
    except boosters.BoosterArtifactError as exc:
        raise UntrustedArtifactError(str(exc)) from exc
    payload: bytes = skops_io().dumps(sklearn_part)
    return boosters.add_entries(payload, booster_entries)


def load_model_bytes(
    payload: bytes,
    expected_sha256: str | None,
    allowed_prefixes: Sequence[str] = DEFAULT_TRUSTED_TYPE_PREFIXES,
    source: str = "artifact",
) -> Any:
    """A model from skops bytes: sha256 verified (when given), then only allowed types trusted,
    then boosters read from their native entries."""
    if expected_sha256 is not None:
        expected = expected_sha256.removeprefix("sha256:").strip().lower()
        actual = sha256_hex(payload)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{source}: sha256 is {actual}, expected {expected}; the file was changed or "
                "the wrong one was given"
            )
    try:
        return model_types.load_trusted(payload, allowed_prefixes)
    except model_types.UntrustedModelTypesError as exc:
        raise UntrustedArtifactError(f"refusing to load the artifact: {exc}") from exc
    except boosters.BoosterArtifactError as exc:
        raise UntrustedArtifactError(f"refusing to load {source}: {exc}") from exc


def load_model(
    uri: str,
    expected_sha256: str | None,
    allowed_prefixes: Sequence[str] = DEFAULT_TRUSTED_TYPE_PREFIXES,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Read and load the model at ``uri`` (a ``model.skops`` file or a run directory)."""
    if not uri.endswith(".skops"):
        uri = join_uri(uri, MODEL_FILE)
    return load_model_bytes(
        read_bytes(uri, storage_options), expected_sha256, allowed_prefixes, uri
    )
