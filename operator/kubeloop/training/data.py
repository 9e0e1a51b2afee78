"""Where training data comes from: bundled scikit-learn datasets, a synthetic generator, and
anything fsspec can open (``file://``, plain or mounted PVC paths, ``s3://``, ``https://``).

Every loader returns a pandas DataFrame with the target as an ordinary column, so validation,
fingerprinting and splitting treat all sources alike.

``sklearn://<name>`` serves ``iris``, ``wine``, ``breast_cancer``, ``digits`` (classification)
and ``diabetes`` (regression), target column ``target``.

``sklearn://synthetic?...`` calls :func:`make_synthetic`; see it for the parameters.

What may be read is decided by :mod:`kubeloop.trust.data_paths`: local files (``file://``,
plain paths, ``pvc://`` once mapped to its mount) only below the pod's declared data roots
(``KUBELOOP_DATA_ROOTS``) after following ``..`` and symlinks, remote data only through the
schemes it lists; no error message repeats the data (readers' errors become a fixed summary).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from kubeloop.trust.data_paths import (
    DATA_SOURCE_FIELD,
    DataPathNotAllowed,
    DataRoots,
    display_uri,
    read_error_summary,
    remote_scheme_problem,
)

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TARGET = "target"
SKLEARN_SCHEME = "sklearn://"
PVC_SCHEME = "pvc://"
DEFAULT_PVC_MOUNT_ROOT = "/mnt/pvc"
BUNDLED_DATASETS: dict[str, str] = {
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
    "digits": "load_digits",
}
SYNTHETIC_CATEGORIES = ("a", "b", "c", "d")
# The synthetic concept (how the target depends on the features) is fixed, independent of the
# data seed: a reference set and a live set drawn with different seeds follow the same law,
# so only an injected shift makes them differ.
_CONCEPT_SEED = 20240601


class DataError(ValueError):
    """The data cannot be read (missing, unreachable, unknown format); message says why."""


class DataSourceNotAllowed(DataError):
    """The source lies outside what this pod may read (:mod:`kubeloop.trust.data_paths`)."""


class DataSpecError(DataError):
    """The spec names data that cannot exist as written (an unknown bundled dataset, a bad
    synthetic parameter, a format that cannot be told, a malformed pvc:// URI): unlike a file
    that is missing or unreachable now, no retry can change the answer."""


@dataclass(frozen=True)
class LoadedData:
    """A table and where it came from."""

    frame: pd.DataFrame
    source: str
    format: str
    default_target: str | None  # the target a bundled source implies, if any


def make_synthetic(
    rows: int = 1000,
    features: int = 5,
    seed: int = 0,
    shift: float = 0.0,
    shifted_features: Sequence[str] | None = None,
    task: Literal["classification", "regression"] = "classification",
    categorical: int = 0,
    classes: int = 2,
    noise: float = 0.5,
) -> pd.DataFrame:
    """A seeded table for demos and drift tests, optionally with an injected covariate shift.

    Columns: numerical ``x0 .. x{features-1}`` (normal, each with its own fixed mean and
    scale), categorical ``c0 .. c{categorical-1}`` (values ``a``..``d`` with fixed skewed
    frequencies), and ``target``. The target follows one fixed concept regardless of
    ``seed``: a linear score of the features plus Gaussian ``noise``; for classification the
    score is cut into ``classes`` classes (labels ``0..classes-1``) at fixed points, for
    regression it is the target itself.

    ``shift`` moves the named ``shifted_features`` (default: every numerical feature) by
    ``shift`` standard deviations; a shifted categorical feature moves ``min(|shift|, 1)`` of
    the probability mass from its most frequent category to its rarest. The target is computed
    from the shifted features, i.e. the relation between features and target stays the same
    (covariate shift) while the feature and prediction distributions move.

    The same arguments always give the same table.
    """
    import pandas as pd

    if rows < 1 or features < 0 or categorical < 0 or features + categorical < 1:
        raise DataSpecError(
            "synthetic data needs rows >= 1 and at least one feature "
            f"(got rows={rows}, features={features}, categorical={categorical})"
        )
    if task == "classification" and classes < 2:
        raise DataSpecError(f"synthetic classification needs classes >= 2 (got {classes})")
    numeric_names = [f"x{i}" for i in range(features)]
    categorical_names = [f"c{i}" for i in range(categorical)]
    shifted = set(numeric_names if shifted_features is None else shifted_features)
    unknown = shifted - set(numeric_names) - set(categorical_names)
    if unknown and shift != 0.0:
        raise DataSpecError(
            f"shifted_features names unknown columns {sorted(unknown)}; "
            f"the synthetic columns are {numeric_names + categorical_names}"
        )

    concept = np.random.default_rng(_CONCEPT_SEED)
    means = concept.normal(0.0, 2.0, size=features)
    scales = concept.uniform(0.5, 3.0, size=features)
    weights = concept.normal(0.0, 1.0, size=features) / scales
    category_weights = concept.normal(0.0, 1.0, size=(categorical, len(SYNTHETIC_CATEGORIES)))
    base_probabilities = np.array([0.4, 0.3, 0.2, 0.1])

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    score = np.zeros(rows)
    standard = rng.standard_normal((rows, features))
    for i, name in enumerate(numeric_names):
        offset = shift if name in shifted else 0.0
        values = means[i] + scales[i] * (standard[:, i] + offset)
        columns[name] = values
        score += weights[i] * (values - means[i])
    for j, name in enumerate(categorical_names):
        probabilities = base_probabilities.copy()
        if name in shifted and shift != 0.0:
            moved = min(abs(shift), 1.0) * probabilities[0]
            probabilities[0] -= moved
            probabilities[-1] += moved
        codes = rng.choice(len(SYNTHETIC_CATEGORIES), size=rows, p=probabilities)
        columns[name] = pd.Categorical.from_codes(codes, categories=list(SYNTHETIC_CATEGORIES))
        score += category_weights[j][codes]
    score += noise * rng.standard_normal(rows)

    if task == "regression":
        columns[DEFAULT_TARGET] = score
    else:
        # Fixed cut points of the *unshifted* score distribution, so the classes are balanced
        # on reference data and a shift shows up as a change in the predicted classes.
        spread = np.sqrt(np.sum((weights * scales) ** 2) + categorical + noise**2)
        cuts = spread * _normal_quantiles(classes)
        columns[DEFAULT_TARGET] = np.searchsorted(cuts, score).astype(np.int64)
    return pd.DataFrame(columns)


def _normal_quantiles(classes: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    # The standard library's inverse CDF: scipy.stats would cost ~0.5 s of import here.
    from statistics import NormalDist

    standard = NormalDist()
    return np.asarray([standard.inv_cdf(k / classes) for k in range(1, classes)], dtype=np.float64)


def parse_synthetic_query(query: str) -> dict[str, Any]:
    """The keyword arguments of :func:`make_synthetic` from a ``sklearn://synthetic?`` query."""
    converters: dict[str, Any] = {
        "rows": int,
        "features": int,
        "seed": int,
        "shift": float,
        "categorical": int,
        "classes": int,
        "noise": float,
        "task": str,
        "shifted_features": lambda v: [part for part in v.split(",") if part],
    }
    kwargs: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in converters:
            raise DataSpecError(
                f"unknown synthetic parameter {key!r}; known: {', '.join(sorted(converters))}"
            )
        try:
            kwargs[key] = converters[key](value)
        except ValueError:
            raise DataSpecError(f"synthetic parameter {key}={value!r} is not a valid value") from None
    if kwargs.get("task", "classification") not in {"classification", "regression"}:
        raise DataSpecError(f"synthetic task {kwargs['task']!r}: use classification or regression")
    return kwargs


def load_bundled(name: str) -> pd.DataFrame:
    """A dataset bundled with scikit-learn (no network), target in column ``target``."""
    if name not in BUNDLED_DATASETS:
        raise DataSpecError(
            f"unknown bundled dataset sklearn://{name}; "
            f"use one of {', '.join(sorted(BUNDLED_DATASETS))} or sklearn://synthetic?rows=..."
        )
    from sklearn import datasets

    bunch = getattr(datasets, BUNDLED_DATASETS[name])(as_frame=True)
    frame: pd.DataFrame = bunch.frame
    return frame


def infer_format(uri: str, override: str | None = None) -> str:
    """``csv`` or ``parquet`` from the spec's format, else from the file's extension."""
    if override is not None:
        return override
    path = urlsplit(uri).path.lower() if "://" in uri else uri.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        path = path.removesuffix(suffix)
    if path.endswith((".parquet", ".pq")):
        return "parquet"
    if path.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    raise DataSpecError(
        f"cannot tell the format of {display_uri(uri)!r} from its extension; set spec.data.format to "
        "csv or parquet"
    )


def resolve_uri(uri: str, pvc_mount_root: str = DEFAULT_PVC_MOUNT_ROOT) -> str:
    """Map ``pvc://<claim>/<path>`` to where the Job mounts the claim; other URIs unchanged."""
    if uri.startswith(PVC_SCHEME):
        rest = uri[len(PVC_SCHEME) :].lstrip("/")
        if "/" not in rest:
            raise DataSpecError(f"{display_uri(uri)!r}: a pvc:// URI needs a claim and a path, pvc://<claim>/<path>")
        return os.path.join(pvc_mount_root, rest)
    return uri


def local_path_of(location: str) -> str | None:
    """The file-system path of a plain path or ``file://`` URI; None for anything remote."""
    if location.startswith("file://"):
        return location.removeprefix("file://")
    if "://" not in location and "::" not in location:
        return location
    return None


def storage_options_for(uri: str, env: Mapping[str, str]) -> dict[str, Any]:
    """fsspec options for ``uri``: an S3 endpoint from ``FSSPEC_S3_ENDPOINT_URL``,
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO, Ceph, a local test server)."""
    if uri.startswith(("s3://", "s3a://")):
        for name in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if env.get(name):
                return {"endpoint_url": env[name]}
    return {}


def load_table(
    uri: str,
    format: str | None = None,
    env: Mapping[str, str] | None = None,
    pvc_mount_root: str = DEFAULT_PVC_MOUNT_ROOT,
    field: str = DATA_SOURCE_FIELD,
) -> LoadedData:
    """Read a table from ``uri`` (any source this module documents).

    Local files are read only below the pod's declared data roots (``KUBELOOP_DATA_ROOTS`` in
    ``env``, see :mod:`kubeloop.trust.data_paths`), after following every ``..`` and symlink;
    remote data only through the schemes that module lists. No message repeats the data: a
    reader's error becomes a fixed summary. ``field`` names the source in messages.
    """
    if uri.startswith(SKLEARN_SCHEME):
        parts = urlsplit(uri)
        name = parts.netloc or parts.path.lstrip("/")
        if name == "synthetic":
            frame = make_synthetic(**parse_synthetic_query(parts.query))
        else:
            frame = load_bundled(name)
        return LoadedData(frame=frame, source=uri, format="sklearn", default_target=DEFAULT_TARGET)

    import pandas as pd

    environment = os.environ if env is None else env
    shown = display_uri(uri)
    location = resolve_uri(uri, pvc_mount_root)
    table_format = infer_format(location, format)
    options = storage_options_for(location, environment)
    separator = "\t" if location.split("?")[0].removesuffix(".gz").endswith(".tsv") else ","
    local_path = local_path_of(location)
    try:
        if local_path is not None:
            roots = DataRoots.from_env(environment)
            local_path = roots.check(local_path, field, uri)
            if table_format == "parquet" and os.path.isdir(local_path):
                _check_dataset_directory(local_path, roots, field, uri)
        else:
            problem = remote_scheme_problem(location)
            if problem is not None:
                raise DataPathNotAllowed(f"{field} {shown!r}: {problem}")
    except DataPathNotAllowed as exc:
        raise DataSourceNotAllowed(str(exc)) from None
    try:
        if local_path is not None:
            # Local and mounted files go to pandas by their real path (the one just checked):
            # pyarrow then reads natively instead of through a Python file object.
            if not os.path.exists(local_path):
                raise FileNotFoundError(local_path)
            if not os.path.isfile(local_path) and not (table_format == "parquet" and os.path.isdir(local_path)):
                raise DataError(f"{field} {shown!r} is not a regular file; name a {table_format} file")
            if table_format == "parquet":
                frame = pd.read_parquet(local_path)
            else:
                frame = pd.read_csv(local_path, sep=separator, compression="infer")
        else:
            import fsspec  # only for remote data: its import costs ~0.1 s

            with fsspec.open(location, "rb", compression="infer", **options) as handle:
                if table_format == "parquet":
                    frame = pd.read_parquet(handle)
                else:
                    frame = pd.read_csv(handle, sep=separator)
    except FileNotFoundError:
        raise DataError(f"no data at {shown!r} (file not found); check {field}") from None
    except DataError:
        raise
    except Exception as exc:  # readers raise anything; no message may echo the data
        raise DataError(
            f"cannot read {shown!r} ({read_error_summary(exc, table_format)}); check {field} "
            "and spec.data.format"
        ) from None
    return LoadedData(frame=frame, source=uri, format=table_format, default_target=None)


def _check_dataset_directory(directory: str, roots: DataRoots, field: str, uri: str) -> None:
    """Hold every file and directory a Parquet dataset reader would open to ``roots``
    (symlinks inside the dataset included; each real directory is visited once)."""
    pending, seen = [directory], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        with os.scandir(current) as entries:
            for entry in entries:
                real = roots.check(entry.path, field, uri)
                if os.path.isdir(real):
                    pending.append(real)
