"""The closed loop on the real control plane: drift -> retrain -> beats the champion -> canary.

Given a champion trained by a TrainingRun and served by a ModelDeployment, a real
``kubeloop serve`` with that exact artifact on 127.0.0.1, and Debian's Prometheus scraping it;
when the traffic shifts, then the DriftPolicy turns Drifted, creates a TrainingRun whose pod
really runs ``kubeloop train`` on the new data against the champion (hack/local_kubelet.py
plays the kubelet: it runs the pod's own command and env here), the new model beats the
champion on the same fresh holdout, and the ModelDeployment's model changes, starting a
canary. A second drift inside the cooldown creates no second run.

The schedule is tested with the DriftPolicy controller in-process and a clock the test
moves, against the same real API server.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import (
    PROMETHEUS,
    REPO,
    OperatorProcess,
    Prometheus,
    Server,
    free_port,
    install_crds,
    route_pods_to_host,
    wait_for,
)
from kubernetes import client

from kubeloop.config import OperatorConfig
from kubeloop.controllers.driftpolicy import DriftPolicyController
from kubeloop.controllers.kube import Kube
from kubeloop.training.data import make_synthetic

sys.path.insert(0, str(REPO / "hack"))
from local_kubelet import run_pod

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus package")
GROUP, VERSION = "kubeloop.io", "v1alpha1"
MANUAL = {"kubeloop.io/test-kubelet": "manual"}
FEATURES = 6
# A shallow tree learns the training range only: shifted inputs fall where the champion never
# looked, so a model retrained on the new data is measurably better there.
MODEL = {"name": "loop", "estimator": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": 4, "random_state": 0}, "task": "classification"}


def synthetic(seed: int, shift: float = 0.0) -> str:
    query = f"rows=4000&features={FEATURES}&seed={seed}"
    return f"sklearn://synthetic?{query}&shift={shift}" if shift else f"sklearn://synthetic?{query}"


def run_spec(source: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "data": {"source": source, "target": "target", "split": {"testFraction": 0.3, "seed": 3}},
        "evaluation": {"metric": "accuracy", "threshold": 0.5},
    }


class LocalKubelet(threading.Thread):
    """Runs every trainer pod of the namespace for real, once, like a kubelet would."""

    def __init__(self, core: client.CoreV1Api, namespace: str, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.core, self.namespace, self.workdir = core, namespace, workdir
        self.stop = threading.Event()
        self.ran: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector="app.kubernetes.io/component in (training,drift-check)"
            ).items
            for pod in pods:
                if pod.metadata.name in self.ran or not pod.spec.node_name or pod.status.phase in {"Succeeded", "Failed"}:
                    continue
                self.ran.append(pod.metadata.name)
                run_pod(self.core, pod, self.workdir)
            self.stop.wait(0.5)


@pytest.fixture
def prometheus_port() -> int:
    """The port the test's Prometheus will listen on: the operator allows only configured URLs."""
    return free_port()


@pytest.fixture
def loop_operator(
    kubeconfig_path: str, kubectl: Any, namespace: str, tmp_path: Path, prometheus_port: int
) -> Iterator[OperatorProcess]:
    install_crds(kubectl)
    process = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        env={
            "KUBELOOP_ALLOWED_PROMETHEUS_URLS": f"http://127.0.0.1:{prometheus_port}",
            "KUBELOOP_POD_LABELS": json.dumps(MANUAL),
            "KUBELOOP_DEFAULT_STORAGE_URI": f"file://{tmp_path}/models",
            "KUBELOOP_ROLLOUT_TICK_SECONDS": "2",
        },
    )
    process.start()
    yield process
    process.stop()
    print(process.log_tail(40))


def custom_get(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)  # type: ignore[no-any-return]


