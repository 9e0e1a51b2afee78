"""Why a ModelDeployment is not ready, said by its conditions, on the real API server.

* A stable server pod that refuses its model: the ModelDeployment's Ready condition says
  ChecksumMismatch, names the pod and quotes the server.
* A rollout whose HTTPRoute is missing, or whose weights the API server refuses to write (a
  ValidatingAdmissionPolicy freezes the route): Progressing says TrafficRoutingFailed and the
  rollout holds until the route exists / the policy is gone, then goes on.

Real here: the API server, kube-controller-manager (Deployment -> ReplicaSet -> pod, and the
Deployment's readyReplicas), the ``kubeloop operator`` process, the upstream HTTPRoute CRD, the
admission policy's refusal, and ``kubeloop serve`` run as a process on a real (tampered) model file, whose exit code and
termination message are what the pod's status carries. Played: kwok's fake kubelet makes the
pods Running and Ready; the test then writes the server container's crash into the pod's status
(what a kubelet writes after the container exited and is waiting to restart), since no kubelet
runs the container here.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, free_port, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_modeldeployment import (  # noqa: F401 - the fixture, used by name
    GROUP,
    PLURAL,
    SHA_A,
    SHA_B,
    VERSION,
    Cluster,
    gateway_api_crds,
    model,
    modeldeployment,
    wait_status,
)

pytestmark = pytest.mark.slow
#: decide/server_pods.POD_CHECK_AFTER (30 s) plus resyncs and the Deployment controller.
REFUSAL_TIMEOUT = 90


def real_refusal(tmp_path: Path) -> tuple[str, int, str]:
    """A real model trained here, changed after its digest was taken, and the real server's
    answer to it: (the pinned sha256, exit code, termination message)."""
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    run = tmp_path / "churn-1"
    run.mkdir()
    iris = load_iris()
    skops.io.dump(LogisticRegression(max_iter=300).fit(iris.data, iris.target), run / "model.skops")
    pinned = hashlib.sha256((run / "model.skops").read_bytes()).hexdigest()
    with (run / "model.skops").open("ab") as changed:
        changed.write(b"\0")
    log = tmp_path / "termination-log"
    done = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", "serve", "--model-uri", str(run), "--sha256", pinned,
         "--workers", "1", "--port", str(free_port()), "--termination-log", str(log)],
        capture_output=True, text=True, timeout=120,
    )
    return pinned, done.returncode, log.read_text()


def play_kubelet_crash_loop(core: Any, namespace: str, name: str, exit_code: int, message: str) -> None:
    """Write what a kubelet shows of a Deployment's pod whose server exited and waits to be
    restarted: the last termination (exit code, termination message), CrashLoopBackOff, and the
    pod not ready. The phase stays Running (restartPolicy Always), so kwok leaves it alone."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    deadline = time.monotonic() + 30
    while True:
        pod = core.read_namespaced_pod_status(name, namespace)
        raw = core.api_client.sanitize_for_serialization(pod)
        status = raw["status"]
        for container in status["containerStatuses"]:
            if container["name"] != "server":
                continue
            started = ((container.get("state") or {}).get("running") or {}).get("startedAt", now)
            container.update(
                ready=False,
                started=False,
                restartCount=int(container.get("restartCount") or 0) + 1,
                state={"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off 10s restarting failed container=server pod={name}"}},
                lastState={"terminated": {"exitCode": exit_code, "reason": "Error", "message": message,
                                          "startedAt": started, "finishedAt": now}},
            )
        for condition in status["conditions"]:
            if condition["type"] in ("Ready", "ContainersReady"):
                condition.update(status="False", reason="ContainersNotReady", lastTransitionTime=now)
        try:
            core.replace_namespaced_pod_status(name, namespace, raw)
            return
        except ApiException as error:
            if error.status != 409 or time.monotonic() > deadline:
                raise


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def pod_lists(operator: OperatorProcess) -> float:
    return sum(s.value for s in operator.samples("kubeloop_api_requests_total")
               if s.labels["verb"] == "list" and s.labels["resource"] == "pods")


