"""The server's pure parts, in process: fast paths, drift binning, batching, settings.

Real estimators trained on scikit-learn's bundled datasets; expected values come from
scikit-learn itself or from ``FeatureProfile.bin_index`` (the shared binning rule).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, RidgeClassifier

from kubeloop.drift.profile import PREDICTION_FEATURE, Profile, build_profile
from kubeloop.serving.batching import MicroBatcher, ModelInputError
from kubeloop.serving.drift_counters import MISSING_BIN, DriftCounts
from kubeloop.serving.feedback import LABELLED, FeedbackError, RecentPredictions, score
from kubeloop.serving.model import checked_fast_path, fast_path
from kubeloop.serving.settings import ServeSettings

# -- fast paths ----------------------------------------------------------------------------

CANCER = load_breast_cancer()
IRIS = load_iris()
DIABETES = load_diabetes()
ESTIMATORS = [
    ("forest binary", RandomForestClassifier(n_estimators=25, random_state=0), CANCER),
    ("forest multiclass", RandomForestClassifier(n_estimators=25, random_state=0), IRIS),
    ("extra trees", ExtraTreesClassifier(n_estimators=10, random_state=0), IRIS),
    ("forest regressor", RandomForestRegressor(n_estimators=10, random_state=0), DIABETES),
    ("logistic binary", LogisticRegression(max_iter=5000), CANCER),
    ("logistic multiclass", LogisticRegression(max_iter=5000), IRIS),
    ("ridge classifier", RidgeClassifier(), IRIS),
]


@pytest.mark.parametrize(("case", "estimator", "data"), ESTIMATORS, ids=[e[0] for e in ESTIMATORS])
def test_fast_path_gives_the_estimators_exact_answers(case: str, estimator: Any, data: Any) -> None:
    estimator.fit(data.data, data.target)
    path = checked_fast_path(estimator, data.data.shape[1], None)
    assert path is not None, "the self-check should accept an exact fast path"
    rng = np.random.default_rng(1)
    for rows in (data.data, data.data[:1], data.data * rng.normal(1, 0.3, data.data.shape)):
        np.testing.assert_array_equal(path.predict(rows), estimator.predict(rows))
        if path.predict_proba is not None:
            np.testing.assert_array_equal(path.predict_proba(rows), estimator.predict_proba(rows))


def test_fast_path_refuses_nan_like_the_estimator() -> None:
    model = LogisticRegression(max_iter=5000).fit(IRIS.data, IRIS.target)
    path = fast_path(model)
    assert path is not None
    rows = IRIS.data[:2].copy()
    rows[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.predict(rows)
    with pytest.raises(ValueError, match="NaN"):
        path.predict(rows)


def test_forest_fast_path_handles_missing_values_like_the_estimator() -> None:
    rows = CANCER.data.copy()
    rows[::5, 3] = np.nan
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(rows, CANCER.target)
    path = fast_path(model)
    assert path is not None
    np.testing.assert_array_equal(path.predict(rows), model.predict(rows))


def test_unknown_estimators_get_no_fast_path() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    assert fast_path(KNeighborsClassifier().fit(IRIS.data, IRIS.target)) is None


# -- drift binning -------------------------------------------------------------------------


def profile_with_categorical() -> tuple[Profile, np.ndarray]:
    rng = np.random.default_rng(0)
    numbers = rng.normal(size=500)
    codes = rng.choice([1.0, 2.0, 3.0, 4.5], size=500)
    constant = np.full(500, 7.0)
    profile = build_profile(
        {"number": numbers, "code": codes, "constant": constant},
        categorical=["code"],
        prediction=rng.choice(["cat", "dog"], size=500),
        prediction_kind="categorical",
    )
    return profile, np.column_stack([numbers, codes, constant])


def expected_counts(profile: Profile, name: str, values: Any) -> dict[str, int]:
    feature = profile.feature(name)
    index = feature.bin_index(values)
    labels = [*feature.bin_labels, MISSING_BIN]
    counts = np.bincount(np.where(index < 0, len(labels) - 1, index), minlength=len(labels))
    return {label: int(c) for label, c in zip(labels, counts, strict=True) if c}


def test_drift_counts_follow_the_profile_binning_rule() -> None:
    profile, _ = profile_with_categorical()
    edges = profile.feature("number").edges
    live = np.array(
        [
            [edges[0], 1.0, 7.0],  # exactly on an edge: the lower bin (x <= edge)
            [edges[0] + 1e-12, 2.0, 7.0],
            [-np.inf, 4.5, 8.0],
            [np.inf, 5.0, np.nan],  # an unseen category -> __other__
            [np.nan, np.nan, 7.0],
            [0.1, 3.0, 6.0],
        ]
    )
    predictions = np.array(["cat", "dog", "dog", "cat", "cat", "dog"])
    counts = DriftCounts(profile, ["number", "code", "constant"], classes=np.array(["cat", "dog"]))
    counts.observe(live[:3], predictions[:3])
    counts.observe(live[3:], predictions[3:])
    taken: dict[str, dict[str, int]] = {}
    for feature, label, count in counts.take():
        taken.setdefault(feature, {})[label] = count
    assert taken["number"] == expected_counts(profile, "number", live[:, 0])
    assert taken["code"] == expected_counts(profile, "code", live[:, 1])
    assert taken["constant"] == expected_counts(profile, "constant", live[:, 2])
    assert taken[PREDICTION_FEATURE] == {"cat": 3, "dog": 3}
    assert counts.take() == []  # take() resets


def test_drift_counts_without_classes_use_the_profile_categories() -> None:
    profile = build_profile(
        {"x": np.arange(10.0)}, prediction=np.array([0, 1] * 5), prediction_kind="categorical"
    )
    counts = DriftCounts(profile, ["x"])
    counts.observe(np.array([[1.0], [2.0]]), np.array([1.0, 3.0]))
    taken = {(f, b): c for f, b, c in counts.take() if f == PREDICTION_FEATURE}
    assert taken == {(PREDICTION_FEATURE, "1"): 1, (PREDICTION_FEATURE, "__other__"): 1}


def test_profile_features_the_model_lacks_are_reported_not_counted() -> None:
    profile = build_profile({"a": np.arange(5.0), "b": np.arange(5.0)})
    counts = DriftCounts(profile, ["a"])
    assert counts.untracked == ["b"]
    counts.observe(np.array([[1.0]]), np.array([0.0]))
    assert {f for f, _, _ in counts.take()} == {"a"}


# -- batching ------------------------------------------------------------------------------


def test_concurrent_requests_share_model_calls() -> None:
    calls: list[int] = []

    def model_call(rows: np.ndarray, want_proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        calls.append(rows.shape[0])
        return rows[:, 0] * 2, (rows if want_proba else None)

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(model_call, max_batch_size=8, max_latency_seconds=0.05)
        batcher.start()
        requests = [np.full((1, 2), float(i)) for i in range(20)]
        results = await asyncio.gather(
            *(batcher.predict(r, i % 2 == 0) for i, r in enumerate(requests))
        )
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert [float(r.predictions[0]) for r in results] == [2.0 * i for i in range(20)]
    assert all((r.probabilities is not None) == (i % 2 == 0) for i, r in enumerate(results))
    assert sum(calls) == 20
    assert len(calls) < 20 and max(calls) <= 8


def test_a_lone_request_does_not_wait_for_the_batch_window() -> None:
    def model_call(rows: np.ndarray, want_proba: bool) -> tuple[np.ndarray, None]:
        return rows[:, 0], None

    async def scenario() -> None:
        # A 60 s window: if the lone request waited for it, wait_for would time out.
        batcher = MicroBatcher(model_call, max_batch_size=64, max_latency_seconds=60)
        batcher.start()
        batcher.request_started()
        result = await asyncio.wait_for(batcher.predict(np.ones((1, 3))), timeout=5)
        batcher.request_finished()
        assert result.predictions.tolist() == [1.0]
        await batcher.stop()

    asyncio.run(scenario())


def test_a_bad_request_does_not_fail_its_batch_neighbours() -> None:
    def model_call(rows: np.ndarray, want_proba: bool) -> tuple[np.ndarray, None]:
        if np.isnan(rows).any():
            raise ValueError("Input X contains NaN.")
        return rows[:, 0], None

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(model_call, max_batch_size=64, max_latency_seconds=0.01)
        batcher.start()
        rows = [np.array([[1.0]]), np.array([[np.nan]]), np.array([[3.0]])]
        results = await asyncio.gather(*(batcher.predict(r) for r in rows), return_exceptions=True)
        await batcher.stop()
        return results

    good, bad, other = asyncio.run(scenario())
    assert good.predictions.tolist() == [1.0]
    assert other.predictions.tolist() == [3.0]
    assert isinstance(bad, ModelInputError) and "NaN" in str(bad)


# -- feedback and settings -----------------------------------------------------------------


def test_recent_predictions_are_bounded() -> None:
    recent = RecentPredictions(capacity=2)
    for i in range(3):
        recent.remember(f"id-{i}", np.array([i]))
    assert recent.peek("id-0") is None
    assert recent.peek("id-2") is not None and len(recent) == 2


@pytest.mark.parametrize(
    "predictions",
    [
        np.array([1]),
        np.array(["setosa"]),
        np.array([151.25]),
        np.array([True]),
        np.array([0, 2, 1]),
        np.array([[1.5, 2.0]]),  # one row of a multi-output model
    ],
    ids=["int", "text", "float", "bool", "three rows", "multi-output"],
)
def test_recent_predictions_give_back_what_was_served(predictions: np.ndarray) -> None:
    recent = RecentPredictions(capacity=4)
    recent.remember("id", predictions)
    kept = recent.peek("id")
    assert isinstance(kept, np.ndarray)
    np.testing.assert_array_equal(kept, predictions)
    assert kept.shape == predictions.shape and kept.dtype.kind == predictions.dtype.kind
    for labels in (predictions.tolist(), [str(v) for v in predictions.ravel().tolist()]):
        if predictions.ndim == 1:
            assert score(kept, labels, "classification") == score(
                predictions, labels, "classification"
            )
    recent.mark_labelled("id")
    assert recent.peek("id") is LABELLED


@pytest.mark.parametrize(
    ("predictions", "labels", "task", "correct", "abs_error"),
    [
        (np.array([1, 0, 1]), [1, 1, 1], "classification", 2, 0.0),
        (np.array(["a", "b"]), ["a", "b"], "classification", 2, 0.0),
        (np.array([1.0, 2.0]), [1, "1"], "classification", 1, 0.0),
        (np.array([1.5, 2.0]), [1.0, 4.0], "regression", 0, 2.5),
    ],
)
def test_feedback_scores(
    predictions: np.ndarray, labels: list[Any], task: str, correct: int, abs_error: float
) -> None:
    result = score(predictions, labels, task)
    assert (result.rows, result.correct, result.abs_error_sum) == (len(labels), correct, abs_error)


def test_feedback_label_count_must_match() -> None:
    with pytest.raises(FeedbackError, match="one label per row"):
        score(np.array([1, 2]), [1], "classification")


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServeSettings(
        model_uri="s3://bucket/m/run", sha256="A" * 64, workers=3, shadow_url="http://c:8080",
        shadow_percent=5, insecure_skip_verify=False,
    )  # fmt: skip
    assert settings.sha256 == "a" * 64
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    assert ServeSettings() == settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_uri": "x"}, "sha256"),
        ({"model_uri": "x", "sha256": "xyz"}, "64 hexadecimal"),
        ({"model_uri": "x", "insecure_skip_verify": True, "shadow_percent": 5}, "shadow_url"),
        ({"model_uri": "x", "insecure_skip_verify": True, "track": "blue"}, "track"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServeSettings(**kwargs)


def test_fast_paths_can_be_switched_off(tmp_path: Any) -> None:
    import hashlib

    import skops.io

    from kubeloop.serving.model import fetch_artifact, load_model

    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(IRIS.data, IRIS.target)
    skops.io.dump(model, tmp_path / "model.skops")
    digest = hashlib.sha256((tmp_path / "model.skops").read_bytes()).hexdigest()
    artifact = fetch_artifact(str(tmp_path), digest)
    assert load_model(artifact, "m").fast is not None
    plain = load_model(artifact, "m", fast_paths=False)
    assert plain.fast is None
    np.testing.assert_array_equal(plain.predict(IRIS.data), model.predict(IRIS.data))


def test_the_documented_local_serve_command_reads_the_trainers_model_sha256(tmp_path: Any) -> None:
    """docs/serving-protocol.md serves a run with ``--sha256 "$(cat .../model.sha256)"``: the
    file the real trainer writes is a sha256sum line, and the server takes its digest."""
    import re
    import shlex
    import subprocess
    from pathlib import Path

    from serve_fixtures import train_with_kubeloop

    from kubeloop.runtime.serve import load_settings

    model = train_with_kubeloop(tmp_path, "churn", "sklearn.linear_model.LogisticRegression", {"max_iter": 200})
    docs = (Path(__file__).resolve().parents[2] / "docs" / "serving-protocol.md").read_text()
    command = re.search(r"^kubeloop serve --model-uri (\S+) --sha256 (\"\$\(cat \S+\)\") .*$", docs, re.MULTILINE)
    assert command, "docs/serving-protocol.md serves a local run with --sha256 \"$(cat .../model.sha256)\""
    sha256_file = command[2].removeprefix('"$(cat ').removesuffix(')"')
    assert sha256_file == command[1] + "/model.sha256"
    # The shell's $(cat ...), on the file the trainer wrote.
    given = subprocess.run(["sh", "-c", f"cat {shlex.quote(str(model.directory / 'model.sha256'))}"],
                           capture_output=True, text=True, check=True).stdout.rstrip("\n")
    assert given.endswith("  model.skops")  # what the trainer writes: sha256sum's line
    settings = load_settings(["--model-uri", str(model.directory), "--sha256", given])
    assert settings.sha256 == model.sha256
