"""Canary analysis against a real Prometheus scraping real ``kubeloop serve`` processes.

Given models trained here on scikit-learn's breast-cancer data (saved with skops, with a
reference profile), two real servers on 127.0.0.1 labelled ``track=stable`` and
``track=canary``, and Debian's Prometheus scraping both every second:

* a healthy canary passes the built-in checks (error rate, p99 latency, prediction shift,
  shadow agreement);
* a canary whose model fails every request, or whose predictions shift, fails them;
* (with the operator) a ModelDeployment whose analysis points at that Prometheus completes
  its rollout with the healthy canary, and aborts within one analysis interval with the
  failing one, sending traffic back to stable.

kwok's pods serve nothing, so the test sends the traffic to the local servers itself, and the
local Prometheus labels their series with the test namespace as Kubernetes discovery would.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import skops.io
from harness import (
    PROMETHEUS,
    OperatorProcess,
    Prometheus,
    Server,
    events_once,
    free_port,
    wait_for,
)
from kubernetes import client
from sklearn.datasets import load_breast_cancer
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from kubeloop.analysis.base import AnalysisTarget, judge
from kubeloop.analysis.builtin import BuiltinProvider
from kubeloop.decide.common import parse_wire_time
from kubeloop.drift.profile import build_profile

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="needs Debian's prometheus package (apt-get install -y prometheus)"
)
GROUP, VERSION, PLURAL = "kubeloop.io", "v1alpha1", "modeldeployments"
BOUNDS = {
    "errorRate": {"max": 0.05},
    "latencyP99": {"max": 1.0},
    "predictionShift": {"max": 0.2},
    "shadowAgreement": {"min": 0.9},
}


@dataclass
class Stored:
    directory: Path
    sha256: str


def store(directory: Path, estimator: Any, features: np.ndarray, reference: Any) -> Stored:
    """A run directory as the trainer leaves it: model.skops, its sha256, profile.json."""
    directory.mkdir(parents=True, exist_ok=True)
    skops.io.dump(estimator, directory / "model.skops")
    digest = hashlib.sha256((directory / "model.skops").read_bytes()).hexdigest()
    (directory / "model.sha256").write_text(digest)
    names = [f"f{i}" for i in range(features.shape[1])]
    profile = build_profile(
        {name: features[:, i] for i, name in enumerate(names)},
        prediction=reference.predict(features),
        prediction_kind="categorical",
    )
    (directory / "profile.json").write_bytes(profile.to_json_bytes())
    return Stored(directory, digest)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    cancer = load_breast_cancer()
    return cancer.data, cancer.target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> dict[str, Stored]:
    features, target = data
    root = tmp_path_factory.mktemp("models")
    stable = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, target)
    # A challenger retrained with slightly different regularisation: nearly the same answers.
    healthy = make_pipeline(StandardScaler(), LogisticRegression(C=0.8, max_iter=1000)).fit(features, target)
    # A challenger that answers "malignant" for everyone: its predictions have shifted.
    shifted = DummyClassifier(strategy="constant", constant=0).fit(features, target)
    # A challenger that fails every request with a server-side error (500, not the 400 a
    # ValueError about the input gets): a fitted model whose coefficients were damaged after
    # fitting, so predicting raises AttributeError. Only trusted scikit-learn types, so the
    # reader's type policy loads it, as it would load any damaged artifact.
    broken = copy.deepcopy(stable[-1])
    broken.coef_ = "damaged"
    failing = Pipeline([("scale", copy.deepcopy(stable[0])), ("model", broken)])
    return {
        "stable": store(root / "stable", stable, features, stable),
        "healthy": store(root / "healthy", healthy, features, stable),
        "shifted": store(root / "shifted", shifted, features, stable),
        "failing": store(root / "failing", failing, features, stable),
    }


class Traffic:
    """Requests to both servers from a background thread, like users and the router would."""

    def __init__(self, urls: list[str], rows: np.ndarray) -> None:
        self.urls = urls
        self.rows = rows
        self.stopped = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=5) as http:
            deadline = time.monotonic() + 600  # bounded, whatever happens to the test
            while not self.stopped.is_set() and time.monotonic() < deadline:
                for url in self.urls:
                    batch = self.rows[rng.integers(0, len(self.rows), size=5)]
                    try:
                        http.post(f"{url}/predict", json={"instances": batch.tolist()})
                        self.sent += 1
                    except httpx.HTTPError:
                        pass
                time.sleep(0.02)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


@contextmanager
def stack(tmp: Path, models: dict[str, Stored], canary: str, features: np.ndarray, namespace: str,
          shadow: bool = False, port: int | None = None) -> Iterator[tuple[str, Traffic]]:
    """Stable + canary servers, a Prometheus scraping them, traffic flowing; yields its URL."""
    canary_server = Server(str(models[canary].directory), models[canary].sha256, "canary", tmp / f"{canary}.log", "churn")
    stable_server = Server(str(models["stable"].directory), models["stable"].sha256, "stable", tmp / "stable.log",
                           "churn", shadow_url=canary_server.url if shadow else None)
    prometheus = None
    traffic = None
    try:
        canary_server.wait_ready()
        stable_server.wait_ready()
        prometheus = Prometheus(
            tmp / "prometheus",
            {"stable": f"127.0.0.1:{stable_server.port}", "canary": f"127.0.0.1:{canary_server.port}"},
            namespace,
            port=port,
        )
        traffic = Traffic([stable_server.url] if shadow else [stable_server.url, canary_server.url], features)
        yield prometheus.url, traffic
    finally:
        if traffic is not None:
            traffic.stop()
        if prometheus is not None:
            prometheus.stop()
        stable_server.stop()
        canary_server.stop()


def measure_all(url: str, namespace: str, builtins: list[str]) -> dict[str, Any]:
    provider = BuiltinProvider(url)
    target = AnalysisTarget(namespace, "churn", timedelta(seconds=10))
    return {
        name: judge({"name": name, **BOUNDS[name]},
                    provider.measure({"name": name, "provider": "builtin", "builtin": name}, target))
        for name in builtins
    }


def settled(url: str, namespace: str, builtins: list[str]) -> dict[str, Any]:
    """Measure until every check has a value (Prometheus needs a few scrapes of traffic)."""
    return wait_for(
        lambda: (lambda found: found if all(not v.inconclusive for v in found.values()) else None)(
            measure_all(url, namespace, builtins)
        ),
        timeout=60, interval=1.0, what="conclusive measurements",
    )


# --- providers against the real Prometheus ---------------------------------------------------


def test_healthy_canary_passes_the_builtin_checks(tmp_path: Path, models: dict[str, Stored], data: Any) -> None:
    with stack(tmp_path, models, "healthy", data[0], "ml") as (url, _):
        verdicts = settled(url, "ml", ["errorRate", "latencyP99", "predictionShift"])
    for name, verdict in verdicts.items():
        assert verdict.passed, f"{name}: {verdict}"
    assert verdicts["errorRate"].value == 0.0
    assert verdicts["predictionShift"].value < 0.05


def test_shadow_agreement_of_a_healthy_challenger_is_high(tmp_path: Path, models: dict[str, Stored], data: Any) -> None:
    with stack(tmp_path, models, "healthy", data[0], "ml", shadow=True) as (url, _):
        verdicts = settled(url, "ml", ["shadowAgreement", "predictionShift"])
    assert verdicts["shadowAgreement"].passed and verdicts["shadowAgreement"].value >= 0.9
    assert verdicts["predictionShift"].passed


def test_shifted_predictions_fail_prediction_shift_and_shadow_agreement(
    tmp_path: Path, models: dict[str, Stored], data: Any
) -> None:
    with stack(tmp_path, models, "shifted", data[0], "ml", shadow=True) as (url, _):
        verdicts = settled(url, "ml", ["predictionShift", "shadowAgreement"])
    assert not verdicts["predictionShift"].passed and verdicts["predictionShift"].value > 0.2
    assert not verdicts["shadowAgreement"].passed


def test_failing_model_fails_the_error_rate(tmp_path: Path, models: dict[str, Stored], data: Any) -> None:
    with stack(tmp_path, models, "failing", data[0], "ml") as (url, _):
        verdicts = settled(url, "ml", ["errorRate"])
    assert not verdicts["errorRate"].passed
    assert verdicts["errorRate"].value == pytest.approx(1.0)


# --- the operator, the real Prometheus, the rollout ---------------------------------------------



@pytest.fixture
def prometheus_port() -> int:
    """The port the test's Prometheus will listen on: the operator allows only configured URLs."""
    return free_port()


