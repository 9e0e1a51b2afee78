"""Attack: a credentials Secret whose keys choose the code or the settings of the runtime pod
(issue 13 follow-up; :mod:`kubeloop.trust.pod_env`).

Every key of the Secret named by a TrainingRun's ``credentials.secretRef`` or a
ModelDeployment's ``spec.model.credentials.secretRef`` becomes an environment variable of the
pod (``envFrom``). The operator runs as a real process against the real API server and builds
the training Job and the server Deployment. No kubelet runs here, so the pod's environment is
composed from the object as the API server stored it, the way Kubernetes documents it
(``envFrom`` keys first, then each ``env`` entry, which wins over a key of the same name), and
the container's own command line is run as a real ``kubeloop`` process with it.

* Training: the Secret holds ``PYTHONPATH=<dir>``, where ``<dir>`` (think: a data volume) has a
  ``sitecustomize.py`` that writes a marker file. Weakened (the Job's container without the
  operator's pinned entries): the marker is written. Real: it is not, and the run trains and
  stores its model as usual.
* Serving: the Secret holds ``KUBELOOP_SERVE_INSECURE_SKIP_VERIFY=true`` (and the same
  ``PYTHONPATH``) and the model's pinned sha256 does not match the file. Weakened: the server
  serves the unverified model (and runs the payload). Real: it exits 3 with the checksum error
  and the payload never runs; with the right sha256 the same environment serves.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import skops.io
from harness import free_port, install_crds, wait_for
from kubelet_env import create_secret, pod_building_operator, pod_environment
from kubernetes import client
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from kubeloop.trust.pod_env import PINNED_NAMES, pinned_env

GROUP, VERSION = "kubeloop.io", "v1alpha1"
SKIP_VERIFY = "KUBELOOP_SERVE_INSECURE_SKIP_VERIFY"


def payload_directory(root: Path, marker: Path) -> Path:
    """A directory an attacker controls (e.g. on a data volume) with a ``sitecustomize.py``."""
    root.mkdir(parents=True)
    (root / "sitecustomize.py").write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('payload ran in pid %d' % os.getpid())\n"
    )
    return root


def without_pins(container: Any) -> Any:
    """The weakened container: the operator's own env entries, none of the appended pins."""
    pins = {(p["name"], p["value"]) for p in pinned_env([])}
    return client.V1Container(
        name=container.name, command=container.command, args=list(container.args),
        env_from=container.env_from,
        env=[v for v in container.env if (v.name, v.value or "") not in pins],
    )


def process_environment(environment: dict[str, str], tmp_path: Path) -> dict[str, str]:
    # PATH and HOME are the image's; this host's stand in for them.
    return {**environment, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "OMP_NUM_THREADS": "1"}


def run_trainer(container: Any, environment: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    args = list(container.args)
    args[args.index("--termination-log") + 1] = str(tmp_path / "termination-log")
    assert container.command == ["kubeloop"]
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", *args], env=process_environment(environment, tmp_path),
        capture_output=True, text=True, timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_a_secret_cannot_choose_the_trainers_code(
    kube_api: Any, kubectl: Any, kubeconfig_path: str, namespace: str, tmp_path: Path
) -> None:
    install_crds(kubectl)
    core, batch = client.CoreV1Api(kube_api), client.BatchV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    marker = tmp_path / "marker"
    payload = payload_directory(tmp_path / "datasets" / "site", marker)
    secret_data = {"AWS_ACCESS_KEY_ID": "minio", "AWS_SECRET_ACCESS_KEY": "minio123", "PYTHONPATH": str(payload)}
    create_secret(core, namespace, "run-creds", secret_data)
    models = tmp_path / "models"
    process = pod_building_operator(kubeconfig_path, namespace, tmp_path, models)
    process.start()
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": "sitecustomize"},
            "spec": {
                "model": {"name": "cancer", "estimator": "sklearn.linear_model.LogisticRegression",
                          "task": "classification", "params": {"max_iter": 3000}},
                "data": {"source": "sklearn://breast_cancer", "target": "target"},
                "credentials": {"secretRef": {"name": "run-creds"}},
            },
        })
        job: Any = wait_for(lambda: next(iter(batch.list_namespaced_job(namespace).items), None),
                       timeout=60, what="the training Job")
    finally:
        process.stop()
    container = job.spec.template.spec.containers[0]
    declared = {v.name: v.value or "" for v in container.env}
    assert [s.secret_ref.name for s in container.env_from] == ["run-creds"]
    assert declared["PYTHONPATH"] == "" and set(declared) >= PINNED_NAMES

    # Weakened: the Job without the pinned entries; the Secret's PYTHONPATH reaches the trainer.
    weakened_container = without_pins(container)
    weakened = pod_environment(weakened_container, secret_data)
    assert weakened["PYTHONPATH"] == str(payload)
    code, output = run_trainer(weakened_container, weakened, tmp_path)
    assert marker.exists(), f"the payload did not run (exit {code}):\n{output}"
    marker.unlink()

    # Real: the pinned (empty) PYTHONPATH wins; the payload never runs and the run trains as usual.
    environment = pod_environment(container, secret_data)
    assert environment["PYTHONPATH"] == "" and environment["AWS_ACCESS_KEY_ID"] == "minio"
    code, output = run_trainer(container, environment, tmp_path)
    assert not marker.exists(), marker.read_text()
    assert code == 0, output
    assert list(models.rglob("model.skops")), output


