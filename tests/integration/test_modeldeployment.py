"""ModelDeployment controller on a real API server with kwok nodes.

Given the generated CRDs, the upstream Gateway API CRDs (from the sigs.k8s.io/gateway-api Go
module, fetched at test time) and a running ``kubeloop operator`` process, when a
ModelDeployment's model changes, then the rollout walks shadow -> 20 % -> pause -> 50 % -> 100 %
with the Deployments, Services and HTTPRoute weights each step asks for; a SIGKILL of the
operator mid-rollout loses nothing; ``kubectl scale`` scales it; deleting it cleans up.
kwok's fake kubelet makes the server pods Running and Ready (nothing is really served here:
analysis against real servers is in test_modeldeployment_analysis.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, wait_for
from kubernetes import client

GROUP, VERSION, PLURAL = "kubeloop.io", "v1alpha1", "modeldeployments"
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api@v1.2.1"
SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64
STEP_TIMEOUT = 90



@pytest.fixture(scope="module")
def gateway_api_crds(kubectl: Any) -> None:
    """Install the upstream HTTPRoute CRD from the Go module cache (downloaded if missing)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs the go tool to fetch the Gateway API CRDs from their Go module")
    found = subprocess.run(
        [go, "mod", "download", "-json", GATEWAY_API_MODULE],
        capture_output=True, text=True, timeout=600, check=True, cwd="/tmp",
    )
    directory = Path(json.loads(found.stdout)["Dir"]) / "config" / "crd" / "standard"
    route_crd = directory / "gateway.networking.k8s.io_httproutes.yaml"
    kubectl("apply", "--server-side", "--field-manager=kubeloop-tests", "--force-conflicts", "-f", str(route_crd))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(route_crd))


