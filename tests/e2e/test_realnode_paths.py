"""Paths that need a real node's network: cluster DNS, shadow mirroring, pod-proxy scrapes.

Given the real node (containerd + kubelet + kube-proxy + CoreDNS on this machine) and
``kubeloop operator`` as a local process **without Prometheus** (so every measurement comes from
the server pods' own /metrics, read through the API server's pod proxy,
``kubeloop.controllers.scraping``):

* a pod resolves ``kubernetes.default.svc.cluster.local`` and a model's Service name to their
  ClusterIPs, and a name outside the cluster fails at once (nothing is forwarded);
* a DriftPolicy with ``live: {}`` turns Drifted when shifted rows are sent to the real server
  pod: the bin counters it compares are scraped from the pod, not queried from Prometheus;
* a ``shadow`` step makes the stable pod mirror requests to the challenger by its Service DNS
  name (``<md>-canary.<namespace>.svc``): the stable server's agreement counters grow;
* the canary's analysis step (builtin errorRate) reaches a verdict from pod scrapes alone, and
  the rollout moves on.

Every request goes to addresses on this machine (ClusterIPs and pod IPs on the node's bridge).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from harness import OperatorProcess, install_crds
from prometheus_client.parser import text_string_to_metric_families
from realnode import TIMINGS, RealNode, apply, diagnostics, get, host_claim, poll, status_of
from sklearn.datasets import load_breast_cancer

from kubeloop.resources.serving import OWNER_LABEL, TRACK_LABEL

MODELS_PVC = "kubeloop-models"
HOST_MODELS = Path("/var/lib/kubeloop-e2e")
RUNTIME_UID = 10001
MD = "cancer"
PORT = 8080


def training_run(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name},
        "spec": {
            "model": {"name": "cancer", "estimator": "sklearn.ensemble.RandomForestClassifier",
                      "task": "classification", "params": params},
            "data": {"source": "sklearn://breast_cancer", "target": "target",
                     "split": {"testFraction": 0.25, "seed": 42}},
            "evaluation": {"metric": "roc_auc", "threshold": 0.9},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "backoffLimit": 0, "activeDeadlineSeconds": 600,
        },
    }


# The rollout a model change starts: mirror first, then real traffic measured by the operator.
ROLLOUT = {
    "steps": [
        {"shadow": {"percent": 100, "duration": "40s"}},
        {"setWeight": 50},
        {"analysis": {"metrics": [{"name": "error-rate", "builtin": "errorRate", "max": 0.2}],
                      "count": 1, "interval": "4s", "inconclusiveLimit": 10}},
        {"pause": {}},
    ],
    "analysis": {"interval": "4s", "minSamples": 5},
    "trafficRouting": {"replicas": {}},
}


def model_deployment(run: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": MD},
        "spec": {
            "model": {"trainingRunRef": {"name": run}},
            "replicas": 1,
            "server": {"port": PORT, "workers": 1,
                       "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}}},
            "rollout": ROLLOUT,
        },
    }


def rows_body(rows: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.ravel().tolist()}]}


class Traffic:
    """Requests to a URL from a background thread, until stopped; counts the answers."""

    def __init__(self, url: str, rows: np.ndarray, batch: int = 10) -> None:
        self.url, self.rows, self.batch = url, rows, batch
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                chunk = self.rows[i % len(self.rows):][: self.batch]
                i += self.batch
                try:
                    # A new connection each time: kube-proxy balances per connection.
                    response = http.post(self.url, json=rows_body(chunk), headers={"Connection": "close"})
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1
                time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def pods_of(node: RealNode, namespace: str, track: str) -> list[dict[str, Any]]:
    found = node.kubectl("get", "pods", "-n", namespace, "-l", f"{OWNER_LABEL}={MD},{TRACK_LABEL}={track}",
                         "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(found)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def shadow_counts(pod_ip: str) -> dict[str, float]:
    """The stable server's mirrored-request results (agree/disagree/error), from its /metrics."""
    text = httpx.get(f"http://{pod_ip}:{PORT}/metrics", timeout=10).text
    counts = {"agree": 0.0, "disagree": 0.0, "error": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "kubeloop_serve_shadow_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["result"]] += sample.value
    return counts


@pytest.fixture(scope="module")
def models_dir(real_node: RealNode, e2e_namespace: str) -> Iterator[Path]:
    """The namespace's models claim (a hostPath volume), mounted in the pods at the very path it
    has on this host."""
    directory = HOST_MODELS / e2e_namespace
    pv_name = host_claim(real_node, e2e_namespace, MODELS_PVC, directory, RUNTIME_UID)
    yield directory
    real_node.kubectl("delete", "pv", pv_name, "--wait=false", check=False)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def operator(real_node: RealNode, e2e_namespace: str, models_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds(lambda *args: real_node.kubectl(*args))
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(real_node.kubeconfig, e2e_namespace, log, env={
        "KUBELOOP_RUNTIME_IMAGE": real_node.runtime_image,
        "KUBELOOP_IMAGE_PULL_POLICY": "Never",
        "KUBELOOP_DEFAULT_STORAGE_URI": f"file://{models_dir}",
        "KUBELOOP_MODELS_PVC": MODELS_PVC,
        "KUBELOOP_ROLLOUT_TICK_SECONDS": "1",
        # No Prometheus anywhere: analysis and live drift must scrape the pods themselves.
        "KUBELOOP_PROMETHEUS_URL": "",
    })
    process.start()
    yield process
    # Runs with cleanupPolicy: Delete carry the operator's artifact-cleanup finalizer, which only
    # the operator removes: delete what it manages while it still runs.
    real_node.kubectl("delete", "-n", e2e_namespace, "driftpolicies,modeldeployments,trainingruns", "--all",
                      "--wait=true", "--timeout=60s", check=False, timeout=90)
    process.stop()


def wait_status(node: RealNode, namespace: str, kind: str, name: str, what: str, check: Any,
                timeout: float, operator: OperatorProcess) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        assert operator.alive(), operator.log_tail()
        status = status_of(node, namespace, kind, name)
        return status if check(status) else None

    return poll(done, timeout, f"{kind}/{name}: {what}",
                lambda: f"{diagnostics(node, namespace)}\n--- operator\n{operator.log_tail(40)}")


@pytest.fixture(scope="module")
def runs(real_node: RealNode, e2e_namespace: str, operator: OperatorProcess) -> dict[str, dict[str, Any]]:
    """Two models trained in real pods (at once), stable and challenger."""
    started = time.monotonic()
    apply(real_node, e2e_namespace, training_run("cancer-1", {"n_estimators": 40, "max_depth": 6}))
    apply(real_node, e2e_namespace, training_run("cancer-2", {"n_estimators": 20, "max_depth": 4}))
    found = {}
    for name in ("cancer-1", "cancer-2"):
        status = wait_status(real_node, e2e_namespace, "trainingrun", name, "finished",
                             lambda s: s.get("phase") in {"Succeeded", "Failed"}, 600, operator)
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
        found[name] = status
    TIMINGS["paths: two TrainingRuns -> Succeeded"] = time.monotonic() - started
    return found


@pytest.fixture(scope="module")
def deployed(real_node: RealNode, e2e_namespace: str, operator: OperatorProcess,
             runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    started = time.monotonic()
    apply(real_node, e2e_namespace, model_deployment("cancer-1"))
    status = wait_status(real_node, e2e_namespace, "modeldeployment", MD, "Healthy with a ready server",
                         lambda s: s.get("phase") == "Healthy" and (s.get("stable") or {}).get("readyReplicas", 0) >= 1,
                         300, operator)
    TIMINGS["paths: ModelDeployment -> Healthy"] = time.monotonic() - started
    return status


def service_url(node: RealNode, namespace: str) -> str:
    cluster_ip = get(node, namespace, "service", MD)["spec"]["clusterIP"]
    return f"http://{cluster_ip}:{PORT}/v2/models/{MD}/infer"


# Run in a pod: resolve names through the pod's resolv.conf, as any workload would.
RESOLVE = r"""
import json, socket, sys, time
out = {"resolv.conf": open("/etc/resolv.conf").read(), "names": {}}
for name in sys.argv[1:]:
    started = time.monotonic()
    try:
        answer = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)})
    except socket.gaierror as error:
        answer = "error: " + str(error)
    out["names"][name] = {"answer": answer, "seconds": round(time.monotonic() - started, 3)}
print(json.dumps(out))
"""


def test_a_pod_resolves_cluster_names_through_the_cluster_dns(
    real_node: RealNode, e2e_namespace: str, deployed: dict[str, Any]
) -> None:
    kubernetes_ip = get(real_node, "default", "service", "kubernetes")["spec"]["clusterIP"]
    model_ip = get(real_node, e2e_namespace, "service", MD)["spec"]["clusterIP"]
    names = ["kubernetes.default.svc.cluster.local", f"{MD}.{e2e_namespace}.svc.cluster.local",
             f"{MD}.{e2e_namespace}.svc", MD, "outside.example.com"]
    apply(real_node, e2e_namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dns-probe"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": RUNTIME_UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": real_node.runtime_image, "imagePullPolicy": "Never",
                "command": ["python", "-c", RESOLVE, *names],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
            }],
        },
    })

    def finished() -> str | None:
        phase = status_of(real_node, e2e_namespace, "pod", "dns-probe").get("phase")
        return phase if phase in {"Succeeded", "Failed"} else None

    phase = poll(finished, 120, "the DNS probe pod to finish", lambda: diagnostics(real_node, e2e_namespace))
    logs = real_node.kubectl("logs", "-n", e2e_namespace, "dns-probe").stdout
    assert phase == "Succeeded", logs
    result = json.loads(logs.strip().splitlines()[-1])
    answers = result["names"]
    # The kubelet pointed the pod at the node's CoreDNS, with the cluster's search path.
    assert "nameserver 10.88.0.1" in result["resolv.conf"], result["resolv.conf"]
    assert f"search {e2e_namespace}.svc.cluster.local svc.cluster.local cluster.local" in result["resolv.conf"]
    assert answers["kubernetes.default.svc.cluster.local"]["answer"] == [kubernetes_ip], answers
    # The model's Service by its full name, by the short form the operator gives the shadow
    # mirror (<name>.<namespace>.svc), and by its bare name from its own namespace.
    for name in (f"{MD}.{e2e_namespace}.svc.cluster.local", f"{MD}.{e2e_namespace}.svc", MD):
        assert answers[name]["answer"] == [model_ip], answers
    # Nothing is forwarded: a name outside the cluster fails, and fast (REFUSED, not a timeout).
    outside = answers["outside.example.com"]
    assert str(outside["answer"]).startswith("error:"), outside
    assert outside["seconds"] < 3, outside