@pytest.fixture
def operator(
    kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None, prometheus_port: int
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        env={"KUBELOOP_RUNTIME_IMAGE": "kubeloop:test", "KUBELOOP_ROLLOUT_TICK_SECONDS": "1",
             "KUBELOOP_ALLOWED_PROMETHEUS_URLS": f"http://127.0.0.1:{prometheus_port}"},
    )
    process.start()
    yield process
    process.stop()
    print(process.log_tail(40))


def rollout_md(stable: Stored, steps: list[dict[str, Any]], prometheus_url: str) -> dict[str, Any]:
    metrics = [
        {"name": "error-rate", "provider": "builtin", "builtin": "errorRate", "max": 0.05,
         "prometheusUrl": prometheus_url},
        {"name": "prediction-shift", "provider": "builtin", "builtin": "predictionShift", "max": 0.2,
         "prometheusUrl": prometheus_url},
    ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn"},
        "spec": {
            "model": {"storageUri": f"file://{stable.directory}", "sha256": stable.sha256},
            "replicas": 2,
            "rollout": {"steps": steps, "analysis": {"interval": "5s", "failureLimit": 0, "metrics": metrics}},
        },
    }


@pytest.mark.parametrize("canary", ["failing", "shifted"])
def test_bad_canary_is_aborted_within_one_interval_and_traffic_goes_back_to_stable(
    tmp_path: Path, models: dict[str, Stored], data: Any, kube_api: Any, namespace: str,
    operator: OperatorProcess, canary: str, prometheus_port: int,
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    core = client.CoreV1Api(kube_api)
    with stack(tmp_path, models, canary, data[0], namespace, port=prometheus_port) as (url, _):
        md = rollout_md(models["stable"], [{"setWeight": 50}, {"pause": {}}], url)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

        def status() -> dict[str, Any]:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "churn").get("status") or {}

        wait_for(lambda: status().get("phase") == "Healthy", timeout=90, what="Healthy")
        bad = models[canary]
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "churn", {
            "spec": {"model": {"storageUri": f"file://{bad.directory}", "sha256": bad.sha256}}})
        wait_for(lambda: status().get("canaryWeight") == 50, timeout=90, what="canary at 50%")
        final = wait_for(lambda: (lambda s: s if s.get("aborted") else None)(status()), timeout=60, what="abort")

    canary_ready = next(c for c in final["conditions"] if c["type"] == "CanaryReady")
    failing_run = next(r for r in final["analysis"]["runs"] if not r["passed"] and "value" in r)
    took = parse_wire_time(failing_run["time"]) - parse_wire_time(canary_ready["lastTransitionTime"])
    # The first measurement is due one interval (5 s) after the canary became ready; the
    # operator's 1 s tick adds at most a second or two.
    assert took <= timedelta(seconds=5 + 3), took
    degraded = next(c for c in final["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "AnalysisFailed"
    expected = "error-rate=" if canary == "failing" else "prediction-shift="
    assert expected in degraded["message"]
    assert final["canaryWeight"] == 0
    selector = core.read_namespaced_service("churn", namespace).spec.selector
    assert selector == {"kubeloop.io/modeldeployment": "churn", "kubeloop.io/track": "stable"}


def test_healthy_canary_rollout_completes_through_analysis(
    tmp_path: Path, models: dict[str, Stored], data: Any, kube_api: Any, namespace: str,
    operator: OperatorProcess, prometheus_port: int,
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    with stack(tmp_path, models, "healthy", data[0], namespace, port=prometheus_port) as (url, _):
        steps = [{"setWeight": 50}, {"analysis": {"count": 2, "interval": "3s"}}]
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rollout_md(models["stable"], steps, url))

        def status() -> dict[str, Any]:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "churn").get("status") or {}

        wait_for(lambda: status().get("phase") == "Healthy", timeout=90, what="Healthy")
        good = models["healthy"]
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "churn", {
            "spec": {"model": {"storageUri": f"file://{good.directory}", "sha256": good.sha256}}})
        final = wait_for(
            lambda: (lambda s: s if s.get("phase") == "Healthy" and s["stable"]["sha256"] == good.sha256 else None)(status()),
            timeout=120, what="promoted after passing analysis",
        )
    assert final["previous"]["sha256"] == models["stable"].sha256
    assert not final.get("aborted")


