"""Holdout, metrics and gates: how a run decides whether its model is good enough.

The holdout is a seeded split (stratified for classification when every class has at least
two rows), so the same data and seed always give the same holdout, and the champion is
scored on exactly the rows the challenger is scored on.

Gates (direction-aware: ``rmse``, ``mae`` and ``log_loss`` are better when lower):

- ``threshold``: the metric must reach ``evaluation.threshold``
  (``>=`` for higher-is-better metrics, ``<=`` for lower-is-better);
- ``minImprovement`` (with ``compareTo: champion``): the metric must beat the champion's on
  the same holdout by at least ``evaluation.minImprovement`` (``0`` lets a tie pass). Without
  a champion (the lineage's first model) the gate passes and says so.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kubeloop.training.result import Gate

if TYPE_CHECKING:
    import pandas as pd

LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss"})


@dataclass(frozen=True)
class Holdout:
    """The training rows and the held-out rows of one table."""

    train: pd.DataFrame
    test: pd.DataFrame


@dataclass(frozen=True)
class Predictions:
    """What a model said about the holdout."""

    labels: np.ndarray[Any, Any]
    probabilities: np.ndarray[Any, Any] | None = None
    classes: np.ndarray[Any, Any] | None = None


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` means a better model."""
    return metric not in LOWER_IS_BETTER


def split_holdout(
    frame: pd.DataFrame, target: str, test_fraction: float, seed: int, stratify: bool
) -> Holdout:
    """The seeded train/holdout split of ``frame``; rows keep their original index."""
    from sklearn.model_selection import train_test_split

    labels = frame[target] if stratify else None
    if labels is not None:
        counts = labels.value_counts()
        test_rows = math.ceil(len(frame) * test_fraction)
        # Stratifying needs two rows per class and room for every class on both sides.
        if counts.min() < 2 or test_rows < len(counts) or len(frame) - test_rows < len(counts):
            labels = None
    train, test = train_test_split(
        frame, test_size=test_fraction, random_state=seed, shuffle=True, stratify=labels
    )
    return Holdout(train=train, test=test)


# Classifiers whose ``predict`` is, in scikit-learn's own code, ``classes_[argmax(predict_proba)]``
# (exact types only: a subclass may override either). For them the labels are taken from the
# probabilities instead of running the model a second time over the holdout.
PREDICT_IS_ARGMAX_OF_PROBA = frozenset(
    {
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.ensemble._forest.ExtraTreesClassifier",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._classes.ExtraTreeClassifier",
    }
)


def predict(model: Any, features: pd.DataFrame, task: str, need_probabilities: bool) -> Predictions:
    """Labels (and class probabilities when the model has them and they are needed)."""
    if task != "classification" or not need_probabilities or not hasattr(model, "predict_proba"):
        return Predictions(labels=np.asarray(model.predict(features)))
    probabilities = np.asarray(model.predict_proba(features), dtype=np.float64)
    classes = np.asarray(model.classes_)
    if _predict_is_argmax_of_proba(model) and probabilities.ndim == 2:
        labels = classes.take(np.argmax(probabilities, axis=1))
    else:
        labels = np.asarray(model.predict(features))
    return Predictions(labels=labels, probabilities=probabilities, classes=classes)


def _predict_is_argmax_of_proba(model: Any) -> bool:
    from sklearn.pipeline import Pipeline

    # A Pipeline's predict and predict_proba run the same transforms before its last step.
    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    kind = type(final)
    return f"{kind.__module__}.{kind.__qualname__}" in PREDICT_IS_ARGMAX_OF_PROBA


def compute_metrics(
    task: str, truth: Sequence[Any] | np.ndarray[Any, Any], predictions: Predictions
) -> dict[str, float]:
    """Every metric of the task that the predictions allow, as plain floats.

    Classification: ``accuracy``; ``f1`` (of the second of the sorted classes when there are
    two, macro-averaged otherwise); ``roc_auc`` (one-vs-rest for more than two classes) and
    ``log_loss`` when probabilities are there. Regression: ``rmse``, ``mae``, ``r2``.
    A metric that cannot be computed on this holdout (e.g. ROC AUC with a class absent) is
    left out rather than reported as a made-up number.
    """
    return {
        name: value
        for name, value in _all_metrics(task, truth, predictions).items()
        if math.isfinite(value)  # NaN has no JSON form and no meaning as a gate input
    }