def test_live_drift_without_prometheus_scrapes_the_server_pod_and_turns_drifted(
    real_node: RealNode, e2e_namespace: str, operator: OperatorProcess, deployed: dict[str, Any]
) -> None:
    url = service_url(real_node, e2e_namespace)
    # Every feature scaled far outside the training data's bins.
    shifted = load_breast_cancer().data * 4.0
    started = time.monotonic()
    apply(real_node, e2e_namespace, {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "DriftPolicy", "metadata": {"name": "live-drift"},
        "spec": {"targetRef": {"name": MD}, "source": {"live": {}},
                 "interval": "3s", "minSamples": 50, "driftShare": 0.3},
    })
    try:
        with Traffic(url, shifted) as traffic:
            status = wait_status(real_node, e2e_namespace, "driftpolicy", "live-drift", "Drifted",
                                 lambda s: s.get("drifted") is True, 120, operator)
        TIMINGS["paths: shifted traffic -> DriftPolicy Drifted (pod scrape)"] = time.monotonic() - started
        assert traffic.ok > 0
        # The verdict rests on rows the pod counted, read through the pod proxy.
        assert status["samples"] >= 50, status
        assert len(status["driftedFeatures"]) >= 10, status
    finally:
        real_node.kubectl("delete", "-n", e2e_namespace, "driftpolicy", "live-drift", check=False)


