"""Drift statistics: one function per test, from samples or from binned counts.

Every function is pure and vectorised (numpy; scipy only for distribution tails), so the
operator, the model server and the ``kubeloop drift`` Job share one implementation.

Two inputs, one meaning:

* **samples** — raw values. Numerical samples are sorted once (:func:`sorted_sample`, NaN
  dropped) and every numerical test then works on the sorted arrays: KS and Wasserstein from
  merges by binary search, PSI and Jensen-Shannon from bin counts read off the sorted arrays
  with a handful of binary searches (no per-row pass at all).
* **counts** — the number of values per bin of a reference profile
  (:class:`kubeloop.drift.profile.FeatureProfile`), the reference's own counts on one side and
  the live or dataset counts on the other. This is what the model servers export.

Conventions (each checked against scipy in ``tests/unit/test_drift_stats.py``):

* KS (two-sided): the statistic is exactly ``scipy.stats.ks_2samp``'s; the p-value is Smirnov's
  asymptotic distribution ``kstwo.sf(D, round(n*m/(n+m)))``, i.e. ``ks_2samp(method="asymp")``.
  scipy's default ``method="auto"`` switches to an exact p-value when both samples have at most
  10,000 values; that exact p-value is slightly smaller than the asymptotic one, so ours is the
  conservative side of it. From counts, the statistic is the largest CDF difference over bin
  boundaries (KS of the data with every value moved to its bin), with the same p-value rule.
* PSI: ``sum (c - r)*ln(c / r)`` over bin proportions, where proportions below
  ``PSI_EPSILON = 1e-4`` are raised to it so an empty bin costs a finite, large amount instead
  of infinity (the convention Evidently and most PSI write-ups use).
* Jensen-Shannon: the *distance* (square root of the divergence) in base 2, as
  ``scipy.spatial.distance.jensenshannon(p, q, base=2)``; it lies in [0, 1].
* Wasserstein-1: ``scipy.stats.wasserstein_distance``; normalised by the reference's
  population standard deviation (ddof 0, as the profile stores it).
* Chi-squared: homogeneity of the 2xk table (reference, current) as
  ``scipy.stats.chi2_contingency`` (Yates' correction when it has one degree of freedom), the
  default, because both sides are samples; or goodness of fit of the current counts to the
  reference proportions as ``scipy.stats.chisquare``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import special

from kubeloop.drift.profile import DEFAULT_NUMERIC_BINS, binned_counts_sorted, quantile_edges

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PSI_EPSILON = 1e-4
"""Smallest bin proportion PSI uses; an empty bin counts as this share."""

ChiSquaredMethod = Literal["contingency", "goodness_of_fit"]


@dataclass(frozen=True)
class StatResult:
    """One test's outcome: the statistic and, for hypothesis tests, its p-value."""

    statistic: float
    p_value: float | None = None


# --------------------------------------------------------------------------------------------
# Preparing inputs


