"""The drift charts' SVG: the figures in ``data-*`` are the inputs, hostile names stay text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from kubeloop.drift.charts import (
    FeatureVerdict,
    ScorePoint,
    feature_histogram,
    prediction_histogram,
    score_timeline,
)
from kubeloop.drift.profile import (
    PREDICTION_FEATURE,
    FeatureProfile,
    Profile,
    categorical_profile,
    numeric_profile,
)
from kubeloop.drift.report import DriftConfig, counts_from_samples, drift_report

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def _bins(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == "bin"]


def _shifted_report() -> tuple[Profile, dict[str, list[int]]]:
    rng = np.random.default_rng(3)
    profile = Profile(
        rows=2000,
        features=[
            numeric_profile("age", rng.normal(40, 10, 2000), n_bins=8),
            categorical_profile("plan", rng.choice(["basic", "plus", "pro"], 2000)),
        ],
        prediction=numeric_profile(PREDICTION_FEATURE, rng.uniform(0, 1, 2000), n_bins=5),
    )
    counts = counts_from_samples(
        profile,
        {
            "age": rng.normal(48, 10, 500),
            "plan": rng.choice(["basic", "pro", "enterprise"], 500, p=[0.7, 0.2, 0.1]),
            PREDICTION_FEATURE: rng.uniform(0, 1, 500) ** 2,
        },
    )
    return profile, counts


def test_numerical_bins_carry_the_counts_proportions_and_verdict() -> None:
    profile, counts = _shifted_report()
    report = drift_report(profile, counts, DriftConfig())
    age = report.features[0]
    root = _parse(feature_histogram(profile.feature("age"), counts["age"], age))

    assert root.get("data-feature") == "age"
    assert root.get("data-kind") == "numerical"
    assert root.get("data-test") == age.test == "ks"
    assert float(root.get("data-score", "")) == age.score
    assert float(root.get("data-p-value", "")) == age.p_value_adjusted
    assert float(root.get("data-threshold", "")) == age.threshold == 0.05
    assert root.get("data-limit") == "alpha"
    assert root.get("data-drifted") == "true"
    reference = profile.feature("age")
    bins = _bins(root)
    assert [b.get("data-bin") for b in bins] == reference.bin_labels
    assert [int(b.get("data-reference-count", "")) for b in bins] == reference.counts
    assert [int(b.get("data-current-count", "")) for b in bins] == counts["age"]
    ref_total, cur_total = sum(reference.counts), sum(counts["age"])
    assert [float(b.get("data-reference-proportion", "")) for b in bins] == [
        c / ref_total for c in reference.counts
    ]
    assert [float(b.get("data-current-proportion", "")) for b in bins] == [
        c / cur_total for c in counts["age"]
    ]
    # Numerical bins say which values they hold: edges[i-1] < x <= edges[i].
    ranges = [b.get("data-range") for b in bins]
    assert ranges[0] == f"<= {reference.edges[0]:.3g}"
    assert ranges[-1] == f"> {reference.edges[-1]:.3g}"
    assert len(ranges) == len(reference.edges) + 1
    # Accessible: an image with a title and a description naming the verdict.
    assert root.get("role") == "img"
    title = root.find(f"{SVG}title")
    desc = root.find(f"{SVG}desc")
    assert title is not None and title.text == "age"
    assert desc is not None and "drifted" in (desc.text or "")
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"


def test_categories_end_with_other_and_a_distance_reads_threshold() -> None:
    profile, counts = _shifted_report()
    plan = profile.feature("plan")
    verdict = FeatureVerdict(test="jensenshannon", score=0.25, threshold=0.1, drifted=True)
    root = _parse(feature_histogram(plan, counts["plan"], verdict))

    bins = _bins(root)
    assert [b.get("data-bin") for b in bins] == ["basic", "plus", "pro", "__other__"]
    assert [int(b.get("data-current-count", "")) for b in bins] == counts["plan"]
    assert int(bins[-1].get("data-current-count", "")) > 0  # "enterprise" landed in __other__
    assert all(b.get("data-range") is None for b in bins)
    assert root.get("data-limit") == "threshold"
    assert root.get("data-p-value") is None
    verdict_text = next(t for t in root.iter(f"{SVG}text") if t.get("class") == "verdict")
    assert verdict_text.text == "jensenshannon 0.25 >= threshold 0.1: drifted"


def test_prediction_view_is_titled_as_the_model_output() -> None:
    profile, counts = _shifted_report()
    report = drift_report(profile, counts, DriftConfig())
    assert report.prediction is not None
    root = _parse(
        prediction_histogram(profile.prediction, counts[PREDICTION_FEATURE], report.prediction)  # type: ignore[arg-type]
    )
    assert root.get("data-feature") == PREDICTION_FEATURE
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == "Prediction (model output)"
    assert root.get("data-drifted") == ("true" if report.prediction.drifted else "false")


def test_hostile_names_are_text_not_markup() -> None:
    hostile = '<script>alert("x")</script>&"\''
    feature = FeatureProfile(
        name=hostile, kind="categorical", categories=[hostile, "<b>"], counts=[3, 1, 0]
    )
    svg = feature_histogram(feature, [1, 1, 2])
    assert "<script>" not in svg and "<b>" not in svg
    root = _parse(svg)
    assert root.get("data-feature") == hostile
    assert [b.get("data-bin") for b in _bins(root)] == [hostile, "<b>", "__other__"]
    assert not list(root.iter(f"{SVG}script"))
    # The id is derived, never the raw name.
    assert root.get("id", "").startswith("kl-hist-") and "<" not in root.get("id", "")


def test_counts_must_match_the_bins() -> None:
    feature = FeatureProfile(name="age", kind="numerical", edges=[1.0], counts=[2, 3])
    with pytest.raises(ValueError, match=r"'age': 3 current counts for 2 bins"):
        feature_histogram(feature, [1, 1, 1])


def test_large_edges_are_labelled_compactly() -> None:
    feature = FeatureProfile(
        name="income", kind="numerical", edges=[11890.0, 2_500_000.0], counts=[1, 1, 1]
    )
    root = _parse(feature_histogram(feature, [1, 2, 3]))
    assert [b.get("data-range") for b in _bins(root)] == ["<= 11.9k", "(11.9k, 2.5M]", "> 2.5M"]


def test_empty_current_window_draws_zero_bars() -> None:
    feature = FeatureProfile(name="age", kind="numerical", edges=[1.0], counts=[2, 3])
    root = _parse(feature_histogram(feature, [0, 0]))
    assert [float(b.get("data-current-proportion", "")) for b in _bins(root)] == [0.0, 0.0]
    assert root.get("data-test") is None


def test_timeline_points_are_the_checks_in_time_order() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    points = [
        ScorePoint(start + timedelta(hours=2), 0.31, True),
        ScorePoint(start, 0.05, False),
        ScorePoint(start + timedelta(hours=1), 0.12, False),
    ]
    root = _parse(score_timeline("age", points, test="psi", threshold=0.2))
    circles = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "point"]
    assert [float(c.get("data-value", "")) for c in circles] == [0.05, 0.12, 0.31]
    assert [c.get("data-drifted") for c in circles] == ["false", "false", "true"]
    assert circles[0].get("data-time") == start.isoformat()
    assert float(root.get("data-threshold", "")) == 0.2
    assert root.get("data-limit") == "threshold"
    # Higher score, higher point: SVG y grows downwards.
    ys = [float(c.get("cy", "")) for c in circles]
    assert ys[0] > ys[1] > ys[2]


def test_timeline_of_p_values_and_without_checks() -> None:
    root = _parse(score_timeline("plan", [], test="chi2", threshold=0.05))
    assert root.get("data-limit") == "alpha"
    assert root.get("data-points") == "0"
    assert "no checks yet" in "".join(root.itertext())