def test_shadow_mirrors_to_the_challenger_by_service_dns_and_analysis_scrapes_pods(
    real_node: RealNode, e2e_namespace: str, operator: OperatorProcess, deployed: dict[str, Any],
    runs: dict[str, dict[str, Any]],
) -> None:
    sha_1, sha_2 = runs["cancer-1"]["model"]["sha256"], runs["cancer-2"]["model"]["sha256"]
    url = service_url(real_node, e2e_namespace)
    rows = load_breast_cancer().data
    started = time.monotonic()
    with Traffic(url, rows) as traffic:
        real_node.kubectl("patch", "-n", e2e_namespace, "modeldeployment", MD, "--type=merge",
                          "-p", json.dumps({"spec": {"model": {"trainingRunRef": {"name": "cancer-2"}}}}))
        status = wait_status(real_node, e2e_namespace, "modeldeployment", MD, "shadowing at 100 %",
                             lambda s: s.get("shadowPercent") == 100 and (s.get("canary") or {}).get("sha256") == sha_2,
                             300, operator)
        assert status["stable"]["sha256"] == sha_1

        # The stable pod mirrors to the canary Service by its DNS name...
        def mirroring_pod() -> dict[str, Any] | None:
            for pod in pods_of(real_node, e2e_namespace, "stable"):
                args = pod["spec"]["containers"][0].get("args") or []
                if ready(pod) and "--shadow-url" in args:
                    return pod
            return None

        def stable_logs() -> str:
            logs = real_node.kubectl("logs", "-n", e2e_namespace, "-l", f"{TRACK_LABEL}=stable", "--tail=15",
                                     "--prefix", check=False)
            return f"{diagnostics(real_node, e2e_namespace)}\n--- stable logs\n{logs.stdout}{logs.stderr}"

        pod = poll(mirroring_pod, 180, "a ready stable pod started with --shadow-url", stable_logs)
        args = pod["spec"]["containers"][0]["args"]
        shadow_url = args[args.index("--shadow-url") + 1]
        assert shadow_url == f"http://{MD}-canary.{e2e_namespace}.svc:{PORT}", shadow_url
        pod_ip = pod["status"]["podIP"]

        # ...and the challenger answers there: agreement counters on the stable server grow.
        def answered() -> dict[str, float] | None:
            counts = shadow_counts(pod_ip)
            return counts if counts["agree"] + counts["disagree"] >= 20 else None

        counts = poll(answered, 90, "mirrored requests answered by the challenger",
                      lambda: f"{shadow_counts(pod_ip)}\n{diagnostics(real_node, e2e_namespace)}")
        TIMINGS["paths: model change -> shadow answers counted"] = time.monotonic() - started
        # Two forests of the same data mostly agree; the mirror resolved and reached the canary.
        assert counts["agree"] > 0, counts
        # The mirroring server never crashed for it.
        restarts = [c["restartCount"] for c in
                    get(real_node, e2e_namespace, "pod", pod["metadata"]["name"])["status"]["containerStatuses"]]
        assert restarts == [0], stable_logs()

        # Then real traffic to the canary, measured without Prometheus: a verdict from pod scrapes.
        def verdict(s: dict[str, Any]) -> bool:
            return any(r["name"] == "error-rate" and r.get("value") is not None
                       for r in (s.get("analysis") or {}).get("runs") or [])

        status = wait_status(real_node, e2e_namespace, "modeldeployment", MD, "an error-rate verdict",
                             verdict, 180, operator)
        TIMINGS["paths: model change -> analysis verdict (pod scrape)"] = time.monotonic() - started
        run = next(r for r in status["analysis"]["runs"] if r["name"] == "error-rate" and r.get("value") is not None)
        assert run["passed"] is True and run["value"] == 0.0, run
        # A passed analysis step moves the rollout on to the pause after it.
        wait_status(real_node, e2e_namespace, "modeldeployment", MD, "paused after the analysis step",
                    lambda s: s.get("currentStep") == 3 and s.get("canaryWeight") == 50, 60, operator)
    assert traffic.ok > 0 and traffic.failed == 0, (traffic.ok, traffic.failed)


