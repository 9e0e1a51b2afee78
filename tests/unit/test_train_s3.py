"""S3 round trip against a real local S3 server (moto's server mode on 127.0.0.1)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from threadpoolctl import threadpool_limits

from kubeloop.runtime.train import main
from kubeloop.training.artifacts import load_model
from kubeloop.training.data import load_table
from kubeloop.training.result import parse_result

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

@pytest.fixture(autouse=True)
def _one_thread_per_native_pool() -> Iterator[None]:
    # Two shared cores: OpenMP/BLAS pools spinning against other jobs make small fits crawl.
    with threadpool_limits(limits=1):
        yield



@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # Credentials moto accepts; never real ones, and never a non-loopback address.
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto keeps its buckets in process-wide state, shared by every server started in this
        # process: start from an empty S3, whatever another test created.
        urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset", method="POST"))
        yield endpoint
    finally:
        server.stop()


def test_train_from_s3_data_to_s3_storage_and_back(tmp_path: Path, s3_endpoint: str) -> None:
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing")
    fs.mkdir("data")
    fs.mkdir("models")
    frame = load_table("sklearn://wine").frame
    with fs.open("data/wine/train.parquet", "wb") as handle:
        frame.to_parquet(handle, index=False)

    spec = {
        "model": {"name": "wine", "estimator": "sklearn.ensemble.RandomForestClassifier",
                  "params": {"n_estimators": 10, "random_state": 0}, "task": "classification"},
        "data": {"source": "s3://data/wine/train.parquet", "target": "target"},
        "output": {"storageUri": "s3://models/registry"},
    }
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "KUBELOOP_TRAININGRUN_SPEC": orjson.dumps(spec).decode()}
    termination = tmp_path / "termination"
    code = main(["--run-name", "run-1", "--termination-log", str(termination), "--quiet"], env=env)
    result = parse_result(termination.read_bytes())
    assert code == 0, result.message
    assert result.uri == "s3://models/registry/wine/run-1/model.skops"

    fs.invalidate_cache()
    listed = sorted(path.rsplit("/", 1)[1] for path in fs.ls("models/registry/wine/run-1"))
    assert listed == ["model.sha256", "model.skops", "profile.json", "report.json"]  # no temp files left
    report = orjson.loads(fs.cat_file("models/registry/wine/run-1/report.json"))
    assert report["artifacts"]["model"]["sha256"] == result.sha256

    model = load_model(result.uri, result.sha256, storage_options={"endpoint_url": s3_endpoint})
    features = frame.drop(columns="target")
    assert np.mean(model.predict(features) == frame["target"]) > 0.9

    # The S3 model serves as the champion of the next run (endpoint from FSSPEC_S3_ENDPOINT_URL).
    spec["evaluation"] = {"compareTo": "champion"}
    env = {"FSSPEC_S3_ENDPOINT_URL": s3_endpoint, "KUBELOOP_TRAININGRUN_SPEC": orjson.dumps(spec).decode()}
    code = main(["--run-name", "run-2", "--termination-log", str(termination), "--quiet",
                 "--champion-uri", result.uri, "--champion-sha256", result.sha256 or ""], env=env)
    second = parse_result(termination.read_bytes())
    assert code == 0, second.message
    assert second.champion_metrics == result.metrics  # same model, same data, same holdout