class Workspace:
    """Scratch arrays reused from one column to the next.

    A report over many large columns would otherwise allocate (and page-fault in) fresh
    megabytes for every sort and every intermediate; with a workspace each buffer is allocated
    once, at the largest size seen. Not thread-safe: one workspace per thread.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, npt.NDArray[Any]] = {}
        self._shares: dict[tuple[int, int], FloatArray] = {}

    def buffer(self, name: str, size: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
        """A scratch array of ``size`` elements (contents undefined)."""
        current = self._buffers.get(name)
        if current is None or current.size < size or current.dtype != dtype:
            current = np.empty(max(size, 1), dtype=dtype)
            self._buffers[name] = current
        return current[:size]

    def shares(self, n: int, start: int) -> FloatArray:
        """``arange(start, start + n) / n``: the CDF steps of ``n`` distinct sorted values."""
        key = (n, start)
        if key not in self._shares:
            if len(self._shares) > 8:
                self._shares.clear()
            self._shares[key] = np.arange(start, start + n) / n
        return self._shares[key]


def sorted_sample(
    values: npt.ArrayLike, *, workspace: Workspace | None = None, slot: str = "sorted"
) -> FloatArray:
    """Numerical values as sorted float64 with missing values (NaN) removed.

    Sorting is the one O(n log n) step of every numerical test; sort once, then pass the result
    with ``assume_sorted=True`` to as many tests as needed. With a ``workspace`` the result is a
    view of its ``slot`` buffer, valid until that slot is used again.
    """
    x = np.asarray(values)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-dimensional array of values, got shape {x.shape}")
    if workspace is None:
        ordered = np.sort(x.astype(np.float64, copy=False))
    else:
        ordered = workspace.buffer(slot, x.size, np.float64)
        np.copyto(ordered, x, casting="unsafe")
        ordered.sort()
    # np.sort puts NaN last, so the present values are a prefix found by one binary search.
    present = int(np.searchsorted(ordered, np.nan, side="left"))
    result: FloatArray = ordered[:present]
    return result


def _prepared(values: npt.ArrayLike, assume_sorted: bool, role: str) -> FloatArray:
    sample = np.asarray(values, dtype=np.float64) if assume_sorted else sorted_sample(values)
    if sample.size == 0:
        raise ValueError(f"the {role} sample has no values (all missing or empty)")
    return sample


def _counts(values: npt.ArrayLike, role: str) -> IntArray:
    counts = np.asarray(values)
    if counts.ndim != 1:
        raise ValueError(f"{role} counts must be a flat list, got shape {counts.shape}")
    if counts.size and (not np.all(np.isfinite(counts)) or np.any(counts < 0)):
        raise ValueError(f"{role} counts must be finite and non-negative")
    return counts.astype(np.int64)


def _paired_counts(
    reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike
) -> tuple[IntArray, IntArray]:
    reference = _counts(reference_counts, "reference")
    current = _counts(current_counts, "current")
    if reference.shape != current.shape:
        raise ValueError(
            f"reference has {reference.size} bins but current has {current.size}; "
            "count the current values over the reference profile's bins"
        )
    if reference.sum() == 0:
        raise ValueError("the reference counts are all zero")
    if current.sum() == 0:
        raise ValueError("the current counts are all zero")
    return reference, current


# --------------------------------------------------------------------------------------------
# Kolmogorov-Smirnov


def _scipy_stats() -> Any:
    """scipy.stats, imported on first use: it takes a second or more to import, and the model
    server and the operator import this module whether or not they test p-values."""
    from scipy import stats

    return stats


def _ks_p_value(statistic: float, n1: int, n2: int) -> float:
    """Smirnov's asymptotic two-sided p-value, exactly as ks_2samp(method='asymp')."""
    m, n = sorted([float(n1), float(n2)], reverse=True)
    effective_n = np.round(m * n / (m + n))
    if effective_n < 1:
        # One value on each side: the distribution is undefined and there is no evidence at all
        # (scipy returns NaN here; the exact p-value is 1).
        return 1.0
    p = float(_scipy_stats().kstwo.sf(statistic, effective_n))
    return min(max(p, 0.0), 1.0)


KS_BLOCK = 64
"""Current values per block in the KS search; only blocks that can hold the maximum are searched."""