class Cluster:
    """Small readers over the real API for one namespace."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def md(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return found

    def status(self, name: str) -> dict[str, Any]:
        return self.md(name).get("status") or {}

    def patch_md(self, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, body)

    def deployment(self, name: str) -> Any:
        try:
            return self.apps.read_namespaced_deployment(name, self.ns)
        except client.exceptions.ApiException as error:
            if error.status == 404:
                return None
            raise

    def replicas(self, name: str) -> int | None:
        deployment = self.deployment(name)
        return None if deployment is None else int(deployment.spec.replicas)

    def args(self, name: str) -> list[str]:
        return list(self.deployment(name).spec.template.spec.containers[0].args)

    def route_weights(self, name: str) -> list[int | None]:
        route = self.custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", self.ns, "httproutes", name
        )
        return [ref.get("weight") for ref in route["spec"]["rules"][0]["backendRefs"]]

    def selector(self, service: str) -> dict[str, str]:
        return dict(self.core.read_namespaced_service(service, self.ns).spec.selector)

    def owned(self) -> tuple[list[str], list[str]]:
        label = "kubeloop.io/modeldeployment=churn"
        deployments = self.apps.list_namespaced_deployment(self.ns, label_selector=label).items
        services = self.core.list_namespaced_service(self.ns, label_selector=label).items
        return sorted(d.metadata.name for d in deployments), sorted(s.metadata.name for s in services)

    def events(self, reason: str) -> list[Any]:
        items = self.core.list_namespaced_event(self.ns).items
        return [e for e in items if e.reason == reason and e.involved_object.kind == "ModelDeployment"]


def model(sha: str) -> dict[str, str]:
    return {"storageUri": f"s3://models/{sha[:4]}/model.skops", "sha256": sha}


def modeldeployment(steps: list[dict[str, Any]], routing: dict[str, Any] | None = None, replicas: int = 4) -> dict[str, Any]:
    rollout: dict[str, Any] = {"steps": steps}
    if routing:
        rollout["trafficRouting"] = routing
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn"},
        "spec": {"model": model(SHA_A), "replicas": replicas, "rollout": rollout},
    }


def wait_status(cluster: Cluster, what: str, check: Any, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = cluster.status("churn")
        return status if check(status) else None

    try:
        return wait_for(probe, timeout=timeout, interval=0.3, what=what)
    except AssertionError:
        print(json.dumps(cluster.status("churn"), indent=1)[:4000])
        raise


def test_model_change_walks_the_steps_with_gateway_api_weights_survives_sigkill_scales_and_cleans_up(
    kube_api: Any, namespace: str, kubectl: Any, rollout_operator: OperatorProcess, gateway_api_crds: None
) -> None:
    cluster = Cluster(kube_api, namespace)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "churn", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "public-gateway"}],
            "rules": [{"backendRefs": [
                {"name": "churn-stable", "port": 8080, "weight": 1},
                {"name": "churn-canary", "port": 8080, "weight": 0},
            ]}],
        },
    }
    cluster.custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", route)
    steps = [
        {"shadow": {"percent": 50, "duration": "4s"}},
        {"setWeight": 20},
        {"pause": {}},
        {"setWeight": 50},
        {"pause": {"duration": "3s"}},
        {"setWeight": 100},
    ]
    md = modeldeployment(steps, routing={"gatewayAPI": {"httpRoute": "churn"}})
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)

    # Given a healthy deployment of model A
    status = wait_status(cluster, "Healthy on model A", lambda s: s.get("phase") == "Healthy")
    assert status["stable"]["sha256"] == SHA_A and status["readyReplicas"] == 4
    assert cluster.owned() == (["churn-stable"], ["churn", "churn-canary", "churn-stable"])
    assert cluster.route_weights("churn") == [100, 0]
    assert cluster.selector("churn") == {"kubeloop.io/modeldeployment": "churn", "kubeloop.io/track": "stable"}
    stable_pod = cluster.deployment("churn-stable").spec.template.spec
    assert stable_pod.security_context.run_as_non_root is True
    assert stable_pod.containers[0].readiness_probe.http_get.path == "/v2/health/ready"

    # When the model changes: shadow first (canary pods, no user traffic, stable mirrors)
    cluster.patch_md("churn", {"spec": {"model": model(SHA_B)}})
    status = wait_status(cluster, "shadow step", lambda s: s.get("shadowPercent") == 50 and s.get("stepStartedAt"))
    assert status["canaryWeight"] == 0 and status["currentStep"] == 0
    assert cluster.replicas("churn-canary") == 2 and cluster.replicas("churn-stable") == 4
    args = cluster.args("churn-stable")
    assert args[args.index("--shadow-url") + 1] == f"http://churn-canary.{namespace}.svc:8080"
    assert cluster.route_weights("churn") == [100, 0]

    # then 20 % (a mesh router: stable stays at full size) and the pause until promoted
    status = wait_status(cluster, "pause after 20%", lambda s: s.get("currentStep") == 2 and s.get("canaryWeight") == 20)
    assert status["phase"] == "Paused"
    assert cluster.route_weights("churn") == [80, 20]
    assert cluster.replicas("churn-canary") == 1 and cluster.replicas("churn-stable") == 4
    assert "--shadow-url" not in cluster.args("churn-stable")

    # Crash safety: SIGKILL the operator mid-rollout, restart it: same step, same objects
    before = {d: cluster.deployment(d).metadata.uid for d in ("churn-stable", "churn-canary")}
    rollout_operator.kill()
    rollout_operator.start()
    wait_for(lambda: cluster.events("StepAdvanced") and rollout_operator.alive(), timeout=30, what="operator back")
    wait_status(cluster, "status observed again", lambda s: s.get("currentStep") == 2, timeout=30)
    time.sleep(3)  # a few resyncs of the restarted operator
    status = cluster.status("churn")
    assert status["currentStep"] == 2 and status["canaryWeight"] == 20
    assert status["canary"]["sha256"] == SHA_B and status["stable"]["sha256"] == SHA_A
    assert {d: cluster.deployment(d).metadata.uid for d in before} == before
    assert cluster.owned() == (["churn-canary", "churn-stable"], ["churn", "churn-canary", "churn-stable"])
    assert cluster.route_weights("churn") == [80, 20]

    # promote: 50 %, a 3 s pause, 100 %, then promotion
    cluster.patch_md("churn", {"metadata": {"annotations": {"kubeloop.io/promote": "go-1"}}})
    wait_status(cluster, "50%", lambda s: s.get("canaryWeight") == 50)
    assert cluster.route_weights("churn") in ([50, 50], [0, 100])
    status = wait_status(cluster, "promoted", lambda s: s.get("phase") == "Healthy" and s["stable"]["sha256"] == SHA_B)
    assert "canary" not in status and status["previous"]["sha256"] == SHA_A
    assert cluster.route_weights("churn") == [100, 0]
    assert cluster.replicas("churn-canary") == 0 and cluster.replicas("churn-stable") == 4
    args = cluster.args("churn-stable")
    assert args[args.index("--sha256") + 1] == SHA_B
    assert wait_for(lambda: cluster.events("Promoted"), timeout=30, what="Promoted event")  # written in the background

    # kubectl scale works through the scale subresource
    kubectl("scale", "-n", namespace, "modeldeployment/churn", "--replicas=2")
    wait_for(lambda: cluster.replicas("churn-stable") == 2, timeout=STEP_TIMEOUT, what="stable scaled to 2")
    wait_status(cluster, "status.replicas 2", lambda s: s.get("replicas") == 2 and s.get("readyReplicas") == 2)
    scale = kubectl("get", "-n", namespace, "modeldeployment/churn", "--subresource=scale", "-o", "json")
    assert json.loads(scale.stdout)["status"]["replicas"] == 2

    # deleting the ModelDeployment cleans up every child (owner references, garbage collector)
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "churn")
    wait_for(lambda: cluster.owned() == ([], []), timeout=STEP_TIMEOUT, what="children garbage-collected")


def test_replicas_router_abort_sends_traffic_back_and_retry_starts_again(
    kube_api: Any, namespace: str, rollout_operator: OperatorProcess
) -> None:
    cluster = Cluster(kube_api, namespace)
    md = modeldeployment([{"setWeight": 50}, {"pause": {}}], replicas=2)
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)
    wait_status(cluster, "Healthy", lambda s: s.get("phase") == "Healthy")

    cluster.patch_md("churn", {"spec": {"model": model(SHA_C)}})
    wait_status(cluster, "50%", lambda s: s.get("canaryWeight") == 50 and s.get("currentStep") == 1)
    # replicas router: both tracks behind the main Service, one pod each
    assert cluster.selector("churn") == {"kubeloop.io/modeldeployment": "churn"}
    assert (cluster.replicas("churn-stable"), cluster.replicas("churn-canary")) == (1, 1)

    cluster.patch_md("churn", {"metadata": {"annotations": {"kubeloop.io/abort": "stop-1"}}})
    status = wait_status(cluster, "aborted", lambda s: s.get("aborted") is True)
    assert status["phase"] == "Degraded" and status["canaryWeight"] == 0
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "Aborted"
    assert cluster.selector("churn") == {"kubeloop.io/modeldeployment": "churn", "kubeloop.io/track": "stable"}
    wait_for(lambda: cluster.replicas("churn-canary") == 0 and cluster.replicas("churn-stable") == 2,
             timeout=30, what="canary scaled down, stable back to 2")
    assert wait_for(lambda: cluster.events("Aborted"), timeout=30, what="Aborted event")[0].type == "Warning"

    cluster.patch_md("churn", {"metadata": {"annotations": {"kubeloop.io/retry": "again-1"}}})
    wait_status(cluster, "retried to 50%", lambda s: s.get("aborted") is False and s.get("canaryWeight") == 50)
