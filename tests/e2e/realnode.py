"""What the e2e tests share: the running real node, and the stage timings they report."""

from __future__ import annotations

import json
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
