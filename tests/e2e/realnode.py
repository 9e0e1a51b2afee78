"""What the e2e tests share: the running real node, and the stage timings they report."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Seconds per stage (up, train, serve, canary), printed in pytest's terminal summary so cold
# and warm runs can be compared.
TIMINGS: dict[str, float] = {}


@dataclass(frozen=True)
class RealNode:
    """A running real node and what tests need to use it."""

    kubeconfig: str
    runtime_image: str
    node_name: str
    state_dir: Path
    kubectl_path: str
    up_seconds: float

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl against the node's cluster."""
        return subprocess.run(
            [self.kubectl_path, "--kubeconfig", self.kubeconfig, *args],
            capture_output=True, text=True, check=check, timeout=timeout,
        )


def apply(node: RealNode, namespace: str, body: dict[str, Any]) -> None:
    """Server-side apply one object into ``namespace``, as `kubectl apply` would."""
    subprocess.run(
        [node.kubectl_path, "--kubeconfig", node.kubeconfig, "apply", "-n", namespace,
         "--server-side", "--field-manager=e2e-user", "--force-conflicts", "-f", "-"],
        input=json.dumps(body), capture_output=True, text=True, check=True, timeout=60,
    )


def host_claim(node: RealNode, namespace: str, claim: str, directory: Path, uid: int) -> str:
    """A hostPath PersistentVolume on ``directory`` (owned by ``uid``, the pods' user) bound to
    claim ``claim`` of ``namespace``: a namespace's own models claim on this one node. Not below
    /root: the pods' user could not traverse their own image's /root to reach it. Returns the
    volume's name (cluster-scoped: delete it after the namespace)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.parent.chmod(0o755)
    os.chown(directory, uid, uid)
    volume = f"models-{namespace}"
    apply(node, namespace, {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": str(directory), "type": "Directory"},
                 "claimRef": {"namespace": namespace, "name": claim}},
    })
    apply(node, namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    return volume


def get(node: RealNode, namespace: str, kind: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(node.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)
    return result


def status_of(node: RealNode, namespace: str, kind: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get(node, namespace, kind, name).get("status") or {}
    return status


def diagnostics(node: RealNode, namespace: str) -> str:
    """Pods and recent events of ``namespace``, for a failure message."""
    pods = node.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    events = node.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
    return f"--- pods\n{pods}\n--- events\n{events[-4000:]}"


def poll(check: Callable[[], T | None], timeout: float, what: str, on_timeout: Callable[[], str] = str,
         interval: float = 1.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and diagnostics."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{on_timeout()}")
