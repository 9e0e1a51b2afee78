#!/usr/bin/env python3
"""A stand-in kubelet for kwok clusters: really runs training pods' commands on this machine.

kwok gives a real API server fake nodes; its pods never run. For the demo (and for tests that
want the trainer's real output) this watches trainer pods that kwok was told to leave alone
(label ``kubeloop.io/test-kubelet=manual``), runs the pod's own command with the pod's own
environment as a local process, and writes back what a kubelet would: the container's exit
code and termination message. It is a development aid, not part of the product: a real node
(or kind) runs the same image for real.

    python hack/local_kubelet.py --namespace default
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

MANUAL_LABEL = "kubeloop.io/test-kubelet=manual"
log = logging.getLogger("local-kubelet")


def container_env(container: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_")}
    for item in container.env or []:
        if item.value is not None:
            env[item.name] = item.value
    return env


def run_pod(core: client.CoreV1Api, pod: Any, workdir: Path) -> None:
    container = pod.spec.containers[0]
    name = pod.metadata.name
    message_path = workdir / f"{name}.termination-log"
    args = list(container.args or [])
    # The pod writes its termination message to /dev/termination-log; here, to a local file.
    if "--termination-log" in args:
        args[args.index("--termination-log") + 1] = str(message_path)
    command = [sys.executable, "-m", "kubeloop.cli", *args] if (container.command or ["kubeloop"])[0] == "kubeloop" else [*container.command, *args]
    env = container_env(container)
    index = (pod.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index")
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = index
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    log.info("running %s: %s", name, " ".join(command[2:6]))
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    message = message_path.read_text() if message_path.exists() else (proc.stdout + proc.stderr)[-4000:]
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    phase = "Succeeded" if proc.returncode == 0 else "Failed"
    core.patch_namespaced_pod_status(name, pod.metadata.namespace, {
        "status": {
            "phase": phase,
            "containerStatuses": [{
                "name": container.name, "image": container.image, "imageID": "", "ready": False,
                "restartCount": 0, "started": False,
                "state": {"terminated": {
                    "exitCode": proc.returncode, "reason": "Completed" if proc.returncode == 0 else "Error",
                    "message": message, "startedAt": started, "finishedAt": finished,
                }},
            }],
        }
    })
    log.info("%s finished with exit code %d", name, proc.returncode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--once", action="store_true", help="run what is pending, then exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s local-kubelet %(message)s")
    config.load_kube_config()
    core = client.CoreV1Api()
    done: set[str] = set()
    workdir = Path(tempfile.mkdtemp(prefix="kubeloop-local-kubelet-"))
    while True:
        pods = core.list_namespaced_pod(args.namespace, label_selector=f"app.kubernetes.io/component in (training,drift-check),{MANUAL_LABEL}").items
        for pod in pods:
            if pod.metadata.uid in done or not pod.spec.node_name or pod.status.phase in {"Succeeded", "Failed"}:
                continue
            done.add(pod.metadata.uid)
            run_pod(core, pod, workdir)
        if args.once:
            return 0
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
