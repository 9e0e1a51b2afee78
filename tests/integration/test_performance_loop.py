"""Performance drift closes the loop on the real control plane: labels -> retrain -> canary.

Given a champion trained by a TrainingRun and served by a ModelDeployment, and a real
``kubeloop serve`` with that exact artifact on this machine (the stable pod's address points
here, so the operator scrapes it through the API server's pod proxy, as a real pod): when the
world changes its mind (the labels of half the input space flip: concept drift, the inputs
look the same) and the delayed labels reach /feedback, then the DriftPolicy with
``performance`` sees live accuracy fall below its reference (the champion's holdout accuracy)
and turns Drifted with reason PerformanceDegraded, creates a TrainingRun whose pod really runs
``kubeloop train`` on the relabelled data against the champion, the new model wins the gate,
and the ModelDeployment starts a canary with it. A policy whose minLabels is not reached says
NotEnoughData and retrains nothing; the API server refuses a performance policy that also
sets a feature-drift field.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from harness import Server, events_once, free_port, route_pods_to_host, wait_for
from kubernetes import client
from test_closed_loop import (
    FEATURES,
    GROUP,
    VERSION,
    LocalKubelet,
    custom_get,
    loop_operator,  # noqa: F401  (fixture: the operator as its own process)
    prometheus_port,  # noqa: F401  (fixture loop_operator uses)
    run_spec,
    serve_champion,
    status_of,
)

from kubeloop.training.data import make_synthetic


def new_concept(rows: int, seed: int) -> Any:
    """The same inputs as the champion saw; the label flipped wherever x0 is above its median."""
    frame = make_synthetic(rows=rows, features=FEATURES, seed=seed)
    flip = frame["x0"] > frame["x0"].median()
    frame["target"] = np.where(flip, 1 - frame["target"], frame["target"])
    return frame


def performance_policy(name: str, min_labels: int, retrain_source: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": "loop"},
            "source": {"live": {}},  # no Prometheus: the operator scrapes the stable pods
            "interval": "3s",
            "performance": {"metric": "accuracy", "minLabels": min_labels, "tolerance": 0.1},
            "retrain": {"template": {"spec": run_spec(retrain_source)}, "cooldown": "1h",
                        "maxRetrainsPerDay": 3, "autoPromote": True},
        },
    }  # fmt: skip


class LabelledTraffic(threading.Thread):
    """Predictions now, their labels about a second later (delayed feedback), over HTTP."""

    def __init__(self, url: str, frame: Any) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rows = frame.drop(columns=["target"]).to_dict(orient="records")
        self.labels = frame["target"].tolist()
        self.stop = threading.Event()
        self.labelled = 0

    def run(self) -> None:
        pending: collections.deque[tuple[float, str, list[int]]] = collections.deque()
        with httpx.Client(timeout=10) as http:
            i = 0
            while not self.stop.is_set():
                start = i % (len(self.rows) - 20)
                request_id = f"req-{i}"
                answer = http.post(f"{self.url}/predict", json={"instances": self.rows[start : start + 20]},
                                   headers={"x-request-id": request_id})  # fmt: skip
                answer.raise_for_status()
                pending.append((time.monotonic(), request_id, self.labels[start : start + 20]))
                due = [
                    pending.popleft()
                    for _ in range(len(pending))
                    if pending[0][0] < time.monotonic() - 1.0
                ]
                if due:
                    sent = http.post(
                        f"{self.url}/feedback",
                        json=[{"id": rid, "labels": labels} for _, rid, labels in due],
                    )
                    self.labelled += (
                        sum(len(labels) for _, _, labels in due) if sent.status_code == 200 else 0
                    )
                i += 20
                self.stop.wait(0.05)


@pytest.mark.usefixtures("loop_operator")
def test_falling_accuracy_on_delayed_labels_retrains_and_starts_a_canary(
    kube_api: Any, namespace: str, tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    kubelet = LocalKubelet(core, namespace, tmp_path)
    kubelet.start()
    server = traffic = None
    try:
        # Given a champion, trained for real and served here.
        port = free_port()
        stable = serve_champion(custom, namespace, {
            "replicas": 1, "server": {"port": port}, "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}]}})  # fmt: skip
        champion_accuracy = status_of(custom, namespace, "trainingruns", "loop-0")["model"][
            "metrics"
        ]["accuracy"]
        server = Server(stable["uri"], stable["sha256"], "stable", tmp_path / "serve.log", "loop",
                        host="0.0.0.0", port=port)  # fmt: skip
        server.wait_ready()
        selector = "kubeloop.io/modeldeployment=loop,kubeloop.io/track=stable"
        wait_for(
            lambda: len(route_pods_to_host(core, namespace, selector)) == 1,
            60,
            1,
            "stable pod routed here",
        )

        # A performance policy judges labels only: a feature-drift field is refused on apply.
        refused = performance_policy("mixed", 100, "sklearn://breast_cancer")
        refused["spec"]["minSamples"] = 100
        with pytest.raises(client.ApiException) as error:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "driftpolicies", refused
            )
        assert error.value.status == 422
        assert (
            "spec.minSamples" in error.value.body
            and "a policy with performance does not check" in error.value.body
        )

        # The relabelled data a retrain learns from, where the trainer may read it.
        relabelled = tmp_path / "models" / "incoming" / "relabelled.csv"
        relabelled.parent.mkdir(parents=True, exist_ok=True)
        new_concept(4000, seed=2).to_csv(relabelled, index=False)
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "driftpolicies",
            performance_policy("few-labels", 1_000_000, f"file://{relabelled}"),
        )
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "driftpolicies",
            performance_policy("labels", 100, f"file://{relabelled}"),
        )

        # When the concept changes and the delayed labels arrive.
        traffic = LabelledTraffic(server.url, new_concept(3000, seed=9))
        traffic.start()

        # Then the policy sees accuracy fall below its reference and retrains.
        policy = wait_for(lambda: (s := status_of(custom, namespace, "driftpolicies", "labels")).get("drifted") and s,
                          120, 1, "PerformanceDegraded")  # fmt: skip
        drifted = next(c for c in policy["conditions"] if c["type"] == "Drifted")
        assert drifted["reason"] == "PerformanceDegraded", drifted
        performance = policy["performance"]
        assert performance["reference"] == pytest.approx(champion_accuracy, abs=1e-6)
        assert performance["labels"] >= 100 and performance["degraded"] is True
        assert (
            performance["live"]
            < performance["limit"]
            == pytest.approx(champion_accuracy * 0.9, abs=1e-6)
        )
        print(f"PERFORMANCE live accuracy {performance['live']:.4f} over {performance['labels']} labels, "
              f"reference {performance['reference']:.4f}")  # fmt: skip
        run_name = policy["lastRetrain"]["name"]
        assert policy["lastRetrain"]["reason"] == "Performance"
        run = custom_get(custom, namespace, "trainingruns", run_name)
        assert run["metadata"]["labels"]["kubeloop.io/retrain-reason"] == "performance"
        assert run["spec"]["evaluation"]["compareTo"] == "champion"
        events = events_once(core, namespace, lambda found: any(e.reason == "PerformanceDegraded" for e in found),
                             "PerformanceDegraded event", name="labels")
        assert "PerformanceDegraded" in {e.reason for e in events}

        # The new model beats the champion on the same fresh (relabelled) holdout...
        wait_for(lambda: status_of(custom, namespace, "trainingruns", run_name).get("phase") in {"Succeeded", "Failed"},
                 240, 1, "retrain finished")  # fmt: skip
        run_status = status_of(custom, namespace, "trainingruns", run_name)
        assert run_status["phase"] == "Succeeded", run_status.get("message")
        challenger = run_status["model"]["metrics"]["accuracy"]
        champion = run_status["model"]["championMetrics"]["accuracy"]
        assert challenger > champion
        print(f"PERFORMANCE-LOOP challenger accuracy {challenger:.4f} vs champion {champion:.4f}")

        # ...so the deployment rolls it out as a canary.
        wait_for(lambda: custom_get(custom, namespace, "modeldeployments", "loop")["spec"]["model"]
                 .get("trainingRunRef", {}).get("name") == run_name, 60, 1, "model changed")  # fmt: skip
        wait_for(lambda: status_of(custom, namespace, "modeldeployments", "loop").get("canary", {}).get("sha256")
                 == run_status["model"]["sha256"], 90, 1, "canary started")  # fmt: skip
        assert (
            status_of(custom, namespace, "driftpolicies", "labels")["lastRetrain"]["outcome"]
            == "Promoted"
        )

        # The policy whose minLabels was never reached gave no verdict and retrained nothing.
        few = status_of(custom, namespace, "driftpolicies", "few-labels")
        not_enough = next(c for c in few["conditions"] if c["type"] == "NotEnoughData")
        assert (not_enough["status"], not_enough["reason"]) == ("True", "NotEnoughLabels"), (
            not_enough
        )
        assert "fewer than performance.minLabels=1000000" in not_enough["message"]
        assert few["performance"]["labels"] > 0  # labels did arrive: just not enough of them
        assert "drifted" not in few and "lastRetrain" not in few
        assert not custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "trainingruns",
            label_selector="kubeloop.io/driftpolicy=few-labels",
        )["items"]
        assert traffic.labelled > 0
    finally:
        if traffic is not None:
            traffic.stop.set()
        kubelet.stop.set()
        if server is not None:
            server.stop()
