"""Attack: a TrainingRun whose credentials Secret tries to widen the pod's data roots, and
whose ``data.source`` is the pod's own environment (issue 13, item 3).

The operator runs as a real process against the real API server and builds the training Job.
The Secret named by ``credentials.secretRef`` holds the secret token *and*
``KUBELOOP_DATA_ROOTS=/``. No kubelet runs here, so the pod's environment is composed from the
Job as the API server stored it, the way Kubernetes documents it (``envFrom`` first, then each
``env`` entry, which wins over a key of the same name), and the container's own command line
is run as a real ``kubeloop train`` process with it.

Weakened: the same Job without the operator's ``KUBELOOP_DATA_ROOTS`` entry (a builder that
declares no roots), so the Secret's ``/`` applies: the token comes out in the termination
message, which the operator would copy into status. Real: the declared roots win, the run is
refused naming ``spec.data.source``, and the token appears nowhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import install_crds, wait_for
from kubelet_env import create_secret, pod_building_operator, pod_environment
from kubernetes import client

from kubeloop.training.result import parse_result
from kubeloop.trust.data_paths import ENV_DATA_ROOTS

GROUP, VERSION = "kubeloop.io", "v1alpha1"
SECRET = "s3cr3t-5be0d1"


def run_container(container: Any, environment: dict[str, str], tmp_path: Path) -> tuple[int, str, bytes]:
    termination = tmp_path / "termination-log"
    termination.unlink(missing_ok=True)
    args = list(container.args)
    args[args.index("--termination-log") + 1] = str(termination)
    assert container.command == ["kubeloop"]
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", *args],
        env={**environment, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
             "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr, termination.read_bytes() if termination.exists() else b""


def test_a_secret_cannot_widen_the_data_roots(
    kube_api: Any, kubectl: Any, kubeconfig_path: str, namespace: str, tmp_path: Path
) -> None:
    install_crds(kubectl)
    core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    secret_data = {"SECRET_TOKEN": SECRET, ENV_DATA_ROOTS: "/"}
    create_secret(core, namespace, "run-creds", secret_data)
    models = tmp_path / "models"
    process = pod_building_operator(kubeconfig_path, namespace, tmp_path, models)
    process.start()
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": "environ"},
            "spec": {
                "model": {"name": "m", "estimator": "sklearn.tree.DecisionTreeClassifier", "task": "classification"},
                "data": {"source": "file:///proc/self/environ", "format": "csv", "target": "target"},
                "credentials": {"secretRef": {"name": "run-creds"}},
            },
        })
        job = wait_for(lambda: next(iter(batch.list_namespaced_job(namespace).items), None),
                       timeout=60, what="the training Job")
    finally:
        process.stop()
    container = job.spec.template.spec.containers[0]
    declared = {v.name: v.value for v in container.env}
    assert declared[ENV_DATA_ROOTS] == str(models)
    assert [s.secret_ref.name for s in container.env_from] == ["run-creds"]

    # Weakened: the Job without the operator's declaration; the Secret's "/" is what the pod sees.
    undeclared = client.V1Container(
        name=container.name, command=container.command, args=container.args, env_from=container.env_from,
        env=[v for v in container.env if v.name != ENV_DATA_ROOTS],
    )
    weakened = pod_environment(undeclared, secret_data)
    assert weakened[ENV_DATA_ROOTS] == "/"
    code, output, termination = run_container(undeclared, weakened, tmp_path)
    assert code == 2 and SECRET.encode() in termination, output

    # Real: the declared roots win over the Secret's key.
    environment = pod_environment(container, secret_data)
    assert environment[ENV_DATA_ROOTS] == str(models)
    code, output, termination = run_container(container, environment, tmp_path)
    assert code == 4, output
    result = parse_result(termination)
    assert result.reason == "SpecInvalid"
    assert "spec.data.source" in result.message and str(models) in result.message
    assert SECRET not in output and SECRET.encode() not in termination