def ks_from_samples(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    assume_sorted: bool = False,
    workspace: Workspace | None = None,
) -> StatResult:
    """Two-sample two-sided Kolmogorov-Smirnov test from raw values.

    The statistic equals ``scipy.stats.ks_2samp``'s bit for bit; the p-value is the
    asymptotic one (see the module docstring). With ``assume_sorted`` the inputs must come
    from :func:`sorted_sample`.

    Cost after sorting: F_a - F_b is evaluated at every ``KS_BLOCK``-th current value first;
    exact integer bounds then rule out every block that cannot hold the largest difference, and
    only the rest (typically 1-2 % of a large sample) is searched value by value. Samples are
    never merged or fully searched, so for large samples the sort is nearly all the work.
    """
    a = _prepared(reference, assume_sorted, "reference")
    b = _prepared(current, assume_sorted, "current")
    ws = workspace or Workspace()
    n1, n2 = a.size, b.size
    distinct = ws.buffer("ks_distinct", n2 - 1, np.bool_)
    np.not_equal(b[1:], b[:-1], out=distinct)
    if not distinct.all():
        return _ks_with_ties_in_current(a, b)
    # From here every current value is distinct: at b[j], F_b = (j+1)/n2 and just below it j/n2.
    if n2 >= 16 * KS_BLOCK and n1 * n2 < 2**62:
        candidates = _ks_blocks_to_search(a, b)
        left, right = _reference_counts_at(a, b[candidates])
        at_values = right / n1 - (candidates + 1) / n2
        below_values = left / n1 - candidates / n2
    else:
        left, right = _reference_counts_at(a, b)
        at_values = right / n1 - ws.shares(n2, 1)
        below_values = left / n1 - ws.shares(n2, 0)
    # F_a - F_b at each current value, and just below it, where F_a has taken in every smaller
    # reference value while F_b is still at the previous current value. Between two current
    # values F_b is flat, so these two sets hold the extremes over all data points.
    max_s = max(float(at_values.max()), float(below_values.max()))
    min_s = min(max(-float(at_values.min()), 0.0), 1.0)
    statistic = min_s if min_s > max_s else max_s
    return StatResult(statistic, _ks_p_value(statistic, n1, n2))


def _reference_counts_at(a: FloatArray, values: FloatArray) -> tuple[IntArray, IntArray]:
    """How many reference values lie below each value, and at or below it."""
    left = np.searchsorted(a, values, side="left")
    right = left.copy()
    # Only values also present in the reference need the right-hand search (ties across samples).
    tied = np.take(a, left, mode="clip") == values
    if tied.any():
        right[tied] = np.searchsorted(a, values[tied], side="right")
    return left, right


def _ks_blocks_to_search(a: FloatArray, b: FloatArray) -> IntArray:
    """Indices of the current values whose block may hold the KS maximum (b distinct, sorted).

    For block k of current indices s..e (next block starting at s'), with L(j) the count of
    reference values below b[j] (non-decreasing in j) and R(j) the count at or below:

    * F_a - F_b at or just below b[j] is at most L(s')/n1 - s/n2, since R(e) <= L(s') when
      b[e] < b[s'] (the last block uses n1);
    * F_b - F_a at b[j] is at most (e+1)/n2 - L(s)/n1.

    The block-start values themselves are candidates, which gives lower bounds on both maxima.
    A block is searched unless both its upper bounds are below those lower bounds; comparisons
    are on integers scaled by n1*n2, so no rounding can drop a block that holds the maximum.
    """
    n1, n2 = a.size, b.size
    starts = np.arange(0, n2, KS_BLOCK, dtype=np.int64)
    left, right = _reference_counts_at(a, b[starts])
    next_left = np.append(left[1:], n1)
    ends = np.minimum(starts + KS_BLOCK, n2) - 1
    above_bound = next_left * n2 - starts * n1
    below_bound = (ends + 1) * n1 - left * n2
    above_found = (left * n2 - starts * n1).max()
    below_found = ((starts + 1) * n1 - right * n2).max()
    blocks = np.flatnonzero((above_bound >= above_found) | (below_bound >= below_found))
    indices = (starts[blocks, None] + np.arange(KS_BLOCK)).ravel()
    searched: IntArray = indices[indices < n2]
    return searched