def test_a_stable_server_that_refuses_a_changed_model_file_makes_ready_say_checksum_mismatch(
    kube_api: Any, namespace: str, tmp_path: Path, rollout_operator: OperatorProcess
) -> None:
    cluster = Cluster(kube_api, namespace)
    # Given the real server's answer to a model file changed after its digest was pinned
    pinned, exit_code, said = real_refusal(tmp_path)
    assert exit_code == 3, said
    assert said.startswith("sha256 mismatch for ") and f"expected {pinned}, got " in said

    # and a healthy ModelDeployment pinning that digest
    md = modeldeployment([], replicas=1)
    md["spec"]["model"] = {"storageUri": "s3://models/churn/churn-1/model.skops", "sha256": pinned}
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)
    wait_status(cluster, "Healthy", lambda s: s.get("phase") == "Healthy")
    time.sleep(3)  # a few resyncs
    assert pod_lists(rollout_operator) == 0, "a healthy ModelDeployment's pods were listed"

    # When its stable server pod exits as that server did, and is restarted, and exits again
    pods = cluster.core.list_namespaced_pod(
        namespace, label_selector="kubeloop.io/modeldeployment=churn,kubeloop.io/track=stable"
    ).items
    assert len(pods) == 1
    pod_name = pods[0].metadata.name
    play_kubelet_crash_loop(cluster.core, namespace, pod_name, exit_code, said)

    # Then first the replicas are not ready, and once they have not been for a while the
    # conditions say why: the reason from the exit code, the pod, and the server's words
    wait_status(cluster, "StableReady False", lambda s: condition(s, "StableReady").get("status") == "False")
    status = wait_status(cluster, "Ready says ChecksumMismatch",
                         lambda s: condition(s, "Ready").get("reason") == "ChecksumMismatch",
                         timeout=REFUSAL_TIMEOUT)
    ready, stable = condition(status, "Ready"), condition(status, "StableReady")
    assert ready["status"] == "False" and stable["reason"] == "ChecksumMismatch"
    for message in (ready["message"], stable["message"]):
        assert f"pod {pod_name} exited 3" in message and said in message
    assert status["phase"] == "Degraded" and condition(status, "Degraded")["reason"] == "ChecksumMismatch"
    # the server's words are in the conditions only; the rest is in the operator's words
    assert said not in status["message"] and pod_name in status["message"]
    assert status["lastFailure"]["reason"] == "ChecksumMismatch" and said not in status["lastFailure"]["message"]
    warnings = wait_for(lambda: [e for e in cluster.events("ChecksumMismatch") if e.type == "Warning"],
                        timeout=30, what="the Warning Event")
    assert said not in warnings[0].message and pod_name in warnings[0].message
    assert pod_lists(rollout_operator) >= 1


@pytest.mark.usefixtures("gateway_api_crds")
def test_a_rollout_whose_http_route_is_missing_says_traffic_routing_failed_and_waits_for_it(
    kube_api: Any, namespace: str, rollout_operator: OperatorProcess
) -> None:
    cluster = Cluster(kube_api, namespace)
    steps = [{"setWeight": 50}, {"pause": {}}]
    md = modeldeployment(steps, routing={"gatewayAPI": {"httpRoute": "churn-route"}}, replicas=2)
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)
    status = wait_status(cluster, "Healthy on model A", lambda s: s.get("phase") == "Healthy")
    assert status["stable"]["sha256"] == SHA_A

    # When a new model rolls out while the HTTPRoute does not exist
    cluster.patch_md("churn", {"spec": {"model": model(SHA_B)}})

    # Then Progressing says TrafficRoutingFailed, naming the route, and nothing advances
    status = wait_status(cluster, "TrafficRoutingFailed",
                         lambda s: condition(s, "Progressing").get("reason") == "TrafficRoutingFailed")
    progressing = condition(status, "Progressing")
    assert progressing["status"] == "False"
    assert "HTTPRoute 'churn-route' not found" in progressing["message"]
    time.sleep(3)  # ticks of the rollout (1 s)
    status = cluster.status("churn")
    assert status["currentStep"] == 0 and status["canaryWeight"] == 0
    assert condition(status, "Progressing")["reason"] == "TrafficRoutingFailed"

    # When the route is created, the rollout goes on: 50 %, then the pause until promoted
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "churn-route", "namespace": namespace},
        "spec": {"parentRefs": [{"name": "public-gateway"}], "rules": [{"backendRefs": [
            {"name": "churn-stable", "port": 8080, "weight": 1},
            {"name": "churn-canary", "port": 8080, "weight": 0},
        ]}]},
    }
    cluster.custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", route)
    status = wait_status(cluster, "50% and paused", lambda s: s.get("currentStep") == 1 and s.get("canaryWeight") == 50)
    assert condition(status, "Progressing")["reason"] == "Paused"
    assert cluster.route_weights("churn-route") == [50, 50]


