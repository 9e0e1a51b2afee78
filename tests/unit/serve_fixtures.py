"""Shared helpers of the model-server tests: real models in tmp dirs, real server processes.

Models are trained on scikit-learn's bundled datasets and written the way the trainer
writes them (skops.io.dump + sha256 + profile.json from kubeloop.drift.profile). Servers are
started as real ``kubeloop serve`` processes on free ports and spoken to over real sockets.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import skops.io
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kubeloop.drift.profile import build_profile


@dataclass
class StoredModel:
    """A model as the trainer leaves it: a run directory, and what the test needs to compare."""

    directory: Path
    sha256: str
    estimator: Any
    features: np.ndarray
    feature_names: list[str]
    target: np.ndarray
    frame: Any = None  # the feature columns as the trainer read them (a pandas DataFrame)


def store_model(
    directory: Path,
    estimator: Any,
    features: Any,
    target: np.ndarray,
    feature_names: list[str],
    classification: bool,
) -> StoredModel:
    """Fit, dump with skops, write model.sha256 and profile.json like the trainer does.

    ``features`` is a matrix, or a DataFrame of numeric columns (the model then records
    feature names, as a trainer-fitted model does).
    """
    directory.mkdir(parents=True, exist_ok=True)
    estimator.fit(features, target)
    skops.io.dump(estimator, directory / "model.skops")
    digest = hashlib.sha256((directory / "model.skops").read_bytes()).hexdigest()
    (directory / "model.sha256").write_text(f"{digest}  model.skops\n")  # sha256sum's line
    matrix = np.asarray(features, dtype=np.float64)
    profile = build_profile(
        {name: matrix[:, i] for i, name in enumerate(feature_names)},
        prediction=estimator.predict(features),
        prediction_kind="categorical" if classification else "numerical",
    )
    (directory / "profile.json").write_bytes(profile.to_json_bytes())
    return StoredModel(directory, digest, estimator, matrix, feature_names, target)


def train_models(root: Path) -> dict[str, StoredModel]:
    """Three small real models: a forest classifier, a multinomial pipeline, a regressor."""
    cancer = load_breast_cancer()
    wine = load_wine()
    diabetes = load_diabetes()
    names = [str(n).replace(" ", "_") for n in cancer.feature_names]
    return {
        "forest": store_model(
            root / "forest" / "run-1",
            RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0),
            cancer.data,
            cancer.target,
            names,
            classification=True,
        ),
        "wine": store_model(
            root / "wine" / "run-1",
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
            wine.data,
            wine.target,
            [str(n) for n in wine.feature_names],
            classification=True,
        ),
        "diabetes": store_model(
            root / "diabetes" / "run-1",
            RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0),
            diabetes.data,
            diabetes.target,
            [str(n) for n in diabetes.feature_names],
            classification=False,
        ),
        "diabetes_ridge": store_model(
            root / "diabetes_ridge" / "run-1",
            Ridge(),
            diabetes.data,
            diabetes.target,
            [str(n) for n in diabetes.feature_names],
            classification=False,
        ),
    }


def subscriptions(rows: int, seed: int) -> Any:
    """A churn-like table with numeric and text columns (``plan`` is text, some missing)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "pro", "team"], size=rows, p=[0.5, 0.3, 0.2]).astype(object)
    plan[rng.random(rows) < 0.03] = None
    usage = rng.gamma(2.0, 3.0, size=rows)
    seats = rng.integers(1, 40, size=rows)
    region = rng.choice(["eu", "us", "apac"], size=rows)
    score = usage * 0.4 - seats * 0.05 + np.where(plan == "pro", 1.5, 0.0)
    score += np.where(plan == "team", -1.0, 0.0) + np.where(region == "eu", 0.5, 0.0)
    churned = (score + rng.normal(0, 0.8, rows) > 1.2).astype(int)
    return pd.DataFrame(
        {"usage": usage, "plan": plan, "seats": seats, "region": region, "churned": churned}
    )


