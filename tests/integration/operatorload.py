"""Load and takeover helpers shared by the operator scale/HA tests and ``hack/bench/operator``.

Everything here talks to the real API server:

* :class:`Recorder` watches TrainingRuns, Jobs, Pods and ModelDeployments of one namespace from
  before the load is applied and stamps every change with this machine's clock (sub-second,
  unlike ``creationTimestamp``); it also counts Job and Deployment creations (ADDED events and
  uids), which is how duplicates are found - not by names the API server refuses anyway.
* :class:`WatchKubelet` plays the one part of the kubelet kwok cannot: it ends each trainer pod
  kwok made Running with the termination message a real ``kubeloop train`` wrote.
* :func:`operator_identity` gives the operator process its own ServiceAccount token and a
  FlowSchema of its own, so the API server counts its requests
  (``apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}``) apart from everyone
  else's; the FlowSchema sends them to ``workload-low``, the priority level an in-cluster
  operator's ServiceAccount gets from the default ``service-accounts`` FlowSchema.
* :func:`install_peering` applies the chart's own peering objects (``helm template``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from harness import REPO, play_kubelet_terminate
from kubernetes import client, watch
from prometheus_client.parser import text_string_to_metric_families

from kubeloop.controllers.kube import Kube

GROUP, VERSION = "kubeloop.io", "v1alpha1"
RUN_LABEL = "kubeloop.io/trainingrun"
MD_LABEL = "kubeloop.io/modeldeployment"
CHART = REPO / "charts" / "kubeloop"
HACK_CLUSTER = REPO / "hack" / "cluster"


# --- watching --------------------------------------------------------------------------------


@dataclass
class Timeline:
    """What the watches saw, stamped with ``time.time()`` when each event arrived."""

    job_added: dict[str, float] = field(default_factory=dict)  # run name -> first Job ADDED
    job_adds: Counter[str] = field(default_factory=Counter)  # run name -> Job ADDED events
    job_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # run -> Job uids
    job_names: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # run -> Job names
    first_pod: dict[str, float] = field(default_factory=dict)  # run name -> first pod ADDED
    pod_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # run -> trainer pods
    run_phase_at: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    run_phase: dict[str, str] = field(default_factory=dict)
    md_phase_at: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    md_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    md_steps: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # currentStep history
    deployment_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # ModelDeployment name -> when its stable Deployment was first seen, and first seen with
    # every replica updated and available (the cluster's controllers' share of apply -> Healthy).
    stable_added: dict[str, float] = field(default_factory=dict)
    stable_available: dict[str, float] = field(default_factory=dict)


class Recorder:
    """Watches of one namespace, started before the load; read ``timeline`` under ``lock``."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.timeline = Timeline()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.threads: list[threading.Thread] = []
        core, batch, custom, apps = (
            client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api), client.AppsV1Api(api),
        )
        ns = namespace
        self._sources: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
            ("Job", batch.list_namespaced_job, {"namespace": ns, "label_selector": RUN_LABEL}),
            ("Pod", core.list_namespaced_pod, {"namespace": ns}),
            ("TrainingRun", custom.list_namespaced_custom_object,
             {"group": GROUP, "version": VERSION, "namespace": ns, "plural": "trainingruns"}),
            ("ModelDeployment", custom.list_namespaced_custom_object,
             {"group": GROUP, "version": VERSION, "namespace": ns, "plural": "modeldeployments"}),
            ("Deployment", apps.list_namespaced_deployment, {"namespace": ns, "label_selector": MD_LABEL}),
        ]
        self.ready = threading.Barrier(len(self._sources) + 1)

    def start(self) -> Recorder:
        for kind, lister, kwargs in self._sources:
            thread = threading.Thread(target=self._watch, args=(kind, lister, kwargs), daemon=True)
            thread.start()
            self.threads.append(thread)
        self.ready.wait(timeout=60)
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def _watch(self, kind: str, lister: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        first = True
        version = ""
        while not self.stop_event.is_set():
            stream = watch.Watch()
            try:
                if not version:
                    listed = lister(**kwargs, _preload_content=False)
                    body = json.loads(listed.data)
                    version = body["metadata"]["resourceVersion"]
                    for obj in body.get("items", []):
                        self._seen(kind, "ADDED", obj)
                    if first:
                        first = False
                        self.ready.wait(timeout=60)
                for event in stream.stream(
                    lister, **kwargs, resource_version=version, timeout_seconds=60,
                    allow_watch_bookmarks=True, _preload_content=False,
                ):
                    raw = event["raw_object"]
                    version = raw.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._seen(kind, event["type"], raw)
                    if self.stop_event.is_set():
                        break
            except client.ApiException as error:
                if error.status == 410:
                    version = ""  # too old: list again (events in between are lost to timing only)
                else:
                    time.sleep(0.5)
            except Exception:
                time.sleep(0.5)
            finally:
                stream.stop()

    def _seen(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        now = time.time()
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        t = self.timeline
        with self.lock:
            if kind == "Job":
                run = labels.get(RUN_LABEL, "")
                if type_ == "ADDED" and meta["uid"] not in t.job_uids[run]:
                    t.job_adds[run] += 1
                    t.job_added.setdefault(run, now)
                t.job_uids[run].add(meta["uid"])
                t.job_names[run].add(meta["name"])
            elif kind == "Pod":
                run = labels.get(RUN_LABEL)
                if run and type_ == "ADDED":
                    t.first_pod.setdefault(run, now)
                if run:
                    t.pod_uids[run].add(meta["uid"])
            elif kind == "TrainingRun":
                phase = (obj.get("status") or {}).get("phase")
                if phase:
                    t.run_phase_at[meta["name"]].setdefault(phase, now)
                    t.run_phase[meta["name"]] = phase
            elif kind == "ModelDeployment":
                status = obj.get("status") or {}
                name = meta["name"]
                if status.get("phase"):
                    t.md_phase_at[name].setdefault(status["phase"], now)
                t.md_status[name] = status
                step = status.get("currentStep") if status.get("canary") else None
                if step is not None and (not t.md_steps[name] or t.md_steps[name][-1] != step):
                    t.md_steps[name].append(int(step))
            elif kind == "Deployment":
                t.deployment_uids[meta["name"]].add(meta["uid"])
                owner = labels.get(MD_LABEL)
                if owner and labels.get("kubeloop.io/track") == "stable":
                    t.stable_added.setdefault(owner, now)
                    status, wanted = obj.get("status") or {}, (obj.get("spec") or {}).get("replicas", 1)
                    if wanted and status.get("updatedReplicas", 0) >= wanted and status.get("availableReplicas", 0) >= wanted:
                        t.stable_available.setdefault(owner, now)
        if type_ != "DELETED":
            for listener in self.listeners:
                listener(kind, obj)


class WatchKubelet:
    """Ends every trainer pod kwok made Running with a real trainer's termination message."""

    def __init__(self, api: Any, namespace: str, message: str, workers: int = 4) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.message = namespace, message
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubelet")
        self.finished: set[str] = set()
        self.guard = threading.Lock()

    def __call__(self, kind: str, pod: dict[str, Any]) -> None:
        if kind != "Pod":
            return
        meta, status = pod["metadata"], pod.get("status") or {}
        if RUN_LABEL not in (meta.get("labels") or {}) or status.get("phase") != "Running":
            return
        with self.guard:
            if meta["name"] in self.finished:
                return
            self.finished.add(meta["name"])
        self.pool.submit(self._finish, pod)

    def _finish(self, pod: dict[str, Any]) -> None:
        for _ in range(5):
            try:
                play_kubelet_terminate(self.core, self.namespace, pod, self.message, 0)
                return
            except client.ApiException as error:
                if error.status == 404:
                    return
                time.sleep(0.5)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --- identity and the API server's count of the operator's requests ----------------------------


def operator_identity(api: Any, namespace: str, name: str, out: Path) -> tuple[Path, str]:
    """A kubeconfig for ServiceAccount ``name`` (cluster-admin) and a FlowSchema matching only it.

    Returns the kubeconfig path and the FlowSchema name. cluster-admin, not the chart's
    ClusterRole: the benchmark measures speed; the chart's RBAC is checked by test_chart.py.
    """
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    except client.ApiException as error:
        if error.status != 409:
            raise
    binding = f"{namespace}-{name}"[:63]
    try:
        rbac.create_cluster_role_binding({
            "metadata": {"name": binding, "labels": {"kubeloop.io/bench": "true"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        })
    except client.ApiException as error:
        if error.status != 409:
            raise
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 4 * 3600}}
    ).status.token
    flow_schema = binding
    body = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": flow_schema, "labels": {"kubeloop.io/bench": "true"}},
        "spec": {
            "matchingPrecedence": 500,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": name, "namespace": namespace}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                   "clusterScope": True, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }
    flowcontrol = client.CustomObjectsApi(api)
    try:
        flowcontrol.create_cluster_custom_object("flowcontrol.apiserver.k8s.io", "v1", "flowschemas", body)
    except client.ApiException as error:
        if error.status != 409:
            raise
    admin = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    cluster_entry = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "local", "cluster": cluster_entry}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": name, "namespace": namespace}}],
    }
    if "certificate-authority" in cluster_entry and "certificate-authority-data" not in cluster_entry:
        ca = Path(cluster_entry.pop("certificate-authority")).read_bytes()
        cluster_entry["certificate-authority-data"] = base64.b64encode(ca).decode()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config))
    return out, flow_schema