def test_rollout_without_traffic_pauses_instead_of_promoting(
    tmp_path: Path, models: dict[str, Stored], data: Any, kube_api: Any, namespace: str,
    operator: OperatorProcess, prometheus_port: int,
) -> None:
    """Steps that only set weights and pause, with background analysis, and no request at all:
    every round is inconclusive, so the rollout pauses at the inconclusive limit instead of
    running out of steps and promoting a model nobody has measured (issue 15)."""
    custom = client.CustomObjectsApi(kube_api)
    core = client.CoreV1Api(kube_api)
    with stack(tmp_path, models, "healthy", data[0], namespace, port=prometheus_port) as (url, traffic):
        traffic.stop()
        md = rollout_md(models["stable"], [{"setWeight": 50}, {"pause": {"duration": "2s"}}], url)
        md["spec"]["rollout"]["analysis"].update(interval="3s", inconclusiveLimit=1)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

        def status() -> dict[str, Any]:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "churn").get("status") or {}

        wait_for(lambda: status().get("phase") == "Healthy", timeout=90, what="Healthy")
        good = models["healthy"]
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "churn", {
            "spec": {"model": {"storageUri": f"file://{good.directory}", "sha256": good.sha256}}})
        paused = wait_for(
            lambda: (lambda s: s if (s.get("analysis") or {}).get("pausedInconclusive") else None)(status()),
            timeout=90, what="paused by inconclusive analysis",
        )
        # Time passes well beyond the steps' durations: still paused, nothing promoted.
        time.sleep(8)
        final = status()
    assert paused["phase"] == "Paused"
    progressing = next(c for c in final["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("Unknown", "AnalysisInconclusive")
    assert final["phase"] == "Paused" and final["stable"]["sha256"] == models["stable"].sha256
    assert final["canary"]["sha256"] == good.sha256 and final["canaryWeight"] == 50
    assert final["analysis"]["consecutiveInconclusive"] >= 2
    assert all(not run["passed"] and "value" not in run for run in final["analysis"]["runs"])
    # The pause's Event (it may land after the status), then: there is one and no promotion.
    events = events_once(core, namespace, lambda found: any(e.reason == "AnalysisInconclusive" for e in found),
                         "AnalysisInconclusive event", name="churn")
    inconclusive = [e for e in events if e.reason == "AnalysisInconclusive"]
    assert len(inconclusive) == 1 and "inconclusiveLimit 1" in inconclusive[0].message
    assert not any(e.reason == "Promoted" for e in events)


def test_builtin_measurements_through_prometheus_count_their_samples(
    tmp_path: Path, models: dict[str, Stored], data: Any, namespace: str,
) -> None:
    """minSamples needs to know how many requests a value rests on: the Prometheus path asks."""
    with stack(tmp_path, models, "healthy", data[0], namespace) as (url, _):
        provider = BuiltinProvider(url)
        target = AnalysisTarget(namespace, "churn", timedelta(seconds=10))

        def counted() -> Any:
            found = provider.measure({"name": "e", "provider": "builtin", "builtin": "errorRate"}, target)
            return found if found.value is not None and (found.samples or 0) > 0 else None

        measured = wait_for(counted, timeout=60, interval=1.0, what="an error rate with its sample count")
    assert measured.samples is not None and measured.samples >= 1
    assert judge({"name": "e", "max": 0.05}, measured, min_samples=10**9).inconclusive
    assert not judge({"name": "e", "max": 0.05}, measured, min_samples=1).inconclusive