def status_of(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return custom_get(custom, namespace, plural, name).get("status") or {}


def serve_champion(custom: client.CustomObjectsApi, namespace: str, md_spec: dict[str, Any]) -> dict[str, Any]:
    """Train ``loop-0`` for real and serve it as ModelDeployment ``loop``; its stable status."""
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": "loop-0"}, "spec": run_spec(synthetic(1)),
    })
    wait_for(lambda: status_of(custom, namespace, "trainingruns", "loop-0").get("phase") == "Succeeded", 180, 1, "champion trained")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "loop"},
        "spec": {"model": {"trainingRunRef": {"name": "loop-0"}}, **md_spec},
    })
    stable: dict[str, Any] = wait_for(
        lambda: status_of(custom, namespace, "modeldeployments", "loop").get("stable", {}).get("sha256")
        and status_of(custom, namespace, "modeldeployments", "loop")["stable"],
        90, 1, "stable model served",
    )
    return stable


def test_drift_retrains_beats_the_champion_and_starts_a_canary(
    kube_api: Any, namespace: str, loop_operator: OperatorProcess, tmp_path: Path, prometheus_port: int
) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    kubelet = LocalKubelet(core, namespace, tmp_path)
    kubelet.start()
    server = prometheus = None
    traffic_stop = threading.Event()
    try:
        # Given a champion, trained for real and served.
        port = free_port()
        stable = serve_champion(custom, namespace, {
            "replicas": 2, "server": {"port": port}, "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}]}})

        # The same artifact, served for real here (kwok's pods serve nothing), scraped by
        # Prometheus; the stable pods' addresses point here, so the operator reads the reference
        # profile from this server through the API server's pod proxy, as from a real pod.
        server = Server(stable["uri"], stable["sha256"], "stable", tmp_path / "serve.log", "loop",
                        host="0.0.0.0", port=port)
        server.wait_ready()
        selector = "kubeloop.io/modeldeployment=loop,kubeloop.io/track=stable"
        wait_for(lambda: len(route_pods_to_host(core, namespace, selector)) == 2, 60, 1, "stable pods routed here")
        prometheus = Prometheus(
            tmp_path / "prometheus", {"stable": f"127.0.0.1:{server.port}"}, namespace, port=prometheus_port
        )

        # When the traffic shifts.
        shifted = make_synthetic(rows=3000, features=FEATURES, seed=9, shift=2.0).drop(columns=["target"])
        rows = shifted.to_dict(orient="records")

        def send() -> None:
            with httpx.Client(timeout=5) as http:
                deadline = time.monotonic() + 600
                i = 0
                while not traffic_stop.is_set() and time.monotonic() < deadline:
                    http.post(f"{server.url}/predict", json={"instances": rows[i % len(rows): i % len(rows) + 20]})
                    i += 20
                    time.sleep(0.05)

        threading.Thread(target=send, daemon=True).start()

        # A per-feature alpha for a feature the model does not have would never be read: only
        # the reference profile tells, so the operator refuses it on the policy, naming the field.
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": "misnamed"},
            "spec": {"targetRef": {"name": "loop"}, "source": {"live": {"prometheusUrl": prometheus.url}},
                     "interval": "3s", "alpha": {"features": {"no_such_column": 0.1}}},
        })
        refused = wait_for(lambda: next((c for c in status_of(custom, namespace, "driftpolicies", "misnamed").get("conditions") or []
                                         if c["type"] == "Ready" and c["reason"] == "InvalidSpec"), None), 60, 1, "InvalidSpec")
        assert refused["status"] == "False"
        assert refused["message"].startswith("spec.alpha.features: 'no_such_column' is not in the reference profile"), refused
        assert "drifted" not in status_of(custom, namespace, "driftpolicies", "misnamed")
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", "misnamed")

        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": "loop-drift"},
            "spec": {
                "targetRef": {"name": "loop"},
                "source": {"live": {"prometheusUrl": prometheus.url}},
                "interval": "3s", "window": "30s", "minSamples": 200, "driftShare": 0.5,
                "retrain": {"template": {"spec": run_spec(synthetic(2, shift=2.0))}, "cooldown": "1h",
                            "maxRetrainsPerDay": 3, "autoPromote": True},
            },
        })

        # Then the policy turns Drifted and retrains.
        policy = wait_for(lambda: (s := status_of(custom, namespace, "driftpolicies", "loop-drift")).get("drifted") and s, 120, 1, "Drifted")
        assert len(policy["driftedFeatures"]) >= FEATURES // 2
        run_name = policy["lastRetrain"]["name"]
        assert policy["lastRetrain"]["reason"] == "Drift"
        run = custom_get(custom, namespace, "trainingruns", run_name)
        assert run["metadata"]["labels"]["kubeloop.io/retrain-reason"] == "drift"
        assert run["spec"]["evaluation"]["compareTo"] == "champion"

        # The new model beats the champion on the same fresh holdout...
        wait_for(lambda: status_of(custom, namespace, "trainingruns", run_name).get("phase") in {"Succeeded", "Failed"}, 240, 1, "retrain finished")
        run_status = status_of(custom, namespace, "trainingruns", run_name)
        assert run_status["phase"] == "Succeeded", run_status.get("message")
        challenger, champion = run_status["model"]["metrics"]["accuracy"], run_status["model"]["championMetrics"]["accuracy"]
        assert challenger > champion
        print(f"CLOSED-LOOP challenger accuracy {challenger:.4f} vs champion {champion:.4f}")

        # ...so the deployment now rolls it out as a canary.
        md = wait_for(lambda: (m := custom_get(custom, namespace, "modeldeployments", "loop"))["spec"]["model"].get("trainingRunRef", {}).get("name") == run_name and m, 60, 1, "model changed")
        wait_for(lambda: status_of(custom, namespace, "modeldeployments", "loop").get("canary", {}).get("sha256") == run_status["model"]["sha256"], 90, 1, "canary started")
        assert md["spec"]["model"].get("storageUri") is None
        assert status_of(custom, namespace, "driftpolicies", "loop-drift")["lastRetrain"]["outcome"] == "Promoted"

        # A second drift inside the cooldown creates no second run.
        checked = status_of(custom, namespace, "driftpolicies", "loop-drift")["lastCheckTime"]
        wait_for(lambda: status_of(custom, namespace, "driftpolicies", "loop-drift")["lastCheckTime"] > checked, 30, 1, "another check")
        wait_for(lambda: status_of(custom, namespace, "driftpolicies", "loop-drift").get("drifted"), 30, 1, "still drifted")
        runs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", label_selector="kubeloop.io/driftpolicy=loop-drift")["items"]
        assert [r["metadata"]["name"] for r in runs] == [run_name]
        assert status_of(custom, namespace, "driftpolicies", "loop-drift")["retrainCount"] == 1
    finally:
        traffic_stop.set()
        kubelet.stop.set()
        if prometheus is not None:
            prometheus.stop()
        if server is not None:
            server.stop()