def remove_identity(api: Any, flow_schema: str) -> None:
    with contextlib.suppress(client.ApiException):
        client.CustomObjectsApi(api).delete_cluster_custom_object(
            "flowcontrol.apiserver.k8s.io", "v1", "flowschemas", flow_schema)
    with contextlib.suppress(client.ApiException):
        client.RbacAuthorizationV1Api(api).delete_cluster_role_binding(flow_schema)


def apiserver_samples(api: Any, prefixes: Iterable[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Counters and histogram counts of the API server whose names start with ``prefixes``."""
    text = Kube(api).request_text("GET", "/metrics")
    wanted = tuple(prefixes)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(wanted):
            continue
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def dispatched(api: Any, flow_schema: str) -> float:
    """Requests the API server has dispatched for ``flow_schema`` (watches counted once)."""
    total = 0.0
    for (name, labels), value in apiserver_samples(api, ["apiserver_flowcontrol_dispatched_requests"]).items():
        if name.endswith("_total") and dict(labels).get("flow_schema") == flow_schema:
            total += value
    return total


def apf_wait(api: Any, flow_schema: str) -> dict[str, float]:
    """Requests of ``flow_schema`` that waited in APF queues, and their total wait (s); rejections."""
    out = {"queued_requests": 0.0, "queued_seconds": 0.0, "rejected": 0.0}
    samples = apiserver_samples(
        api, ["apiserver_flowcontrol_request_wait_duration_seconds", "apiserver_flowcontrol_rejected_requests"]
    )
    for (name, labels), value in samples.items():
        if dict(labels).get("flow_schema") != flow_schema:
            continue
        if name == "apiserver_flowcontrol_request_wait_duration_seconds_count" and dict(labels).get("execute") == "true":
            out["queued_requests"] += value
        elif name == "apiserver_flowcontrol_request_wait_duration_seconds_sum" and dict(labels).get("execute") == "true":
            out["queued_seconds"] += value
        elif name == "apiserver_flowcontrol_rejected_requests_total":
            out["rejected"] += value
    return out


# --- peering and the operator process ----------------------------------------------------------


def tool(name: str) -> str:
    return subprocess.run([str(HACK_CLUSTER), "which", name], capture_output=True, text=True, check=True).stdout.strip()


def install_peering(kubectl: Callable[..., Any], namespace: str, tmp: Path) -> str:
    """The chart's peering CRDs and this namespace's KopfPeering, from ``helm template``."""
    values = tmp / "peering-values.json"
    values.write_text(json.dumps({"replicaCount": 2, "watchNamespaces": [namespace]}))
    text = subprocess.run(
        [tool("helm"), "template", "kl", str(CHART), "--namespace", namespace, "--values", str(values),
         "--show-only", "templates/peering.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert crds and peerings, text
    manifest = tmp / "peering.yaml"
    manifest.write_text(yaml.safe_dump_all(crds))
    kubectl("apply", "--server-side", "--field-manager=kubeloop-tests", "--force-conflicts", "-f", str(manifest))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(manifest))
    manifest.write_text(yaml.safe_dump_all(peerings))
    kubectl("apply", "-n", namespace, "-f", str(manifest))
    return str(peerings[0]["metadata"]["name"])


def peering_status(api: Any, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", name)
    status: dict[str, Any] = obj.get("status") or {}
    return status


@dataclass
class ProcessUse:
    peak_rss_mib: float
    cpu_seconds: float


def process_use(pid: int) -> ProcessUse | None:
    """Peak RSS (VmHWM) and user+system CPU seconds of a live process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcessUse(hwm / 1024, (int(fields[11]) + int(fields[12])) / ticks)


# --- fake nodes of our own ------------------------------------------------------------------------

LOAD_LABEL = "kubeloop.io/load-test"


class FakeNodes:
    """kwok nodes for one load (110 pods each), labelled and tainted for it alone (a token of its
    own: nobody else's pods land there, and its pods land nowhere else, so deleting the nodes
    afterwards disturbs no other test); deleted on exit. Put :attr:`placement` into the specs."""

    def __init__(self, api: Any, prefix: str, count: int) -> None:
        self.core = client.CoreV1Api(api)
        self.names = [f"{prefix}-{i}" for i in range(count)]
        self.token = uuid.uuid4().hex[:12]
        self.placement: dict[str, Any] = {
            "nodeSelector": {LOAD_LABEL: self.token},
            "tolerations": [{"key": LOAD_LABEL, "operator": "Equal", "value": self.token, "effect": "NoSchedule"}],
        }

    def __enter__(self) -> FakeNodes:
        for name in self.names:
            body = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok",
                               "kubeloop.io/fake-node": "true", LOAD_LABEL: self.token},
                },
                "spec": {"taints": [{"key": LOAD_LABEL, "value": self.token, "effect": "NoSchedule"}]},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
                    "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                    "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                },
            }
            try:
                self.core.create_node(body)
            except client.ApiException as error:
                if error.status != 409:
                    raise

        def ready() -> bool:
            for name in self.names:
                conditions = self.core.read_node(name).status.conditions or []
                if not any(c.type == "Ready" and c.status == "True" for c in conditions):
                    return False
            return True

        deadline = time.monotonic() + 90
        while not ready():
            assert time.monotonic() < deadline, f"kwok nodes {self.names} not Ready in 90 s"
            time.sleep(0.5)
        return self

    def __exit__(self, *_: object) -> None:
        for name in self.names:
            with contextlib.suppress(client.ApiException):
                self.core.delete_node(name)


