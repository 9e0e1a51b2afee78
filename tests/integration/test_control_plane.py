"""The test control plane is real: versions, scheduling, kwok pod lifecycles, controllers,
garbage collection, PodSecurity admission, RBAC with ServiceAccount tokens, and clean shutdown.

These tests also run against any cluster (``KUBELOOP_TEST_CLUSTER=existing``); pods use real
images and commands whose outcome matches what kwok simulates (``true`` succeeds, ``exit 3``
fails with exit code 3), and checks that only make sense for the local kwok nodes are skipped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clusterfixture import (
    CHAOS_FAIL_LABEL,
    HACK_CLUSTER,
    MANUAL_KUBELET_LABEL,
    REPO_ROOT,
    Cluster,
    chaos_fail_annotations,
    finish_pod,
    hack_cluster,
    wait_until,
)
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.integration

IMAGE = "busybox:1.36"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def pinned_versions() -> dict[str, str]:
    out = {}
    for line in (REPO_ROOT / "hack/controlplane/versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def restricted_container(name: str, command: list[str], image: str = IMAGE) -> client.V1Container:
    """A container that passes the 'restricted' Pod Security Standard."""
    return client.V1Container(
        name=name,
        image=image,
        command=command or None,
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            run_as_non_root=True,
            run_as_user=65534,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )


def job_manifest(
    name: str,
    command: list[str],
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> client.V1Job:
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels or {}, annotations=annotations or {}),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    termination_grace_period_seconds=1,
                    containers=[restricted_container("main", command)],
                ),
            ),
        ),
    )


def job_condition(batch: client.BatchV1Api, ns: str, name: str, cond_type: str) -> bool:
    job = batch.read_namespaced_job_status(name, ns)
    return any(c.type == cond_type and c.status == "True" for c in (job.status.conditions or []))


def job_pods(core: client.CoreV1Api, ns: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items


# --- versions and nodes ---------------------------------------------------------------------------


def test_versions_are_the_pinned_ones(cluster: Cluster, kubectl: Any, kube_api: Any) -> None:
    pinned = pinned_versions()["KUBERNETES_VERSION"]
    out = json.loads(kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == pinned
    assert out["clientVersion"]["gitTreeState"] == "clean"
    server = client.VersionApi(kube_api).get_code()
    assert server.git_version == out["serverVersion"]["gitVersion"]
    if cluster.local:
        assert server.git_version == pinned
        major, minor = pinned.lstrip("v").split(".")[:2]
        assert (server.major, server.minor) == (major, minor)


def test_fake_nodes_are_ready(cluster: Cluster, kubectl: Any) -> None:
    if not cluster.local:
        pytest.skip("fake kwok nodes exist only in the local control plane")
    nodes = json.loads(
        kubectl("get", "nodes", "-l", "kubeloop.io/fake-node=true", "-o", "json").stdout
    )["items"]
    assert len(nodes) >= 3
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
        assert node["status"]["allocatable"]["cpu"] == "32"
    gpus = [n for n in nodes if n["status"]["capacity"].get("nvidia.com/gpu") == "4"]
    assert gpus, "at least one fake node offers nvidia.com/gpu: 4"
    table = kubectl("get", "nodes").stdout
    assert "kwok-node-0" in table and " Ready " in table


# --- Jobs through kwok -----------------------------------------------------------------------------


def test_job_pod_is_scheduled_and_completes(
    cluster: Cluster, kube_api: Any, namespace: str
) -> None:
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    batch.create_namespaced_job(namespace, job_manifest("ok", ["true"]))
    wait_until(
        lambda: job_condition(batch, namespace, "ok", "Complete"), timeout=120, what="Job Complete"
    )
    pods = job_pods(core, namespace, "ok")
    assert len(pods) == 1
    pod = pods[0]
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name
    if cluster.local:
        assert pod.spec.node_name.startswith("kwok-node-")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert batch.read_namespaced_job_status("ok", namespace).status.succeeded == 1


def test_job_with_chaos_label_fails_with_exit_code(kube_api: Any, namespace: str) -> None:
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    job = job_manifest(
        "boom",
        ["sh", "-c", "exit 3"],
        labels=dict([CHAOS_FAIL_LABEL]),
        annotations=chaos_fail_annotations(exit_code=3, message="simulated failure"),
    )
    batch.create_namespaced_job(namespace, job)
    wait_until(
        lambda: job_condition(batch, namespace, "boom", "Failed"), timeout=120, what="Job Failed"
    )
    pod = job_pods(core, namespace, "boom")[0]
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated is not None
    assert terminated.exit_code == 3
    job_status = batch.read_namespaced_job_status("boom", namespace).status
    assert job_status.failed == 1 and not job_status.succeeded


def test_manual_pods_wait_for_the_test_to_play_the_kubelet(
    cluster: Cluster, kube_api: Any, namespace: str
) -> None:
    if not cluster.local:
        pytest.skip("the manual-kubelet label is a convention of the local kwok stages")
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    manual = dict([MANUAL_KUBELET_LABEL])
    batch.create_namespaced_job(namespace, job_manifest("train-ok", ["true"], labels=manual))
    batch.create_namespaced_job(namespace, job_manifest("train-bad", ["true"], labels=manual))
    # A normal Job created after them completes; the manual ones must still be Running then.
    batch.create_namespaced_job(namespace, job_manifest("witness", ["true"]))
    wait_until(lambda: job_condition(batch, namespace, "witness", "Complete"), timeout=120)
    for name in ("train-ok", "train-bad"):
        pods = wait_until(lambda n=name: job_pods(core, namespace, n), what=f"{name} pod")
        wait_until(
            lambda p=pods[0].metadata.name: (
                core.read_namespaced_pod(p, namespace).status.phase == "Running"
            ),
            what=f"{name} pod Running",
        )
        assert not job_condition(batch, namespace, name, "Complete")

    ok_pod = job_pods(core, namespace, "train-ok")[0].metadata.name
    finish_pod(core, namespace, ok_pod, exit_code=0, message='{"accuracy": 0.93}')
    wait_until(lambda: job_condition(batch, namespace, "train-ok", "Complete"), timeout=120)
    term = core.read_namespaced_pod(ok_pod, namespace).status.container_statuses[0].state.terminated
    assert term.exit_code == 0 and json.loads(term.message) == {"accuracy": 0.93}

    bad_pod = job_pods(core, namespace, "train-bad")[0].metadata.name
    finish_pod(core, namespace, bad_pod, exit_code=2, message="loss diverged")
    wait_until(lambda: job_condition(batch, namespace, "train-bad", "Failed"), timeout=120)
    term = (
        core.read_namespaced_pod(bad_pod, namespace).status.container_statuses[0].state.terminated
    )
    assert (term.exit_code, term.message) == (2, "loss diverged")


# --- Deployments and garbage collection ------------------------------------------------------------


def test_deployment_gets_ready_pods_and_owner_deletion_collects_them(
    kube_api: Any, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        termination_grace_period_seconds=1,
                        containers=[restricted_container("pause", [], image=PAUSE_IMAGE)],
                    ),
                ),
            ),
        ),
    )
    wait_until(
        lambda: (
            (apps.read_namespaced_deployment_status("web", namespace).status.ready_replicas or 0)
            == 2
        ),
        timeout=120,
        what="2 ready replicas",
    )
    deployment = apps.read_namespaced_deployment("web", namespace)
    rs = apps.list_namespaced_replica_set(namespace).items
    assert len(rs) == 1
    assert rs[0].metadata.owner_references[0].uid == deployment.metadata.uid
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.metadata.owner_references[0].uid == rs[0].metadata.uid
        assert pod.status.phase == "Running"
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)

    # An owned ConfigMap too: GC is generic, not Deployment-specific.
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="web-config",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="apps/v1",
                        kind="Deployment",
                        name="web",
                        uid=deployment.metadata.uid,
                    )
                ],
            ),
            data={"k": "v"},
        ),
    )
    apps.delete_namespaced_deployment(
        "web", namespace, body=client.V1DeleteOptions(propagation_policy="Background")
    )
    wait_until(
        lambda: (
            not apps.list_namespaced_replica_set(namespace).items
            and not core.list_namespaced_pod(namespace, label_selector="app=web").items
            and not core.list_namespaced_config_map(
                namespace, field_selector="metadata.name=web-config"
            ).items
        ),
        timeout=120,
        what="garbage collection of ReplicaSet, pods and ConfigMap",
    )


# --- admission and RBAC ---------------------------------------------------------------------------


def test_restricted_namespace_rejects_privileged_pod(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    privileged = client.V1Pod(
        metadata=client.V1ObjectMeta(name="priv"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="c",
                    image=PAUSE_IMAGE,
                    security_context=client.V1SecurityContext(privileged=True),
                )
            ]
        ),
    )
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(namespace, privileged)
    assert err.value.status == 403
    assert "violates PodSecurity" in err.value.body
    # A pod that meets 'restricted' is admitted in the same namespace.
    ok = client.V1Pod(
        metadata=client.V1ObjectMeta(name="fine"),
        spec=client.V1PodSpec(containers=[restricted_container("c", [], image=PAUSE_IMAGE)]),
    )
    core.create_namespaced_pod(namespace, ok)


def _client_with_token(kube_api: Any, token: str) -> client.ApiClient:
    base = kube_api.configuration
    conf = client.Configuration()
    conf.host = base.host
    conf.ssl_ca_cert = base.ssl_ca_cert
    conf.verify_ssl = base.verify_ssl
    conf.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(conf)


def test_service_account_with_narrow_role_is_denied_outside_it(
    kube_api: Any, namespace: str
) -> None:
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="narrow"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-configmaps"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="narrow-read-configmaps"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="narrow", namespace=namespace)
            ],
        ),
    )
    token = core.create_namespaced_service_account_token(
        "narrow",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status.token
    assert token

    with _client_with_token(kube_api, token) as sa_api:
        sa_core = client.CoreV1Api(sa_api)
        # Allowed by the Role (RBAC propagation is immediate, but poll to be safe).
        wait_until(lambda: sa_core.list_namespaced_config_map(namespace) is not None, timeout=30)
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:narrow"
        for call in (
            lambda: sa_core.list_namespaced_secret(namespace),
            lambda: sa_core.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))
            ),
            lambda: sa_core.list_namespaced_config_map("default"),
        ):
            with pytest.raises(ApiException) as err:
                call()
            assert err.value.status == 403


def test_legacy_service_account_token_secret_is_populated(kube_api: Any, namespace: str) -> None:
    """The controller-manager's token controller signs tokens with the cluster's SA key."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="default-token",
                annotations={"kubernetes.io/service-account.name": "default"},
            ),
            type="kubernetes.io/service-account-token",
        ),
    )
    secret = wait_until(
        lambda: (
            (s := core.read_namespaced_secret("default-token", namespace)).data
            and "token" in s.data
            and s
        ),
        timeout=60,
        what="token controller to fill the Secret",
    )
    import base64

    token = base64.b64decode(secret.data["token"]).decode()
    with _client_with_token(kube_api, token) as sa_api:
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:default"


