"""Helpers shared by the controller integration tests: the operator as a real process, the
generated CRDs installed on the real API server, and the kubelet's part that kwok cannot play
(writing a trainer's termination message)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
CRDS = REPO / "crds"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check} (last: {last!r})")


def events_once(
    core: Any, namespace: str, ready: Callable[[list[Any]], bool], what: str, name: str | None = None,
    timeout: float = 30.0,
) -> list[Any]:
    """The namespace's Events (only ``name``'s, if given) once ``ready`` holds for them.

    The operator writes Events in the background, as client-go's recorder does: one may land
    after the status or deletion a test waited for."""
    selector = f"involvedObject.name={name}" if name else ""

    def listed() -> list[Any] | None:
        found = list(core.list_namespaced_event(namespace, field_selector=selector).items)
        return found if ready(found) else None

    return wait_for(listed, timeout, 0.3, what)


def event_keys(events: Sequence[Any]) -> set[tuple[str, str, str]]:
    """``(object name, reason, type)`` of each Event."""
    return {(e.involved_object.name, e.reason, e.type) for e in events}


def install_crds(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """Server-side apply the generated CRDs and wait until the API server serves them."""
    kubectl("apply", "--server-side", "--field-manager=kubeloop-tests", "--force-conflicts", "-f", str(CRDS))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 20 s to exit cleanly, then SIGKILL: a test's child never outlives its fixture."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class OperatorProcess:
    """``kubeloop operator`` as a subprocess, so tests can SIGKILL and restart it."""

    def __init__(
        self,
        kubeconfig: str,
        namespace: str | Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        inherit_kubeloop_env: bool = True,
    ) -> None:
        self.inherit_kubeloop_env = inherit_kubeloop_env
        self.kubeconfig = kubeconfig
        # One namespace, or several: the operator is started with a --namespace for each.
        self.namespaces = [namespace] if isinstance(namespace, str) else list(namespace)
        self.namespace = self.namespaces[0]
        self.log_path = log_path
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()
        self.peak_rss_kib = 0

    def start(self) -> None:
        inherited = {
            k: v for k, v in os.environ.items() if self.inherit_kubeloop_env or not k.startswith("KUBELOOP_")
        }
        env = {
            **inherited,
            "KUBECONFIG": self.kubeconfig,
            "KUBELOOP_METRICS_PORT": str(self.metrics_port),
            "KUBELOOP_HEALTH_PORT": "0",
            "KUBELOOP_RESYNC_SECONDS": "2",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "kubeloop.cli", "operator",
                *(arg for ns in self.namespaces for arg in ("--namespace", ns)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()

    def _sample_rss(self) -> None:
        if self.process is None:
            return
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        except OSError:
            pass

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye — what a node failure looks like to the operator."""
        if self.process is not None and self.process.poll() is None:
            self._sample_rss()
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._sample_rss()
            stop_process(self.process)
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def samples(self, name: str) -> list[Sample]:
        """Every sample called ``name`` on the operator's /metrics (``_total``, ``_count`` and
        ``_sum`` are part of a sample's name), read over real HTTP and parsed by
        prometheus_client's own parser."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return [
            sample
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 when there
        are none yet: a counter appears with its first increment)."""
        return sum(
            sample.value
            for sample in self.samples(name)
            if all(sample.labels.get(key) == value for key, value in labels.items())
        )


def play_kubelet_terminate(
    core: Any, namespace: str, pod: Mapping[str, Any], message: str, exit_code: int, container: str = "trainer"
) -> None:
    """Write what the kubelet writes when a container ends: its state and termination message."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    phase = "Succeeded" if exit_code == 0 else "Failed"
    image = pod["spec"]["containers"][0]["image"]
    body = {
        "status": {
            "phase": phase,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": container,
                    "image": image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message,
                            "startedAt": pod["metadata"]["creationTimestamp"],
                            "finishedAt": now,
                        }
                    },
                }
            ],
        }
    }
    core.patch_namespaced_pod_status(pod["metadata"]["name"], namespace, body)


class Server:
    """``kubeloop serve`` as a real process on a free port."""

    def __init__(self, model_uri: str, sha256: str, track: str, log: Path, model_name: str,
                 shadow_url: str | None = None, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable, "-c", "from kubeloop.cli import main; main()", "serve",
            "--model-uri", model_uri, "--sha256", sha256,
            "--model-name", model_name, "--host", host, "--port", str(self.port),
            "--track", track, "--workers", "1",
        ]
        if shadow_url:
            args += ["--shadow-url", shadow_url, "--shadow-percent", "100"]
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                return httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=90, interval=0.3, what=f"server on {self.url}")

    def stop(self) -> None:
        stop_process(self.process)


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child the test stops with SIGINT, as Ctrl-C would: a shell that runs
    a job in the background (CI's, for one) starts it with SIGINT ignored, children inherit
    that, and Python then installs no KeyboardInterrupt handler. A terminal gives the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def host_address() -> str:
    """This machine's first non-loopback IPv4 address: one the API server's pod proxy dials
    (it refuses loopback)."""
    addresses = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    return next(a for a in addresses if "." in a and not a.startswith("127."))


def route_pods_to_host(core: Any, namespace: str, label_selector: str) -> list[str]:
    """Point the ready pods matching ``label_selector`` at this machine: their status.podIP
    becomes :func:`host_address`, so the API server's pod proxy reaches a real ``kubeloop
    serve`` listening here on the ModelDeployment's port. kwok marked them Ready with a made-up
    address and leaves a Ready pod's status alone; a kubelet would have written its own.
    Returns the pods routed."""
    address = host_address()
    routed = []
    for pod in core.list_namespaced_pod(namespace, label_selector=label_selector).items:
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if ready and not pod.metadata.deletion_timestamp:
            # A merge patch replaces the list (a strategic one would add a second address).
            core.patch_namespaced_pod_status(pod.metadata.name, namespace, {
                "status": {"podIP": address, "podIPs": [{"ip": address}]}},
                _content_type="application/merge-patch+json")
            routed.append(pod.metadata.name)
    return routed


class Prometheus:
    """Debian's Prometheus on a free loopback port, scraping the servers every second."""

    def __init__(self, root: Path, targets: dict[str, str], namespace: str, port: int | None = None) -> None:
        assert PROMETHEUS is not None
        # A port chosen in advance lets the operator be configured to allow this Prometheus.
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        jobs = "".join(
            f"""
  - job_name: {track}
    scrape_interval: 1s
    static_configs:
      - targets: ['{address}']
        labels:
          namespace: {namespace}
"""
            for track, address in targets.items()
        )
        config = root / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:{jobs}")
        self.log = root / "prometheus.log"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out, stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, interval=0.3, what="prometheus ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
