"""Other programs talking to `kubeloop serve`: a challenger, a third-party client, a fuzzer.

- Shadow mode between two real servers: agreement counted exactly; a slow or dead
  challenger never slows or fails the user's request.
- tritonclient (an existing Open Inference Protocol v2 client, not ours), with its defaults
  (binary tensor data), gets metadata and inference results.
- schemathesis fuzzes the served OpenAPI document: no 5xx, no crash.
- The committed openapi.json is exactly what the code generates.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_fixtures import (
    RunningServer,
    StoredModel,
    free_port,
    fuzz_for_server_errors,
    metric_sum,
    serving,
    store_model,
    train_models,
    v2_request,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kubeloop.serving import openapi


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StoredModel]:
    root = tmp_path_factory.mktemp("models")
    trained = train_models(root)
    forest = trained["forest"]
    # A challenger on the same features that disagrees with the forest on some rows.
    trained["challenger"] = store_model(
        root / "cancer-lr" / "run-2",
        make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000)),
        forest.features,
        forest.target,
        forest.feature_names,
        classification=True,
    )
    return trained


@pytest.fixture(scope="module")
def forest(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with serving(
        models["forest"], tmp_path_factory.mktemp("logs"), "--model-name", "cancer"
    ) as server:
        yield server


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


# -- shadow --------------------------------------------------------------------------------


def test_shadow_agreement_is_counted_between_two_real_servers(
    models: dict[str, StoredModel], tmp_path: Path
) -> None:
    stable, challenger = models["forest"], models["challenger"]
    rows = stable.features[::3][:120]
    agree = stable.estimator.predict(rows) == challenger.estimator.predict(rows)
    assert 0 < agree.sum() < agree.size, "the test needs both agreement and disagreement"
    with (
        serving(challenger, tmp_path / "c", "--model-name", "cancer", "--track", "canary") as chal,
        serving(
            stable, tmp_path / "s", "--model-name", "cancer",
            "--shadow-url", chal.url, "--shadow-percent", "100",
        ) as primary,
    ):  # fmt: skip
        for i in range(rows.shape[0]):
            response = httpx.post(
                primary.url + "/v2/models/cancer/infer", json=v2_request(rows[i : i + 1])
            )
            assert response.status_code == 200
        wait_for(
            lambda: (
                metric_sum(primary.metrics(), "kubeloop_serve_shadow_requests_total")
                == rows.shape[0]
            )
        )
        text = primary.metrics()
        challenger_served = metric_sum(
            chal.metrics(), "kubeloop_serve_predictions_total", track="canary"
        )
    assert metric_sum(text, "kubeloop_serve_shadow_requests_total", result="agree") == agree.sum()
    assert metric_sum(text, "kubeloop_serve_shadow_requests_total", result="disagree") == (
        agree.size - agree.sum()
    )
    assert metric_sum(text, "kubeloop_serve_shadow_rows_total", result="agree") == agree.sum()
    assert metric_sum(text, "kubeloop_serve_shadow_requests_total", result="error") == 0
    assert challenger_served == rows.shape[0]


class SlowChallenger(BaseHTTPRequestHandler):
    """A challenger that takes 3 s to answer anything."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(3)
        body = b'{"predictions": [0]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("challenger", ["slow", "down"])
def test_shadow_never_slows_or_fails_the_user(
    models: dict[str, StoredModel], tmp_path: Path, challenger: str
) -> None:
    slow = ThreadingHTTPServer(("127.0.0.1", 0), SlowChallenger)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{slow.server_address[1]}"
    if challenger == "down":
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    stable = models["forest"]
    rows = stable.features[:40]
    env = {"KUBELOOP_SERVE_SHADOW_QUEUE_SIZE": "4", "KUBELOOP_SERVE_SHADOW_CONCURRENCY": "2"}
    try:
        with serving(
            stable, tmp_path, "--model-name", "cancer",
            "--shadow-url", url, "--shadow-percent", "100", env=env,
        ) as primary, httpx.Client(timeout=30) as client:  # fmt: skip
            latencies = []
            loop_started = time.perf_counter()
            for i in range(rows.shape[0]):
                started = time.perf_counter()
                response = client.post(
                    primary.url + "/v2/models/cancer/infer", json=v2_request(rows[i : i + 1])
                )
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
                assert response.json()["outputs"][0]["data"] == [
                    int(stable.estimator.predict(rows[i : i + 1])[0])
                ]
            loop_seconds = time.perf_counter() - loop_started
            if challenger == "down":
                wait_for(
                    lambda: (
                        metric_sum(
                            primary.metrics(),
                            "kubeloop_serve_shadow_requests_total",
                            result="error",
                        )
                        > 0
                    )
                )
            text = primary.metrics()
    finally:
        slow.shutdown()
    # The challenger needs 3 s per answer: a user request that waited for it would take that.
    assert max(latencies) < 2.5, latencies
    if challenger == "slow":
        # Two senders, a queue of four: everything beyond that was dropped, not waited for.
        # (Each sender frees up every 3 s, so a slow run of the loop lets two more through.)
        accepted_at_most = 4 + 2 * (1 + math.floor(loop_seconds / 3.0))
        dropped = metric_sum(text, "kubeloop_serve_shadow_dropped_total")
        assert dropped >= rows.shape[0] - accepted_at_most, (dropped, loop_seconds)
    assert metric_sum(text, "kubeloop_serve_requests_total", endpoint="infer", code="200") == 40


# -- a third-party Open Inference Protocol client -----------------------------------------


def test_tritonclient_metadata_and_infer(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    import tritonclient.http as triton

    model = models["forest"]
    client = triton.InferenceServerClient(url=forest.url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("cancer")
    metadata = client.get_model_metadata("cancer")
    assert metadata["name"] == "cancer"
    assert metadata["inputs"][0]["shape"] == [-1, 30]
    rows = model.features[:9]
    # tritonclient's defaults: binary tensor data for the input and for both outputs.
    tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    outputs = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = client.infer("cancer", [tensor], outputs=outputs, request_id="triton-1")
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    np.testing.assert_array_equal(result.as_numpy("predict"), model.estimator.predict(rows))
    np.testing.assert_array_equal(
        result.as_numpy("predict_proba"), model.estimator.predict_proba(rows)
    )
    assert result.get_response()["id"] == "triton-1"


# -- fuzzing -------------------------------------------------------------------------------


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(forest: RunningServer) -> None:
    assert fuzz_for_server_errors(forest.url) == []
    fuzzed = metric_sum(forest.metrics(), "kubeloop_serve_requests_total", endpoint="infer")
    assert fuzzed >= 20, "the fuzzer should have reached the infer endpoint"
    # The server survived the fuzzing and still answers correctly.
    assert httpx.get(forest.url + "/v2/health/live").status_code == 200


def test_committed_openapi_document_is_generated() -> None:
    assert openapi.DOCUMENT_PATH.read_bytes() == openapi.render(), (
        "operator/kubeloop/serving/openapi.json is stale: run "
        "`python -m kubeloop.serving.openapi --write`"
    )