# --- without a node: the rendered DNS configuration agrees with itself -------------------------

REALNODE = Path(__file__).resolve().parents[2] / "hack" / "realnode"


def test_rendered_dns_config_points_pods_at_the_node_coredns(tmp_path: Path) -> None:
    import subprocess

    import yaml

    state = tmp_path / "state"
    result = subprocess.run(
        [str(REALNODE / "up"), "render"],
        env={**os.environ, "KUBELOOP_REALNODE_DIR": str(state), "KUBELOOP_CACHE": str(tmp_path / "cache")},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    kubelet = yaml.safe_load((state / "kubelet-config.yaml").read_text())
    corefile = (state / "Corefile").read_text()
    # Pods ask the node's address; CoreDNS listens there and serves exactly the cluster domain.
    assert kubelet["clusterDNS"] == [kubelet["address"]] and kubelet["clusterDomain"] == "cluster.local"
    assert f"bind {kubelet['address']}" in corefile
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile
    assert f"kubeconfig {state}/coredns.kubeconfig" in corefile
    # Nothing forwarded (no upstream here): other names are refused at once, never waited on.
    assert "forward" not in corefile and "proxy" not in corefile
    # The wrapper module pins the version in versions.env.
    pins = dict(line.split("=", 1) for line in (REALNODE / "versions.env").read_text().splitlines()
                if line and not line.startswith("#") and "=" in line)
    go_mod = (REALNODE / "modules" / "coredns" / "go.mod").read_text()
    assert f"github.com/coredns/coredns {pins['COREDNS_VERSION']}" in go_mod
