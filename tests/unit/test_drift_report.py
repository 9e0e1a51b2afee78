"""The drift report's rules: test choice, thresholds, Benjamini-Hochberg, driftShare, prediction."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError
from scipy import stats as scipy_stats

from kubeloop.drift.profile import PREDICTION_FEATURE, build_profile
from kubeloop.drift.report import (
    DriftConfig,
    DriftReport,
    FeatureSettings,
    benjamini_hochberg,
    counts_from_bin_labels,
    counts_from_samples,
    drift_report,
    drift_report_from_samples,
)

BH_TABLE = [
    [0.01],
    [0.5, 0.5],
    [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216],
    [0.04, 0.04, 0.04, 0.04],
    [1.0, 0.0, 0.3, 0.3, 0.02],
    [0.9, 0.8, 0.7],
]


@pytest.mark.parametrize("p_values", BH_TABLE)
def test_benjamini_hochberg_equals_scipy(p_values: list[float]) -> None:
    ours = benjamini_hochberg(p_values)
    assert ours.tolist() == pytest.approx(
        scipy_stats.false_discovery_control(p_values).tolist(), rel=1e-12
    )


@pytest.mark.parametrize("size", [3, 20, 500])
def test_benjamini_hochberg_on_random_p_values(size: int) -> None:
    p_values = np.random.default_rng(size).uniform(size=size) ** 3
    np.testing.assert_allclose(
        benjamini_hochberg(p_values), scipy_stats.false_discovery_control(p_values), rtol=1e-12
    )


def test_benjamini_hochberg_rejects_values_outside_0_1() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        benjamini_hochberg([0.1, 1.2])


# (current sample size, kind, configured test, expected test)
TEST_CHOICE_TABLE = [
    (10, "numerical", "auto", "ks"),
    (1000, "numerical", "auto", "ks"),
    (1001, "numerical", "auto", "wasserstein"),
    (10, "categorical", "auto", "chi2"),
    (1000, "categorical", "auto", "chi2"),
    (1001, "categorical", "auto", "jensenshannon"),
    (5, "numerical", "psi", "psi"),
    (10**6, "numerical", "ks", "ks"),
    (10**6, "categorical", "psi", "psi"),
]


@pytest.mark.parametrize(("size", "kind", "configured", "expected"), TEST_CHOICE_TABLE)
def test_test_choice_by_sample_size(size: int, kind: str, configured: str, expected: str) -> None:
    key = "numericalTest" if kind == "numerical" else "categoricalTest"
    config = DriftConfig.model_validate({key: configured})
    assert config.test_for("x", kind, size) == expected  # type: ignore[arg-type]


def test_per_feature_test_overrides_the_rule_and_must_fit_the_kind() -> None:
    config = DriftConfig(features={"age": FeatureSettings(test="psi")})
    assert config.test_for("age", "numerical", 10) == "psi"
    assert config.test_for("income", "numerical", 10) == "ks"
    wrong = DriftConfig(features={"city": FeatureSettings(test="ks")})
    with pytest.raises(ValueError, match="feature 'city' is categorical; test 'ks'"):
        wrong.test_for("city", "categorical", 10)


# (config, feature, test, expected threshold)
# (config, feature, test, what the result is compared with). ks and chi2 read alpha (drifted
# when p < it), the distances read their score threshold (drifted when score >= it): a
# setting of one kind never changes the other.
THRESHOLD_TABLE = [
    ({}, "x", "ks", 0.05),
    ({}, "x", "chi2", 0.05),
    ({}, "x", "psi", 0.2),
    ({}, "x", "wasserstein", 0.1),
    ({}, "x", "jensenshannon", 0.1),
    ({"thresholds": {"psi": 0.25}}, "x", "psi", 0.25),
    ({"thresholds": {"psi": 0.25}}, "x", "ks", 0.05),
    ({"thresholds": {"psi": 0.25}}, "x", "jensenshannon", 0.1),
    ({"alpha": 0.2}, "x", "chi2", 0.2),
    ({"alpha": 0.2}, "x", "ks", 0.2),
    ({"alpha": 0.2}, "x", "psi", 0.2),  # psi's own default, not alpha
    ({"alpha": 0.01}, "x", "wasserstein", 0.1),
    ({"features": {"x": {"threshold": 0.5}}}, "x", "psi", 0.5),
    ({"features": {"x": {"threshold": 0.5}}}, "x", "ks", 0.05),
    ({"features": {"x": {"alpha": 0.1}}, "alpha": 0.2}, "x", "chi2", 0.1),
    ({"features": {"x": {"alpha": 0.1}}, "alpha": 0.2}, "y", "chi2", 0.2),
    ({"features": {"x": {"alpha": 0.1}}}, "x", "jensenshannon", 0.1),
    ({"features": {"x": {"threshold": 0.5}}, "thresholds": {"psi": 0.3}}, "y", "psi", 0.3),
]


@pytest.mark.parametrize(("raw", "feature", "test", "expected"), THRESHOLD_TABLE)
def test_thresholds(raw: dict[str, object], feature: str, test: str, expected: float) -> None:
    assert DriftConfig.model_validate(raw).threshold_for(feature, test) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"thresholds": {"ks": 0.05}}, "thresholds.ks"),  # ks is judged by alpha
        ({"thresholds": {"psi": -1}}, "thresholds.psi: a score threshold must be positive"),
        ({"alpha": 1.5}, "alpha"),
        ({"features": {"a": {"alpha": 0}}}, "features.a.alpha"),
        ({"features": {"a": {"test": "chi2", "threshold": 0.2}}}, "chi2 is judged by alpha"),
        ({"features": {"a": {"test": "psi", "alpha": 0.2}}}, "psi is judged by a score threshold"),
        ({"driftShare": 0}, "driftShare"),
        ({"numericalTest": "chi2"}, "numericalTest"),
        ({"unknownField": 1}, "unknownField"),
    ],
)
def test_bad_config_names_the_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DriftConfig.model_validate(raw)


def _columns(n: int, seed: int, shifts: dict[str, float]) -> dict[str, npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    return {f"f{i}": rng.normal(shifts.get(f"f{i}", 0.0), 1.0, n) for i in range(4)}


def test_verdicts_follow_thresholds_and_drift_share() -> None:
    reference = _columns(5000, 1, {})
    current = _columns(5000, 2, {"f0": 1.0, "f1": 1.0})
    report = drift_report_from_samples(reference, current, DriftConfig(numerical_test="psi"))
    assert report.drifted_features == ["f0", "f1"]
    assert report.share == 0.5
    assert report.drifted  # 0.5 >= default driftShare 0.5
    stricter = DriftConfig(numerical_test="psi", drift_share=0.75)
    assert not drift_report_from_samples(reference, current, stricter).drifted
    # Raising f0's threshold above its score takes it out.
    f0_score = report.features[0].score
    lenient = DriftConfig(
        numerical_test="psi", features={"f0": FeatureSettings(threshold=f0_score * 1.01)}
    )
    lenient_report = drift_report_from_samples(reference, current, lenient)
    assert lenient_report.drifted_features == ["f1"]
    assert lenient_report.features[0].threshold == pytest.approx(f0_score * 1.01)


def test_p_values_are_corrected_across_input_features_only() -> None:
    reference = _columns(400, 3, {})
    reference[PREDICTION_FEATURE] = np.random.default_rng(4).normal(size=400)
    current = _columns(400, 5, {"f2": 0.3})
    current[PREDICTION_FEATURE] = np.random.default_rng(6).normal(size=400)
    report = drift_report_from_samples(reference, current)
    raw = [f.p_value for f in report.features]
    assert all(f.test == "ks" for f in report.features)
    assert [f.p_value_adjusted for f in report.features] == pytest.approx(
        scipy_stats.false_discovery_control(raw).tolist(), rel=1e-12
    )
    for feature in report.features:
        assert feature.drifted == (feature.p_value_adjusted < 0.05)  # type: ignore[operator]
    assert report.prediction is not None
    assert report.prediction.p_value_adjusted == report.prediction.p_value
    none = drift_report_from_samples(reference, current, DriftConfig(correction="none"))
    assert [f.p_value_adjusted for f in none.features] == raw


def test_prediction_drift_is_its_own_signal() -> None:
    reference = _columns(3000, 7, {})
    current = _columns(3000, 8, {})
    reference[PREDICTION_FEATURE] = np.random.default_rng(9).normal(size=3000)
    current[PREDICTION_FEATURE] = np.random.default_rng(10).normal(2.0, 1.0, size=3000)
    report = drift_report_from_samples(reference, current)
    assert report.prediction_drifted
    assert report.prediction is not None and report.prediction.feature == PREDICTION_FEATURE
    assert PREDICTION_FEATURE not in [f.feature for f in report.features]
    assert report.share == 0.0
    assert not report.drifted


def test_extra_scores_are_reported_without_a_vote() -> None:
    reference = _columns(20_000, 11, {})
    current = _columns(20_000, 12, {"f3": 0.5})
    config = DriftConfig(numerical_test="ks", extra_scores=["psi", "wasserstein"])
    report = drift_report_from_samples(reference, current, config)
    for feature in report.features:
        assert set(feature.scores) == {"psi", "wasserstein"}
    assert report.features[3].scores["psi"] > 0.2


def test_report_serialises_in_camel_case() -> None:
    report = drift_report_from_samples(_columns(100, 1, {}), _columns(100, 2, {}))
    payload = report.model_dump(mode="json", by_alias=True)
    assert {"driftedFeatures", "share", "drifted", "predictionDrifted", "sampleSize"} <= set(
        payload
    )
    assert {"feature", "kind", "test", "score", "pValue", "threshold", "drifted"} <= set(
        payload["features"][0]
    )
    assert DriftReport.model_validate(payload) == report


def test_exact_mode_names_mismatched_columns() -> None:
    with pytest.raises(ValueError, match="only in current: extra"):
        drift_report_from_samples({"a": [1.0, 2.0]}, {"a": [1.0], "extra": [2.0]})
    with pytest.raises(ValueError, match="column 'a' is numerical in the reference"):
        drift_report_from_samples({"a": [1.0, 2.0]}, {"a": np.array(["x", "y"])})


def test_binned_mode_names_unknown_features_and_wrong_bin_counts() -> None:
    profile = build_profile({"a": np.arange(100.0), "c": np.array(list("xyz") * 10)}, ["c"])
    with pytest.raises(ValueError, match="feature 'b' is not in the reference profile"):
        drift_report(profile, {"b": [1, 2]})
    with pytest.raises(ValueError, match="feature 'c': got 2 counts but the profile has 4 bins"):
        drift_report(profile, {"c": [1, 2]})


def test_a_feature_without_current_values_is_skipped() -> None:
    profile = build_profile({"a": np.arange(100.0), "b": np.arange(100.0)})
    report = drift_report(profile, {"a": [0] * len(profile.features[0].counts), "b": [5] * 20})
    assert [s.feature for s in report.skipped] == ["a"]
    assert [f.feature for f in report.features] == ["b"]


def test_counts_from_bin_labels_orders_bins_like_the_profile() -> None:
    values = np.array(["red", "green", "blue", "green"] * 25, dtype=object)
    profile = build_profile({"colour": values, "size": np.arange(100.0)}, ["colour"])
    colour = profile.feature("colour")
    counts = counts_from_bin_labels(
        profile,
        {"colour": {"red": 4.0, "__other__": 2.2, "missing": 9}, "size": {"0": 3, "19": 1}},
    )
    assert colour.bin_labels == ["blue", "green", "red", "__other__"]
    assert counts["colour"] == [0, 0, 4, 2]
    assert counts["size"][0] == 3 and counts["size"][19] == 1 and sum(counts["size"]) == 4
    with pytest.raises(ValueError, match="bin 'purple' is not one of the profile's bins"):
        counts_from_bin_labels(profile, {"colour": {"purple": 1}})


def test_counts_from_samples_equal_the_profile_bins() -> None:
    rng = np.random.default_rng(0)
    reference = {"a": rng.normal(size=1000), "c": rng.choice(["x", "y"], 1000)}
    profile = build_profile(reference, ["c"])
    current = {"a": rng.normal(size=300), "c": rng.choice(["x", "y", "z"], 300)}
    counts = counts_from_samples(profile, current)
    assert counts["a"] == profile.feature("a").bin_counts(current["a"])[0].tolist()
    assert counts["c"] == profile.feature("c").bin_counts(current["c"])[0].tolist()
    assert sum(counts["c"]) == 300