# --- hack/cluster down stops exactly what it started -----------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.slow
def test_second_cluster_down_leaves_no_processes(cluster: Cluster, tmp_path: Path) -> None:
    if not cluster.local:
        pytest.skip("starts a second local control plane")
    ports = _free_ports(6)
    env = {
        "KUBELOOP_CLUSTER_DIR": str(tmp_path / "cluster2"),
        "KUBELOOP_ETCD_PORT": str(ports[0]),
        "KUBELOOP_ETCD_PEER_PORT": str(ports[1]),
        "KUBELOOP_APISERVER_PORT": str(ports[2]),
        "KUBELOOP_KCM_PORT": str(ports[3]),
        "KUBELOOP_SCHEDULER_PORT": str(ports[4]),
        "KUBELOOP_KWOK_PORT": str(ports[5]),
    }
    pids: dict[str, int] = {}
    try:
        hack_cluster("up", env=env, timeout=600)
        pid_dir = tmp_path / "cluster2" / "pids"
        pids = {p.stem: int(p.read_text()) for p in pid_dir.glob("*.pid")}
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }
        assert all(_alive(pid) for pid in pids.values())
        status = hack_cluster("status", env=env).stdout
        assert status.count("healthy") == 5
        kubeconfig = str(tmp_path / "cluster2" / "kubeconfig")
        nodes = subprocess.run(
            [cluster.kubectl_bin, "--kubeconfig", kubeconfig, "get", "nodes", "-o", "name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert len(nodes) == 3
        # The first cluster's PIDs differ: down must not touch them.
        main_pids = {
            int(p.read_text()) for p in (Path(cluster.kubeconfig).parent / "pids").glob("*.pid")
        }
        assert main_pids.isdisjoint(pids.values())
    finally:
        hack_cluster("down", env=env)
    wait_until(
        lambda: not any(_alive(pid) for pid in pids.values()),
        timeout=30,
        what="second cluster's processes to exit",
    )
    assert not list((tmp_path / "cluster2" / "pids").glob("*.pid"))
    # The session's cluster is untouched.
    assert hack_cluster("status").returncode == 0
    assert os.access(HACK_CLUSTER, os.X_OK)
