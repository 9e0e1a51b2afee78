"""Storage per namespace: each team's runs and drift checks read only their own profiles.

The documented model (docs/storage.md): every namespace that uses Kubeloop has its own models
claim, named as the operator's ``modelsPvc``; runtime pods mount their own namespace's claim at
the storage root, and the operator reads nothing from storage at all (a live drift check gets
the reference profile from the namespace's own stable server, ``kubeloop.controllers.profiles``).

Here two namespaces train a model of the same name with the same run name, so the artifacts lie
at the same path under the same root, each on its own claim (two host directories). The
operator runs as a host process whose storage root does not exist on this machine: any read of
its own would fail. Shifted traffic to each namespace's server must turn each DriftPolicy
Drifted on the features of that namespace's own data set (breast cancer in one, wine in the
other), which only its own profile names.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, install_crds
from realnode import TIMINGS, RealNode, apply, get, host_claim
from sklearn.datasets import load_breast_cancer, load_wine
from test_realnode_paths import Traffic, wait_status

MODELS_PVC = "kubeloop-models"
HOST_MODELS = Path("/var/lib/kubeloop-e2e")
RUNTIME_UID = 10001
# The operator's storage root: mounted in the pods (each namespace's own claim), absent here.
STORAGE_ROOT = f"/srv/kubeloop-tenant-models-{uuid.uuid4().hex[:8]}"
MODEL = "tenant-model"
RUN = "tenant-model-1"
PORT = 8080
DATASETS = {"a": ("breast_cancer", load_breast_cancer), "b": ("wine", load_wine)}


def _training_run(dataset: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": RUN},
        "spec": {
            "model": {"name": MODEL, "estimator": "sklearn.linear_model.LogisticRegression",
                      "task": "classification", "params": {"max_iter": 2000}},
            "data": {"source": f"sklearn://{dataset}", "target": "target",
                     "split": {"testFraction": 0.25, "seed": 7}},
            "evaluation": {"metric": "accuracy", "threshold": 0.5},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "backoffLimit": 0, "activeDeadlineSeconds": 600,
        },
    }


def _model_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": MODEL},
        "spec": {
            "model": {"trainingRunRef": {"name": RUN}},
            "replicas": 1,
            "server": {"port": PORT, "workers": 1,
                       "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "768Mi"}}},
        },
    }


DRIFT_POLICY = {
    "apiVersion": "kubeloop.io/v1alpha1", "kind": "DriftPolicy", "metadata": {"name": "tenant-drift"},
    "spec": {"targetRef": {"name": MODEL}, "source": {"live": {}},
             "interval": "3s", "minSamples": 50, "driftShare": 0.3},
}


@pytest.fixture(scope="module")
def tenants(real_node: RealNode) -> Iterator[dict[str, tuple[str, Path]]]:
    """Two namespaces (restricted Pod Security, as users run), each with its own claim."""
    found: dict[str, tuple[str, Path]] = {}
    for team in DATASETS:
        namespace = f"e2e-team-{team}-{uuid.uuid4().hex[:6]}"
        real_node.kubectl("create", "namespace", namespace)
        real_node.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
        host_claim(real_node, namespace, MODELS_PVC, HOST_MODELS / namespace, RUNTIME_UID)
        found[team] = (namespace, HOST_MODELS / namespace)
    yield found
    for namespace, directory in found.values():
        real_node.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        real_node.kubectl("delete", "pv", f"models-{namespace}", "--wait=false", check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def operator(real_node: RealNode, tenants: dict[str, tuple[str, Path]],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds(lambda *args: real_node.kubectl(*args))
    namespaces = [namespace for namespace, _ in tenants.values()]
    process = OperatorProcess(real_node.kubeconfig, namespaces, tmp_path_factory.mktemp("op") / "operator.log", env={
        "KUBELOOP_RUNTIME_IMAGE": real_node.runtime_image,
        "KUBELOOP_IMAGE_PULL_POLICY": "Never",
        "KUBELOOP_DEFAULT_STORAGE_URI": f"file://{STORAGE_ROOT}",
        "KUBELOOP_MODELS_PVC": MODELS_PVC,
        "KUBELOOP_PROMETHEUS_URL": "",
    })
    process.start()
    yield process
    for namespace in namespaces:
        real_node.kubectl("delete", "-n", namespace, "driftpolicies,modeldeployments,trainingruns", "--all",
                          "--wait=true", "--timeout=60s", check=False, timeout=90)
    process.stop()


def test_each_namespace_drift_check_reads_only_its_own_profile(
    real_node: RealNode, tenants: dict[str, tuple[str, Path]], operator: OperatorProcess
) -> None:
    started = time.monotonic()
    for team, (namespace, _) in tenants.items():
        apply(real_node, namespace, _training_run(DATASETS[team][0]))
    for namespace, directory in tenants.values():
        status = wait_status(real_node, namespace, "trainingrun", RUN, "finished",
                       lambda s: s.get("phase") in {"Succeeded", "Failed"}, 600, operator)
        assert status["phase"] == "Succeeded", status
        # Same model, same run, same URI: but each file is on its own namespace's claim.
        assert status["model"]["profileUri"] == f"file://{STORAGE_ROOT}/{MODEL}/{RUN}/profile.json", status
        assert (directory / MODEL / RUN / "profile.json").is_file()
        apply(real_node, namespace, _model_deployment())
    for namespace, _ in tenants.values():
        wait_status(real_node, namespace, "modeldeployment", MODEL, "Healthy with a ready server",
              lambda s: s.get("phase") == "Healthy" and (s.get("stable") or {}).get("readyReplicas", 0) >= 1,
              300, operator)
        apply(real_node, namespace, DRIFT_POLICY)
    TIMINGS["storage: two namespaces trained and serving"] = time.monotonic() - started

    drifted: dict[str, set[str]] = {}
    for team, (namespace, _) in tenants.items():
        cluster_ip = get(real_node, namespace, "service", MODEL)["spec"]["clusterIP"]
        shifted = DATASETS[team][1]().data * 4.0
        with Traffic(f"http://{cluster_ip}:{PORT}/v2/models/{MODEL}/infer", shifted) as traffic:
            status = wait_status(real_node, namespace, "driftpolicy", "tenant-drift", "Drifted",
                           lambda s: s.get("drifted") is True, 120, operator)
        assert traffic.ok > 0
        drifted[team] = set(status["driftedFeatures"])

    breast_cancer, wine = (set(load()["feature_names"]) for _, load in DATASETS.values())
    # Each verdict names features only its own namespace's profile holds.
    assert drifted["a"] and drifted["a"] <= breast_cancer | {"__prediction__"}, drifted
    assert drifted["b"] and drifted["b"] <= wine | {"__prediction__"}, drifted
    assert drifted["a"] - {"__prediction__"} and drifted["b"] - {"__prediction__"}, drifted
    # The operator never had the storage root: whatever it compared came from the servers.
    assert not Path(STORAGE_ROOT).exists()
