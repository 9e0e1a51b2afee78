"""The whole Kubeloop loop as a user runs it, on the real node: one driver for `make demo`
(hack/realnode/demo) and tests/e2e/test_helm_loop.py.

    python3 hack/realnode/helmloop.py run  [--namespace kubeloop-demo] [--prometheus-port 19090]
    python3 hack/realnode/helmloop.py down [--namespace kubeloop-demo]

What it sets up (nothing of Kubeloop runs on the host: kubectl and helm only):

* **API access for pods.** The private control plane's API server listens on 127.0.0.1 only
  and has no endpoint reconciler, so the ``kubernetes`` Service (10.97.0.1, in the API
  server's certificate) has no endpoints. A TCP relay on the node address (10.88.0.1:16543 ->
  127.0.0.1:16543, ``helmloop.py relay``) and an EndpointSlice for ``default/kubernetes``
  give in-cluster clients (the operator pod) the usual path through kube-proxy.
* **Storage.** Layout: the workloads live in the **release namespace**. The chart creates
  its claim ``kubeloop-models`` there (storage.modelsPvc.create), and a hostPath
  PersistentVolume under the real node's state dir (``state/models/<namespace>``, owned by
  uid 10001) is pre-bound to that claim. Trainer and server pods mount it read-write at the
  chart's default storage root ``file:///var/lib/kubeloop/models``, the operator pod read-only
  (it reads the reference profiles for drift).
* **Prometheus.** Debian's ``prometheus`` on the host (own data dir and port, listening on the
  node address so pods reach it) discovers the model-server pods itself: ``kubernetes_sd_configs``
  role ``pod`` with the admin kubeconfig, kept by their ``prometheus.io/scrape`` annotation,
  address and path from ``prometheus.io/port`` and ``prometheus.io/path``. No static target.
  The chart's ``rollout.prometheusUrl`` points at it.
* **The operator** is ``helm upgrade --install`` of charts/kubeloop with the image hack/realnode
  built (``localhost/kubeloop/kubeloop:dev``, pullPolicy Never), watching its release namespace.

Then the loop: the quickstart files applied byte for byte (``kubectl apply -f``), then a
clearly-labelled SECOND STEP that patches only what the quickstart sets for production
(minutes-long intervals, the indefinite human pause is answered by the driver as the
person would with kubeloop.io/promote) and points the DriftPolicy at Prometheus and at the newer
data; traffic from a pod (hack/realnode/traffic.py), normal then shifted; a timeline printed as
it happens; then a deliberately bad model (shuffled labels) that the canary analysis must abort.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
QUICKSTART = REPO / "examples" / "quickstart"
CHART = REPO / "charts" / "kubeloop"
CACHE = Path(os.environ.get("KUBELOOP_CACHE", Path.home() / ".cache" / "kubeloop"))
REALNODE_STATE = Path(os.environ.get("KUBELOOP_REALNODE_DIR", CACHE / "realnode" / "state"))
NODE_IP = "10.88.0.1"
APISERVER_PORT = int(os.environ.get("KUBELOOP_APISERVER_PORT", "16543"))
IMAGE_REPOSITORY, IMAGE_TAG = "localhost/kubeloop/kubeloop", "dev"
MODELS_PVC = "kubeloop-models"
RUNTIME_UID = 10001
MODEL = "breast-cancer"          # the quickstart's names
FIRST_RUN = "breast-cancer-1"
BAD_RUN = "breast-cancer-shuffled"
NEWER_DATA = "data/breast-cancer-newer.csv"      # relative to the models volume
SHUFFLED_DATA = "data/breast-cancer-shuffled.csv"
T = TypeVar("T")

# The SECOND STEP (after the quickstart is applied as written): production cadences made short
# so the loop fits in minutes. Every field changed here is printed when it is applied.
ANALYSIS_INTERVAL_SECONDS = 15
FAST_DURATIONS = {"2m": "20s", "5m": "20s"}


def fast_rollout_steps() -> list[dict[str, Any]]:
    """The quickstart's own steps, with only the shadow and pause durations shortened."""
    md = yaml.safe_load((QUICKSTART / "modeldeployment.yaml").read_text())
    steps: list[dict[str, Any]] = md["spec"]["rollout"]["steps"]
    for step in steps:
        for kind in ("shadow", "pause"):
            timed = step.get(kind) or {}
            if timed.get("duration"):
                timed["duration"] = FAST_DURATIONS.get(timed["duration"], timed["duration"])
    return steps


FAST_ROLLOUT_STEPS = fast_rollout_steps()


class LoopError(RuntimeError):
    """A step of the loop did not happen; the message says which and what was seen."""


# --- small I/O helpers ---------------------------------------------------------------------------


