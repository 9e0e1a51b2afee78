"""Live drift counters: every served row counted into the reference profile's bins.

The counting is vectorised: one comparison against a padded edge matrix gives every
numerical feature's bin at once, one ``np.bincount`` turns all of them into counts. It is
also deferred: ``observe`` only keeps a reference to the batch, and the rows are counted in
bulk when the counts are read (at scrape time and on the flush timer) or when 1024 rows are
pending. So the request path pays for a list append, and Prometheus sees one increment per
bin per flush instead of hundreds per request.

The bin of a value is exactly ``FeatureProfile.bin_index`` (tests hold the two equal); a
missing value (NaN) is counted in the extra bin labelled ``missing``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kubeloop.drift.profile import PREDICTION_FEATURE, FeatureProfile, Profile

MISSING_BIN = "missing"
PENDING_ROWS_LIMIT = 1024
Array = npt.NDArray[Any]


def _canonical_category(value: float) -> str:
    # The profile compares categories as text: 1.0 from JSON is the category "1".
    return str(int(value)) if value.is_integer() else str(value)


def _numeric_category_values(feature: FeatureProfile) -> Array:
    """For each category, the number whose canonical text it is (NaN when none)."""
    values = np.full(len(feature.categories), np.nan)
    for i, category in enumerate(feature.categories):
        try:
            number = float(category)
        except ValueError:
            continue
        if (math.isfinite(number) and _canonical_category(number) == category) or (
            math.isinf(number) and str(number) == category
        ):
            values[i] = number
    return values


@dataclass(frozen=True)
class _Slots:
    """Where each feature's bins live in the flat count array."""

    names: list[str]
    labels: list[list[str]]  # per feature: bin labels then "missing"
    offsets: Array  # per feature: index of its first bin in the flat array

    @property
    def total(self) -> int:
        return int(self.offsets[-1] + len(self.labels[-1])) if self.labels else 0


