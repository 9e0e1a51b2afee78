"""The live half of drift and performance monitoring, read back from /metrics.

Given a real server and rows sent over HTTP, when /metrics is scraped, then the per-bin
counters equal a histogram of the sent rows computed here with NumPy (np.digitize on the
profile's edges, independent of the server's code), feedback updates accuracy / error
counters, and with several worker processes every total is the sum over all of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from serve_fixtures import (
    RunningServer,
    StoredModel,
    metric_sum,
    parse_metrics,
    serving,
    v2_request,
)

from kubeloop.drift.profile import OTHER_CATEGORY, Profile

BIN_METRIC = "kubeloop_serve_feature_bin_total"


def profile_of(model: StoredModel) -> Profile:
    return Profile.from_json_bytes((model.directory / "profile.json").read_bytes())


def served_bins(text: str, feature: str) -> dict[str, float]:
    return {
        dict(labels)["bin"]: value
        for (name, labels), value in parse_metrics(text).items()
        if name == BIN_METRIC and dict(labels)["feature"] == feature
    }


def expected_numeric_bins(values: np.ndarray, edges: list[float]) -> dict[str, float]:
    """Bin i holds edges[i-1] < x <= edges[i]: np.digitize(right=True); NaN is 'missing'."""
    present = values[~np.isnan(values)]
    counts = np.bincount(np.digitize(present, edges, right=True), minlength=len(edges) + 1)
    out = {str(i): float(c) for i, c in enumerate(counts)}
    out["missing"] = float(np.isnan(values).sum())
    return out


def send_rows(server: RunningServer, model_name: str, rows: np.ndarray, chunk: int = 7) -> None:
    """Send rows in chunks from several threads, so the server batches them its own way."""

    def send(start: int) -> None:
        part = rows[start : start + chunk]
        instances = [[None if np.isnan(v) else v for v in row] for row in part.tolist()]
        response = httpx.post(server.url + "/predict", json={"instances": instances}, timeout=30)
        assert response.status_code == 200, response.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(0, rows.shape[0], chunk)))


def test_drift_counters_equal_a_direct_histogram_of_sent_rows(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = models["forest"]
    profile = profile_of(model)
    rng = np.random.default_rng(3)
    # Live traffic that is shifted from the training data, with some values missing.
    rows = model.features[rng.integers(0, model.features.shape[0], 300)] * 1.1
    rows[rng.random(rows.shape) < 0.02] = np.nan
    with serving(model, tmp_path_factory.mktemp("logs"), "--model-name", "cancer") as server:
        before = server.metrics()
        assert served_bins(before, model.feature_names[0])["0"] == 0  # series exist from start
        send_rows(server, "cancer", rows)
        text = server.metrics()
    for i, feature in enumerate(profile.features):
        assert served_bins(text, feature.name) == expected_numeric_bins(
            rows[:, i], feature.edges
        ), feature.name
    predictions = model.estimator.predict(rows)
    labels, counts = np.unique(predictions.astype(str), return_counts=True)
    expected = {c: 0.0 for c in [*profile.prediction.categories, OTHER_CATEGORY, "missing"]}  # type: ignore[union-attr]
    expected.update({str(k): float(v) for k, v in zip(labels, counts, strict=True)})
    assert served_bins(text, "__prediction__") == expected
    assert metric_sum(text, "kubeloop_serve_predictions_total") == rows.shape[0]
    assert metric_sum(text, "kubeloop_serve_batch_size_sum") == rows.shape[0]
    assert metric_sum(text, "kubeloop_serve_model_info", sha256=model.sha256) == 1


def test_regression_prediction_bins(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = models["diabetes"]
    profile = profile_of(model)
    rows = model.features[:120]
    with serving(model, tmp_path_factory.mktemp("logs")) as server:
        send_rows(server, "model", rows)
        text = server.metrics()
    assert profile.prediction is not None
    assert served_bins(text, "__prediction__") == expected_numeric_bins(
        model.estimator.predict(rows), profile.prediction.edges
    )


def test_feedback_updates_accuracy_counters(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = models["forest"]
    rows, truth = model.features[200:260], model.target[200:260]
    # Flip some labels so accuracy is not trivially 100 %.
    truth = np.where(np.arange(truth.size) % 5 == 0, 1 - truth, truth)
    with serving(model, tmp_path_factory.mktemp("logs"), "--model-name", "cancer") as server:
        ids, served = [], []
        for start in range(0, 60, 6):
            answer = httpx.post(
                server.url + "/v2/models/cancer/infer", json=v2_request(rows[start : start + 6])
            ).json()
            ids.append(answer["id"])
            served.append(answer["outputs"][0]["data"])
        items = [
            {"id": request_id, "labels": truth[i * 6 : i * 6 + 6].tolist()}
            for i, request_id in enumerate(ids)
        ]
        result = httpx.post(server.url + "/feedback", json=items[:-1]).json()
        assert result == {"matched": ids[:-1], "unknown": []}
        single = httpx.post(
            server.url + "/feedback", json={"id": "never-served", "label": 1}
        ).json()
        assert single == {"matched": [], "unknown": ["never-served"]}
        again = httpx.post(server.url + "/feedback", json=items[0])
        # Each prediction is scored once: a second label is refused, not counted.
        assert again.status_code == 409
        assert again.json()["already_labelled"] == [ids[0]] and again.json()["unknown"] == []
        wrong_count = httpx.post(server.url + "/feedback", json={"id": ids[-1], "labels": [1]})
        assert wrong_count.status_code == 400
        assert "6 rows" in wrong_count.json()["error"]
        text = server.metrics()
    served_flat = np.concatenate(served[:-1])
    correct = int((served_flat == truth[:54]).sum())
    assert metric_sum(text, "kubeloop_serve_feedback_rows_total") == 54
    assert metric_sum(text, "kubeloop_serve_feedback_correct_total") == correct
    assert correct < 54
    assert metric_sum(text, "kubeloop_serve_feedback_total", result="matched") == 9
    assert metric_sum(text, "kubeloop_serve_feedback_total", result="unknown") == 1
    assert metric_sum(text, "kubeloop_serve_feedback_total", result="already_labelled") == 1


def test_feedback_updates_error_counters_for_a_regressor(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = models["diabetes_ridge"]
    rows, truth = model.features[:20], model.target[:20]
    with serving(model, tmp_path_factory.mktemp("logs")) as server:
        answer = httpx.post(server.url + "/predict", json={"instances": rows.tolist()}).json()
        httpx.post(server.url + "/feedback", json={"id": answer["id"], "labels": truth.tolist()})
        text = server.metrics()
    error = np.asarray(answer["predictions"]) - truth
    assert metric_sum(text, "kubeloop_serve_feedback_abs_error_sum_total") == pytest.approx(
        np.abs(error).sum(), rel=1e-9
    )
    assert metric_sum(text, "kubeloop_serve_feedback_squared_error_sum_total") == pytest.approx(
        np.square(error).sum(), rel=1e-9
    )


@pytest.fixture(scope="module")
def two_workers(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with serving(
        models["wine"],
        tmp_path_factory.mktemp("logs"),
        "--model-name", "wine",
        workers=2,
        env={"KUBELOOP_SERVE_METRICS_FLUSH_SECONDS": "0.2"},
    ) as server:  # fmt: skip
        yield server


def fresh_connection_post(url: str, body: object) -> httpx.Response:
    # A new connection per request lets the kernel (SO_REUSEPORT) pick a worker each time.
    with httpx.Client(timeout=30) as client:
        return client.post(url, json=body)


def test_metrics_are_totals_across_worker_processes(
    two_workers: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["wine"]
    before = two_workers.metrics()
    rows = model.features[:80]
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda r: fresh_connection_post(
                    two_workers.url + "/v2/models/wine/infer", v2_request(rows[r : r + 1])
                ),
                range(80),
            )
        )
    assert all(r.status_code == 200 for r in responses)

    def counted() -> tuple[float, float]:
        after = two_workers.metrics()
        requests = metric_sum(after, "kubeloop_serve_requests_total", endpoint="infer")
        requests -= metric_sum(before, "kubeloop_serve_requests_total", endpoint="infer")
        rows_counted = sum(served_bins(after, model.feature_names[0]).values()) - sum(
            served_bins(before, model.feature_names[0]).values()
        )
        return requests, rows_counted

    # Other workers move drift counts to the shared files every 0.2 s: wait for them (a
    # loaded machine may take longer), then the totals must be exact, not merely reached.
    deadline = time.monotonic() + 30
    while min(counted()) < 80 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.6)
    assert counted() == (80, 80)
    pids = {r.headers.get("x-request-id", "").split("-")[0] for r in responses}
    assert len(pids) == 2, "both workers should have served (ids carry a per-process prefix)"


def test_feedback_reaches_the_worker_that_served_the_prediction(
    two_workers: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["wine"]
    rows, truth = model.features[:40], model.target[:40]
    answers = [
        fresh_connection_post(
            two_workers.url + "/predict", {"instances": rows[i : i + 1].tolist()}
        ).json()
        for i in range(40)
    ]
    assert len({a["id"].split("-")[0] for a in answers}) == 2
    before = two_workers.metrics()
    results = [
        fresh_connection_post(
            two_workers.url + "/feedback", {"id": a["id"], "labels": [int(truth[i])]}
        ).json()
        for i, a in enumerate(answers)
    ]
    assert all(r["matched"] == [answers[i]["id"]] for i, r in enumerate(results))
    after = two_workers.metrics()
    correct = sum(a["predictions"][0] == truth[i] for i, a in enumerate(answers))
    assert (
        metric_sum(after, "kubeloop_serve_feedback_correct_total")
        - metric_sum(before, "kubeloop_serve_feedback_correct_total")
        == correct
    )
    assert metric_sum(after, "kubeloop_serve_feedback_total", result="unknown") == metric_sum(
        before, "kubeloop_serve_feedback_total", result="unknown"
    )
