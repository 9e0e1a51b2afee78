"""The loop on a real node: pods really run the project's image (hack/realnode).

Given a cluster whose node is containerd + kubelet + kube-proxy on this machine, the project's
own image built from its Dockerfile, and ``kubeloop operator`` running as a local process,
when a user applies a TrainingRun, a ModelDeployment and then points it at a second run:

* the TrainingRun trains in a real pod, writes its artifact to a PersistentVolume and Succeeds
  with the metrics that pod measured;
* the ModelDeployment's server pod answers an Open Inference Protocol v2 request through its
  Service's ClusterIP (kube-proxy), with the predictions of the stored model;
* the second model rolls out as a canary behind the same Service (replica router): both
  models answer live requests at 50 %, and after promotion only the new one does.

Requests go only to addresses on this machine: the ClusterIP, which kube-proxy turns into a
pod address on the node's own bridge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from harness import OperatorProcess, install_crds, wait_for
from realnode import TIMINGS, RealNode
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

MODELS_ROOT = "/var/lib/kubeloop/models"
MODELS_PVC = "kubeloop-models"
RUNTIME_UID = 10001


def training_run(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "cancer",
                "estimator": "sklearn.ensemble.RandomForestClassifier",
                "task": "classification",
                "params": params,
            },
            "data": {"source": "sklearn://breast_cancer", "target": "target",
                     "split": {"testFraction": 0.25, "seed": 42}},
            "evaluation": {"metric": "roc_auc", "threshold": 0.9},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "backoffLimit": 0,
            "activeDeadlineSeconds": 600,
        },
    }


def model_deployment(run: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "cancer"},
        "spec": {
            "model": {"trainingRunRef": {"name": run}},
            "replicas": 1,
            "server": {"port": 8080, "workers": 1,
                       "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                                     "limits": {"memory": "768Mi"}}},
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}],
                        "trafficRouting": {"replicas": {}}},
        },
    }


def kubectl_apply(node: RealNode, namespace: str, body: dict[str, Any]) -> None:
    """Server-side apply one object, as `kubectl apply` would."""
    subprocess.run(
        [node.kubectl_path, "--kubeconfig", node.kubeconfig, "apply", "-n", namespace,
         "--server-side", "--field-manager=e2e-user", "-f", "-"],
        input=json.dumps(body), capture_output=True, text=True, check=True, timeout=60,
    )


def get(node: RealNode, namespace: str, kind: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(node.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)
    return result


def status_of(node: RealNode, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return get(node, namespace, kind, name).get("status") or {}


def wait_status(node: RealNode, namespace: str, kind: str, name: str, what: str,
                check: Callable[[dict[str, Any]], bool], timeout: float, operator: OperatorProcess) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        assert operator.alive(), operator.log_tail()
        status = status_of(node, namespace, kind, name)
        return status if check(status) else None

    try:
        return wait_for(ready, timeout=timeout, interval=1.0, what=f"{kind}/{name}: {what}")
    except AssertionError as exc:
        events = node.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
        pods = node.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
        raise AssertionError(f"{exc}\n--- pods\n{pods}\n--- events\n{events[-4000:]}\n--- operator\n"
                             f"{operator.log_tail(40)}") from None


def host_path_of(models_dir: Path, uri: str) -> Path:
    """Where a file:// URI under the models root lives on this host (the PV's hostPath)."""
    path = os.path.normpath(uri.removeprefix("file://"))
    assert path.startswith(MODELS_ROOT + "/"), uri
    return models_dir / path.removeprefix(MODELS_ROOT + "/")


def load_model(path: Path) -> Any:
    from skops.io import get_untrusted_types, load

    return load(path, trusted=get_untrusted_types(file=path))


