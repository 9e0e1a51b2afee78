"""Start-up refusals and graceful shutdown of real `kubeloop serve` processes.

Given an artifact whose bytes differ from the pinned sha256, the server refuses before
deserialising it (exit code 3); untrusted types, missing models and bad settings have their
own exit codes. Given a server under load, when SIGTERM arrives, readiness flips to 503
first, accepted requests are all answered 200, and the process exits 0.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import skops.io
from serve_fixtures import (
    SERVE_COMMAND,
    StoredModel,
    free_port,
    serving,
    v2_request,
    wait_ready,
)
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer


def run_serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE_COMMAND, *args, "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_sha256_mismatch_is_refused_before_loading(models: dict[str, StoredModel]) -> None:
    model = models["forest"]
    wrong = hashlib.sha256(b"another artifact").hexdigest()
    result = run_serve("--model-uri", str(model.directory), "--sha256", wrong)
    assert result.returncode == 3
    assert "sha256 mismatch" in result.stderr
    assert wrong in result.stderr and model.sha256 in result.stderr


def test_tampered_artifact_is_refused(models: dict[str, StoredModel], tmp_path: Path) -> None:
    model = models["forest"]
    tampered = tmp_path / "run"
    tampered.mkdir()
    (tampered / "model.skops").write_bytes((model.directory / "model.skops").read_bytes() + b"\0")
    result = run_serve("--model-uri", f"file://{tampered}/model.skops", "--sha256", model.sha256)
    assert result.returncode == 3


def test_sha256_is_required_unless_explicitly_skipped(models: dict[str, StoredModel]) -> None:
    result = run_serve("--model-uri", str(models["forest"].directory))
    assert result.returncode == 2
    assert "sha256" in result.stderr and "--insecure-skip-verify" in result.stderr
    malformed = run_serve("--model-uri", str(models["forest"].directory), "--sha256", "abc")
    assert malformed.returncode == 2
    assert "64 hexadecimal" in malformed.stderr


def test_missing_model_is_exit_4(tmp_path: Path) -> None:
    result = run_serve("--model-uri", str(tmp_path / "nothing"), "--sha256", "0" * 64)
    assert result.returncode == 4
    assert "no model at" in result.stderr


def double(values: np.ndarray) -> np.ndarray:
    """A function from outside scikit-learn: skops records it as an untrusted type."""
    return values * 2


def test_untrusted_types_are_refused(tmp_path: Path) -> None:
    iris = load_iris()
    pipeline = make_pipeline(FunctionTransformer(double), LogisticRegression(max_iter=500))
    pipeline.fit(iris.data, iris.target)
    skops.io.dump(pipeline, tmp_path / "model.skops")
    digest = hashlib.sha256((tmp_path / "model.skops").read_bytes()).hexdigest()
    result = run_serve("--model-uri", str(tmp_path), "--sha256", digest)
    assert result.returncode == 4
    assert "does not trust" in result.stderr
    assert "test_serve_lifecycle.double (outside the estimator packages sklearn)" in result.stderr


def test_insecure_skip_verify_serves_and_says_so(
    models: dict[str, StoredModel], tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    command = [
        *SERVE_COMMAND,
        "--model-uri", str(models["wine"].directory),
        "--insecure-skip-verify",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log_path)
        assert "WITHOUT sha256 verification" in log_path.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_env_settings_are_read(models: dict[str, StoredModel], tmp_path: Path) -> None:
    model = models["wine"]
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {
        "KUBELOOP_SERVE_MODEL_URI": str(model.directory),
        "KUBELOOP_SERVE_SHA256": model.sha256,
        "KUBELOOP_SERVE_MODEL_NAME": "from-env",
        "KUBELOOP_SERVE_PORT": str(port),
        "KUBELOOP_SERVE_HOST": "127.0.0.1",
        "KUBELOOP_SERVE_WORKERS": "1",
    }
    import os

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            SERVE_COMMAND, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log_path)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/from-env").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


# -- graceful shutdown ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_readiness_flips_first_and_no_request_is_lost(
    models: dict[str, StoredModel], tmp_path: Path, workers: int
) -> None:
    """A load balancer's view: keep sending until readiness says 503; every answer is 200."""
    model = models["forest"]
    rows = model.features[:1]
    with serving(
        model, tmp_path, "--model-name", "cancer", "--shutdown-delay-seconds", "1.5",
        workers=workers,
    ) as server:  # fmt: skip
        stop = threading.Event()
        statuses: list[int] = []
        failures: list[str] = []
        flipped_at: list[float] = []

        def watch_readiness() -> None:
            while not stop.is_set():
                try:
                    if httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 503:
                        flipped_at.append(time.monotonic())
                        stop.set()
                except httpx.HTTPError as exc:
                    failures.append(f"readiness: {exc!r}")
                    stop.set()
                time.sleep(0.02)

        def send() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        response = client.post(
                            server.url + "/v2/models/cancer/infer", json=v2_request(rows)
                        )
                        statuses.append(response.status_code)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))

        threads = [threading.Thread(target=send) for _ in range(6)]
        threads.append(threading.Thread(target=watch_readiness))
        for thread in threads:
            thread.start()
        # Under load, with two workers, the first answers can take a while: wait for them
        # (two per sender) instead of guessing a time.
        deadline = time.monotonic() + 60
        while len(statuses) < 12 and not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        sent_before_signal = len(statuses)
        server.process.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=60) == 0
    assert failures == []
    assert flipped_at and flipped_at[0] - signalled_at < 1.0
    assert len(statuses) > sent_before_signal > 0
    assert set(statuses) == {200}