def train_with_kubeloop(
    root: Path,
    name: str,
    estimator: str,
    params: dict[str, Any],
    rows: int = 1200,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
) -> StoredModel:
    """Train on a CSV with text columns through ``kubeloop.training`` (the trainer's own path).

    By default the trainer infers ``plan`` and ``region`` as categorical (text columns) and
    puts its one-hot ColumnTransformer in front of ``estimator``; ``features`` and
    ``categorical`` are spec.data.features / categoricalFeatures. model.skops, model.sha256
    and profile.json are exactly what it writes.
    """
    import pandas as pd

    from kubeloop.training.artifacts import load_model
    from kubeloop.training.spec import parse_spec
    from kubeloop.training.trainer import TrainingRequest, run_training

    root.mkdir(parents=True, exist_ok=True)
    csv = root / f"{name}.csv"
    subscriptions(rows, seed=7).to_csv(csv, index=False)
    spec = parse_spec(
        {
            "model": {"name": name, "estimator": estimator, "params": params,
                      "task": "classification"},
            "data": {"source": f"file://{csv}", "target": "churned",
                     **({"features": features} if features else {}),
                     "categoricalFeatures": categorical or []},
            "evaluation": {"metric": "accuracy"},
        }
    )  # fmt: skip
    outcome = run_training(
        TrainingRequest(spec=spec, run_name="run-1", storage_uri=f"file://{root}/models")
    )
    assert outcome.result.status == "Succeeded", outcome.result.message
    assert outcome.result.uri and outcome.result.sha256
    frame = pd.read_csv(csv)  # as the trainer read it
    columns = frame[features] if features else frame.drop(columns="churned")
    return StoredModel(
        directory=Path(outcome.result.uri.removeprefix("file://")).parent,
        sha256=outcome.result.sha256,
        estimator=load_model(outcome.result.uri, outcome.result.sha256),
        features=columns.to_numpy(dtype=object),
        feature_names=[str(c) for c in columns.columns],
        target=frame["churned"].to_numpy(),
        frame=columns,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVE_COMMAND = [sys.executable, "-c", "from kubeloop.cli import main; main()", "serve"]


@dataclass
class RunningServer:
    """A ``kubeloop serve`` process and how to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    grpc_address: str = ""  # host:port of the gRPC service; empty when started without it

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}:\n{log_path.read_text()}"
            )
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server not ready after {timeout}s:\n{log_path.read_text()}")


@contextmanager
def serving(
    model: StoredModel,
    log_dir: Path,
    *extra: str,
    workers: int = 1,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[RunningServer]:
    """Run ``kubeloop serve`` for ``model`` until the block ends."""
    port = port or free_port()
    # Every server gets its own gRPC port, so servers started side by side never share 8081.
    grpc_port = 0 if "--grpc-port" in extra else free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"serve-{port}.log"
    command = [
        *SERVE_COMMAND,
        "--model-uri", str(model.directory),
        "--sha256", model.sha256,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
        *(["--grpc-port", str(grpc_port)] if grpc_port else []),
        *extra,
    ]  # fmt: skip
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    server = RunningServer(process, url, log_path, f"127.0.0.1:{grpc_port}" if grpc_port else "")
    try:
        wait_ready(url, process, log_path)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def v2_request(rows: np.ndarray, datatype: str = "FP64", **extra: Any) -> dict[str, Any]:
    """A one-input v2 inference request for a (rows x features) matrix."""
    return {
        "inputs": [
            {"name": "input-0", "shape": list(rows.shape), "datatype": datatype,
             "data": rows.ravel().tolist()}
        ],
        **extra,
    }  # fmt: skip


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(name, labels): value}, with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in parse_metrics(text).items()
        if sample == name and wanted <= set(sample_labels)
    )


def fuzz_for_server_errors(url: str, max_examples: int | None = None) -> list[str]:
    """schemathesis over the served OpenAPI document; every 5xx it provoked, described.

    The test suite's run is derandomized (the same cases every run, so CI never turns red
    on a case nobody has seen); a campaign that explores new cases is
    ``KUBELOOP_FUZZ_EXAMPLES=400 KUBELOOP_FUZZ_RANDOM=1 pytest -k schemathesis``, and
    each server error it finds becomes a fixed regression case in the tests.
    """
    if max_examples is None:
        max_examples = int(os.environ.get("KUBELOOP_FUZZ_EXAMPLES", "40"))
    explore = os.environ.get("KUBELOOP_FUZZ_RANDOM") == "1"
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(url + "/v2/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=not explore,
        )
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, timeout=30)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    f"{response.text[:200]}"
                )
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    return failures
