"""What the kubelet would give a container, for attack tests that run no kubelet.

The real operator builds the Job or Deployment on the real API server; these helpers compose
the container's environment from the object as the API server stored it, the way Kubernetes
documents it (each ``envFrom`` Secret's keys first, then every ``env`` entry, which wins over
a key of the same name), so the container's command line can be run as a real process.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from harness import OperatorProcess
from kubernetes import client


def create_secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    ))


def pod_environment(container: Any, secret_data: dict[str, str]) -> dict[str, str]:
    """Each envFrom Secret's keys (all of them ``secret_data`` here), then ``env`` over them."""
    environment: dict[str, str] = {}
    for source in container.env_from or []:
        assert source.secret_ref is not None
        environment.update(secret_data)
    for variable in container.env or []:
        environment[variable.name] = variable.value or ""
    return environment


def pod_building_operator(kubeconfig_path: str, namespace: str, tmp_path: Path, models: Path) -> OperatorProcess:
    """The real operator as a process, building pods for the image ``kubeloop:test`` with the
    storage root ``models``; none of this machine's KUBELOOP_* settings leak into it."""
    return OperatorProcess(kubeconfig_path, namespace, tmp_path / "operator.log", env={
        "KUBELOOP_DEFAULT_STORAGE_URI": f"file://{models}", "KUBELOOP_RUNTIME_IMAGE": "kubeloop:test",
    }, inherit_kubeloop_env=False)
