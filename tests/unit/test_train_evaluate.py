"""Holdout, metrics (checked against independent formulas and scipy) and the gates."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from kubeloop.training.data import load_table
from kubeloop.training.evaluate import compute_metrics, evaluate_gates, predict, split_holdout


@pytest.fixture(autouse=True)
def _one_thread_per_native_pool() -> Iterator[None]:
    # Two shared cores: OpenMP/BLAS pools spinning against other jobs make small fits crawl.
    with threadpool_limits(limits=1):
        yield



def test_holdout_is_seeded_and_stratified() -> None:
    frame = load_table("sklearn://breast_cancer").frame
    first = split_holdout(frame, "target", 0.25, seed=3, stratify=True)
    again = split_holdout(frame, "target", 0.25, seed=3, stratify=True)
    other = split_holdout(frame, "target", 0.25, seed=4, stratify=True)
    assert list(first.test.index) == list(again.test.index)
    assert list(first.test.index) != list(other.test.index)
    assert len(first.test) == math.ceil(len(frame) * 0.25)
    assert set(first.train.index).isdisjoint(first.test.index)
    overall = frame["target"].mean()
    assert abs(first.test["target"].mean() - overall) < 0.01


def test_binary_classification_metrics_match_independent_formulas() -> None:
    frame = load_table("sklearn://breast_cancer").frame
    holdout = split_holdout(frame, "target", 0.3, seed=0, stratify=True)
    features = [c for c in frame.columns if c != "target"]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(
        holdout.train[features], holdout.train["target"])
    predictions = predict(model, holdout.test[features], "classification", need_probabilities=True)
    truth = holdout.test["target"].to_numpy()
    metrics = compute_metrics("classification", truth, predictions)

    labels = predictions.labels
    assert metrics["accuracy"] == pytest.approx(np.mean(labels == truth))
    tp = np.sum((labels == 1) & (truth == 1))
    fp = np.sum((labels == 1) & (truth == 0))
    fn = np.sum((labels == 0) & (truth == 1))
    assert metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # ROC AUC is the Mann-Whitney U statistic over (positive, negative) pairs.
    scores = predictions.probabilities[:, 1]  # type: ignore[index]
    u = stats.mannwhitneyu(scores[truth == 1], scores[truth == 0]).statistic
    assert metrics["roc_auc"] == pytest.approx(u / (np.sum(truth == 1) * np.sum(truth == 0)))
    p = np.clip(predictions.probabilities[np.arange(truth.size), truth], 1e-15, 1)  # type: ignore[index]
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log(p)))


def test_multiclass_f1_is_macro_and_auc_is_one_vs_rest() -> None:
    frame = load_table("sklearn://iris").frame
    holdout = split_holdout(frame, "target", 0.4, seed=1, stratify=True)
    features = [c for c in frame.columns if c != "target"]
    model = LogisticRegression(max_iter=50, C=0.01).fit(holdout.train[features], holdout.train["target"])
    predictions = predict(model, holdout.test[features], "classification", need_probabilities=True)
    truth = holdout.test["target"].to_numpy()
    metrics = compute_metrics("classification", truth, predictions)
    per_class_f1, per_class_auc = [], []
    for k in (0, 1, 2):
        tp = np.sum((predictions.labels == k) & (truth == k))
        fp = np.sum((predictions.labels == k) & (truth != k))
        fn = np.sum((predictions.labels != k) & (truth == k))
        per_class_f1.append(2 * tp / (2 * tp + fp + fn))
        scores = predictions.probabilities[:, k]  # type: ignore[index]
        u = stats.mannwhitneyu(scores[truth == k], scores[truth != k]).statistic
        per_class_auc.append(u / (np.sum(truth == k) * np.sum(truth != k)))
    assert metrics["f1"] == pytest.approx(np.mean(per_class_f1))
    assert metrics["roc_auc"] == pytest.approx(np.mean(per_class_auc))


def test_regression_metrics_match_independent_formulas() -> None:
    frame = load_table("sklearn://diabetes").frame
    holdout = split_holdout(frame, "target", 0.3, seed=0, stratify=False)
    features = [c for c in frame.columns if c != "target"]
    model = LinearRegression().fit(holdout.train[features], holdout.train["target"])
    predictions = predict(model, holdout.test[features], "regression", need_probabilities=True)
    truth = holdout.test["target"].to_numpy()
    metrics = compute_metrics("regression", truth, predictions)
    errors = truth - predictions.labels
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(errors)))
    r2 = 1 - np.sum(errors**2) / np.sum((truth - truth.mean()) ** 2)
    assert metrics["r2"] == pytest.approx(r2)


# (metric, value, threshold, champion value, min improvement, {gate: passed})
GATE_TABLE = [
    ("accuracy", 0.95, 0.90, None, 0.0, {"threshold": True}),
    ("accuracy", 0.85, 0.90, None, 0.0, {"threshold": False}),
    ("accuracy", 0.90, 0.90, None, 0.0, {"threshold": True}),  # reaching it is enough
    ("rmse", 40.0, 50.0, None, 0.0, {"threshold": True}),  # lower is better
    ("rmse", 60.0, 50.0, None, 0.0, {"threshold": False}),
    ("log_loss", 0.3, 0.2, None, 0.0, {"threshold": False}),
    ("f1", 0.91, None, 0.90, 0.0, {"minImprovement": True}),
    ("f1", 0.90, None, 0.90, 0.0, {"minImprovement": True}),  # a tie passes minImprovement 0
    ("f1", 0.90, None, 0.90, 0.01, {"minImprovement": False}),
    ("f1", 0.905, None, 0.90, 0.01, {"minImprovement": False}),
    ("f1", 0.92, None, 0.90, 0.01, {"minImprovement": True}),
    ("mae", 9.0, None, 10.0, 0.5, {"minImprovement": True}),  # 1.0 better, lower is better
    ("mae", 9.8, None, 10.0, 0.5, {"minImprovement": False}),
    ("mae", 11.0, None, 10.0, 0.0, {"minImprovement": False}),
    ("roc_auc", 0.99, 0.95, 0.995, 0.0, {"threshold": True, "minImprovement": False}),
]


@pytest.mark.parametrize(("metric", "value", "threshold", "champion", "improvement", "expected"), GATE_TABLE)
def test_gates_are_direction_aware(
    metric: str, value: float, threshold: float | None, champion: float | None,
    improvement: float, expected: dict[str, bool],
) -> None:
    gates = evaluate_gates(
        metric, {metric: value}, threshold, champion is not None,
        None if champion is None else {metric: champion}, improvement,
    )
    assert {gate.name: gate.passed for gate in gates} == expected
    for gate in gates:
        assert metric in gate.message


def test_without_a_champion_the_improvement_gate_passes_and_says_why() -> None:
    (gate,) = evaluate_gates("accuracy", {"accuracy": 0.5}, None, True, None, 0.1)
    assert gate.passed and "no champion" in gate.message


def test_a_missing_metric_fails_its_gates() -> None:
    gates = evaluate_gates("roc_auc", {"accuracy": 0.9}, 0.8, True, {"accuracy": 0.8}, 0.0)
    assert [gate.passed for gate in gates] == [False, False]


@pytest.mark.parametrize(
    "estimator",
    [
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.ensemble.ExtraTreesClassifier",
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.tree.DecisionTreeClassifier",
        "sklearn.tree.ExtraTreeClassifier",
    ],
)
@pytest.mark.parametrize("dataset", ["iris", "breast_cancer", "digits"])
def test_labels_taken_from_probabilities_equal_predict(estimator: str, dataset: str) -> None:
    from kubeloop.training.estimators import build_estimator
    from kubeloop.training.evaluate import PREDICT_IS_ARGMAX_OF_PROBA

    params = {"random_state": 0, **({"max_iter": 20} if "HistGradient" in estimator else {})}
    model = build_estimator(estimator, params, ("sklearn.",))
    kind = type(model)
    assert f"{kind.__module__}.{kind.__qualname__}" in PREDICT_IS_ARGMAX_OF_PROBA
    frame = load_table(f"sklearn://{dataset}").frame
    holdout = split_holdout(frame, "target", 0.3, seed=0, stratify=True)
    features = [c for c in frame.columns if c != "target"]
    model.fit(holdout.train[features], holdout.train["target"])
    predictions = predict(model, holdout.test[features], "classification", need_probabilities=True)
    np.testing.assert_array_equal(predictions.labels, model.predict(holdout.test[features]))