def frozen_routes_policy(namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ValidatingAdmissionPolicy (and its binding, for this namespace only) that refuses every
    change of an HTTPRoute: the API server refuses the operator's write of the weights."""
    name = f"frozen-routes-{namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["gateway.networking.k8s.io"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["httproutes"],
            }]},
            "validations": [{"expression": "false", "message": "routes in this namespace are frozen"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }
    return policy, binding


@pytest.mark.usefixtures("gateway_api_crds")
def test_a_rollout_whose_route_weights_the_api_server_refuses_says_traffic_routing_failed(
    kube_api: Any, namespace: str, rollout_operator: OperatorProcess
) -> None:
    cluster = Cluster(kube_api, namespace)
    admission = client.AdmissionregistrationV1Api(kube_api)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "churn", "namespace": namespace},
        "spec": {"parentRefs": [{"name": "public-gateway"}], "rules": [{"backendRefs": [
            {"name": "churn-stable", "port": 8080, "weight": 100},
            {"name": "churn-canary", "port": 8080, "weight": 0},
        ]}]},
    }
    cluster.custom.create_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", route)
    steps = [{"setWeight": 50}, {"pause": {}}]
    md = modeldeployment(steps, routing={"gatewayAPI": {"httpRoute": "churn"}}, replicas=2)
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)
    wait_status(cluster, "Healthy on model A", lambda s: s.get("phase") == "Healthy")

    # Given an admission policy that refuses every change of the route
    policy, binding = frozen_routes_policy(namespace)
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    try:
        def refused() -> bool:
            try:
                cluster.custom.patch_namespaced_custom_object(
                    "gateway.networking.k8s.io", "v1", namespace, "httproutes", "churn",
                    {"metadata": {"labels": {"probe": str(time.monotonic_ns())}}})
                return False
            except ApiException as error:
                return error.status in (403, 422)

        wait_for(refused, timeout=30, what="the policy in force")

        # When a new model rolls out
        cluster.patch_md("churn", {"spec": {"model": model(SHA_B)}})

        # Then Progressing says TrafficRoutingFailed with the API server's answer, and holds
        status = wait_status(cluster, "TrafficRoutingFailed",
                             lambda s: condition(s, "Progressing").get("reason") == "TrafficRoutingFailed")
        message = condition(status, "Progressing")["message"]
        assert "HTTPRoute 'churn': the API server refused the new weights" in message
        assert "routes in this namespace are frozen" in message
        time.sleep(3)  # ticks of the rollout (1 s)
        status = cluster.status("churn")
        assert status["currentStep"] == 0 and status["canaryWeight"] == 0
        assert cluster.route_weights("churn") == [100, 0]
    finally:
        admission.delete_validating_admission_policy_binding(binding["metadata"]["name"])
        admission.delete_validating_admission_policy(policy["metadata"]["name"])

    # When the policy is gone, the weights are written and the rollout goes on
    status = wait_status(cluster, "50% and paused", lambda s: s.get("currentStep") == 1 and s.get("canaryWeight") == 50)
    assert condition(status, "Progressing")["reason"] == "Paused"
    assert cluster.route_weights("churn") == [50, 50]