def test_dataset_source_is_checked_by_a_job_and_retrains(
    kube_api: Any, namespace: str, loop_operator: OperatorProcess, tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    kubelet = LocalKubelet(core, namespace, tmp_path)
    kubelet.start()
    try:
        serve_champion(custom, namespace, {"replicas": 1})
        # Yesterday's requests, as a file: shifted on every feature.
        # Local data is read only below the pod's data volumes (here the storage root: the
        # drift-check Job's KUBELOOP_DATA_ROOTS), so the file lives there, as a user's would.
        current = tmp_path / "models" / "incoming" / "requests.csv"
        current.parent.mkdir(parents=True, exist_ok=True)
        make_synthetic(rows=2000, features=FEATURES, seed=11, shift=1.5).drop(columns=["target"]).to_csv(current, index=False)
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": "daily"},
            "spec": {
                "targetRef": {"name": "loop"}, "source": {"dataset": {"uri": f"file://{current}"}},
                "interval": "1h", "minSamples": 100,
                "retrain": {"template": {"spec": run_spec(synthetic(2, shift=1.5))}, "autoPromote": False},
            },
        })
        status = wait_for(lambda: (s := status_of(custom, namespace, "driftpolicies", "daily")).get("lastCheckTime") and s, 120, 1, "dataset checked")
        assert status["drifted"] is True, status.get("message")
        assert status["samples"] == 2000
        assert {s["feature"] for s in status["scores"] if s["drifted"]} >= {f"x{i}" for i in range(FEATURES)}
        jobs = client.BatchV1Api(kube_api).list_namespaced_job(namespace, label_selector="app.kubernetes.io/component=drift-check").items
        assert len(jobs) == 1 and jobs[0].spec.template.spec.containers[0].args[0] == "drift"
        # The Job wrote its HTML report beside the profile and says where; its figures are the
        # ones the operator put in the status.
        report_uri = jobs[0].metadata.annotations["kubeloop.io/drift-report"]
        assert report_uri.startswith(f"file://{tmp_path / 'models'}/") and "/drift/daily/" in report_uri
        # The operator names that page in the status (it copies the URI, it reads no storage).
        assert status["report"] == report_uri and status["history"][-1]["report"] == report_uri
        page = Path(report_uri.removeprefix("file://")).read_text()
        for score in status["scores"]:
            row = re.search(rf'<tr class="feature[^"]*" data-feature="{re.escape(score["feature"])}"[^>]*>', page)
            assert row is not None, score["feature"]
            assert f'data-drifted="{str(score["drifted"]).lower()}"' in row.group(0)
            assert float(re.search(r'data-score="([^"]+)"', row.group(0)).group(1)) == pytest.approx(score["score"], rel=1e-5)  # type: ignore[union-attr]
        retrain = status["lastRetrain"]["name"]
        wait_for(lambda: status_of(custom, namespace, "trainingruns", retrain).get("phase") == "Succeeded", 240, 1, "retrain trained")
        wait_for(lambda: status_of(custom, namespace, "driftpolicies", "daily")["lastRetrain"]["outcome"] == "Succeeded", 60, 1, "outcome recorded")
        # autoPromote is off: the deployment still serves the champion.
        assert custom_get(custom, namespace, "modeldeployments", "loop")["spec"]["model"]["trainingRunRef"]["name"] == "loop-0"
    finally:
        kubelet.stop.set()


