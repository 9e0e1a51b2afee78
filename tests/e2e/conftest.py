"""Fixtures for end-to-end tests on a real node (containerd + kubelet + kube-proxy, hack/realnode).

The tests run only when asked: ``KUBELOOP_E2E=1``. Starting a real node runs containers as
root, changes two sysctls and adds iptables rules on this machine, and a cold start builds
images (minutes), so an ordinary ``pytest`` run must not do it behind anyone's back.

* ``KUBELOOP_E2E`` unset or ``0``: every e2e test is skipped, with the reason.
* ``KUBELOOP_E2E=1``: ``hack/realnode/up probe`` checks the machine first; when it cannot run a
  node (not root, no overlay, no bridge, missing tools...), or ``up`` itself fails, the tests
  are skipped with the exact reason and the log tail: the kernel refusing is not a test failure.
* ``KUBELOOP_E2E_KEEP=1``: leave the node and its control plane running afterwards (the next
  run is then warm); by default they are stopped at the end.

Every test in tests/e2e is marked ``e2e``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realnode import TIMINGS, RealNode

_HERE = Path(__file__).resolve().parent
REPO = _HERE.parents[1]
UP = REPO / "hack" / "realnode" / "up"
# The operator-as-a-process helper is shared with the integration tests; realnode.py is ours.
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(_HERE))

_NOTES: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a real node that runs containers")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for note in _NOTES:
        terminalreporter.write_line(f"kubeloop real node: {note}")
    for stage, seconds in TIMINGS.items():
        terminalreporter.write_line(f"kubeloop real node: {stage}: {seconds:.1f} s")


def _skip_loudly(reason: str) -> None:
    _NOTES.append(f"SKIPPED e2e: {reason}")
    pytest.skip(f"real node unavailable: {reason}")


def _env_value(output: str, name: str) -> str:
    for line in output.splitlines():
        if line.startswith(f"export {name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"hack/realnode/up printed no {name}: {output!r}")


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    if os.environ.get("KUBELOOP_E2E", "0") != "1":
        _skip_loudly(
            "KUBELOOP_E2E is not 1. e2e tests start containerd, a kubelet and kube-proxy as root "
            "on this machine (hack/realnode/up); run them with KUBELOOP_E2E=1"
        )
    probe = subprocess.run([str(UP), "probe"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        _skip_loudly(f"this machine cannot run a node: {probe.stdout.strip() or probe.stderr.strip()}")
    started = time.monotonic()
    # Cold: builds containerd and three images (~10+ min on 2 cores); warm: seconds.
    up = subprocess.run([str(UP), "up"], capture_output=True, text=True, timeout=3600)
    up_seconds = time.monotonic() - started
    if up.returncode != 0:
        tail = "\n".join(up.stderr.splitlines()[-25:])
        _skip_loudly(f"hack/realnode/up failed (exit {up.returncode}):\n{tail}")
    TIMINGS["hack/realnode/up"] = up_seconds
    kubectl_path = subprocess.run(
        [str(REPO / "hack" / "cluster"), "which", "kubectl"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cache = Path(os.environ.get("KUBELOOP_CACHE", Path.home() / ".cache" / "kubeloop"))
    node = RealNode(
        kubeconfig=_env_value(up.stdout, "KUBECONFIG"),
        runtime_image=_env_value(up.stdout, "KUBELOOP_RUNTIME_IMAGE"),
        node_name=os.environ.get("KUBELOOP_REALNODE_NAME", "kubeloop-node"),
        state_dir=Path(os.environ.get("KUBELOOP_REALNODE_DIR", cache / "realnode" / "state")),
        kubectl_path=kubectl_path,
        up_seconds=up_seconds,
    )
    yield node
    if os.environ.get("KUBELOOP_E2E_KEEP") != "1":
        subprocess.run([str(UP), "down"], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def e2e_namespace(real_node: RealNode) -> Iterator[str]:
    """A fresh namespace that enforces the restricted Pod Security Standard, as users would."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    real_node.kubectl("create", "namespace", name)
    real_node.kubectl(
        "label", "namespace", name,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted",
    )
    yield name
    real_node.kubectl("delete", "namespace", name, "--wait=false", check=False)
