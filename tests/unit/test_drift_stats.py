"""Each drift statistic against scipy (or, for PSI, a plain computation written out here)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats as scipy_stats
from scipy.spatial import distance as scipy_distance

from kubeloop.drift import stats
from kubeloop.drift.profile import (
    FeatureProfile,
    categorical_profile,
    numeric_profile,
    quantile_edges,
)

TOLERANCE = 1e-9

# (reference size, current size, rounding decimals or None): rounding makes ties within and
# across samples, the case where KS implementations usually go wrong.
SAMPLE_SHAPES = [
    (2, 5, None),
    (10, 7, None),
    (50, 50, 0),
    (100, 150, None),
    (1000, 999, 1),
    (5000, 20_000, None),
    (20_000, 5000, 2),
    (100_000, 100_000, None),
    (100_000, 30_000, 1),
]


def _samples(
    n1: int, n2: int, decimals: int | None, seed: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    reference = rng.normal(0.0, 1.0, n1)
    current = rng.normal(rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.3), n2)
    if decimals is not None:
        reference, current = np.round(reference, decimals), np.round(current, decimals)
    return reference, current


def _close(ours: float, theirs: float) -> bool:
    return math.isclose(ours, theirs, rel_tol=TOLERANCE, abs_tol=1e-12)


@pytest.mark.parametrize(("n1", "n2", "decimals"), SAMPLE_SHAPES)
def test_ks_from_samples_equals_scipy(n1: int, n2: int, decimals: int | None) -> None:
    reference, current = _samples(n1, n2, decimals, seed=n1 + n2)
    ours = stats.ks_from_samples(reference, current)
    theirs = scipy_stats.ks_2samp(reference, current, method="asymp")
    # The statistic is the same arithmetic on the same counts: equal to the last bit.
    assert ours.statistic == theirs.statistic
    assert ours.p_value is not None
    assert _close(ours.p_value, theirs.pvalue)
    # And it is the one scipy's default ('auto') reports as well (its exact branch re-derives
    # the same D as an integer ratio h/lcm(n1, n2), which can differ in the last bit).
    assert _close(ours.statistic, scipy_stats.ks_2samp(reference, current).statistic)


@pytest.mark.parametrize("seed", range(6))
def test_ks_block_search_equals_scipy_on_many_random_pairs(seed: int) -> None:
    """Large distinct current samples take the block-pruned search; it must never miss the max."""
    rng = np.random.default_rng(seed)
    for _trial in range(10):
        n1, n2 = (int(v) for v in rng.integers(1024, 40_000, 2))
        shift = float(rng.choice([0.0, 0.0, 0.005, 0.05, 0.5]))
        reference = rng.normal(size=n1)
        current = rng.normal(shift, 1.0, n2)
        if rng.uniform() < 0.4:
            # Coarse reference values: many ties within it and with the current sample.
            reference = np.round(reference, 2)
            current = np.unique(np.round(current, 3))
        if rng.uniform() < 0.2:
            # The same values on both sides: every current value is tied with the reference.
            current = np.unique(reference)
        ours = stats.ks_from_samples(reference, current)
        theirs = scipy_stats.ks_2samp(reference, current, method="asymp")
        assert ours.statistic == theirs.statistic
        assert ours.p_value is not None and _close(ours.p_value, theirs.pvalue)


def test_ks_from_samples_accepts_presorted_input() -> None:
    reference, current = _samples(3000, 2000, 1, seed=7)
    presorted = stats.ks_from_samples(
        stats.sorted_sample(reference), stats.sorted_sample(current), assume_sorted=True
    )
    assert presorted == stats.ks_from_samples(reference, current)


def test_ks_ignores_missing_values_like_scipy_omit() -> None:
    reference, current = _samples(500, 400, None, seed=3)
    reference[::7] = np.nan
    current[::5] = np.nan
    ours = stats.ks_from_samples(reference, current)
    theirs = scipy_stats.ks_2samp(
        reference[~np.isnan(reference)], current[~np.isnan(current)], method="asymp"
    )
    assert ours.statistic == theirs.statistic
    assert ours.p_value is not None and _close(ours.p_value, theirs.pvalue)


def test_ks_of_one_value_each_has_no_evidence() -> None:
    # scipy's asymptotic p-value is NaN here (effective n rounds to 0); the exact one is 1.
    assert stats.ks_from_samples([1.0], [2.0]) == stats.StatResult(1.0, 1.0)


def test_ks_of_identical_and_disjoint_samples() -> None:
    same = np.arange(100.0)
    assert stats.ks_from_samples(same, same) == stats.StatResult(0.0, 1.0)
    disjoint = stats.ks_from_samples(np.arange(100.0), np.arange(100.0) + 1000)
    assert disjoint.statistic == 1.0
    assert disjoint.p_value is not None and disjoint.p_value < 1e-40


@pytest.mark.parametrize("bins", [2, 5, 20, 51])
@pytest.mark.parametrize(("n1", "n2"), [(30, 40), (1000, 999), (50_000, 8000)])
def test_ks_from_counts_equals_scipy_on_binned_values(bins: int, n1: int, n2: int) -> None:
    rng = np.random.default_rng(bins * n1 + n2)
    reference_counts = rng.multinomial(n1, rng.dirichlet(np.ones(bins)))
    current_counts = rng.multinomial(n2, rng.dirichlet(np.ones(bins)))
    ours = stats.ks_from_counts(reference_counts, current_counts)
    # The binned test is KS of the data with each value moved to its bin's position.
    positions = np.arange(bins, dtype=np.float64)
    theirs = scipy_stats.ks_2samp(
        np.repeat(positions, reference_counts), np.repeat(positions, current_counts), method="asymp"
    )
    assert ours.statistic == theirs.statistic
    assert ours.p_value is not None and _close(ours.p_value, theirs.pvalue)


@pytest.mark.parametrize(("n1", "n2", "decimals"), SAMPLE_SHAPES)
def test_wasserstein_from_samples_equals_scipy(n1: int, n2: int, decimals: int | None) -> None:
    reference, current = _samples(n1, n2, decimals, seed=n1 * 3 + n2)
    ours = stats.wasserstein_from_samples(reference, current).statistic
    assert _close(ours, scipy_stats.wasserstein_distance(reference, current))


@pytest.mark.parametrize("bins", [1, 2, 5, 20])
def test_wasserstein_from_counts_equals_scipy_with_weights(bins: int) -> None:
    rng = np.random.default_rng(bins)
    edges = np.sort(rng.normal(size=bins - 1))
    reference_counts = rng.integers(0, 500, bins) + 1
    current_counts = rng.integers(0, 500, bins)
    current_counts[0] += 1
    points = stats.bin_points(edges)
    ours = stats.wasserstein_from_counts(edges, reference_counts, current_counts).statistic
    theirs = scipy_stats.wasserstein_distance(points, points, reference_counts, current_counts)
    assert _close(ours, theirs)


def test_normalised_wasserstein_divides_by_reference_std() -> None:
    assert stats.normalised_wasserstein(0.3, 2.0) == pytest.approx(0.15)
    assert stats.normalised_wasserstein(0.0, 0.0) == 0.0
    assert stats.normalised_wasserstein(0.1, 0.0) == math.inf
    with pytest.raises(ValueError, match="std"):
        stats.normalised_wasserstein(0.1, None)


COUNT_SHAPES = [2, 3, 4, 10, 50]


def _count_pair(
    k: int, seed: int, n1: int = 5000, n2: int = 3000
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    reference = rng.multinomial(n1, rng.dirichlet(np.ones(k) * 2))
    current = rng.multinomial(n2, rng.dirichlet(np.ones(k) * 2))
    # Every category seen on both sides, so scipy's goodness-of-fit is defined too.
    return reference + 1, current + 1


@pytest.mark.parametrize("k", COUNT_SHAPES)
@pytest.mark.parametrize(("n1", "n2"), [(40, 25), (5000, 3000), (200_000, 1_000_000)])
def test_jensenshannon_equals_scipy_base_2(k: int, n1: int, n2: int) -> None:
    reference, current = _count_pair(k, seed=k + n1, n1=n1, n2=n2)
    ours = stats.jensenshannon_from_counts(reference, current).statistic
    assert _close(ours, float(scipy_distance.jensenshannon(reference, current, base=2)))


def test_jensenshannon_bounds() -> None:
    assert stats.jensenshannon_from_counts([5, 5], [10, 10]).statistic == 0.0
    assert stats.jensenshannon_from_counts([5, 0], [0, 5]).statistic == pytest.approx(1.0)


@pytest.mark.parametrize("k", COUNT_SHAPES)
@pytest.mark.parametrize(("n1", "n2"), [(40, 25), (5000, 3000), (200_000, 1_000_000)])
def test_chi2_goodness_of_fit_equals_scipy_chisquare(k: int, n1: int, n2: int) -> None:
    reference, current = _count_pair(k, seed=k * n2, n1=n1, n2=n2)
    ours = stats.chi2_from_counts(reference, current, "goodness_of_fit")
    theirs = scipy_stats.chisquare(current, reference / reference.sum() * current.sum())
    assert _close(ours.statistic, theirs.statistic)
    assert ours.p_value is not None and _close(ours.p_value, theirs.pvalue)


@pytest.mark.parametrize("k", COUNT_SHAPES)
@pytest.mark.parametrize(("n1", "n2"), [(40, 25), (5000, 3000), (200_000, 1_000_000)])
@pytest.mark.parametrize("correction", [True, False])
def test_chi2_contingency_equals_scipy(k: int, n1: int, n2: int, correction: bool) -> None:
    reference, current = _count_pair(k, seed=k * n1 + 1, n1=n1, n2=n2)
    ours = stats.chi2_from_counts(reference, current, "contingency", correction=correction)
    theirs = scipy_stats.chi2_contingency(np.stack((reference, current)), correction=correction)
    assert _close(ours.statistic, theirs.statistic)
    assert ours.p_value is not None and _close(ours.p_value, theirs.pvalue)


def test_chi2_contingency_leaves_out_categories_empty_on_both_sides() -> None:
    reference, current = np.array([30, 0, 12, 9]), np.array([25, 0, 20, 2])
    ours = stats.chi2_from_counts(reference, current)
    theirs = scipy_stats.chi2_contingency(np.stack((reference[[0, 2, 3]], current[[0, 2, 3]])))
    assert _close(ours.statistic, theirs.statistic)
    assert ours.p_value is not None and _close(ours.p_value, theirs.pvalue)


def test_chi2_goodness_of_fit_with_a_category_the_reference_never_saw() -> None:
    result = stats.chi2_from_counts([10, 20, 0], [10, 20, 5], "goodness_of_fit")
    assert result.statistic == math.inf
    assert result.p_value == 0.0


def _psi_written_out(reference: list[int], current: list[int], epsilon: float = 1e-4) -> float:
    """PSI as the textbook writes it, one bin at a time."""
    total_reference, total_current = sum(reference), sum(current)
    value = 0.0
    for r, c in zip(reference, current, strict=True):
        expected = max(r / total_reference, epsilon)
        actual = max(c / total_current, epsilon)
        value += (actual - expected) * math.log(actual / expected)
    return value


PSI_TABLE = [
    ([100, 100], [100, 100], 0.0),
    ([50, 30, 20], [20, 30, 50], None),
    ([10, 0, 90], [10, 10, 80], None),
    ([1000, 1, 0, 999], [0, 500, 500, 1], None),
    ([3, 3, 3, 3, 3], [1, 2, 3, 4, 5], None),
]


@pytest.mark.parametrize(("reference", "current", "exact"), PSI_TABLE)
def test_psi_equals_the_written_out_formula(
    reference: list[int], current: list[int], exact: float | None
) -> None:
    ours = stats.psi_from_counts(reference, current).statistic
    assert _close(ours, _psi_written_out(reference, current))
    if exact is not None:
        assert ours == exact


@pytest.mark.parametrize("epsilon", [1e-6, 1e-3])
def test_psi_epsilon_is_configurable(epsilon: float) -> None:
    reference, current = [10, 0, 90], [10, 10, 80]
    ours = stats.psi_from_counts(reference, current, epsilon=epsilon).statistic
    assert _close(ours, _psi_written_out(reference, current, epsilon))


@pytest.mark.parametrize("n", [1, 2, 19, 20, 21, 1000, 54_321])
@pytest.mark.parametrize("decimals", [None, 0])
def test_quantile_edges_match_the_profile_binning_rule(n: int, decimals: int | None) -> None:
    values = np.random.default_rng(n).gamma(2.0, size=n)
    if decimals is not None:
        values = np.round(values, decimals)
    ours = quantile_edges(np.sort(values))
    # The rule written out with numpy's own quantile (which partitions instead of sorting).
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, 21)[1:-1]))
    assert ours.tolist() == edges[edges < values.max()].tolist()
    assert numeric_profile("x", values).edges == ours.tolist()


@pytest.mark.parametrize(("n1", "n2", "decimals"), SAMPLE_SHAPES[3:])
def test_psi_and_js_from_samples_equal_the_profile_counts(
    n1: int, n2: int, decimals: int | None
) -> None:
    reference, current = _samples(n1, n2, decimals, seed=n2)
    profile = numeric_profile("x", reference)
    current_counts, _missing = profile.bin_counts(current)
    assert stats.psi_from_samples(reference, current).statistic == pytest.approx(
        _psi_written_out(profile.counts, current_counts.tolist()), rel=TOLERANCE
    )
    assert _close(
        stats.jensenshannon_from_samples(reference, current).statistic,
        float(scipy_distance.jensenshannon(profile.counts, current_counts, base=2)),
    )


def test_category_counts_of_codes_and_text_agree() -> None:
    rng = np.random.default_rng(5)
    reference = rng.integers(0, 6, 2000)
    current = rng.integers(2, 9, 1500)
    labels, reference_counts, current_counts = stats.category_counts(reference, current)
    assert labels == [str(v) for v in range(9)]
    assert reference_counts.tolist() == np.bincount(reference, minlength=9).tolist()
    assert current_counts.tolist() == np.bincount(current, minlength=9).tolist()
    as_text = stats.category_counts(reference.astype(str), current.astype(str))
    assert as_text[0] == labels
    assert as_text[1].tolist() == reference_counts.tolist()
    assert as_text[2].tolist() == current_counts.tolist()


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(3).integers(0, 80, 5000),
        np.random.default_rng(4).integers(0, 4, 300).astype(float),
        np.array([1.0, np.nan, 2.0, 1.0, np.nan]),
        np.array(["b", "a", "b", "c"]),
        np.array([True, False, True]),
        np.array([1, "1", 1.0, None, np.nan, "x", True, 2.5], dtype=object),
    ],
    ids=["80 int codes", "float codes", "floats with NaN", "text", "booleans", "mixed objects"],
)
def test_categorical_profile_counts_equal_its_own_bins(values: npt.NDArray[np.generic]) -> None:
    """Counted by distinct value (native arrays) or per value (objects): the bins agree."""
    profile = categorical_profile("c", values, max_categories=50)
    counts, missing = profile.bin_counts(values)
    assert profile.counts == counts.tolist()
    assert profile.missing == missing
    assert sum(profile.counts) + profile.missing == len(values)
    assert len(profile.categories) <= 50


def test_category_counts_skip_missing_values() -> None:
    labels, reference_counts, current_counts = stats.category_counts(
        np.array(["a", None, "b", "a"], dtype=object), np.array([1.0, np.nan, 2.0])
    )
    assert labels == ["1", "2", "a", "b"]
    assert reference_counts.tolist() == [0, 0, 2, 1]
    assert current_counts.tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.ks_from_samples([], [1.0]), "reference sample has no values"),
        (lambda: stats.ks_from_samples([1.0], [np.nan]), "current sample has no values"),
        (lambda: stats.ks_from_counts([1, 2], [1, 2, 3]), "reference has 2 bins but current has 3"),
        (lambda: stats.psi_from_counts([0, 0], [1, 2]), "reference counts are all zero"),
        (lambda: stats.jensenshannon_from_counts([1, 2], [-1, 2]), "non-negative"),
        (lambda: stats.chi2_from_counts([1, 2], [1, 2], "g-test"), "unknown chi-squared method"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_is_named(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_feature_profile_counts_feed_the_binned_tests() -> None:
    """The profile's own counts and bin_counts line up with the binned statistics."""
    reference = np.random.default_rng(11).normal(size=4000)
    profile: FeatureProfile = numeric_profile("x", reference)
    counts, _ = profile.bin_counts(reference + 0.5)
    assert len(counts) == len(profile.counts) == len(stats.bin_points(profile.edges))
    assert stats.ks_from_counts(profile.counts, counts).statistic > 0.15
