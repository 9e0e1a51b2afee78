"""Helpers for integration tests against a real Kubernetes API server.

The cluster is either the local control plane of ``hack/cluster`` (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok fake nodes, built from Go modules) or, with
``KUBELOOP_TEST_CLUSTER=existing``, whatever cluster ``KUBECONFIG`` names (kind on a laptop).

Nothing here mocks Kubernetes: helpers poll real objects with timeouts.

Pod completion convention (see hack/controlplane/README.md):

* Job-owned pods on the fake nodes run and then *succeed by themselves* (kwok's pod-complete).
* Pods labelled ``pod-container-running-failed.stage.kwok.x-k8s.io: "true"`` (``CHAOS_FAIL_LABEL``)
  *fail by themselves*; the annotations in ``chaos_fail_annotations()`` set exit code, reason and
  message.
* Pods labelled ``kubeloop.io/test-kubelet: manual`` (``MANUAL_KUBELET_LABEL``) are made Running
  by kwok and then left alone: the test plays the kubelet and ends them with
  ``finish_pod(...)``, which writes a terminated container state with exit code and
  termination message, as a kubelet would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_CLUSTER = REPO_ROOT / "hack" / "cluster"

#: Label that makes kwok leave a Running pod alone so the test can finish it (``finish_pod``).
MANUAL_KUBELET_LABEL = ("kubeloop.io/test-kubelet", "manual")
#: Label of kwok's own chaos stage: the pod's containers fail once it is Running.
CHAOS_FAIL_LABEL = ("pod-container-running-failed.stage.kwok.x-k8s.io", "true")
_CHAOS_PREFIX = "pod-container-running-failed.stage.kwok.x-k8s.io"

T = TypeVar("T")


def chaos_fail_annotations(
    exit_code: int = 1, reason: str = "Error", message: str | None = None, delay_ms: int = 0
) -> dict[str, str]:
    """Annotations read by kwok's chaos stage for the failure it writes."""
    ann = {
        f"{_CHAOS_PREFIX}/exit-code": str(exit_code),
        f"{_CHAOS_PREFIX}/reason": reason,
        f"{_CHAOS_PREFIX}/delay": f"{delay_ms}ms",
        f"{_CHAOS_PREFIX}/jitter-delay": "0ms",
    }
    if message is not None:
        ann[f"{_CHAOS_PREFIX}/message"] = message
    return ann


