"""Delayed labels: match a label to the prediction served under the same request id.

Each worker keeps its recent predictions, bounded by count, bytes and age. A label for an id this worker
never served is forwarded by the HTTP layer to its sibling workers (see ``app.py``), so the
answer does not depend on which worker the feedback request lands on.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


class FeedbackError(ValueError):
    """A label that cannot be compared with its prediction (wrong count or type)."""


OTHER_CLASS = "__other__"
"""The class a label outside the model's classes is counted under (bounds the series count)."""


@dataclass(frozen=True)
class ClassOutcomes:
    """One class's share of a batch of labels: the counts F1 is computed from."""

    role: str
    """How F1 uses this class: ``positive`` / ``negative`` for a two-class model (F1 is the
    positive class's, as the trainer computes it: the second of the sorted classes), ``macro``
    for more classes (F1 is the mean over classes)."""
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0


@dataclass(frozen=True)
class FeedbackScore:
    """How a batch of labels compares with the predictions they refer to."""

    rows: int
    correct: int = 0
    abs_error_sum: float = 0.0
    squared_error_sum: float = 0.0
    classes: dict[str, ClassOutcomes] = field(default_factory=dict)
    """Classifiers: per class (as text), its true positives, false positives, false negatives."""


class IdInUse(Exception):
    """A prediction under an id this worker still holds (awaiting or after its label)."""


class Labelled:
    """What :meth:`RecentPredictions.peek` returns for an id whose label was already taken."""


LABELLED = Labelled()

# Per entry, besides its id and value: the OrderedDict slot and the (time, value, size) tuple.
_ENTRY_OVERHEAD = 160


def _size_of(request_id: str, kept: Any) -> int:
    value = kept.nbytes + 112 if isinstance(kept, np.ndarray) else sys.getsizeof(kept)
    return _ENTRY_OVERHEAD + sys.getsizeof(request_id) + value


class RecentPredictions:
    """Request id -> the predictions sent back for it, bounded by count, bytes and age.

    The oldest entries are forgotten first once there are more than ``capacity`` or they
    take more than ``max_bytes`` (their arrays, ids and bookkeeping, as estimated by
    :func:`_size_of`); an entry older than ``max_age_seconds`` takes no label. A labelled
    entry keeps a small tombstone, so a second label for the same id is told apart from an
    unknown id (409, not a silent overwrite).

    A one-row prediction is kept as a plain Python scalar, not as a view into its batch's
    array: about 140 instead of 330 bytes per entry.
    """

    def __init__(
        self,
        capacity: int,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_age = max_age_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, request_id: str) -> bool:
        """Whether ``request_id`` names a prediction (or a label) this worker still keeps."""
        self._expire()
        return request_id in self._entries

    def remember(self, request_id: str, predictions: Array) -> None:
        """Keep ``predictions`` for ``request_id``; the oldest go beyond the bounds.

        Raises :class:`IdInUse` for an id already kept: an id names one prediction.
        """
        if self.capacity <= 0 or self.max_bytes <= 0:
            return
        self._expire()
        if request_id in self._entries:
            raise IdInUse(request_id)
        one_value = predictions.ndim == 1 and predictions.shape[0] == 1
        kept = predictions.item() if one_value else predictions
        size = _size_of(request_id, kept)
        if size > self.max_bytes:
            return  # larger than the whole budget: it cannot be kept without the rest
        self._entries[request_id] = (self._clock(), kept, size)
        self.bytes += size
        while len(self._entries) > self.capacity or self.bytes > self.max_bytes:
            self._forget_oldest()

    def peek(self, request_id: str) -> Array | Labelled | None:
        """The predictions of ``request_id``, :data:`LABELLED`, or None if unknown/too old."""
        self._expire()
        entry = self._entries.get(request_id)
        if entry is None:
            return None
        if isinstance(entry[1], Labelled):
            return LABELLED
        predictions: Array = _as_array(entry[1])
        return predictions

    def mark_labelled(self, request_id: str) -> None:
        """Its label was taken: drop the predictions, keep a tombstone in their place."""
        entry = self._entries.get(request_id)
        if entry is None:
            return
        size = _size_of(request_id, None)
        self.bytes += size - entry[2]
        self._entries[request_id] = (entry[0], LABELLED, size)

    def _forget_oldest(self) -> None:
        _, (_, _, size) = self._entries.popitem(last=False)
        self.bytes -= size

    def _expire(self) -> None:
        limit = self._clock() - self.max_age
        entries = self._entries
        while entries and next(iter(entries.values()))[0] < limit:
            self._forget_oldest()


def _as_array(kept: Any) -> Array:
    if isinstance(kept, np.ndarray):
        return kept
    return np.asarray([kept])


def class_roles(classes: Array | None) -> dict[str, str]:
    """The F1 role of each of the model's classes (as text): with two classes the second of
    the sorted classes is ``positive`` (as the trainer's f1), else every class is ``macro``."""
    if classes is None:
        return {}
    names = _canonical(np.asarray(classes))
    if len(names) == 2:
        return {names[0]: "negative", names[1]: "positive"}
    return dict.fromkeys(names, "macro")


def score(
    predictions: Array, labels: list[Any], task: str, roles: dict[str, str] | None = None
) -> FeedbackScore:
    """Compare labels with predictions: accuracy and per-class outcomes for classifiers,
    errors for regressors. ``roles`` (:func:`class_roles`) are the model's classes; a label
    outside them is counted as :data:`OTHER_CLASS`. Without roles, every class seen is
    ``macro``."""
    if len(labels) != predictions.shape[0]:
        raise FeedbackError(
            f"labels: got {len(labels)} labels for a request that predicted "
            f"{predictions.shape[0]} rows; send one label per row, in request order"
        )
    if task == "classification":
        expected = np.asarray(labels, dtype=object)
        served = predictions.astype(object)
        # Compare as text so the JSON label 1 and the class 1 (or "1") are the same class.
        pairs = list(zip(_canonical(served), _canonical(expected), strict=True))
        return FeedbackScore(
            rows=len(labels),
            correct=sum(a == b for a, b in pairs),
            classes=_class_outcomes(pairs, roles),
        )
    try:
        truth = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FeedbackError(f"labels: a regression label must be a number ({exc})") from exc
    error = predictions.astype(np.float64) - truth
    return FeedbackScore(
        rows=len(labels),
        abs_error_sum=float(np.abs(error).sum()),
        squared_error_sum=float(np.square(error).sum()),
    )


def _class_outcomes(
    pairs: list[tuple[str, str]], roles: dict[str, str] | None
) -> dict[str, ClassOutcomes]:
    """(predicted, true) class pairs as true/false positives and false negatives per class."""
    counts: dict[str, list[int]] = {}
    for predicted, truth in pairs:
        if roles:
            predicted = predicted if predicted in roles else OTHER_CLASS
            truth = truth if truth in roles else OTHER_CLASS
        if predicted == truth:
            counts.setdefault(truth, [0, 0, 0])[0] += 1
        else:
            counts.setdefault(predicted, [0, 0, 0])[1] += 1
            counts.setdefault(truth, [0, 0, 0])[2] += 1
    default_role = "negative" if roles and "positive" in roles.values() else "macro"
    return {
        name: ClassOutcomes((roles or {}).get(name, default_role), tp, fp, fn)
        for name, (tp, fp, fn) in counts.items()
    }


def _canonical(values: Array) -> list[str]:
    out = []
    for v in values.tolist():
        if isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out