def infer(url: str, rows: np.ndarray) -> dict[str, Any]:
    """One Open Inference Protocol v2 request on a new connection (kube-proxy balances per connection)."""
    body = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.ravel().tolist()}]}
    response = httpx.post(url, json=body, timeout=30, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture(scope="module")
def models_dir(real_node: RealNode, e2e_namespace: str) -> Iterator[Path]:
    """A PersistentVolume (hostPath on the node) + claim shared by trainer and server pods."""
    directory = real_node.state_dir / "models" / e2e_namespace
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, RUNTIME_UID, RUNTIME_UID)  # the runtime pods' user writes here
    pv_name = f"models-{e2e_namespace}"
    pv: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": str(directory), "type": "Directory"},
                 "claimRef": {"namespace": e2e_namespace, "name": MODELS_PVC}},
    }
    pvc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": MODELS_PVC},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                 "resources": {"requests": {"storage": "1Gi"}}},
    }
    kubectl_apply(real_node, e2e_namespace, pv)
    kubectl_apply(real_node, e2e_namespace, pvc)
    yield directory
    real_node.kubectl("delete", "pv", pv_name, "--wait=false", check=False)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def operator(real_node: RealNode, e2e_namespace: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds(lambda *args: real_node.kubectl(*args))
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(real_node.kubeconfig, e2e_namespace, log, env={
        "KUBELOOP_RUNTIME_IMAGE": real_node.runtime_image,
        "KUBELOOP_IMAGE_PULL_POLICY": "Never",
        # The chart's default form (no trailing slash): the root itself gets the claim mounted.
        "KUBELOOP_DEFAULT_STORAGE_URI": f"file://{MODELS_ROOT}",
        "KUBELOOP_MODELS_PVC": MODELS_PVC,
        "KUBELOOP_ROLLOUT_TICK_SECONDS": "1",
    })
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def first_run(real_node: RealNode, e2e_namespace: str, operator: OperatorProcess) -> dict[str, Any]:
    started = time.monotonic()
    kubectl_apply(real_node, e2e_namespace, training_run("cancer-1", {"n_estimators": 50, "max_depth": 6}))
    status = wait_status(real_node, e2e_namespace, "trainingrun", "cancer-1", "Succeeded",
                         lambda s: s.get("phase") in {"Succeeded", "Failed"}, 600, operator)
    TIMINGS["first TrainingRun applied -> Succeeded"] = time.monotonic() - started
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    return status


def test_training_run_trains_in_a_real_pod_and_succeeds_with_its_metrics(
    real_node: RealNode, e2e_namespace: str, models_dir: Path, first_run: dict[str, Any]
) -> None:
    model = first_run["model"]
    # The pod really ran on the real node, in containerd, and exited 0.
    pods = json.loads(real_node.kubectl("get", "pods", "-n", e2e_namespace, "-l",
                                        "job-name=" + first_run["jobName"], "-o", "json").stdout)["items"]
    assert pods, f"no pods of job {first_run['jobName']}"
    pod = pods[0]
    assert pod["spec"]["nodeName"] == real_node.node_name
    container = pod["status"]["containerStatuses"][0]
    assert container["containerID"].startswith("containerd://")
    assert container["state"]["terminated"]["exitCode"] == 0
    # What the pod wrote to the volume is what the status claims: same bytes, same metrics.
    artifact = host_path_of(models_dir, model["uri"])
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == model["sha256"]
    report = json.loads((artifact.parent / "report.json").read_text())
    assert model["metrics"]["roc_auc"] == pytest.approx(report["evaluation"]["metrics"]["roc_auc"])
    assert 0.9 <= model["metrics"]["roc_auc"] <= 1.0
    # And the model is a real one: it separates the classes on the whole dataset.
    data = load_breast_cancer(as_frame=True)
    scores = load_model(artifact).predict_proba(data.data)[:, 1]
    assert roc_auc_score(data.target, scores) > 0.95


def test_model_deployment_answers_v2_inference_through_its_cluster_ip(
    real_node: RealNode, e2e_namespace: str, models_dir: Path, operator: OperatorProcess, first_run: dict[str, Any]
) -> None:
    started = time.monotonic()
    kubectl_apply(real_node, e2e_namespace, model_deployment("cancer-1"))
    wait_status(real_node, e2e_namespace, "modeldeployment", "cancer", "Healthy with a ready server",
                lambda s: s.get("phase") == "Healthy" and (s.get("stable") or {}).get("readyReplicas", 0) >= 1,
                300, operator)
    TIMINGS["ModelDeployment applied -> Healthy"] = time.monotonic() - started
    service = get(real_node, e2e_namespace, "service", "cancer")
    cluster_ip = service["spec"]["clusterIP"]
    url = f"http://{cluster_ip}:8080/v2/models/cancer/infer"
    frame = load_breast_cancer(as_frame=True).data.iloc[::20]
    rows = frame.to_numpy()
    expected = load_model(host_path_of(models_dir, first_run["model"]["uri"])).predict(frame)
    # kube-proxy may need a moment after the endpoint turns ready.
    answer = wait_for(lambda: _try_infer(url, rows), timeout=60, interval=0.5, what=f"answer from {url}")
    assert answer["model_name"] == "cancer"
    assert first_run["model"]["sha256"].startswith(answer["model_version"])
    predicted = next(o for o in answer["outputs"] if o["name"] == "predict")
    assert predicted["shape"][0] == len(rows)
    assert [int(v) for v in predicted["data"]] == [int(v) for v in expected]


def test_the_readme_requests_answer_through_kubectl_port_forward(
    real_node: RealNode, e2e_namespace: str, operator: OperatorProcess, first_run: dict[str, Any]
) -> None:
    # The README's copy-paste requests, taken from the README (tests/unit/docs_blocks.py), sent
    # the way it says: through `kubectl port-forward svc/<name> 8080:8080` to the model's
    # Service. The one change, loudly: this module's ModelDeployment is `cancer`, the
    # quickstart's `breast-cancer`, so the v2 path names `cancer` (tests/unit/
    # test_readme_requests.py posts them unchanged to a server named breast-cancer).
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from harness import free_port
    from test_readme_requests import readme_curls, request_of

    kubectl_apply(real_node, e2e_namespace, model_deployment("cancer-1"))
    wait_status(real_node, e2e_namespace, "modeldeployment", "cancer", "Healthy with a ready server",
                lambda s: s.get("phase") == "Healthy" and (s.get("stable") or {}).get("readyReplicas", 0) >= 1,
                300, operator)
    port = free_port()
    forward = subprocess.Popen(
        [real_node.kubectl_path, "--kubeconfig", real_node.kubeconfig, "port-forward", "-n", e2e_namespace,
         "svc/cancer", f"{port}:8080"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        curls = readme_curls()
        assert len(curls) == 2, [c.text for c in curls]
        for item in curls:
            path, headers, body = request_of(item.data)
            path = path.replace("/v2/models/breast-cancer/", "/v2/models/cancer/")

            def post(path: str = path, headers: dict[str, str] = headers, body: str = body) -> httpx.Response | None:
                try:
                    return httpx.post(f"http://127.0.0.1:{port}{path}", content=body, headers=headers, timeout=30)
                except httpx.HTTPError:
                    return None  # the port-forward is not listening yet

            response = wait_for(post, timeout=60, interval=0.5, what=f"{item.where} through kubectl port-forward")
            assert response.status_code == 200, f"{item.where}: {response.status_code} {response.text}"
            answer = response.json()
            predicted = answer["predictions"] if path == "/predict" else answer["outputs"][0]["data"]
            assert predicted == [0], answer  # the README: the first row, class 0 (malignant)
    finally:
        forward.terminate()
        forward.wait(timeout=30)


def _try_infer(url: str, rows: np.ndarray) -> dict[str, Any] | None:
    try:
        return infer(url, rows)
    except httpx.HTTPError:
        return None


def test_second_model_rolls_out_as_a_canary_with_the_replica_router(
    real_node: RealNode, e2e_namespace: str, operator: OperatorProcess, first_run: dict[str, Any]
) -> None:
    kubectl_apply(real_node, e2e_namespace, training_run("cancer-2", {"n_estimators": 20, "max_depth": 3}))
    second = wait_status(real_node, e2e_namespace, "trainingrun", "cancer-2", "finished",
                         lambda s: s.get("phase") in {"Succeeded", "Failed"}, 600, operator)
    assert second["phase"] == "Succeeded", json.dumps(second, indent=1)
    sha_1, sha_2 = first_run["model"]["sha256"], second["model"]["sha256"]
    assert sha_1 != sha_2

    started = time.monotonic()
    real_node.kubectl("patch", "-n", e2e_namespace, "modeldeployment", "cancer", "--type=merge",
                      "-p", json.dumps({"spec": {"model": {"trainingRunRef": {"name": "cancer-2"}}}}))
    status = wait_status(
        real_node, e2e_namespace, "modeldeployment", "cancer", "canary ready at 50 %",
        lambda s: s.get("canaryWeight") == 50 and (s.get("canary") or {}).get("readyReplicas", 0) >= 1
        and (s.get("stable") or {}).get("readyReplicas", 0) >= 1,
        300, operator)
    TIMINGS["model changed -> canary serving at 50 %"] = time.monotonic() - started
    assert status["stable"]["sha256"] == sha_1 and status["canary"]["sha256"] == sha_2

    cluster_ip = get(real_node, e2e_namespace, "service", "cancer")["spec"]["clusterIP"]
    url = f"http://{cluster_ip}:8080/v2/models/cancer/infer"
    rows = load_breast_cancer().data[:3]

    def versions_seen(count: int) -> set[str]:
        return {infer(url, rows)["model_version"] for _ in range(count)}

    # Both pods sit behind the one Service; kube-proxy picks one per connection at random, so
    # within 60 connections both models answer (a miss has probability 2 * 2^-60).
    def both_answer() -> set[str] | None:
        seen = versions_seen(60)
        return seen if len(seen) == 2 else None

    seen = wait_for(both_answer, timeout=60, interval=1, what="both stable and canary answering through the Service")
    assert {v for v in seen if sha_1.startswith(v)} and {v for v in seen if sha_2.startswith(v)}

    real_node.kubectl("annotate", "-n", e2e_namespace, "modeldeployment", "cancer", "--overwrite",
                      f"kubeloop.io/promote=e2e-{int(time.time())}")
    wait_status(real_node, e2e_namespace, "modeldeployment", "cancer", "promoted",
                lambda s: s.get("phase") == "Healthy" and (s.get("stable") or {}).get("sha256") == sha_2
                and not s.get("canary") and (s.get("stable") or {}).get("readyReplicas", 0) >= 1,
                300, operator)
    def only_new_answers() -> bool:
        seen = versions_seen(20)
        return len(seen) == 1 and sha_2.startswith(next(iter(seen)))

    wait_for(only_new_answers, timeout=90, interval=1, what="only the promoted model answering")