def wait_until(
    fn: Callable[[], T | None],
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``fn`` until it returns a truthy value; return it, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # keep polling through transient API errors
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str
    kubectl_bin: str
    local: bool  # started by hack/cluster (True) or given by KUBECONFIG (False)
    up_note: str = ""  # what `hack/cluster up` did and how long it took

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; returns the CompletedProcess (text mode)."""
        proc = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc


def hack_cluster(
    *args: str, env: dict[str, str] | None = None, timeout: float = 3600
) -> subprocess.CompletedProcess[str]:
    """Run ``hack/cluster ARGS`` and fail with its output if it fails."""
    proc = subprocess.run(
        [str(HACK_CLUSTER), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"hack/cluster {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return proc


def _exported_kubeconfig(stdout: str) -> str:
    for line in stdout.splitlines():
        m = re.fullmatch(r"export KUBECONFIG=(.+)", line.strip())
        if m:
            return m.group(1)
    raise RuntimeError(f"no KUBECONFIG in hack/cluster output:\n{stdout}")


def acquire_cluster() -> Cluster:
    """The cluster for this test session (see module docstring)."""
    if os.environ.get("KUBELOOP_TEST_CLUSTER") == "existing":
        kubeconfig = os.environ.get("KUBECONFIG", "")
        if not kubeconfig:
            raise RuntimeError("KUBELOOP_TEST_CLUSTER=existing needs KUBECONFIG to be set")
        local_kubectl = hack_cluster("which", "kubectl").stdout.strip()
        kubectl_bin = (
            local_kubectl if os.access(local_kubectl, os.X_OK) else shutil.which("kubectl")
        )
        if not kubectl_bin:
            raise RuntimeError("no kubectl: run hack/cluster build or put kubectl on PATH")
        return Cluster(
            kubeconfig=kubeconfig.split(os.pathsep)[0], kubectl_bin=kubectl_bin, local=False
        )
    start = time.monotonic()
    proc = hack_cluster("up")
    took = time.monotonic() - start
    what = "reused the running cluster" if "reusing it" in proc.stderr else "started the cluster"
    return Cluster(
        kubeconfig=_exported_kubeconfig(proc.stdout),
        kubectl_bin=hack_cluster("which", "kubectl").stdout.strip(),
        local=True,
        up_note=f"hack/cluster up {what} in {took:.1f}s",
    )


def unique_name(prefix: str, max_len: int = 63) -> str:
    """A DNS-1123 label: sanitized prefix plus a random suffix."""
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-") or "t"
    suffix = uuid.uuid4().hex[:6]
    return f"{base[: max_len - len(suffix) - 1].rstrip('-')}-{suffix}"


def finish_pod(
    core_v1: Any,
    namespace: str,
    name: str,
    *,
    exit_code: int = 0,
    message: str | None = None,
    reason: str | None = None,
    container: str | None = None,
    timeout: float = 60.0,
) -> Any:
    """Play the kubelet: end a Running pod's containers and set its phase, like a kubelet would.

    Writes ``status.containerStatuses[].state.terminated`` (exit code, reason and the
    termination ``message``) for ``container`` (default: every container) and the pod phase
    (Succeeded if every container exited 0, else Failed). Meant for pods labelled
    ``kubeloop.io/test-kubelet: manual``, which kwok leaves Running. Waits until the pod is
    Running first, and retries on update conflicts.
    """
    from kubernetes.client.exceptions import ApiException

    def running() -> Any:
        pod = core_v1.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" else None

    wait_until(running, timeout=timeout, what=f"pod {namespace}/{name} Running")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    deadline = time.monotonic() + timeout
    while True:
        pod = core_v1.read_namespaced_pod_status(name, namespace)
        raw = core_v1.api_client.sanitize_for_serialization(pod)
        status = raw.setdefault("status", {})
        spec_names = [c["name"] for c in raw["spec"]["containers"]]
        old = {c["name"]: c for c in status.get("containerStatuses") or []}
        statuses = []
        exit_codes = []
        for cname in spec_names:
            cs = dict(
                old.get(cname) or {"name": cname, "image": "", "imageID": "", "restartCount": 0}
            )
            if container is None or cname == container:
                started = (((cs.get("state") or {}).get("running")) or {}).get("startedAt", now)
                terminated: dict[str, Any] = {
                    "exitCode": exit_code,
                    "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                    "startedAt": started,
                    "finishedAt": now,
                }
                if message is not None:
                    terminated["message"] = message
                cs.update(state={"terminated": terminated}, ready=False, started=False)
                exit_codes.append(exit_code)
            else:
                state = cs.get("state") or {}
                exit_codes.append(state.get("terminated", {}).get("exitCode", 0))
            statuses.append(cs)
        status["containerStatuses"] = statuses
        all_done = all("terminated" in (cs.get("state") or {}) for cs in statuses)
        if all_done:
            status["phase"] = "Succeeded" if all(c == 0 for c in exit_codes) else "Failed"
            for cond in status.get("conditions") or []:
                if cond.get("type") in ("Ready", "ContainersReady"):
                    cond["status"] = "False"
                    cond["lastTransitionTime"] = now
                    cond["reason"] = "PodCompleted"
        try:
            return core_v1.replace_namespaced_pod_status(name, namespace, raw)
        except ApiException as exc:
            if exc.status != 409 or time.monotonic() >= deadline:
                raise
