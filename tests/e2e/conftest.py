"""Fixtures for end-to-end tests on a real node (containerd + kubelet + kube-proxy, hack/realnode).

The tests run only when asked: ``KUBELOOP_E2E=1``. Starting a real node runs containers as
root, changes two sysctls and adds iptables rules on this machine, and a cold start builds
images (minutes), so an ordinary ``pytest`` run must not do it behind anyone's back.

* ``KUBELOOP_E2E`` unset or ``0``: every e2e test is skipped, with the reason.
* ``KUBELOOP_E2E=1``: ``hack/realnode/up probe`` checks the machine first; only when it cannot
  run a node (not root, no overlay, no bridge, missing tools...) are the tests skipped, with
  the exact reason: the kernel refusing is not a test failure. When the probe passes and ``up``
  fails, every e2e test **fails** with the log tail: a broken node is a broken product.
* The terminal summary says how many e2e tests ran on the real node; with
  ``KUBELOOP_E2E_COUNT_FILE`` set, that number is also written there (``.ci/run`` fails when it
  is 0 on a machine whose probe passes, so the e2e tests cannot go missing silently).
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
# Node ids of the tests that use the real node, and the outcome of each one's call phase.
_NEEDS_NODE: set[str] = set()
_RAN_ON_NODE: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a real node that runs containers")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    # After deselection (-k, -m): only the tests that will run.
    _NEEDS_NODE.update(item.nodeid for item in session.items if "real_node" in getattr(item, "fixturenames", ()))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A test ran on the node when its body ran (setup did not skip or fail).
    if report.nodeid in _NEEDS_NODE and report.when == "call" and report.outcome != "skipped":
        _RAN_ON_NODE[report.nodeid] = report.outcome


def ran_on_node_summary() -> str:
    outcomes = list(_RAN_ON_NODE.values())
    return (
        f"{len(outcomes)} of {len(_NEEDS_NODE)} e2e tests ran on a real node "
        f"({outcomes.count('passed')} passed, {outcomes.count('failed')} failed)"
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    count_file = os.environ.get("KUBELOOP_E2E_COUNT_FILE")
    if count_file:
        Path(count_file).write_text(f"{len(_RAN_ON_NODE)}\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _NEEDS_NODE:
        terminalreporter.write_line(f"kubeloop real node: {ran_on_node_summary()}")
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
    # Cold: builds containerd, CoreDNS and three images (~10+ min on 2 cores); warm: seconds.
    up = subprocess.run([str(UP), "up"], capture_output=True, text=True, timeout=3600)
    up_seconds = time.monotonic() - started
    if up.returncode != 0:
        # The machine can run a node (the probe passed), so this is a defect, not a skip.
        tail = "\n".join(up.stderr.splitlines()[-40:])
        _NOTES.append(f"FAILED: hack/realnode/up exited {up.returncode} although the probe passed")
        pytest.fail(f"hack/realnode/up failed (exit {up.returncode}) although `up probe` passed:\n{tail}",
                    pytrace=False)
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