def test_schedule_fires_at_the_expected_time_on_a_moved_clock(kubeconfig_path: str, kubectl: Any, kube_api: Any, namespace: str) -> None:
    install_crds(kubectl)
    custom = client.CustomObjectsApi(kube_api)
    now = [datetime(2026, 11, 23, 0, 59, 50, tzinfo=UTC)]
    config = OperatorConfig(allowed_prometheus_urls=["http://127.0.0.1:1"])
    controller = DriftPolicyController(Kube.from_environment(kubeconfig_path), config, clock=lambda: now[0])
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": "nightly"},
        "spec": {
            "targetRef": {"name": "absent"}, "source": {"live": {"prometheusUrl": "http://127.0.0.1:1"}},
            "schedule": "0 * * * *", "interval": "1h",
            "retrain": {"template": {"spec": run_spec(synthetic(3))}, "cooldown": "10m"},
        },
    })
    # The first reconcile learns the next fire time from the creation time.
    created = custom_get(custom, namespace, "driftpolicies", "nightly")["metadata"]["creationTimestamp"]
    now[0] = datetime.fromisoformat(created.replace("Z", "+00:00"))
    controller.reconcile(namespace, "nightly")
    next_time = datetime.fromisoformat(status_of(custom, namespace, "driftpolicies", "nightly")["nextScheduleTime"].replace("Z", "+00:00"))
    assert next_time.minute == 0 and next_time > now[0]

    now[0] = next_time - timedelta(seconds=5)
    controller.reconcile(namespace, "nightly")
    assert not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns")["items"]

    now[0] = next_time + timedelta(seconds=1)
    controller.reconcile(namespace, "nightly")
    runs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns")["items"]
    assert [r["metadata"]["labels"]["kubeloop.io/retrain-reason"] for r in runs] == ["schedule"]
    status = status_of(custom, namespace, "driftpolicies", "nightly")
    assert status["lastRetrain"]["reason"] == "Schedule"
    assert datetime.fromisoformat(status["nextScheduleTime"].replace("Z", "+00:00")) == next_time + timedelta(hours=1)
    # The target is missing: the policy says so, and the schedule still worked.
    assert status["lastFailure"]["reason"] == "TargetNotFound"