@dataclass
class Kube:
    kubectl: str
    kubeconfig: str

    def run(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run(
            [self.kubectl, "--kubeconfig", self.kubeconfig, *args],
            input=stdin, capture_output=True, text=True, timeout=timeout,
        )
        if check and done.returncode != 0:
            raise LoopError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def get(self, namespace: str, *what: str) -> dict[str, Any] | None:
        out = self.run("get", "-n", namespace, *what, "-o", "json", "--ignore-not-found", check=False)
        return json.loads(out) if out.strip() else None

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.run(*(["-n", namespace] if namespace else []), "apply", "-f", "-", stdin=text)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise LoopError(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {last!r})")


def tool(name: str) -> str:
    return subprocess.run([str(REPO / "hack" / "cluster"), "which", name], capture_output=True, text=True,
                          check=True).stdout.strip()


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def free_port(host: str = NODE_IP) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_background(argv: list[str], log: Path, pid_file: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    pid_file.write_text(f"{process.pid}\n{' '.join(argv)}\n")
    return process.pid


def stop_background(pid_file: Path) -> None:
    """Stop the process recorded in pid_file, only if it still runs the recorded command."""
    if not pid_file.exists():
        return
    lines = pid_file.read_text().splitlines()
    pid, argv = int(lines[0]), lines[1] if len(lines) > 1 else ""
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        if cmdline == argv.strip():
            os.kill(pid, 15)
    pid_file.unlink(missing_ok=True)


# --- the timeline --------------------------------------------------------------------------------


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    out: Callable[[str], None] = print

    def mark(self, event: str, detail: str = "") -> float:
        at = time.monotonic() - self.started
        self.events.append((at, event, detail))
        clock = datetime.now(UTC).strftime("%H:%M:%S")
        self.out(f"[{clock} +{at:6.1f}s] {event}{': ' + detail if detail else ''}")
        return at

    def at(self, event: str) -> float:
        for at, name, _ in self.events:
            if name == event:
                return at
        raise KeyError(event)

    def markdown(self) -> str:
        rows = ["| + s | transition | detail |", "| ---: | --- | --- |"]
        rows += [f"| {at:.1f} | {name} | {detail.replace('|', '/')} |" for at, name, detail in self.events]
        return "\n".join(rows)


# --- infrastructure: API relay, storage, Prometheus, the chart ------------------------------------


def relay(listen: str, target: str) -> None:
    """A plain TCP relay (the API server's TLS passes through untouched)."""
    host, port = listen.rsplit(":", 1)
    to_host, to_port = target.rsplit(":", 1)
    server = socket.create_server((host, int(port)), reuse_port=False)

    def pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((to_host, int(to_port)), timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


def ensure_api_for_pods(kube: Kube, state: Path) -> None:
    if not port_open(NODE_IP, APISERVER_PORT):
        start_background([sys.executable, str(Path(__file__).resolve()), "relay",
                          f"{NODE_IP}:{APISERVER_PORT}", f"127.0.0.1:{APISERVER_PORT}"],
                         state / "api-relay.log", REALNODE_STATE / "pids" / "helmloop-api-relay.pid")
        wait_for(lambda: port_open(NODE_IP, APISERVER_PORT), 10, "the API relay on the node address", 0.2)
    kube.apply({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes-realnode", "namespace": "default", "labels": {
            "kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "kubeloop.io-realnode"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": APISERVER_PORT, "protocol": "TCP"}],
    })


def models_dir(namespace: str) -> Path:
    return REALNODE_STATE / "models" / namespace


def pv_name(namespace: str) -> str:
    return f"kubeloop-models-{namespace}"


def ensure_storage(kube: Kube, namespace: str) -> Path:
    """The hostPath PersistentVolume the chart's claim binds to, and the newer/shuffled data."""
    root = models_dir(namespace)
    (root / "data").mkdir(parents=True, exist_ok=True)
    write_data(root)
    for path in [root, *root.rglob("*")]:
        os.chown(path, RUNTIME_UID, RUNTIME_UID)
    existing = kube.get("default", "pv", pv_name(namespace)) or {}
    if (existing.get("status") or {}).get("phase") in ("Released", "Failed"):
        # Its claimRef still names the old claim's uid: a new claim of the same name would wait.
        kube.run("delete", "pv", pv_name(namespace), "--wait=true")
    kube.apply({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name(namespace), "labels": {"kubeloop.io/demo": namespace}},
        "spec": {
            "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
            "hostPath": {"path": str(root), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": MODELS_PVC},
        },
    })
    return root


def write_data(root: Path) -> None:
    """Two CSVs on the models volume: the newer data (half of the records measured the shifted
    way, as the traffic after the shift) and the same records with shuffled labels (bad model)."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    sys.path.insert(0, str(HERE))
    import traffic

    data = load_breast_cancer()
    rng = random.Random(1)
    rows = [traffic.shift_row(r) if rng.random() < 0.5 else [float(v) for v in r] for r in data.data]
    newer = pd.DataFrame(rows, columns=list(data.feature_names))
    newer["target"] = data.target.astype(int)
    newer.to_csv(root / NEWER_DATA, index=False)
    shuffled = pd.DataFrame(data.data, columns=list(data.feature_names))
    labels = list(data.target.astype(int))
    random.Random(2).shuffle(labels)
    shuffled["target"] = labels
    shuffled.to_csv(root / SHUFFLED_DATA, index=False)


def prometheus_config(namespace: str, kubeconfig: str) -> str:
    config = {
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "5s"},
        "scrape_configs": [{
            "job_name": "kubeloop-model-servers",
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": kubeconfig,
                                       "namespaces": {"names": [namespace]}}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                 "action": "keep", "regex": "true"},
                {"source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                 "regex": "(.+);(\\d+)", "replacement": "$1:$2", "target_label": "__address__"},
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                 "regex": "(.+)", "target_label": "__metrics_path__"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }],
    }
    return json.dumps(config, indent=1)  # JSON is YAML


def start_prometheus(namespace: str, port: int, kubeconfig: str, state: Path) -> str:
    url = f"http://{NODE_IP}:{port}"
    pid_file = state / "prometheus.pid"
    stop_background(pid_file)
    data = state / "prometheus-data"
    shutil.rmtree(data, ignore_errors=True)
    config = state / "prometheus.yml"
    config.write_text(prometheus_config(namespace, kubeconfig))
    binary = prometheus_binary()
    start_background([binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                      f"--web.listen-address={NODE_IP}:{port}", "--storage.tsdb.retention.time=1d"],
                     state / "prometheus.log", pid_file)

    def ready() -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
            return bool(r.status == 200)
        return False

    wait_for(ready, 60, f"prometheus on {url}", 0.3)
    return url


PROMETHEUS_MODULE = "github.com/prometheus/prometheus/cmd/prometheus"
PROMETHEUS_VERSION = "v0.316.0"  # the Go module version of Prometheus v3.16.0


def prometheus_binary() -> str:
    """Prometheus built from its Go module (cached). Debian's bookworm ``prometheus`` (2.42)
    is built without the Kubernetes service discovery ("field kubernetes_sd_configs not
    found"), so it cannot find pods by itself."""
    gobin = CACHE / "bin" / f"prometheus-{PROMETHEUS_VERSION}"
    binary = gobin / "prometheus"
    if not binary.exists():
        gobin.mkdir(parents=True, exist_ok=True)
        print(f"demo: building Prometheus {PROMETHEUS_VERSION} from its Go module (once, minutes)", flush=True)
        done = subprocess.run(["go", "install", f"{PROMETHEUS_MODULE}@{PROMETHEUS_VERSION}"],
                              env={**os.environ, "GOBIN": str(gobin), "GOFLAGS": "-mod=mod"},
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0 or not binary.exists():
            raise LoopError(f"go install {PROMETHEUS_MODULE}@{PROMETHEUS_VERSION} failed: {done.stderr[-2000:]}")
    return str(binary)


def prometheus_targets(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/targets?state=active", timeout=5) as r:
        return list(json.load(r)["data"]["activeTargets"])


def prometheus_value(url: str, query: str) -> float | None:
    q = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as r:
        result = json.load(r)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def helm_install(namespace: str, release: str, prometheus_url: str, helm: str, kubeconfig: str) -> str:
    values = {
        "image": {"repository": IMAGE_REPOSITORY, "tag": IMAGE_TAG, "pullPolicy": "Never"},
        "runtime": {"pullPolicy": "Never"},
        "crds": {"install": False},  # applied with kubectl first: other tests share the cluster's CRDs
        "watchNamespaces": [namespace],
        "storage": {"modelsPvc": {"name": MODELS_PVC, "create": True, "size": "10Gi"}},
        "rollout": {"prometheusUrl": prometheus_url, "tickSeconds": 2},
        "resyncSeconds": 10,
        "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        # A rebuilt image keeps its tag: the archive's name changes, and with it the pod.
        "podAnnotations": {"kubeloop.io/image-archive": image_archive()},
    }
    values_file = REALNODE_STATE.parent / "demo" / f"values-{namespace}.json"
    values_file.parent.mkdir(parents=True, exist_ok=True)
    values_file.write_text(json.dumps(values))
    done = subprocess.run(
        [helm, "--kubeconfig", kubeconfig, "upgrade", "--install", release, str(CHART), "-n", namespace,
         "-f", str(values_file), "--wait", "--timeout", "180s"],
        capture_output=True, text=True, timeout=240,
    )
    if done.returncode != 0:
        raise LoopError(f"helm install failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def helm_test(namespace: str, release: str, helm: str, kubeconfig: str) -> str:
    """``helm test``: the chart's test Pod checks the three kinds are served (CRDs established)
    and the operator answers (/healthz of its pod, /metrics through its Service); helm's
    report with the Pod's log is returned."""
    done = subprocess.run(
        [helm, "--kubeconfig", kubeconfig, "test", release, "-n", namespace, "--logs", "--timeout", "180s"],
        capture_output=True, text=True, timeout=240,
    )
    if done.returncode != 0:
        raise LoopError(f"helm test failed: {done.stderr.strip()}\n{done.stdout.strip()}")
    return done.stdout


def image_archive() -> str:
    archives = sorted((CACHE / "realnode" / "images").glob("runtime-*.tar"), key=lambda p: p.stat().st_mtime)
    return archives[-1].name if archives else "unknown"


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    timeline: Timeline
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Loop:
    kube: Kube
    namespace: str
    release: str
    prometheus_port: int
    helm: str
    state: Path
    out: Callable[[str], None] = print
    timeline: Timeline = field(init=False)
    use_prometheus: bool = True
    prometheus_url: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timeline = Timeline(out=self.out)

    # -- reading

    def obj(self, kind: str, name: str) -> dict[str, Any]:
        return self.kube.get(self.namespace, kind, name) or {}

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return dict(self.obj(kind, name).get("status") or {})

    def condition(self, kind: str, name: str, ctype: str) -> dict[str, Any] | None:
        for c in self.status(kind, name).get("conditions") or []:
            if c.get("type") == ctype:
                return dict(c)
        return None

    # -- setup

    def setup(self) -> None:
        ns = self.namespace
        tl = self.timeline
        crds = str(REPO / "crds")
        self.kube.run("apply", "--server-side", "--force-conflicts", "--field-manager=kubeloop-demo", "-f", crds)
        self.kube.run("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted"}}})
        ensure_api_for_pods(self.kube, self.state)
        root = ensure_storage(self.kube, ns)
        tl.mark("storage", f"PersistentVolume {pv_name(ns)} (hostPath {root}) pre-bound to {ns}/{MODELS_PVC}")
        if self.use_prometheus:
            self.prometheus_url = start_prometheus(ns, self.prometheus_port, self.kube.kubeconfig, self.state)
            tl.mark("prometheus", f"{self.prometheus_url} (kubernetes_sd_configs role=pod, namespace {ns})")
        helm_install(ns, self.release, self.prometheus_url, self.helm, self.kube.kubeconfig)
        pods = self.kube.get(ns, "pods", "-l", f"app.kubernetes.io/instance={self.release},"
                             "app.kubernetes.io/component=operator") or {}
        pod = (pods.get("items") or [{}])[0]
        self.facts["operator_pod"] = pod.get("metadata", {}).get("name")
        self.facts["operator_service_account"] = pod.get("spec", {}).get("serviceAccountName")
        self.facts["operator_image"] = (pod.get("spec", {}).get("containers") or [{}])[0].get("image")
        tl.mark("operator installed", f"helm release {self.release}: pod {self.facts['operator_pod']} "
                f"(serviceAccount {self.facts['operator_service_account']}, image {self.facts['operator_image']})")
        self.out(f"$ helm test {self.release} -n {ns} --logs")
        self.facts["helm_test"] = helm_test(ns, self.release, self.helm, self.kube.kubeconfig)
        tl.mark("helm test passed", "kinds served, operator /healthz and /metrics answer")
        claim = self.kube.get(ns, "pvc", MODELS_PVC) or {}
        self.facts["claim_phase"] = (claim.get("status") or {}).get("phase")
        self.facts["claim_volume"] = (claim.get("spec") or {}).get("volumeName")

    def apply_quickstart(self, name: str) -> None:
        path = QUICKSTART / name
        self.out(f"$ kubectl apply -n {self.namespace} -f examples/quickstart/{name}   # as written")
        self.kube.run("apply", "-n", self.namespace, "-f", str(path))
        self.facts.setdefault("quickstart_applied", []).append(str(path.relative_to(REPO)))

    def second_step(self, kind: str, name: str, patch: dict[str, Any], why: str) -> None:
        text = json.dumps(patch)
        self.out(f"$ kubectl patch {kind}/{name} --type merge -p '{text}'")
        self.out(f"  ^ SECOND STEP, not in the quickstart: {why}")
        self.kube.run("patch", "-n", self.namespace, kind, name, "--type", "merge", "-p", text)

    def service_url(self) -> str:
        svc = self.obj("service", MODEL)
        port = svc["spec"]["ports"][0]["port"]
        return f"http://{svc['spec']['clusterIP']}:{port}/v2/models/{MODEL}/infer"

    def start_traffic(self, mode: str, rate: float = 20) -> None:
        for other in ("normal", "shifted"):
            self.kube.run("delete", "-n", self.namespace, "pod", f"traffic-{other}", "--wait=false",
                          "--ignore-not-found")
        script = (HERE / "traffic.py").read_text()
        self.kube.run("create", "configmap", "-n", self.namespace, "traffic", "--from-literal=traffic.py=" + script,
                      "--dry-run=client", "-o", "yaml")  # validates
        self.kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "traffic"},
                         "data": {"traffic.py": script}}, self.namespace)
        restricted = {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                      "seccompProfile": {"type": "RuntimeDefault"}, "readOnlyRootFilesystem": True}
        self.kube.apply({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"traffic-{mode}", "labels": {"app": "traffic"}},
            "spec": {
                "automountServiceAccountToken": False, "restartPolicy": "Always",
                "containers": [{
                    "name": "traffic", "image": f"{IMAGE_REPOSITORY}:{IMAGE_TAG}", "imagePullPolicy": "Never",
                    "command": ["python", "/traffic/traffic.py", "--url", self.service_url(), "--mode", mode,
                                "--rate", str(rate)],
                    "securityContext": restricted,
                    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    "volumeMounts": [{"name": "traffic", "mountPath": "/traffic"},
                                     {"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "traffic", "configMap": {"name": "traffic"}},
                            {"name": "tmp", "emptyDir": {}}],
            },
        }, self.namespace)
        wait_for(lambda: (self.status("pod", f"traffic-{mode}").get("phase") == "Running"), 120,
                 f"traffic-{mode} pod running")

    # -- the loop itself

    def train_and_serve(self) -> None:
        tl = self.timeline
        self.apply_quickstart("trainingrun.yaml")
        run = wait_for(lambda: self.status("tr", FIRST_RUN) if self.status("tr", FIRST_RUN).get("phase")
                       in ("Succeeded", "Failed") else None, 600, f"TrainingRun {FIRST_RUN} to finish")
        if run.get("phase") != "Succeeded":
            raise LoopError(f"TrainingRun {FIRST_RUN} failed: {run.get('conditions')}")
        model = run.get("model") or {}
        self.facts["first_sha"] = model.get("sha256")
        self.facts["first_metrics"] = model.get("metrics")
        tl.mark("trained", f"{FIRST_RUN}: sha256 {str(model.get('sha256'))[:12]}, metrics {model.get('metrics')}")

        self.apply_quickstart("modeldeployment.yaml")
        self.second_step("md", MODEL, {"spec": {"rollout": {
            "steps": FAST_ROLLOUT_STEPS,
            "analysis": {"interval": f"{ANALYSIS_INTERVAL_SECONDS}s", "failureLimit": 0}}}},
            f"step durations {', '.join(f'{a} -> {b}' for a, b in FAST_DURATIONS.items())}, "
            f"analysis interval 1m -> {ANALYSIS_INTERVAL_SECONDS}s, "
            "failureLimit 1 -> 0 (the first failed round aborts: the bad model must be out within one "
            "interval); the indefinite pause stays: the driver promotes there as the person would")
        wait_for(lambda: self.status("md", MODEL).get("phase") == "Healthy", 300, f"ModelDeployment {MODEL} Healthy")
        stable = self.status("md", MODEL).get("stable") or {}
        tl.mark("serving", f"md/{MODEL} Healthy, stable sha256 {str(stable.get('sha256'))[:12]}, "
                f"{self.status('md', MODEL).get('readyReplicas')} ready replicas")

    def watch_drift(self) -> None:
        tl = self.timeline
        self.start_traffic("normal")
        tl.mark("traffic normal", f"pod traffic-normal -> {self.service_url()}")
        self.apply_quickstart("driftpolicy.yaml")
        live = {"prometheusUrl": self.prometheus_url} if self.prometheus_url else {}
        # window only means something with Prometheus (the API refuses it otherwise): without,
        # the operator compares the pods' counters between two checks.
        window = {"window": "45s"} if self.prometheus_url else {}
        self.second_step("dp", MODEL, {"spec": {
            "source": {"live": live},
            "interval": "15s", **window,
            "retrain": {"overrides": {"data": {"source": f"pvc://{MODELS_PVC}/{NEWER_DATA}"}}},
        }}, "live counts from Prometheus (chart's rollout.prometheusUrl) over a 45s window, interval 5m -> 15s, "
            "retrain on the newer data (the quickstart's commented `overrides: data`)")
        if self.prometheus_url:
            targets = wait_for(lambda: [t for t in prometheus_targets(self.prometheus_url)
                                        if t.get("health") == "up"], 60,
                               "Prometheus to discover and scrape the model servers")
            self.facts["prometheus_targets"] = sorted(t["labels"].get("pod", "") for t in targets)
            self.facts["prometheus_discovered"] = sorted(
                t["discoveredLabels"].get("__meta_kubernetes_pod_name", "") for t in targets)
            tl.mark("prometheus discovered", f"{len(targets)} pods up: {', '.join(self.facts['prometheus_targets'])}")

        def checked_clean() -> dict[str, Any] | None:
            s = self.status("dp", MODEL)
            return s if s.get("drifted") is False and (s.get("samples") or 0) >= 200 else None

        clean = wait_for(checked_clean, 180, "a drift check over normal traffic (not drifted, >= 200 samples)")
        self.facts["normal_check"] = {"samples": clean.get("samples"), "share": clean.get("driftedShare")}
        tl.mark("normal traffic checked", f"not drifted: {clean.get('samples')} samples, drifted share "
                f"{clean.get('driftedShare')}")
        self.start_traffic("shifted")
        tl.mark("traffic shifted", "pod traffic-shifted: 15 of 30 measurements x1.6")
        drifted = wait_for(lambda: (s := self.status("dp", MODEL)) and s.get("drifted") and s, 240,
                           "the DriftPolicy to see drift")
        scores = {s.get("feature"): round(float(s.get("score") or 0), 3) for s in drifted.get("scores") or []
                  if s.get("drifted")}
        self.facts["drift"] = {"features": drifted.get("driftedFeatures"), "share": drifted.get("driftedShare"),
                               "samples": drifted.get("samples"), "scores": scores}
        cond = self.condition("dp", MODEL, "Drifted") or {}
        self.facts["drift_condition"] = cond
        top = sorted(scores.items(), key=lambda kv: -kv[1])[:5]
        tl.mark("drift detected", f"share {drifted.get('driftedShare')} of features over {drifted.get('samples')} "
                f"samples; top scores {top}; condition Drifted={cond.get('status')} ({cond.get('reason')})")

    def retrain_and_promote(self) -> None:
        tl = self.timeline
        retrain = wait_for(lambda: (self.status("dp", MODEL).get("lastRetrain") or {}).get("name"), 120,
                           "the DriftPolicy to create a retrain TrainingRun")
        self.facts["retrain"] = retrain
        tl.mark("retrain created", f"TrainingRun {retrain} (reason Drift)")
        run = wait_for(lambda: self.status("tr", retrain) if self.status("tr", retrain).get("phase")
                       in ("Succeeded", "Failed") else None, 600, f"TrainingRun {retrain} to finish")
        model = run.get("model") or {}
        self.facts["retrain_phase"] = run.get("phase")
        self.facts["retrain_sha"] = model.get("sha256")
        self.facts["retrain_metrics"] = model.get("metrics")
        self.facts["champion_metrics"] = model.get("championMetrics")
        self.facts["retrain_gates"] = model.get("gates")
        if run.get("phase") != "Succeeded":
            raise LoopError(f"retrain {retrain} failed: {run.get('conditions')}")
        tl.mark("beat the champion", f"{retrain}: {model.get('metrics')} vs champion {model.get('championMetrics')}")

        md = wait_for(lambda: (s := self.status("md", MODEL)).get("canary") and s, 120,
                      "autoPromote to start a canary")
        tl.mark("canary started", f"canary sha256 {str((md.get('canary') or {}).get('sha256'))[:12]}")
        old_stable = self.facts["first_sha"]
        seen_step: int | None = None
        steps: list[dict[str, Any]] = []
        # Every analysis round seen while the rollout runs (promotion clears status.analysis).
        analysis_runs: dict[tuple[Any, ...], dict[str, Any]] = {}
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            s = self.status("md", MODEL)
            for r in (s.get("analysis") or {}).get("runs") or []:
                analysis_runs.setdefault((r.get("name"), r.get("step"), r.get("time")), r)
            stable_sha = (s.get("stable") or {}).get("sha256")
            if not s.get("canary") and stable_sha and stable_sha != old_stable:
                break
            if s.get("phase") == "Degraded":
                raise LoopError(f"the retrained model was aborted: {s.get('conditions')}")
            step = s.get("currentStep")
            if step is not None and step != seen_step:
                seen_step = step
                runs = [(r.get("name"), r.get("value"), r.get("passed")) for r in
                        ((s.get("analysis") or {}).get("runs") or [])[-3:]]
                spec_step = FAST_ROLLOUT_STEPS[step] if step < len(FAST_ROLLOUT_STEPS) else {}
                steps.append({"step": step, "spec": spec_step, "weight": s.get("canaryWeight"), "analysis": runs})
                tl.mark(f"canary step {step}", f"{json.dumps(spec_step)} weight {s.get('canaryWeight')} "
                        f"shadow {s.get('shadowPercent')}; last analysis {runs}")
            if step is not None and FAST_ROLLOUT_STEPS[min(step, len(FAST_ROLLOUT_STEPS) - 1)] == {"pause": {}} \
                    and not self.facts.get("promoted_by_hand"):
                self.facts["promoted_by_hand"] = True
                self.kube.run("annotate", "-n", self.namespace, "md", MODEL, "--overwrite",
                              f"kubeloop.io/promote={int(time.time())}")
                tl.mark("person promotes", "kubectl annotate md/breast-cancer kubeloop.io/promote=... (the "
                        "quickstart's 'wait for a person')")
            time.sleep(1)
        else:
            raise LoopError(f"the canary was not promoted in time: {self.status('md', MODEL)}")
        s = self.status("md", MODEL)
        self.facts["canary_steps"] = steps
        self.facts["analysis_runs"] = list(analysis_runs.values())
        self.facts["promoted_sha"] = (s.get("stable") or {}).get("sha256")
        tl.mark("promoted", f"stable sha256 {str(old_stable)[:12]} -> {str(self.facts['promoted_sha'])[:12]}")

    def bad_model(self) -> None:
        tl = self.timeline
        good_stable = self.facts["promoted_sha"]
        bad = {
            "apiVersion": "kubeloop.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": BAD_RUN},
            "spec": {
                "model": {"name": MODEL, "estimator": "sklearn.ensemble.RandomForestClassifier",
                          "task": "classification", "params": {"n_estimators": 100, "max_depth": 8}},
                "data": {"source": f"pvc://{MODELS_PVC}/{SHUFFLED_DATA}", "target": "target",
                         "split": {"testFraction": 0.25, "seed": 42}},
                # The gate that lets it through: any ROC AUC, no champion comparison.
                "evaluation": {"metric": "roc_auc", "threshold": 0.0},
                "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
                "backoffLimit": 0,
            },
        }
        self.kube.apply(bad, self.namespace)
        run = wait_for(lambda: self.status("tr", BAD_RUN) if self.status("tr", BAD_RUN).get("phase")
                       in ("Succeeded", "Failed") else None, 600, f"TrainingRun {BAD_RUN} to finish")
        if run.get("phase") != "Succeeded":
            raise LoopError(f"{BAD_RUN} failed: {run.get('conditions')}")
        self.facts["bad_sha"] = (run.get("model") or {}).get("sha256")
        tl.mark("bad model trained", f"{BAD_RUN} on shuffled labels: {(run.get('model') or {}).get('metrics')}")
        self.kube.run("patch", "-n", self.namespace, "md", MODEL, "--type", "merge", "-p",
                      json.dumps({"spec": {"model": {"trainingRunRef": {"name": BAD_RUN}}}}))
        tl.mark("bad model pointed at", f"md/{MODEL} spec.model.trainingRunRef = {BAD_RUN}")

        first_request: float | None = None
        aborted: float | None = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            s = self.status("md", MODEL)
            if first_request is None and canary_requests(self.kube, self.namespace) > 0:
                first_request = tl.mark("bad canary's first request", "its kubeloop_serve_requests_total > 0")
            if s.get("phase") == "Degraded":
                aborted = tl.mark("canary aborted", f"{self.condition('md', MODEL, 'Degraded')}")
                break
            time.sleep(0.5)
        if aborted is None:
            raise LoopError(f"the bad canary was not aborted in 300 s: {self.status('md', MODEL)}")
        s = self.status("md", MODEL)
        failing = [r for r in (s.get("analysis") or {}).get("runs") or [] if not r.get("passed")]
        self.facts["abort"] = {
            "first_request_at": first_request, "aborted_at": aborted,
            "seconds_after_first_request": None if first_request is None else aborted - first_request,
            "degraded": self.condition("md", MODEL, "Degraded"),
            "failing_runs": failing, "stable_sha": (s.get("stable") or {}).get("sha256"),
            "good_stable_sha": good_stable,
        }
        # After an abort status.canary stays (kubeloop.io/retry starts the same rollout again);
        # what must be true is: aborted, weight 0, the canary scaled to 0, the Service on stable.
        wait_for(lambda: (s := self.status("md", MODEL)).get("aborted") and not s.get("canaryWeight") and
                 not (self.obj("deployment", f"{MODEL}-canary").get("spec") or {}).get("replicas") and
                 (self.obj("service", MODEL).get("spec") or {}).get("selector", {}).get("kubeloop.io/track")
                 == "stable", 120, "traffic back on stable (aborted, weight 0, no canary pods)")
        tl.mark("traffic back on stable", f"stable sha256 {str((s.get('stable') or {}).get('sha256'))[:12]}")

    def lineage(self) -> str:
        plugin = subprocess.run([sys.executable, "-m", "kubeloop.plugin", "--kubeconfig", self.kube.kubeconfig,
                                 "-n", self.namespace, "status", f"md/{MODEL}"],
                                capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "160",
                                "KUBECONFIG": self.kube.kubeconfig,
                                "PYTHONPATH": str(REPO / "operator")})
        self.facts["status_output"] = plugin.stdout + plugin.stderr
        return self.facts["status_output"]

    def run(self) -> LoopResult:
        self.setup()
        self.train_and_serve()
        self.watch_drift()
        self.retrain_and_promote()
        self.bad_model()
        self.out(self.lineage())
        self.timeline.mark("loop done")
        return LoopResult(self.timeline, self.facts)

    def teardown(self) -> None:
        # Kubeloop's objects first, while the operator still runs to drop its finalizers.
        self.kube.run("delete", "-n", self.namespace, "driftpolicies,modeldeployments,trainingruns", "--all",
                      "--wait=true", "--timeout=90s", check=False, timeout=120)
        stop_background(self.state / "prometheus.pid")
        subprocess.run([self.helm, "--kubeconfig", self.kube.kubeconfig, "uninstall", self.release, "-n",
                        self.namespace, "--wait", "--timeout", "120s"], capture_output=True, text=True)
        self.kube.run("delete", "namespace", self.namespace, "--wait=true", "--timeout=120s", check=False,
                      timeout=180)
        self.kube.run("delete", "pv", pv_name(self.namespace), "--ignore-not-found", check=False)
        shutil.rmtree(models_dir(self.namespace), ignore_errors=True)


