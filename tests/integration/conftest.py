"""Fixtures for integration tests against a real Kubernetes API server.

* ``KUBELOOP_TEST_CLUSTER=existing``: use the cluster named by ``KUBECONFIG`` (e.g. kind).
* otherwise: ``hack/cluster up`` starts (or reuses) the local control plane built from Go
  modules and the tests use its kubeconfig. The cluster is left running at the end of the
  session so the next run starts in a second; ``KUBELOOP_TEST_CLUSTER_TEARDOWN=1`` stops it.

Every test in tests/integration is marked ``integration``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterfixture import Cluster, acquire_cluster, hack_cluster, unique_name, wait_until
from harness import OperatorProcess, install_crds

_HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs a real Kubernetes API server "
        "(started from hack/cluster, or KUBELOOP_TEST_CLUSTER=existing)",
    )
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


_UP_NOTES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for note in _UP_NOTES:
        terminalreporter.write_line(f"kubeloop test control plane: {note}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = acquire_cluster()
    if c.up_note:
        _UP_NOTES.append(c.up_note)
    os.environ["KUBECONFIG"] = c.kubeconfig
    yield c
    if c.local and os.environ.get("KUBELOOP_TEST_CLUSTER_TEARDOWN") == "1":
        hack_cluster("down")


@pytest.fixture(scope="session")
def kubeconfig_path(cluster: Cluster) -> str:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kube_api(kubeconfig_path: str) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` for the test cluster (admin credentials)."""
    from kubernetes import config as kube_config

    api = kube_config.new_client_from_config(config_file=kubeconfig_path)
    yield api
    api.close()


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Any:
    """``kubectl(*args, check=True, input=None)`` -> CompletedProcess, against the test cluster."""
    return cluster.kubectl


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: Any) -> Iterator[str]:
    """A fresh namespace for one test (with its default ServiceAccount), deleted afterwards."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube_api)
    name = unique_name(f"t-{request.node.name}", max_len=50)
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"kubeloop.io/test": "true"})
        )
    )
    # Pods are rejected until the ServiceAccount controller made the default SA.
    wait_until(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=60,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="module")
def crds(kubectl: Any) -> None:
    """The generated CRDs, applied and Established on the API server (once per module)."""
    install_crds(kubectl)


@pytest.fixture
def rollout_operator(kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None) -> Iterator[OperatorProcess]:
    """``kubeloop operator`` on the test's namespace with a 1 s rollout tick (its log tail is
    printed at the end)."""
    process = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        env={"KUBELOOP_RUNTIME_IMAGE": "kubeloop:test", "KUBELOOP_ROLLOUT_TICK_SECONDS": "1"},
    )
    process.start()
    yield process
    process.stop()
    print(process.log_tail(40))
