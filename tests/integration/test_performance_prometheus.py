"""The Prometheus path of performance drift: the operator's PromQL over a real Prometheus.

Given a real ``kubeloop serve`` scraped every second by Debian's Prometheus, when labels
arrive in two waves (first right, then, after a pause longer than the window, a wave of
changed labels), then the operator's queries (``increase()`` of the feedback counters over the
policy's window, summed over replicas, per class for F1) see only the second wave: the labels
whose *arrival* lies in the window, not their predictions' time; and the live accuracy and F1
are scikit-learn's on those rows.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import skops.io
from harness import PROMETHEUS, Prometheus, Server, wait_for
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kubeloop.controllers.driftpolicy import prometheus_query
from kubeloop.drift import performance as perf
from kubeloop.drift.profile import build_profile

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus package")
WINDOW_SECONDS = 12


def stored_model(directory: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """A classifier written as the trainer writes it: (sha256, features, target)."""
    data = load_breast_cancer()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        data.data, data.target
    )
    directory.mkdir(parents=True)
    skops.io.dump(model, directory / "model.skops")
    sha = hashlib.sha256((directory / "model.skops").read_bytes()).hexdigest()
    (directory / "model.sha256").write_text(sha)
    profile = build_profile({f"f{i}": data.data[:, i] for i in range(data.data.shape[1])},
                            prediction=model.predict(data.data), prediction_kind="categorical")  # fmt: skip
    (directory / "profile.json").write_bytes(profile.to_json_bytes())
    return sha, data.data, data.target


def predict_and_label(url: str, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    served = []
    ids = []
    for start in range(0, len(rows), 10):
        answer = httpx.post(
            f"{url}/predict", json={"instances": rows[start : start + 10].tolist()}
        ).json()
        ids.append(answer["id"])
        served.extend(answer["predictions"])
    items = [
        {"id": rid, "labels": labels[i * 10 : i * 10 + 10].tolist()} for i, rid in enumerate(ids)
    ]
    assert httpx.post(f"{url}/feedback", json=items).json()["matched"] == ids
    return np.asarray(served)


def test_window_over_label_arrival_through_prometheus(tmp_path: Path) -> None:
    sha, features, target = stored_model(tmp_path / "model" / "run-1")
    server = Server(
        str(tmp_path / "model" / "run-1"), sha, "stable", tmp_path / "serve.log", "cancer"
    )
    prometheus = None
    try:
        server.wait_ready()
        prometheus = Prometheus(
            tmp_path / "prometheus", {"stable": f"127.0.0.1:{server.port}"}, "ml"
        )
        # Predictions of both waves are made now; only the labels arrive at different times.
        first_rows, second_rows = features[:200], features[200:400]
        predict_and_label(server.url, first_rows, target[:200])
        # Changed labels: the world flipped its answer for a third of the rows.
        changed = np.where(np.arange(200) % 3 == 0, 1 - target[200:400], target[200:400])
        served_second = []
        ids = []
        for start in range(0, 200, 10):
            answer = httpx.post(
                f"{server.url}/predict",
                json={"instances": second_rows[start : start + 10].tolist()},
            ).json()
            ids.append(answer["id"])
            served_second.extend(answer["predictions"])
        # Wait until the first wave's labels have left the window, then label the second wave.
        time.sleep(WINDOW_SECONDS + 4)
        items = [
            {"id": rid, "labels": changed[i * 10 : i * 10 + 10].tolist()}
            for i, rid in enumerate(ids)
        ]
        assert httpx.post(f"{server.url}/feedback", json=items).json()["matched"] == ids
        served = np.asarray(served_second)

        def counts() -> perf.LabelledCounts | None:
            samples = []
            for sample in (perf.ROWS, perf.CORRECT, perf.CLASS_OUTCOMES):
                query = perf.increase_query(sample, "cancer", sha[:12], WINDOW_SECONDS)
                samples += [
                    (sample, labels, value)
                    for labels, value in prometheus_query(prometheus.url, query)
                ]
            found = perf.counts_from_samples(samples)
            # Settled once both waves' scrapes are in and the first has left the window.
            return found if 180 <= found.labels <= 230 and found.classes else None

        found = wait_for(counts, 30, 1, "the second wave in the window")
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()
    accuracy = perf.live_value("accuracy", found)
    f1 = perf.live_value("f1", found)
    print(f"PROMETHEUS-PATH labels {found.labels} accuracy {accuracy:.4f} f1 {f1:.4f}")
    # increase() extrapolates to the window's edges, equally for every series of one target.
    assert accuracy == pytest.approx(skm.accuracy_score(changed, served), abs=0.02)
    assert f1 == pytest.approx(
        skm.f1_score(changed, served, pos_label=1, average="binary"), abs=0.02
    )
    assert accuracy < 0.8  # the first wave (labels that agreed) is outside the window