def canary_requests(kube: Kube, namespace: str) -> float:
    """Inference requests the canary pods answered (their own /metrics, read from the host)."""
    pods = kube.get(namespace, "pods", "-l", f"kubeloop.io/track=canary,kubeloop.io/modeldeployment={MODEL}") or {}
    total = 0.0
    for pod in pods.get("items") or []:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=1) as r:
                text = r.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("kubeloop_serve_requests_total{") and (
                    'endpoint="infer"' in line or 'endpoint="predict"' in line):
                total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def loop_env() -> Iterator[tuple[Kube, str]]:
    up = subprocess.run([str(HERE / "up"), "env"], capture_output=True, text=True, check=True).stdout
    kubeconfig = next(line.split("=", 1)[1] for line in up.splitlines() if line.startswith("export KUBECONFIG="))
    yield Kube(tool("kubectl"), kubeconfig), tool("helm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the Kubeloop loop on the real node, installed by Helm")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "down"):
        p = sub.add_parser(name)
        p.add_argument("--namespace", default=os.environ.get("KUBELOOP_DEMO_NAMESPACE", "kubeloop-demo"))
        p.add_argument("--release", default="kubeloop")
        p.add_argument("--prometheus-port", type=int, default=19090)
        p.add_argument("--results", type=Path, default=None, help="append the timeline (markdown) here")
        p.add_argument("--no-prometheus", action="store_true",
                       help="debugging only: the operator scrapes the pods through the API server")
    r = sub.add_parser("relay")
    r.add_argument("listen")
    r.add_argument("target")
    args = parser.parse_args(argv)
    if args.command == "relay":
        relay(args.listen, args.target)
        return 0
    state = CACHE / "realnode" / "demo"
    state.mkdir(parents=True, exist_ok=True)
    with loop_env() as (kube, helm):
        loop = Loop(kube, args.namespace, args.release, args.prometheus_port, helm, state,
                    use_prometheus=not getattr(args, "no_prometheus", False))
        if args.command == "down":
            loop.teardown()
            return 0
        started = time.monotonic()
        if kube.get("default", "namespace", args.namespace):
            print(f"demo: removing the previous demo in namespace {args.namespace} first", flush=True)
            loop.teardown()
        try:
            result = loop.run()
        except LoopError as error:
            print(f"demo: FAILED: {error}", file=sys.stderr)
            return 1
        wall = time.monotonic() - started
        print(f"demo: the whole loop took {wall:.0f}s")
        if args.results:
            with open(args.results, "a") as out:
                out.write(f"\n### make demo loop, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({wall:.0f} s)\n\n")
                out.write(result.timeline.markdown() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