def store_model(directory: Path) -> Path:
    """A small real model, stored the way the trainer stores it."""
    directory.mkdir(parents=True)
    iris = load_iris()
    model = directory / "model.skops"
    skops.io.dump(LogisticRegression(max_iter=2000).fit(iris.data, iris.target), model)
    return model


def start_server(container: Any, environment: dict[str, str], tmp_path: Path, sha256: str | None = None
                 ) -> tuple[subprocess.Popen[str], str]:
    args = list(container.args)
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    if sha256 is not None:
        args[args.index("--sha256") + 1] = sha256
    assert container.command == ["kubeloop"]
    with (tmp_path / f"serve-{port}.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kubeloop.cli", *args], text=True,
                                env=process_environment(environment, tmp_path), stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def serves(proc: subprocess.Popen[str], url: str) -> bool:
    """Whether the server came up ready (it is then stopped), rather than exiting."""

    def ready_or_exited() -> str | None:
        if proc.poll() is not None:
            return f"exited {proc.returncode}"
        try:
            return "ready" if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200 else None
        except httpx.HTTPError:
            return None

    try:
        outcome: str = wait_for(ready_or_exited, timeout=90, interval=0.3, what=f"server on {url}")
        return outcome == "ready"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def server_log(tmp_path: Path, url: str) -> str:
    return (tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()


def test_a_secret_cannot_turn_off_the_servers_checksum(
    kube_api: Any, kubectl: Any, kubeconfig_path: str, namespace: str, tmp_path: Path
) -> None:
    install_crds(kubectl)
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    marker = tmp_path / "marker"
    payload = payload_directory(tmp_path / "datasets" / "site", marker)
    secret_data = {"AWS_ACCESS_KEY_ID": "minio", SKIP_VERIFY: "true", "PYTHONPATH": str(payload)}
    create_secret(core, namespace, "model-creds", secret_data)
    models = tmp_path / "models"
    model = store_model(models / "iris" / "run-1")
    process = pod_building_operator(kubeconfig_path, namespace, tmp_path, models)
    process.start()
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "iris"},
            "spec": {"model": {"storageUri": f"file://{model}", "sha256": "0" * 64,  # not the file's
                               "credentials": {"secretRef": {"name": "model-creds"}}},
                     "replicas": 1},
        })
        deployment: Any = wait_for(lambda: next(iter(apps.list_namespaced_deployment(namespace).items), None),
                              timeout=60, what=f"the server Deployment (log:\n{process.log_tail()})")
    finally:
        process.stop()
    container = deployment.spec.template.spec.containers[0]
    declared = {v.name: v.value or "" for v in container.env}
    assert [s.secret_ref.name for s in container.env_from] == ["model-creds"]
    assert declared[SKIP_VERIFY] == "false" and declared["PYTHONPATH"] == ""
    assert container.args[container.args.index("--sha256") + 1] == "0" * 64

    # Weakened: the container without the pins; the Secret turns the check off and serves.
    weakened_container = without_pins(container)
    weakened = pod_environment(weakened_container, secret_data)
    assert weakened[SKIP_VERIFY] == "true"
    proc, url = start_server(weakened_container, weakened, tmp_path)
    assert serves(proc, url), server_log(tmp_path, url)
    assert "WITHOUT sha256 verification" in server_log(tmp_path, url)
    assert marker.exists()
    marker.unlink()

    # Real: the pinned "false" wins; the server refuses the model with the checksum error.
    environment = pod_environment(container, secret_data)
    assert environment[SKIP_VERIFY] == "false"
    proc, url = start_server(container, environment, tmp_path)
    code = proc.wait(timeout=120)
    log = server_log(tmp_path, url)
    assert code == 3 and "sha256 mismatch" in log, log
    assert "WITHOUT sha256 verification" not in log
    assert not marker.exists()

    # ...and the same pinned environment serves the model whose sha256 does match.
    proc, url = start_server(container, environment, tmp_path, hashlib.sha256(model.read_bytes()).hexdigest())
    assert serves(proc, url), server_log(tmp_path, url)
    assert not marker.exists()
