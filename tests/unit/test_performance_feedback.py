"""Live performance from the servers' feedback counters, checked against scikit-learn.

Given a real ``kubeloop serve`` process and predictions answered over HTTP, when labels
arrive on /feedback (late, in several batches, some outside the model's classes), then the
counters it exports at /metrics (read with the operator's own scrape parser) give the same
accuracy, F1, MAE and RMSE as scikit-learn computes on the same rows, with the trainer's F1
rule (the second of the sorted classes for two classes, macro otherwise).
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import numpy as np
import pytest
from serve_fixtures import StoredModel, serving
from sklearn import metrics as skm

from kubeloop.analysis.scrape import increases, parse_metrics
from kubeloop.drift import performance as perf
from kubeloop.serving.feedback import OTHER_CLASS, class_roles, score


def counts_of(metrics_text: str, before: str | None = None) -> perf.LabelledCounts:
    """The feedback counters of a /metrics text (increases since ``before``, if given)."""
    current = parse_metrics(metrics_text)
    previous = parse_metrics(before) if before is not None else None
    values = increases(previous, current).values if previous is not None else current.values
    return perf.counts_from_samples(
        (name, dict(labels), value) for (name, labels), value in values.items()
    )


def labelled_counts(predicted: list[Any], truth: list[Any], classes: Any) -> perf.LabelledCounts:
    """What the server would count for these rows, without a server (pure scoring)."""
    result = score(np.asarray(predicted), truth, "classification", class_roles(classes))
    samples: list[tuple[str, dict[str, str], float]] = [
        (perf.ROWS, {}, result.rows),
        (perf.CORRECT, {}, result.correct),
    ]
    for name, o in result.classes.items():
        for outcome, count in (
            ("tp", o.true_positives),
            ("fp", o.false_positives),
            ("fn", o.false_negatives),
        ):
            samples.append(
                (perf.CLASS_OUTCOMES, {"class": name, "role": o.role, "outcome": outcome}, count)
            )
    return perf.counts_from_samples(samples)


def trainer_f1(truth: np.ndarray, predicted: np.ndarray, classes: np.ndarray) -> float:
    if len(classes) == 2:
        return float(
            skm.f1_score(
                truth, predicted, pos_label=classes[1], average="binary", zero_division=0.0
            )
        )
    return float(skm.f1_score(truth, predicted, average="macro", zero_division=0.0))


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_from_class_counters_equals_scikit_learn(n_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = np.arange(n_classes)
    truth = rng.integers(0, n_classes, 400)
    predicted = np.where(rng.random(400) < 0.7, truth, rng.integers(0, n_classes, 400))
    counts = labelled_counts(predicted.tolist(), truth.tolist(), classes)
    assert perf.live_value("f1", counts) == pytest.approx(
        trainer_f1(truth, predicted, classes), abs=1e-12
    )
    assert perf.live_value("accuracy", counts) == pytest.approx(
        skm.accuracy_score(truth, predicted)
    )


def test_string_classes_and_labels_outside_the_model_are_bounded() -> None:
    classes = np.asarray(["churn", "stay"])  # sorted: "stay" is the positive class
    predicted = ["stay", "stay", "churn", "stay"]
    truth = ["stay", "churn", "churn", "gone?"]
    result = score(np.asarray(predicted), truth, "classification", class_roles(classes))
    assert set(result.classes) == {"stay", "churn", OTHER_CLASS}
    assert (
        result.classes["stay"].role == "positive" and result.classes[OTHER_CLASS].role == "negative"
    )
    counts = labelled_counts(predicted, truth, classes)
    # tp=1 (row 0), fp=2 (rows 1, 3): F1 = 2/(2+2+0)
    assert perf.live_value("f1", counts) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("metric", "reference", "tolerance", "live", "limit", "degraded"),
    [
        ("accuracy", 0.90, 0.05, 0.856, 0.855, False),
        ("accuracy", 0.90, 0.05, 0.854, 0.855, True),
        ("f1", 0.80, 0.0, 0.80, 0.80, False),
        ("f1", 0.80, 0.0, 0.7999, 0.80, True),
        ("rmse", 10.0, 0.1, 11.0, 11.0, False),
        ("rmse", 10.0, 0.1, 11.01, 11.0, True),
        ("mae", 2.0, 0.5, 2.9, 3.0, False),
        ("mae", 2.0, 0.5, 3.1, 3.0, True),
    ],
)
def test_limit_is_relative_and_direction_aware(
    metric: str, reference: float, tolerance: float, live: float, limit: float, degraded: bool
) -> None:
    assert perf.limit(metric, reference, tolerance) == pytest.approx(limit)
    assert perf.degraded(metric, live, reference, tolerance) is degraded


def test_no_labels_no_value_and_prometheus_queries() -> None:
    assert perf.live_value("accuracy", perf.LabelledCounts()) is None
    assert perf.increase_query(perf.ROWS, "churn", "abc", 600) == (
        'sum (increase(kubeloop_serve_feedback_rows_total{model="churn",sha="abc"}[600s]))'
    )
    assert "by (class, role, outcome)" in perf.increase_query(
        perf.CLASS_OUTCOMES, "churn", "abc", 0
    )
    with pytest.raises(KeyError):
        perf.counts_from_samples([(perf.CLASS_OUTCOMES, {"role": "macro"}, 1.0)])


def predict_then_label(
    url: str, model: StoredModel, rows: slice, flip_every: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Predict ``rows`` in requests of 5 rows, then send their labels (some flipped) later, in
    one /feedback call: the served predictions and the labels sent."""
    features, truth = model.features[rows], model.target[rows].copy()
    if flip_every:
        truth = np.where(
            np.arange(truth.size) % flip_every == 0,
            (truth + 1) % len(np.unique(model.target)),
            truth,
        )
    ids, served = [], []
    for start in range(0, len(features), 5):
        answer = httpx.post(
            url + "/predict", json={"instances": features[start : start + 5].tolist()}
        ).json()
        ids.append(answer["id"])
        served.extend(answer["predictions"])
    items = [
        {"id": request_id, "labels": truth[i * 5 : i * 5 + 5].tolist()}
        for i, request_id in enumerate(ids)
    ]
    assert httpx.post(url + "/feedback", json=items).json()["matched"] == ids
    return np.asarray(served), truth


