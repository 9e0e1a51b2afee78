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
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


class FeedbackError(ValueError):
    """A label that cannot be compared with its prediction (wrong count or type)."""


@dataclass(frozen=True)
class FeedbackScore:
    """How a batch of labels compares with the predictions they refer to."""

    rows: int
    correct: int = 0
    abs_error_sum: float = 0.0
    squared_error_sum: float = 0.0


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


def score(predictions: Array, labels: list[Any], task: str) -> FeedbackScore:
    """Compare labels with predictions: accuracy for classifiers, errors for regressors."""
    if len(labels) != predictions.shape[0]:
        raise FeedbackError(
            f"labels: got {len(labels)} labels for a request that predicted "
            f"{predictions.shape[0]} rows; send one label per row, in request order"
        )
    if task == "classification":
        expected = np.asarray(labels, dtype=object)
        served = predictions.astype(object)
        # Compare as text so the JSON label 1 and the class 1 (or "1") are the same class.
        correct = sum(
            str(a) == str(b) for a, b in zip(_canonical(served), _canonical(expected), strict=True)
        )
        return FeedbackScore(rows=len(labels), correct=int(correct))
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


def _canonical(values: Array) -> list[str]:
    out = []
    for v in values.tolist():
        if isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out
