"""``kubectl kubeloop logs`` on the real node: real trainer and server containers, their real logs.

Given the real node and ``kubeloop operator`` as a local process (the fixtures of
test_realnode_paths.py: a hostPath models volume, no Prometheus), a TrainingRun trains in a real
pod and a ModelDeployment serves it from a real pod; then:

* ``logs tr NAME`` prints the trainer container's own output: its summary line and the metrics
  it computed, which match what the operator wrote to ``status.model.metrics``, byte for byte
  the same as ``kubectl logs`` of that pod; ``--tail 1`` prints one line;
* ``logs md/NAME`` (and ``--track stable``) prints the server container's log, in which the
  server says it verified the artifact with the sha256 the ModelDeployment's status names;
  ``--track canary`` says there are no canary pods, exit 1;
* ``logs -f`` streams: on the finished trainer it prints the log and ends by itself (exit 0);
  on the running server it keeps streaming until Ctrl-C, then exits 0;
* the connection flags work in either position here too (``--kubeconfig`` and ``-n`` after the
  object, before the command).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, sigint_as_in_a_terminal
from realnode import RealNode, apply, poll

# The real-node fixtures and helpers of the paths test, reused rather than copied.
from test_realnode_paths import (  # noqa: F401 (models_dir and operator are pytest fixtures)
    MD,
    model_deployment,
    models_dir,
    operator,
    pods_of,
    training_run,
    wait_status,
)

RUN = "cancer-1"


def kubeloop(node: RealNode, *args: str) -> subprocess.CompletedProcess[str]:
    """The plugin as a user runs it; KUBECONFIG points nowhere, so only the flags find the node."""
    return subprocess.run(
        [sys.executable, "-m", "kubeloop.plugin", *args],
        env={**os.environ, "KUBECONFIG": "/nonexistent/kubeconfig"},
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def trained(real_node: RealNode, e2e_namespace: str, operator: OperatorProcess) -> dict[str, Any]:  # noqa: F811
    apply(real_node, e2e_namespace, training_run(RUN, {"n_estimators": 10, "max_depth": 3}))
    status = wait_status(real_node, e2e_namespace, "trainingrun", RUN, "finished",
                         lambda s: s.get("phase") in {"Succeeded", "Failed"}, 600, operator)
    assert status["phase"] == "Succeeded", status
    return status


def test_logs_of_a_training_run_are_the_trainer_pod_s_own_output(
    real_node: RealNode, e2e_namespace: str, trained: dict[str, Any],
) -> None:
    shown = kubeloop(real_node, "logs", "tr", RUN, "--kubeconfig", real_node.kubeconfig, "-n", e2e_namespace)
    assert shown.returncode == 0, shown.stderr
    assert "kubeloop train: Succeeded (exit 0" in shown.stdout, shown.stdout
    # The metrics the trainer printed in the pod are the ones the operator recorded.
    for name, value in trained["model"]["metrics"].items():
        assert f"{name}={value:.6g}" in shown.stdout, (name, value, shown.stdout)

    pod = real_node.kubectl("get", "pods", "-n", e2e_namespace, "-l", f"kubeloop.io/trainingrun={RUN}",
                            "-o", "jsonpath={.items[0].metadata.name}").stdout
    by_kubectl = real_node.kubectl("logs", "-n", e2e_namespace, pod, "-c", "trainer", "--tail", "200").stdout
    assert shown.stdout == by_kubectl

    last = kubeloop(real_node, "-n", e2e_namespace, "--kubeconfig", real_node.kubeconfig,
                    "logs", f"trainingrun/{RUN}", "--tail", "1")
    assert last.returncode == 0, last.stderr
    assert last.stdout.splitlines() == by_kubectl.splitlines()[-1:]

    # Following a container that has ended prints its log and returns, as kubectl logs -f does.
    followed = kubeloop(real_node, "logs", "-f", f"tr/{RUN}", "-n", e2e_namespace, "--kubeconfig", real_node.kubeconfig)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == by_kubectl


def test_logs_of_a_model_deployment_are_the_server_pods(
    real_node: RealNode, e2e_namespace: str, operator: OperatorProcess, trained: dict[str, Any],  # noqa: F811
) -> None:
    apply(real_node, e2e_namespace, model_deployment(RUN))
    status = wait_status(real_node, e2e_namespace, "modeldeployment", MD, "Healthy with a ready server",
                         lambda s: s.get("phase") == "Healthy" and (s.get("stable") or {}).get("readyReplicas", 0) >= 1,
                         300, operator)
    sha256 = status["stable"]["sha256"]
    assert sha256 == trained["model"]["sha256"]
    [pod] = pods_of(real_node, e2e_namespace, "stable")

    shown = kubeloop(real_node, "logs", f"md/{MD}", "-n", e2e_namespace, "--kubeconfig", real_node.kubeconfig)
    assert shown.returncode == 0, shown.stderr
    # The server logs that it checked the artifact against the sha256 the operator pinned.
    assert f"(sha256 {sha256})" in shown.stdout, shown.stdout
    by_kubectl = real_node.kubectl("logs", "-n", e2e_namespace, pod["metadata"]["name"], "-c", "server").stdout
    assert f"(sha256 {sha256})" in by_kubectl

    stable = kubeloop(real_node, "--kubeconfig", real_node.kubeconfig, "logs", "md", MD, "--track", "stable",
                      "-n", e2e_namespace)
    assert stable.returncode == 0 and f"(sha256 {sha256})" in stable.stdout, stable.stderr
    canary = kubeloop(real_node, "--kubeconfig", real_node.kubeconfig, "-n", e2e_namespace,
                      "logs", "md", MD, "--track", "canary")
    assert canary.returncode == 1
    assert canary.stderr == f"error: md/{MD} has no canary server pods (not created yet, or scaled to 0)\n"


def test_logs_follow_streams_a_running_server_until_ctrl_c(
    real_node: RealNode, e2e_namespace: str, trained: dict[str, Any], tmp_path: Path,
) -> None:
    # After test_logs_of_a_model_deployment_are_the_server_pods: the server pod is running.
    [pod] = pods_of(real_node, e2e_namespace, "stable")
    out = tmp_path / "followed.log"
    with out.open("w") as sink:
        following = subprocess.Popen(
            [sys.executable, "-m", "kubeloop.plugin", "--kubeconfig", real_node.kubeconfig, "-n", e2e_namespace,
             "logs", "md", MD, "-f"],
            env={**os.environ, "KUBECONFIG": "/nonexistent/kubeconfig"}, stdout=sink, stderr=subprocess.PIPE, text=True,
            preexec_fn=sigint_as_in_a_terminal,
        )
        try:
            poll(lambda: "(sha256 " in out.read_text(), 90, "the followed server log")
            time.sleep(3)
            assert following.poll() is None, following.communicate()[1]  # still streaming: the server runs
            following.send_signal(signal.SIGINT)
            _, errors = following.communicate(timeout=30)
        finally:
            if following.poll() is None:
                following.kill()
    assert following.returncode == 0, errors
    assert "Traceback" not in errors
    assert f"(sha256 {trained['model']['sha256']})" in out.read_text()
    assert pod["status"]["phase"] == "Running"