# --- objects --------------------------------------------------------------------------------------


def trainingrun_body(name: str, placement: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The spec test_trainingrun_controller.py trains for real (its termination message fits it)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name},
        "spec": {
            "model": {"name": "cancer", "estimator": "sklearn.linear_model.LogisticRegression",
                      "params": {"max_iter": 500}, "task": "classification"},
            "data": {"source": "sklearn://breast_cancer", "target": "target",
                     "split": {"testFraction": 0.25, "seed": 7}},
            "evaluation": {"metric": "accuracy", "threshold": 0.8},
            **(placement or {}),
        },
    }


def modeldeployment_body(
    name: str, sha: str, steps: list[dict[str, Any]] | None = None, placement: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"storageUri": f"s3://models/{sha[:4]}/model.skops", "sha256": sha}, "replicas": 1,
        **(placement or {}),
    }
    if steps is not None:
        spec["rollout"] = {"steps": steps}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def apply_all(api: Any, namespace: str, plural: str, bodies: list[dict[str, Any]], threads: int = 8) -> dict[str, float]:
    """Create every object at once (``threads`` at a time); the time each create was sent."""
    custom = client.CustomObjectsApi(api)
    sent: dict[str, float] = {}

    def create(body: dict[str, Any]) -> None:
        sent[body["metadata"]["name"]] = time.time()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(create, bodies))
    return sent


def trainer_message() -> str:
    """The termination message of a real ``kubeloop train`` on :func:`trainingrun_body`'s spec."""
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        spec = out / "spec.json"
        spec.write_text(json.dumps(trainingrun_body("template")["spec"]))
        message = out / "message.json"
        env = {k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"}
        proc = subprocess.run(
            [sys.executable, "-m", "kubeloop.cli", "train", "--spec", str(spec), "--run-name", "template",
             "--storage-uri", f"file://{out}/models", "--termination-log", str(message)],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return message.read_text()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}