def test_sigterm_while_workers_still_load_is_a_clean_stop(
    models: dict[str, StoredModel], tmp_path: Path
) -> None:
    """A pod deleted right after it starts: the supervisor forwards the stop to workers that
    are still importing scikit-learn and loading the model; they leave, nobody "crashes"."""
    model = models["forest"]
    log_path = tmp_path / "serve.log"
    command = [
        *SERVE_COMMAND,
        "--model-uri", str(model.directory), "--sha256", model.sha256,
        "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "2",
        "--log-level", "info",
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        # The supervisor says "serving ... (2 workers" as soon as it has spawned them; a
        # spawned interpreter needs far longer than this loop's step to import and load.
        deadline = time.monotonic() + 60
        while "(2 workers" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert "restarting" not in log and "Traceback" not in log, log


def test_in_flight_requests_are_answered_after_sigterm(
    models: dict[str, StoredModel], tmp_path: Path
) -> None:
    """No delay at all: SIGTERM while a burst is queued; every accepted request gets a 200.

    Raw sockets make "accepted" exact: each connection first gets an answer to a health
    check (so the server has accepted it), then all send their request at once.
    """
    model = models["forest"]
    body = orjson.dumps(v2_request(model.features[:400]))
    connections = 48
    with serving(model, tmp_path, "--model-name", "cancer") as server:
        port = int(server.url.rsplit(":", 1)[1])
        sockets = [
            socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(connections)
        ]
        for sock in sockets:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n")
        for sock in sockets:
            assert read_response(sock)[0] == 200
        request = (
            b"POST /v2/models/cancer/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        for sock in sockets:
            sock.sendall(request)
        first_status, _ = read_response(sockets[0])
        server.process.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        answers = [(first_status, 0.0)]
        for sock in sockets[1:]:
            status, payload = read_response(sock)
            answers.append((status, time.monotonic() - signalled_at))
            assert (
                orjson.loads(payload)["outputs"][0]["data"]
                == model.estimator.predict(model.features[:400]).tolist()
            )
        assert server.process.wait(timeout=60) == 0
    assert [status for status, _ in answers] == [200] * connections
    assert "readiness is now 503" in server.log()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a content-length: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(v)
        for k, v in (line.split(b":", 1) for line in lines[1:])
        if k.lower() == b"content-length"
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed mid-response")
        rest += chunk
    return status, rest[:length]
