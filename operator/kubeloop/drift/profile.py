"""The reference profile: how each feature (and the prediction) was distributed at training time.

The trainer writes it as ``profile.json`` next to the model; the model server counts live
traffic into the same bins (its Prometheus drift counters) and the operator compares the two.
One binning rule, defined here, is shared by all three, so a bin index means the same thing
everywhere.

Binning rule for numerical features: ``edges`` are the inner, strictly increasing cut points
of ``len(edges) + 1`` bins; bin ``i`` holds ``edges[i-1] < x <= edges[i]`` (the first bin is
open to -inf, the last to +inf). Missing values (NaN) are counted apart, never in a bin.
Categorical features keep the reference's categories in a fixed order plus a final
``__other__`` bin for anything unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

PROFILE_FORMAT_VERSION = 1
PREDICTION_FEATURE = "__prediction__"
OTHER_CATEGORY = "__other__"
DEFAULT_NUMERIC_BINS = 20
MAX_CATEGORIES = 50


class FeatureProfile(BaseModel):
    """One feature's reference distribution over fixed bins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["numerical", "categorical"]
    edges: list[float] = Field(default_factory=list, description="Inner cut points (numerical).")
    categories: list[str] = Field(default_factory=list, description="Known categories (categorical).")
    counts: list[int] = Field(description="Reference count per bin; categorical ends with __other__.")
    missing: int = 0
    # Summary statistics let distance measures be normalised without the raw reference.
    mean: float | None = None
    std: float | None = None

    @property
    def bin_labels(self) -> list[str]:
        """Stable label of every bin, as the model server exports it."""
        if self.kind == "categorical":
            return [*self.categories, OTHER_CATEGORY]
        return [str(i) for i in range(len(self.edges) + 1)]

    def bin_index(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Bin index of every value; -1 for a missing value."""
        if self.kind == "numerical":
            x = np.asarray(values, dtype=np.float64)
            idx = np.searchsorted(np.asarray(self.edges, dtype=np.float64), x, side="left")
            return np.where(np.isnan(x), -1, idx).astype(np.int64)
        labels = _as_category_strings(values)
        lookup = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        return np.fromiter(
            (-1 if v is None else lookup.get(v, other) for v in labels),
            dtype=np.int64,
            count=len(labels),
        )

    def bin_counts(self, values: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], int]:
        """Counts of ``values`` over this profile's bins, and the number of missing values."""
        idx = self.bin_index(values)
        present = idx[idx >= 0]
        counts = np.bincount(present, minlength=len(self.counts)).astype(np.int64)
        return counts, int(idx.size - present.size)


class Profile(BaseModel):
    """Everything a drift check needs to know about the training data."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = PROFILE_FORMAT_VERSION
    rows: int
    features: list[FeatureProfile]
    prediction: FeatureProfile | None = None

    def feature(self, name: str) -> FeatureProfile:
        if name == PREDICTION_FEATURE and self.prediction is not None:
            return self.prediction
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"feature {name!r} is not in the reference profile")

    def all_features(self) -> list[FeatureProfile]:
        """Input features, then the prediction when it was profiled."""
        return [*self.features, *([self.prediction] if self.prediction else [])]

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json(indent=None).encode()

    @classmethod
    def from_json_bytes(cls, payload: bytes | str) -> Profile:
        return cls.model_validate_json(payload)


def _as_category_strings(values: npt.ArrayLike | Iterable[Any]) -> list[str | None]:
    """Categories compared as text, so 1, 1.0 and "1" from JSON land in the same bin."""
    out: list[str | None] = []
    for v in np.asarray(values, dtype=object).ravel().tolist():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def quantile_edges(
    sorted_reference: npt.NDArray[np.float64], n_bins: int = DEFAULT_NUMERIC_BINS
) -> npt.NDArray[np.float64]:
    """The numerical binning rule's inner edges, from the sorted reference (no NaN).

    numpy's linear quantiles read directly off the sorted array (no partitioning pass);
    duplicate edges collapse, and an edge equal to the maximum is dropped because it would
    leave the last bin empty by construction.
    """
    n = sorted_reference.size
    if n == 0:
        return np.empty(0, dtype=np.float64)
    quantiles = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    virtual = (n - 1) * quantiles
    below = np.floor(virtual).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    gamma = virtual - below
    low, high = sorted_reference[below], sorted_reference[above]
    # numpy's _lerp: interpolate from the nearer end so results are monotone and exact at ends.
    step = high - low
    interpolated = np.where(gamma >= 0.5, high - step * (1 - gamma), low + step * gamma)
    edges = np.unique(interpolated)
    inner: npt.NDArray[np.float64] = edges[edges < sorted_reference[-1]]
    return inner


def binned_counts_sorted(
    sorted_values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """Counts per bin (``edges[i-1] < x <= edges[i]``) of an already sorted sample."""
    cumulative = np.searchsorted(sorted_values, edges, side="right")
    return np.diff(np.concatenate(([0], cumulative, [sorted_values.size]))).astype(np.int64)


def numeric_profile(
    name: str, values: npt.ArrayLike, n_bins: int = DEFAULT_NUMERIC_BINS
) -> FeatureProfile:
    """Quantile bins of the reference values (ties collapse, so a constant gets one bin)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    missing = int(np.count_nonzero(np.isnan(x)))
    # One sort gives the quantiles and every bin's count (NaN sorts last, out of the way).
    present = np.sort(x)[: x.size - missing]
    if present.size == 0:
        return FeatureProfile(name=name, kind="numerical", counts=[0], missing=missing)
    edges = quantile_edges(present, n_bins)
    return FeatureProfile(
        name=name,
        kind="numerical",
        edges=edges.tolist(),
        counts=binned_counts_sorted(present, edges).tolist(),
        missing=missing,
        mean=float(present.mean()),
        std=float(present.std()),
    )


def _category_frequencies(values: npt.ArrayLike) -> tuple[dict[str, int], int]:
    """How often each category (as text) occurs, and how many values are missing.

    Numbers, booleans and strings are counted natively and only the distinct values become
    text; anything else (mixed objects) goes through the per-value conversion.
    """
    array = np.asarray(values)
    if array.dtype.kind in "biufUS":
        flat = array.ravel()
        missing = 0
        if flat.dtype.kind == "f":
            nan = np.isnan(flat)
            missing = int(np.count_nonzero(nan))
            flat = flat[~nan]
        uniques, counts = np.unique(flat, return_counts=True)
        labels: list[str | None] = _as_category_strings(uniques)
        frequencies: dict[str, int] = {}
        for label, count in zip(labels, counts.tolist(), strict=True):
            if label is not None:
                frequencies[label] = frequencies.get(label, 0) + count
        return frequencies, missing
    frequencies = {}
    missing = 0
    for label in _as_category_strings(array):
        if label is None:
            missing += 1
        else:
            frequencies[label] = frequencies.get(label, 0) + 1
    return frequencies, missing


def categorical_profile(
    name: str, values: npt.ArrayLike, max_categories: int = MAX_CATEGORIES
) -> FeatureProfile:
    """The most frequent categories in a fixed order; the rest share the ``__other__`` bin."""
    frequencies, missing = _category_frequencies(values)
    # Most frequent first, ties by text, so the kept set does not depend on input order.
    kept = sorted(frequencies, key=lambda label: (-frequencies[label], label))[:max_categories]
    categories = sorted(kept)
    counts = [frequencies[c] for c in categories]
    return FeatureProfile(
        name=name,
        kind="categorical",
        categories=categories,
        counts=[*counts, sum(frequencies.values()) - sum(counts)],
        missing=missing,
    )


def build_profile(
    columns: Mapping[str, npt.ArrayLike],
    categorical: Sequence[str] = (),
    prediction: npt.ArrayLike | None = None,
    prediction_kind: Literal["numerical", "categorical"] = "numerical",
    n_bins: int = DEFAULT_NUMERIC_BINS,
) -> Profile:
    """Profile every column; ``categorical`` names the columns binned by category."""
    features = [
        categorical_profile(name, values)
        if name in categorical
        else numeric_profile(name, values, n_bins)
        for name, values in columns.items()
    ]
    rows = len(np.asarray(next(iter(columns.values())))) if columns else 0
    prediction_profile = None
    if prediction is not None:
        prediction_profile = (
            categorical_profile(PREDICTION_FEATURE, prediction)
            if prediction_kind == "categorical"
            else numeric_profile(PREDICTION_FEATURE, prediction, n_bins)
        )
    return Profile(rows=rows, features=features, prediction=prediction_profile)
