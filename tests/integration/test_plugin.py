"""``kubectl kubeloop`` against the real control plane and a running operator.

Given two trained runs and a ModelDeployment rolling the second out in paused steps, the
plugin's promote moves the rollout on, abort sends all traffic back to stable, retry starts
again, pause/resume hold and release it, promote --full finishes it, undo brings the previous
model back, watch shows a live view until Ctrl-C, retrain asks a DriftPolicy for a run, and
status prints the lineage data -> run -> artifact -> deployment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
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


def progressing(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    conditions = md_status(custom, namespace).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Progressing"), {})


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

    # pause holds the rollout (Progressing Unknown, says why); resume lets it go on.
    paused = plugin(kubeconfig_path, namespace, "pause", "md/cancer")
    assert paused.returncode == 0, paused.stderr
    wait_for(lambda: (c := progressing(custom, namespace)).get("status") == "Unknown" and "spec.paused" in c.get("message", ""), 60, what="paused by spec.paused")
    resumed = plugin(kubeconfig_path, namespace, "resume", "md/cancer")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: progressing(custom, namespace).get("status") == "True", 60, what="resumed")

    # promote --full skips every remaining step: the second model becomes stable.
    full = plugin(kubeconfig_path, namespace, "promote", "--full", "md/cancer")
    assert full.returncode == 0, full.stderr
    wait_for(lambda: (s := md_status(custom, namespace)).get("phase") == "Healthy" and (s.get("stable") or {}).get("sha256") == second, 90, what="second model stable")

    # undo rolls back to the model served before: cancer-1 comes back as a canary first.
    undone = plugin(kubeconfig_path, namespace, "undo", "md/cancer")
    assert undone.returncode == 0 and "cancer-1" in undone.stdout, undone.stdout + undone.stderr
    wait_for(lambda: ((md_status(custom, namespace).get("canary") or {}).get("sha256")) == first, 90, what="first model back as canary")
    plugin(kubeconfig_path, namespace, "promote", "--full", "md/cancer")
    wait_for(lambda: (s := md_status(custom, namespace)).get("phase") == "Healthy" and (s.get("stable") or {}).get("sha256") == first, 90, what="first model stable again")

    # watch shows a live view until Ctrl-C, then exits 0.
    watching = subprocess.Popen(
        [sys.executable, "-m", "kubeloop.plugin", "-n", namespace, "watch", "md/cancer"],
        env={**os.environ, "KUBECONFIG": kubeconfig_path, "COLUMNS": "200"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Ctrl-C once it talks to the API server (imports alone take seconds on a loaded box),
    # after a first refresh.
    fds = Path(f"/proc/{watching.pid}/fd")

    def watch_connected() -> bool:
        links = []
        try:
            for fd in fds.iterdir():
                with suppress(OSError):  # an fd closed between listing and reading it
                    links.append(os.readlink(fd))
        except FileNotFoundError:  # the process is gone: the poll() below says how
            return True
        return any(link.startswith("socket:") for link in links)

    wait_for(watch_connected, 60, what="watch connected")
    time.sleep(3)
    assert watching.poll() is None, watching.communicate()[1]
    watching.send_signal(signal.SIGINT)
    watched, errors = watching.communicate(timeout=30)
    assert watching.returncode == 0, errors
    assert "cancer" in watched and first[:12] in watched

    # retrain asks the DriftPolicy for a run through the same path as drift: a TrainingRun
    # labelled with the reason "manual", owned by the policy.
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": "cancer"},
        "spec": {"targetRef": {"name": "cancer"}, "source": {"live": {}}, "interval": "1h",
                 "retrain": {"fromTrainingRun": {"name": "cancer-1"}, "autoPromote": False}},
    })
    asked = plugin(kubeconfig_path, namespace, "retrain", "dp/cancer")
    assert asked.returncode == 0, asked.stderr
    runs = wait_for(lambda: custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns",
        label_selector="kubeloop.io/driftpolicy=cancer,kubeloop.io/retrain-reason=manual")["items"], 90, what="manual retrain run")
    assert len(runs) == 1 and runs[0]["metadata"]["ownerReferences"][0]["name"] == "cancer"

    wrong = plugin(kubeconfig_path, namespace, "promote", "tr/cancer-1")
    assert wrong.returncode == 2 and "ModelDeployment" in wrong.stdout
    missing = plugin(kubeconfig_path, namespace, "status", "md/nope")
    assert missing.returncode == 1 and "not found" in missing.stdout
