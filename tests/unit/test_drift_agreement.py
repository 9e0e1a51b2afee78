"""Given 20 features of which 5 moved, both modes flag exactly those 5; given none moved, none.

The shifts are modest on purpose: half a standard deviation on four numerical features and a
changed category mix on one categorical feature.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from kubeloop.drift.profile import build_profile
from kubeloop.drift.report import (
    DriftConfig,
    counts_from_samples,
    drift_report,
    drift_report_from_samples,
)

NUMERICAL = [f"num_{i}" for i in range(16)]
CATEGORICAL = [f"cat_{i}" for i in range(4)]
SHIFTED = ["num_1", "num_6", "num_11", "num_14", "cat_2"]
REFERENCE_MIX = np.array([0.4, 0.3, 0.2, 0.1])
SHIFTED_MIX = np.array([0.25, 0.25, 0.25, 0.25])


def synthetic_table(rows: int, seed: int, shifted: bool) -> dict[str, npt.NDArray[np.generic]]:
    """16 numerical features of different scales and shapes, 4 categorical ones."""
    rng = np.random.default_rng(seed)
    columns: dict[str, npt.NDArray[np.generic]] = {}
    for i, name in enumerate(NUMERICAL):
        scale = 1.0 + i
        shift = 0.5 * scale if shifted and name in SHIFTED else 0.0
        if i % 4 == 3:
            # Skewed: shifting a lognormal's log by 0.5 sd moves it as much as the normals.
            columns[name] = np.exp(rng.normal(shift / scale, 1.0, rows)) * scale
        else:
            columns[name] = rng.normal(10.0 * i + shift, scale, rows)
    for name in CATEGORICAL:
        mix = SHIFTED_MIX if shifted and name in SHIFTED else REFERENCE_MIX
        columns[name] = rng.choice(np.array(["low", "mid", "high", "top"]), size=rows, p=mix)
    return columns


SIZES = [500, 2_000, 20_000, 200_000]


@pytest.mark.parametrize("rows", SIZES)
@pytest.mark.parametrize("shifted", [True, False])
def test_both_modes_flag_exactly_the_shifted_features(rows: int, shifted: bool) -> None:
    reference = synthetic_table(rows, seed=rows, shifted=False)
    current = synthetic_table(rows, seed=rows + 1, shifted=shifted)
    expected = SHIFTED if shifted else []

    exact = drift_report_from_samples(reference, current, categorical=CATEGORICAL)
    assert exact.drifted_features == expected

    profile = build_profile(reference, categorical=CATEGORICAL)
    binned = drift_report(profile, counts_from_samples(profile, current))
    assert binned.drifted_features == expected

    for report in (exact, binned):
        # Small samples are judged by p-values, large ones by distances.
        tests = {f.feature: f.test for f in report.features}
        assert tests["num_0"] == ("ks" if rows <= 1000 else "wasserstein")
        assert tests["cat_0"] == ("chi2" if rows <= 1000 else "jensenshannon")
        assert report.share == len(expected) / 20
        assert not report.drifted  # 5 of 20 is below the default driftShare of 0.5


@pytest.mark.parametrize("rows", [2_000, 200_000])
def test_benchmark_tests_agree_too(rows: int) -> None:
    """KS (with PSI alongside) and chi-squared, the benchmark's report, at every sample size."""
    reference = synthetic_table(rows, seed=rows + 7, shifted=False)
    current = synthetic_table(rows, seed=rows + 8, shifted=True)
    config = DriftConfig(numerical_test="ks", categorical_test="chi2", extra_scores=["psi"])
    exact = drift_report_from_samples(reference, current, config, categorical=CATEGORICAL)
    assert exact.drifted_features == SHIFTED
    profile = build_profile(reference, categorical=CATEGORICAL)
    binned = drift_report(profile, counts_from_samples(profile, current), config)
    assert binned.drifted_features == SHIFTED
    # PSI is computed over the same bins in both modes, so it is the same number.
    for exact_feature, binned_feature in zip(exact.features, binned.features, strict=True):
        assert exact_feature.scores["psi"] == pytest.approx(binned_feature.scores["psi"])


def test_threads_give_the_same_report() -> None:
    reference = synthetic_table(50_000, seed=3, shifted=False)
    current = synthetic_table(50_000, seed=4, shifted=True)
    config = DriftConfig(numerical_test="ks", extra_scores=["psi", "wasserstein"])
    one = drift_report_from_samples(reference, current, config, categorical=CATEGORICAL)
    two = drift_report_from_samples(reference, current, config, categorical=CATEGORICAL, workers=2)
    assert one == two