@pytest.mark.parametrize("name", ["forest", "wine"])
def test_server_counters_give_the_trainers_metrics_over_label_arrival(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    model = models[name]
    classes = np.unique(model.target)
    with serving(model, tmp_path_factory.mktemp("logs")) as server:
        # Labels that arrived before the window are not in it, however recent their predictions.
        predict_then_label(server.url, model, slice(0, 40))
        before = server.metrics()
        served, truth = predict_then_label(server.url, model, slice(40, 140), flip_every=4)
        counts = counts_of(server.metrics(), before)
    assert counts.labels == 100
    assert perf.live_value("accuracy", counts) == pytest.approx(skm.accuracy_score(truth, served))
    assert perf.live_value("f1", counts) == pytest.approx(
        trainer_f1(truth, served, classes), abs=1e-12
    )
    assert perf.live_value("accuracy", counts) < 0.9  # the flipped labels show


def test_server_counters_give_mae_and_rmse(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = models["diabetes_ridge"]
    with serving(model, tmp_path_factory.mktemp("logs")) as server:
        answer = httpx.post(
            server.url + "/predict", json={"instances": model.features[:60].tolist()}
        ).json()
        truth = model.target[:60] + 25.0  # the world moved: every label 25 higher
        httpx.post(server.url + "/feedback", json={"id": answer["id"], "labels": truth.tolist()})
        counts = counts_of(server.metrics())
    served = np.asarray(answer["predictions"])
    assert counts.labels == 60
    assert perf.live_value("mae", counts) == pytest.approx(
        skm.mean_absolute_error(truth, served), rel=1e-9
    )
    assert perf.live_value("rmse", counts) == pytest.approx(
        math.sqrt(skm.mean_squared_error(truth, served)), rel=1e-9
    )


def test_class_counters_are_totals_across_worker_processes(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = models["wine"]
    rows, truth = model.features[:120], model.target[:120].copy()
    truth[::4] = (truth[::4] + 1) % 3
    with serving(
        model,
        tmp_path_factory.mktemp("logs"),
        workers=2,
        env={"KUBELOOP_SERVE_METRICS_FLUSH_SECONDS": "0.2"},
    ) as server:
        served, ids = [], []
        for start in range(0, 120, 6):
            # A new connection per request: the kernel picks a worker each time, and a label
            # for another worker's prediction is forwarded to it.
            with httpx.Client(timeout=30) as http:
                answer = http.post(
                    server.url + "/predict", json={"instances": rows[start : start + 6].tolist()}
                ).json()
            ids.append(answer["id"])
            served.extend(answer["predictions"])
        for i, request_id in enumerate(ids):
            with httpx.Client(timeout=30) as http:
                labels = truth[i * 6 : i * 6 + 6].tolist()
                assert (
                    http.post(
                        server.url + "/feedback", json={"id": request_id, "labels": labels}
                    ).status_code
                    == 200
                )
        time.sleep(1.0)  # let both workers flush
        counts = counts_of(server.metrics())
    assert counts.labels == 120
    assert perf.live_value("f1", counts) == pytest.approx(
        trainer_f1(truth, np.asarray(served), np.arange(3)), abs=1e-12
    )
