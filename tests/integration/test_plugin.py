"""``kubectl kubeloop`` against the real control plane and a running operator.

Given two trained runs and a ModelDeployment rolling the second out in paused steps, the
plugin's promote moves the rollout on, abort sends all traffic back to stable, retry starts
again, and status prints the lineage data -> run -> artifact -> deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, install_crds, play_kubelet_terminate, wait_for
from kubernetes import client
from test_trainingrun_controller import (
    MANUAL_KUBELET,
    run_trainer_locally,
    trainer_pods,
    trainingrun,
)

GROUP, VERSION = "kubeloop.io", "v1alpha1"


@pytest.fixture
def operator(kubeconfig_path: str, kubectl: Any, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    install_crds(kubectl)
    process = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        env={"KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET), "KUBELOOP_ROLLOUT_TICK_SECONDS": "1"},
    )
    process.start()
    yield process
    process.stop()


def plugin(kubeconfig: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubeloop.plugin", "-n", namespace, *args],
        env={**os.environ, "KUBECONFIG": kubeconfig, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=60,
    )


def md_status(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "cancer").get("status") or {}


def train(custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, name: str, tmp_path: Path, **spec: Any) -> str:
    run = trainingrun(name, **spec)
    message, code = run_trainer_locally(run, tmp_path / name)
    assert code == 0, message
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", run)
    pod = wait_for(lambda: next(iter(trainer_pods(core, namespace, name)), None), 60, what=f"{name} pod")
    play_kubelet_terminate(core, namespace, pod, message, 0)
    wait_for(lambda: (custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", name).get("status") or {}).get("phase") == "Succeeded", 60, what=f"{name} Succeeded")
    return str(json.loads(message)["sha256"])


def test_plugin_steers_a_rollout_and_shows_lineage(kube_api: Any, kubeconfig_path: str, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    first = train(custom, core, namespace, "cancer-1", tmp_path)
    second = train(custom, core, namespace, "cancer-2", tmp_path, model={
        "name": "cancer", "estimator": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 20, "random_state": 0}, "task": "classification",
    })
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "cancer"},
        "spec": {"model": {"trainingRunRef": {"name": "cancer-1"}}, "replicas": 4,
                 "rollout": {"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}]}},
    })
    wait_for(lambda: md_status(custom, namespace).get("phase") == "Healthy", 90, what="Healthy")

    shown = plugin(kubeconfig_path, namespace, "status", "tr/cancer-1")
    assert shown.returncode == 0, shown.stderr
    assert "sklearn://breast_cancer" in shown.stdout and first[:16] in shown.stdout
    assert "cancer (stable)" in shown.stdout  # served by

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "cancer", {"spec": {"model": {"trainingRunRef": {"name": "cancer-2"}}}})
    wait_for(lambda: md_status(custom, namespace).get("currentStep") == 1 and md_status(custom, namespace).get("canaryWeight") == 25, 90, what="paused at 25%")

    promoted = plugin(kubeconfig_path, namespace, "promote", "md/cancer")
    assert promoted.returncode == 0, promoted.stderr
    wait_for(lambda: md_status(custom, namespace).get("currentStep") == 3 and md_status(custom, namespace).get("canaryWeight") == 75, 90, what="promoted to 75%")

    shown = plugin(kubeconfig_path, namespace, "status", "md/cancer")
    assert "75%" in shown.stdout and second[:12] in shown.stdout and "cancer-1" in shown.stdout

    aborted = plugin(kubeconfig_path, namespace, "abort", "md/cancer")
    assert aborted.returncode == 0, aborted.stderr
    status = wait_for(lambda: (s := md_status(custom, namespace)).get("phase") == "Degraded" and s, 60, what="aborted")
    assert status["canaryWeight"] == 0
    assert status["stable"]["sha256"] == first

    retried = plugin(kubeconfig_path, namespace, "retry", "md/cancer")
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: md_status(custom, namespace).get("canaryWeight") == 25 and md_status(custom, namespace).get("phase") != "Degraded", 60, what="retried at 25%")

    wrong = plugin(kubeconfig_path, namespace, "promote", "tr/cancer-1")
    assert wrong.returncode == 2 and "ModelDeployment" in wrong.stdout
    missing = plugin(kubeconfig_path, namespace, "status", "md/nope")
    assert missing.returncode == 1 and "not found" in missing.stdout