def _ks_with_ties_in_current(a: FloatArray, b: FloatArray) -> StatResult:
    """KS when the current sample repeats values: evaluate at the last copy of each value."""
    n1, n2 = a.size, b.size
    last_of_run = np.flatnonzero(b[1:] != b[:-1])
    ends = np.append(last_of_run, n2 - 1)
    values = b[ends]
    current_cum = ends + 1
    left = np.searchsorted(a, values, side="left")
    right = left.copy()
    # Only values also present in the reference need the right-hand search (ties across samples).
    probe = np.minimum(left, n1 - 1)
    tied = (left < n1) & (a[probe] == values)
    if tied.any():
        right[tied] = np.searchsorted(a, values[tied], side="right")
    at_values = right / n1 - current_cum / n2
    previous_cum = np.concatenate(([0], current_cum[:-1]))
    below_values = left / n1 - previous_cum / n2
    max_s = max(float(at_values.max()), float(below_values.max()))
    min_s = min(max(-float(at_values.min()), 0.0), 1.0)
    statistic = min_s if min_s > max_s else max_s
    return StatResult(statistic, _ks_p_value(statistic, n1, n2))


def ks_from_counts(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> StatResult:
    """KS test from counts over the same ordered bins.

    Equals ``ks_2samp(method="asymp")`` of the data with every value replaced by its bin: the
    largest difference of the cumulative shares, with the effective size ``n*m/(n+m)`` of the
    real counts. Binning can only hide differences inside a bin, so the statistic is at most the
    exact one.
    """
    reference, current = _paired_counts(reference_counts, current_counts)
    n1, n2 = int(reference.sum()), int(current.sum())
    differences = np.cumsum(reference) / n1 - np.cumsum(current) / n2
    max_s = max(float(differences.max()), 0.0)
    min_s = min(max(-float(differences.min()), 0.0), 1.0)
    statistic = min_s if min_s > max_s else max_s
    return StatResult(statistic, _ks_p_value(statistic, n1, n2))


# --------------------------------------------------------------------------------------------
# PSI and Jensen-Shannon (from counts; from samples through the reference's bins)


def psi_from_counts(
    reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike, epsilon: float = PSI_EPSILON
) -> StatResult:
    """Population stability index over shared bins; proportions below ``epsilon`` count as it."""
    reference, current = _paired_counts(reference_counts, current_counts)
    expected = np.maximum(reference / reference.sum(), epsilon)
    actual = np.maximum(current / current.sum(), epsilon)
    return StatResult(float(np.sum((actual - expected) * np.log(actual / expected))))


def jensenshannon_from_counts(
    reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike
) -> StatResult:
    """Jensen-Shannon distance in base 2 (0 = same, 1 = disjoint) over shared bins."""
    reference, current = _paired_counts(reference_counts, current_counts)
    p = reference / reference.sum()
    q = current / current.sum()
    middle = (p + q) / 2.0
    divergence = np.sum(special.rel_entr(p, middle)) + np.sum(special.rel_entr(q, middle))
    divergence /= np.log(2.0)
    return StatResult(float(np.sqrt(divergence / 2.0)))


def numeric_bin_counts(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    n_bins: int = DEFAULT_NUMERIC_BINS,
    assume_sorted: bool = False,
) -> tuple[IntArray, IntArray]:
    """Counts of both samples over the reference's quantile bins (the profile's binning rule)."""
    a = _prepared(reference, assume_sorted, "reference")
    b = _prepared(current, assume_sorted, "current")
    edges = quantile_edges(a, n_bins)
    return binned_counts_sorted(a, edges), binned_counts_sorted(b, edges)


def psi_from_samples(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    n_bins: int = DEFAULT_NUMERIC_BINS,
    epsilon: float = PSI_EPSILON,
    assume_sorted: bool = False,
) -> StatResult:
    """PSI of numerical samples over the reference's quantile bins (same bins as the profile)."""
    counts = numeric_bin_counts(reference, current, n_bins=n_bins, assume_sorted=assume_sorted)
    return psi_from_counts(*counts, epsilon=epsilon)


def jensenshannon_from_samples(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    n_bins: int = DEFAULT_NUMERIC_BINS,
    assume_sorted: bool = False,
) -> StatResult:
    """Jensen-Shannon distance of numerical samples over the reference's quantile bins."""
    counts = numeric_bin_counts(reference, current, n_bins=n_bins, assume_sorted=assume_sorted)
    return jensenshannon_from_counts(*counts)


# --------------------------------------------------------------------------------------------
# Wasserstein-1


def wasserstein_from_samples(
    reference: npt.ArrayLike, current: npt.ArrayLike, *, assume_sorted: bool = False
) -> StatResult:
    """Earth mover's distance, equal to ``scipy.stats.wasserstein_distance``.

    The area between the two empirical CDFs over the merged sorted samples. The merge costs
    one binary search: the current value ``j`` lands at merged position ``j + (reference values
    below it)``, and the reference values fill the remaining positions in order.
    """
    a = _prepared(reference, assume_sorted, "reference")
    b = _prepared(current, assume_sorted, "current")
    n1, n2 = a.size, b.size
    from_current = np.zeros(n1 + n2, dtype=bool)
    from_current[np.arange(n2) + np.searchsorted(a, b, side="left")] = True
    merged = np.empty(n1 + n2, dtype=np.float64)
    merged[from_current] = b
    merged[~from_current] = a
    current_cum = np.cumsum(from_current)
    reference_cum = np.arange(1, n1 + n2 + 1) - current_cum
    # Inside a run of equal values the step is zero, so only each run's last position (where the
    # cumulative counts are the right-continuous CDFs) contributes.
    gaps = np.abs(reference_cum[:-1] / n1 - current_cum[:-1] / n2)
    return StatResult(float(np.dot(gaps, np.diff(merged))))


def bin_points(edges: Sequence[float] | FloatArray) -> FloatArray:
    """Where each profile bin's values are placed for the binned Wasserstein distance.

    Inner bins sit at their midpoints; the two open-ended outer bins at their inner edge (the
    profile keeps no minimum or maximum). A single-bin profile has one point.
    """
    cuts = np.asarray(edges, dtype=np.float64)
    if cuts.size == 0:
        return np.zeros(1)
    return np.concatenate(([cuts[0]], (cuts[:-1] + cuts[1:]) / 2.0, [cuts[-1]]))


def wasserstein_from_counts(
    edges: Sequence[float] | FloatArray,
    reference_counts: npt.ArrayLike,
    current_counts: npt.ArrayLike,
) -> StatResult:
    """Wasserstein-1 between the two binned distributions, with bins at :func:`bin_points`.

    Equals ``scipy.stats.wasserstein_distance(points, points, reference_counts,
    current_counts)``. Mass moved inside a bin or beyond the outer edges is not seen, so it
    underestimates the exact distance (use the exact mode when the data is at hand).
    """
    reference, current = _paired_counts(reference_counts, current_counts)
    points = bin_points(edges)
    if points.size != reference.size:
        raise ValueError(
            f"{len(points) - 1} edges describe {points.size} bins, got {reference.size} counts"
        )
    differences = np.cumsum(reference) / reference.sum() - np.cumsum(current) / current.sum()
    return StatResult(float(np.dot(np.abs(differences[:-1]), np.diff(points))))


def normalised_wasserstein(distance: float, reference_std: float | None) -> float:
    """Wasserstein distance in units of the reference's standard deviation.

    A constant reference (std 0) gives 0 when nothing moved and infinity otherwise, so any
    change of a constant feature is drift.
    """
    if reference_std is None or not math.isfinite(reference_std):
        raise ValueError("the reference standard deviation is unknown; the profile lacks 'std'")
    if reference_std == 0.0:
        return 0.0 if distance == 0.0 else math.inf
    return distance / reference_std


# --------------------------------------------------------------------------------------------
# Chi-squared (categorical counts)


def chi2_from_counts(
    reference_counts: npt.ArrayLike,
    current_counts: npt.ArrayLike,
    method: ChiSquaredMethod = "contingency",
    *,
    correction: bool = True,
) -> StatResult:
    """Chi-squared test of category counts against the reference.

    ``contingency`` (default): homogeneity of the 2xk table, as
    ``scipy.stats.chi2_contingency(table, correction=correction)``; categories empty on both
    sides are left out (scipy refuses a zero expected frequency). ``goodness_of_fit``: the
    current counts against the reference proportions, as ``scipy.stats.chisquare(current,
    reference_share * n_current)``; a category the reference never saw gives an infinite
    statistic and p = 0.
    """
    reference, current = _paired_counts(reference_counts, current_counts)
    seen = (reference + current) > 0
    reference, current = reference[seen], current[seen]
    if method == "goodness_of_fit":
        expected = reference / reference.sum() * current.sum()
        with np.errstate(divide="ignore"):
            terms = (current - expected) ** 2 / expected
        statistic = float(terms.sum())
        dof = reference.size - 1
    elif method == "contingency":
        observed = np.stack((reference, current)).astype(np.float64)
        dof = reference.size - 1
        if dof == 0:
            return StatResult(0.0, 1.0)
        expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
        if dof == 1 and correction:
            # Yates: move each cell half a unit towards its expectation, never past it.
            gap = expected - observed
            observed = observed + np.sign(gap) * np.minimum(0.5, np.abs(gap))
        statistic = float(((observed - expected) ** 2 / expected).sum())
    else:
        raise ValueError(
            f"unknown chi-squared method {method!r}; use contingency or goodness_of_fit"
        )
    if dof == 0:
        return StatResult(statistic, 1.0 if statistic == 0.0 else 0.0)
    p = float(_scipy_stats().chi2.sf(statistic, dof))
    return StatResult(statistic, p)


def category_counts(
    reference: npt.ArrayLike, current: npt.ArrayLike
) -> tuple[list[str], IntArray, IntArray]:
    """Counts of both samples over the union of their categories, in sorted order.

    Missing values (None, NaN) are not counted. Small non-negative integer codes are counted
    with one bincount; anything else with one sort (np.unique).
    """
    a = np.asarray(reference)
    b = np.asarray(current)
    if a.dtype.kind in "iub" and b.dtype.kind in "iub" and a.size and b.size:
        low = min(int(a.min()), int(b.min()))
        high = max(int(a.max()), int(b.max()))
        if high - low <= 1_000_000:
            ref_counts = np.bincount(a.astype(np.int64) - low, minlength=high - low + 1)
            cur_counts = np.bincount(b.astype(np.int64) - low, minlength=high - low + 1)
            used = np.flatnonzero(ref_counts + cur_counts)
            labels = [str(low + int(i)) for i in used]
            return labels, ref_counts[used].astype(np.int64), cur_counts[used].astype(np.int64)
    ref_labels, ref_inverse = _labels(a)
    cur_labels, cur_inverse = _labels(b)
    union = np.union1d(ref_labels, cur_labels)
    ref_counts = np.zeros(union.size, dtype=np.int64)
    cur_counts = np.zeros(union.size, dtype=np.int64)
    np.add.at(ref_counts, np.searchsorted(union, ref_labels), ref_inverse)
    np.add.at(cur_counts, np.searchsorted(union, cur_labels), cur_inverse)
    return [str(v) for v in union.tolist()], ref_counts, cur_counts


def _labels(values: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.str_], IntArray]:
    """Distinct labels (as text) of one sample and how often each occurs."""
    if values.dtype.kind == "f":
        present = values[~np.isnan(values)]
        # 1.0 and 1 name the same category, as in the profile's categorical bins.
        whole = present == np.round(present)
        text = np.where(
            whole, np.where(whole, present, 0).astype(np.int64).astype(str), present.astype(str)
        )
    elif values.dtype.kind in "iub":
        text = values.astype(np.int64).astype(str)
    elif values.dtype.kind in "US":
        text = values.astype(str)
    else:
        flat = values.ravel()
        # Elementwise comparisons run in C: NaN is the one value unequal to itself.
        present = (flat == flat) & (flat != np.array(None, dtype=object))
        text = flat[present].astype(str)
    labels, counts = np.unique(text, return_counts=True)
    return labels, counts.astype(np.int64)