def _all_metrics(
    task: str, truth: Sequence[Any] | np.ndarray[Any, Any], predictions: Predictions
) -> dict[str, float]:
    from sklearn import metrics as skm

    y_true = np.asarray(truth)
    y_pred = predictions.labels
    if task == "regression":
        errors = y_true.astype(np.float64) - y_pred.astype(np.float64)
        return {
            "rmse": float(np.sqrt(np.mean(errors**2))),
            "mae": float(np.mean(np.abs(errors))),
            "r2": float(skm.r2_score(y_true, y_pred)),
        }
    result = {"accuracy": float(skm.accuracy_score(y_true, y_pred))}
    classes = (
        predictions.classes
        if predictions.classes is not None
        else np.unique(np.concatenate([y_true, y_pred]))
    )
    if len(classes) == 2:
        result["f1"] = float(
            skm.f1_score(y_true, y_pred, pos_label=classes[1], average="binary", zero_division=0.0)
        )
    else:
        result["f1"] = float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0.0))
    proba = predictions.probabilities
    if proba is not None and predictions.classes is not None:
        try:
            if len(classes) == 2:
                result["roc_auc"] = float(skm.roc_auc_score(y_true == classes[1], proba[:, 1]))
            else:
                result["roc_auc"] = float(
                    skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)
                )
        except ValueError:
            pass  # one class missing from the holdout: no honest AUC
        with contextlib.suppress(ValueError):
            result["log_loss"] = float(skm.log_loss(y_true, proba, labels=classes))
    return result


def evaluate_gates(
    metric: str,
    metrics: Mapping[str, float],
    threshold: float | None,
    compare_to_champion: bool,
    champion_metrics: Mapping[str, float] | None,
    min_improvement: float,
) -> list[Gate]:
    """The gates the spec asks for, each passed or failed with a sentence saying why. Pure."""
    gates: list[Gate] = []
    value = metrics.get(metric)
    better = higher_is_better(metric)
    comparison = ">=" if better else "<="
    if threshold is not None:
        passed = _reaches(value, threshold, better)
        gates.append(
            Gate(
                name="threshold",
                passed=passed,
                metric=metric,
                value=value,
                required=threshold,
                message=(
                    f"{metric} {_fmt(value)} {'meets' if passed else 'misses'} the threshold "
                    f"({comparison} {threshold:g})"
                ),
            )
        )
    if compare_to_champion:
        champion_value = None if champion_metrics is None else champion_metrics.get(metric)
        if champion_metrics is None:
            gates.append(
                Gate(
                    name="minImprovement",
                    passed=True,
                    metric=metric,
                    value=value,
                    message="no champion given: the first model of a lineage has nothing to beat",
                )
            )
        elif champion_value is None or math.isnan(champion_value):
            gates.append(
                Gate(
                    name="minImprovement",
                    passed=False,
                    metric=metric,
                    value=value,
                    message=f"the champion has no {metric} on this holdout, so it cannot be compared",
                )
            )
        else:
            required = (
                champion_value + min_improvement if better else champion_value - min_improvement
            )
            passed = _reaches(value, required, better)
            gates.append(
                Gate(
                    name="minImprovement",
                    passed=passed,
                    metric=metric,
                    value=value,
                    required=required,
                    message=(
                        f"{metric} {_fmt(value)} vs champion {champion_value:.6g}: needs "
                        f"{comparison} {required:.6g} (minImprovement {min_improvement:g}); "
                        f"{'passed' if passed else 'not enough'}"
                    ),
                )
            )
    return gates


def _reaches(value: float | None, required: float, better: bool) -> bool:
    if value is None or math.isnan(value):
        return False
    return value >= required if better else value <= required


def _fmt(value: float | None) -> str:
    return "unavailable" if value is None else f"{value:.6g}"