class DriftCounts:
    """Accumulates per-bin counts of input features and predictions."""

    def __init__(
        self,
        profile: Profile,
        feature_names: list[str],
        classes: Array | None = None,
    ) -> None:
        column_of = {name: i for i, name in enumerate(feature_names)}
        tracked = [f for f in profile.features if f.name in column_of]
        self.untracked = [f.name for f in profile.features if f.name not in column_of]
        self._prediction = profile.prediction
        features = [*tracked, *([profile.prediction] if profile.prediction else [])]
        labels = [[*f.bin_labels, MISSING_BIN] for f in features]
        sizes = np.array([len(x) for x in labels], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.slots = _Slots([f.name for f in features], labels, offsets)
        self.counts = np.zeros(self.slots.total, dtype=np.int64)

        numerical = [(i, f) for i, f in enumerate(tracked) if f.kind == "numerical"]
        self._num_columns = np.array([column_of[f.name] for _, f in numerical], dtype=np.int64)
        self._num_offsets = offsets[[i for i, _ in numerical]] if numerical else offsets[:0]
        self._num_missing = self._num_offsets + np.array(
            [len(f.edges) + 1 for _, f in numerical], dtype=np.int64
        )
        width = max((len(f.edges) for _, f in numerical), default=0)
        # Padding with +inf never counts as "edge < x", so short features keep their bins.
        self._edges = np.full((len(numerical), width), np.inf)
        for row, (_, f) in enumerate(numerical):
            self._edges[row, : len(f.edges)] = f.edges

        self._categorical = [
            (column_of[f.name], int(offsets[i]), f, _numeric_category_values(f))
            for i, f in enumerate(tracked)
            if f.kind == "categorical"
        ]
        self._pending: list[tuple[Array, Array]] = []
        self._pending_rows = 0
        self._count_prediction = self._prediction_counter(
            classes, int(offsets[-1]) if features else 0
        )

    # -- counting ---------------------------------------------------------------------------

    def observe(self, rows: Array, predictions: Array) -> None:
        """Remember a batch and its ``predictions``.

        ``rows`` is n x features, float64, or an object matrix for a model that takes text
        (floats in numeric columns, str or NaN in text columns).
        """
        self._pending.append((rows, predictions))
        self._pending_rows += rows.shape[0]
        if self._pending_rows >= PENDING_ROWS_LIMIT:
            self._count_pending()

    def _count_pending(self) -> None:
        if not self._pending:
            return
        if len(self._pending) == 1:
            rows, predictions = self._pending[0]
        else:
            rows = np.concatenate([r for r, _ in self._pending])
            predictions = np.concatenate([p for _, p in self._pending])
        self._pending, self._pending_rows = [], 0
        self._count(rows, predictions)

    def _count(self, rows: Array, predictions: Array) -> None:
        if self._edges.shape[0]:
            values = rows[:, self._num_columns]
            if values.dtype.kind == "O":  # a model that takes text: numeric columns hold floats
                values = values.astype(np.float64)
            idx = (self._edges[None, :, :] < values[:, :, None]).sum(axis=2)
            flat = np.where(np.isnan(values), self._num_missing, self._num_offsets + idx)
            self.counts += np.bincount(flat.ravel(), minlength=self.counts.size)
        for column, offset, feature, numbers in self._categorical:
            self._add(offset, _categorical_bins(feature, numbers, rows[:, column]))
        if self._count_prediction is not None:
            self._count_prediction(predictions)

    def _add(self, offset: int, bins: Array) -> None:
        self.counts[offset : offset + bins.size] += bins

    def _prediction_counter(
        self, classes: Array | None, offset: int
    ) -> Callable[[Array], None] | None:
        feature = self._prediction
        if feature is None:
            return None
        size = len(feature.bin_labels) + 1
        if feature.kind == "categorical" and classes is not None:
            # Predictions are always one of classes_: map class position -> bin once.
            class_bins = np.where((b := feature.bin_index(classes)) < 0, size - 1, b).astype(
                np.int64
            )
            sorted_classes = np.all(classes[:-1] <= classes[1:]) if classes.size > 1 else True

            def count_classes(predictions: Array) -> None:
                if sorted_classes:
                    positions = np.searchsorted(classes, predictions)
                else:
                    positions = np.array([np.flatnonzero(classes == p)[0] for p in predictions])
                self._add(offset, np.bincount(class_bins[positions], minlength=size))

            return count_classes
        if feature.kind == "categorical":
            numbers = _numeric_category_values(feature)

            def count_categories(predictions: Array) -> None:
                self._add(offset, _categorical_bins(feature, numbers, predictions))

            return count_categories
        edges = np.asarray(feature.edges, dtype=np.float64)

        def count_numbers(predictions: Array) -> None:
            values = np.asarray(predictions, dtype=np.float64)
            idx = np.searchsorted(edges, values, side="left")
            idx = np.where(np.isnan(values), size - 1, idx)
            self._add(offset, np.bincount(idx, minlength=size))

        return count_numbers

    # -- reading ----------------------------------------------------------------------------

    def take(self) -> list[tuple[str, str, int]]:
        """(feature, bin, count) for every bin counted since the last call; resets them."""
        self._count_pending()
        delta, self.counts = self.counts, np.zeros_like(self.counts)
        out: list[tuple[str, str, int]] = []
        for name, labels, offset in zip(
            self.slots.names, self.slots.labels, self.slots.offsets.tolist(), strict=True
        ):
            for i in np.flatnonzero(delta[offset : offset + len(labels)]).tolist():
                out.append((name, labels[i], int(delta[offset + i])))
        return out

    def series(self) -> list[tuple[str, str]]:
        """Every (feature, bin) this counter exports, so all series exist from the start."""
        return [
            (name, label)
            for name, labels in zip(self.slots.names, self.slots.labels, strict=True)
            for label in labels
        ]


def _categorical_bins(feature: FeatureProfile, numbers: Array, values: Array) -> Array:
    """Counts over a categorical feature's bins (+ missing) for one batch of values."""
    size = len(feature.categories) + 2
    if values.dtype.kind == "f":
        matches = values[:, None] == numbers[None, :]
        found = matches.any(axis=1)
        idx = np.where(found, matches.argmax(axis=1), len(feature.categories))
        idx = np.where(np.isnan(values), size - 1, idx)
    else:
        idx = feature.bin_index(values)
        idx = np.where(idx < 0, size - 1, idx)
    return np.bincount(idx, minlength=size)


__all__ = ["MISSING_BIN", "PREDICTION_FEATURE", "DriftCounts"]
