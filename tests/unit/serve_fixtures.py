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


def store_model(
    directory: Path,
    estimator: Any,
    features: np.ndarray,
    target: np.ndarray,
    feature_names: list[str],
    classification: bool,
) -> StoredModel:
    """Fit, dump with skops, write model.sha256 and profile.json like the trainer does."""
    directory.mkdir(parents=True, exist_ok=True)
    estimator.fit(features, target)
    skops.io.dump(estimator, directory / "model.skops")
    digest = hashlib.sha256((directory / "model.skops").read_bytes()).hexdigest()
    (directory / "model.sha256").write_text(digest)
    profile = build_profile(
        {name: features[:, i] for i, name in enumerate(feature_names)},
        prediction=estimator.predict(features),
        prediction_kind="categorical" if classification else "numerical",
    )
    (directory / "profile.json").write_bytes(profile.to_json_bytes())
    return StoredModel(directory, digest, estimator, features, feature_names, target)


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
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"serve-{port}.log"
    command = [
        *SERVE_COMMAND,
        "--model-uri", str(model.directory),
        "--sha256", model.sha256,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
        *extra,
    ]  # fmt: skip
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    server = RunningServer(process, url, log_path)
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
