"""spec.server's pod options on a real API server (issue 20), with the operator running.

Given a ServiceAccount and kwok nodes of which two carry the GPU pool's label, when a
ModelDeployment asks for every pod option, then both tracks' Deployments carry them, the
ReplicaSet controller creates pods that run as the ServiceAccount, the scheduler places them
on the GPU nodes spread one per node, and the stable track gets a PodDisruptionBudget that the
disruption controller counts over the stable pods only: the eviction API refuses to evict a
stable pod and evicts a canary pod; dropping the field deletes the budget. Names
the operator pins are refused by the API server itself, naming ``spec.server.env[i].name``;
the operator's selector labels are refused too; an annotation the operator sets is refused by
the operator with a condition naming it.

kwok plays the kubelet (pods become Running and Ready without running anything), so this shows
what the API server, scheduler and controllers make of the objects, not a server process.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import OperatorProcess, wait_for
from kubernetes import client

from kubeloop.trust.pod_env import USER_REFUSED_NAMES

GROUP, VERSION, PLURAL = "kubeloop.io", "v1alpha1", "modeldeployments"
SHA_A, SHA_B = "a" * 64, "b" * 64
TIMEOUT = 90
GPU_NODES = {"kwok-node-1", "kwok-node-2"}  # hack/controlplane/nodes.yaml: nvidia.com/gpu.present



def model(sha: str) -> dict[str, str]:
    return {"storageUri": f"s3://models/{sha[:4]}/model.skops", "sha256": sha}


SERVER: dict[str, Any] = {
    "serviceAccountName": "churn-reader",
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [
                    {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["fake-gpu"]}
                ]}}
            ]
        }
    },
    # No labelSelector: each track's pods spread over the GPU nodes, one per node.
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
    ],
    "env": [
        {"name": "OMP_NUM_THREADS", "value": "1"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ],
    "podLabels": {"team": "risk"},
    "podAnnotations": {"example.com/owner": "risk-team"},
    "podDisruptionBudget": {"minAvailable": 2},
}


def modeldeployment(name: str, server: dict[str, Any], replicas: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": model(SHA_A),
            "replicas": replicas,
            "server": server,
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}]},
        },
    }


class Cluster:
    def __init__(self, api: Any, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.policy = client.PolicyV1Api(api)

    def status(self, name: str) -> dict[str, Any]:
        md = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)
        return dict(md.get("status") or {})

    def template(self, deployment: str) -> Any:
        return self.apps.read_namespaced_deployment(deployment, self.ns).spec.template

    def pods(self, track: str) -> list[Any]:
        selector = f"kubeloop.io/modeldeployment=churn,kubeloop.io/track={track}"
        items = self.core.list_namespaced_pod(self.ns, label_selector=selector).items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def evict(self, pod: str) -> None:
        """What ``kubectl drain`` does to each pod: the Eviction API, which honours budgets."""
        eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=self.ns))
        self.core.create_namespaced_pod_eviction(pod, self.ns, eviction)

    def pdb(self, name: str) -> Any:
        try:
            return self.policy.read_namespaced_pod_disruption_budget(name, self.ns)
        except client.exceptions.ApiException as error:
            if error.status == 404:
                return None
            raise


def assert_template_has_the_options(template: Any, track: str) -> None:
    spec = template.spec
    assert spec.service_account_name == "churn-reader"
    assert spec.automount_service_account_token is False
    assert spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    preferred = spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution
    assert preferred[0].preference.match_expressions[0].values == ["fake-gpu"]
    (spread,) = spec.topology_spread_constraints
    assert spread.label_selector.match_labels == {"kubeloop.io/modeldeployment": "churn", "kubeloop.io/track": track}
    env = {e.name: e for e in spec.containers[0].env}
    assert env["OMP_NUM_THREADS"].value == "1"
    assert env["POD_NAME"].value_from.field_ref.field_path == "metadata.name"
    assert template.metadata.labels["team"] == "risk"
    assert template.metadata.labels["kubeloop.io/track"] == track
    assert template.metadata.annotations["example.com/owner"] == "risk-team"


def placed_pods(cluster: Cluster, track: str, count: int) -> list[Any]:
    def ready() -> list[Any] | None:
        pods = cluster.pods(track)
        scheduled = [p for p in pods if p.spec.node_name and p.status.phase == "Running"]
        return scheduled if len(scheduled) == count == len(pods) else None

    return wait_for(ready, timeout=TIMEOUT, what=f"{count} running {track} pods")


def test_every_pod_option_reaches_both_tracks_pods_and_the_stable_budget(
    kube_api: Any, namespace: str, kubectl: Any, rollout_operator: OperatorProcess
) -> None:
    cluster = Cluster(kube_api, namespace)
    kubectl("create", "serviceaccount", "churn-reader", "-n", namespace)

    # Given a ModelDeployment with every pod option, serving model A on 2 pods
    md = modeldeployment("churn", SERVER, replicas=2)
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, md)
    wait_for(lambda: cluster.status("churn").get("phase") == "Healthy", timeout=TIMEOUT, what="Healthy")

    # Then the stable Deployment's pod template carries them ...
    assert_template_has_the_options(cluster.template("churn-stable"), "stable")
    # ... and the pods the ReplicaSet controller created run as the account, with no API token,
    # on the GPU nodes, one per node (the spread counts the track's own pods).
    stable_pods = placed_pods(cluster, "stable", 2)
    assert {p.spec.node_name for p in stable_pods} == GPU_NODES
    for pod in stable_pods:
        assert pod.spec.service_account_name == "churn-reader"
        assert not any(v.projected for v in pod.spec.volumes or []), "no service account token volume"
        assert pod.metadata.labels["team"] == "risk"

    # And a PodDisruptionBudget owned by the ModelDeployment selects the stable pods
    uid = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "churn")["metadata"]["uid"]
    pdb = wait_for(lambda: cluster.pdb("churn-stable"), timeout=TIMEOUT, what="PodDisruptionBudget")
    assert pdb.spec.min_available == 2 and pdb.spec.max_unavailable is None
    assert pdb.spec.selector.match_labels == {"kubeloop.io/modeldeployment": "churn", "kubeloop.io/track": "stable"}
    assert [(o.kind, o.uid, o.controller) for o in pdb.metadata.owner_references] == [("ModelDeployment", uid, True)]
    # (the disruption controller's own count: the budget covers the two stable pods)
    wait_for(lambda: (cluster.pdb("churn-stable").status.expected_pods or 0) == 2, timeout=TIMEOUT,
             what="disruption controller counting 2 stable pods")

    # When a new model rolls out (4 replicas, canary at 50 %)
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "churn", {"spec": {"model": model(SHA_B), "replicas": 4}}
    )
    wait_for(lambda: cluster.status("churn").get("phase") == "Paused", timeout=TIMEOUT, what="paused at 50 %")

    # Then the canary's pods get the same options, spread over the GPU nodes on their own
    assert_template_has_the_options(cluster.template("churn-canary"), "canary")
    canary_pods = placed_pods(cluster, "canary", 2)
    assert {p.spec.node_name for p in canary_pods} == GPU_NODES
    assert {p.spec.service_account_name for p in canary_pods} == {"churn-reader"}
    # ... and the budget still counts the stable pods only, never the canary's: a drain may
    # not take a stable pod (2 of 2 must stay), and may take a canary pod.
    stable_pods = placed_pods(cluster, "stable", 2)

    def budget_settled() -> bool:
        status = cluster.pdb("churn-stable").status
        return status.expected_pods == 2 and status.current_healthy == 2 and status.disruptions_allowed == 0

    wait_for(budget_settled, timeout=TIMEOUT, what="budget counting the 2 stable pods only")
    with pytest.raises(client.exceptions.ApiException) as refused:
        cluster.evict(stable_pods[0].metadata.name)
    assert refused.value.status == 429 and "disruption budget" in str(refused.value.body)
    cluster.evict(canary_pods[0].metadata.name)

    # When the spec drops the budget, the operator deletes it
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "churn", {"spec": {"server": {"podDisruptionBudget": None}}}
    )
    wait_for(lambda: cluster.pdb("churn-stable") is None, timeout=TIMEOUT, what="budget deleted")


def test_refused_env_names_and_labels_name_the_field(
    kube_api: Any, namespace: str, kubectl: Any, rollout_operator: OperatorProcess
) -> None:
    cluster = Cluster(kube_api, namespace)

    def create(obj: dict[str, Any]) -> Any:
        return kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False)

    # Every name the operator sets or pins, and a KUBELOOP_* setting no release has yet: the
    # API server refuses each entry, by index, in one answer.
    # env holds at most 64 entries, so the names go in batches.
    refused = [*sorted(USER_REFUSED_NAMES), "KUBELOOP_SERVE_NOT_YET_A_SETTING"]
    for start in range(0, len(refused), 60):
        batch = refused[start : start + 60]
        env = [{"name": "OMP_NUM_THREADS", "value": "1"}, *({"name": n, "value": "x"} for n in batch)]
        proc = create(modeldeployment("env", {"env": env}))
        assert proc.returncode != 0
        for index, name in enumerate(batch, start=1):
            expected = f'spec.server.env[{index}].name: Invalid value: "{name}": {name} is set by the operator'
            assert f"{expected} and may not be set in env (" in proc.stderr, (name, proc.stderr[:2000])
        assert "spec.server.env[0]" not in proc.stderr
    assert "KUBELOOP_* variables are the runtime's own settings" in proc.stderr

    # A Secret cannot come in through env: the schema has no secretKeyRef.
    proc = create(modeldeployment("secret-env", {"env": [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}}
    ]}))
    assert proc.returncode != 0 and 'unknown field "spec.server.env[0].valueFrom.secretKeyRef"' in proc.stderr

    # The operator's selector labels are refused, naming the field.
    proc = create(modeldeployment("label", {"podLabels": {"kubeloop.io/track": "canary"}}))
    assert proc.returncode != 0
    assert "spec.server.podLabels: Invalid value" in proc.stderr
    assert "label keys starting with kubeloop.io/" in proc.stderr
    for name in ("env", "secret-env", "label"):
        assert kubectl("get", "md", name, "-n", namespace, check=False).returncode != 0

    # An annotation the operator sets on the pods is admitted by the schema and refused by the
    # operator: Degraded, naming the key, and no Deployment is created.
    assert create(modeldeployment("churn", {"podAnnotations": {"prometheus.io/scrape": "false"}})).returncode == 0

    def degraded() -> dict[str, Any] | None:
        status = cluster.status("churn")
        return status if status.get("phase") == "Degraded" else None

    status = wait_for(degraded, timeout=TIMEOUT, what="Degraded")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert 'spec.server.podAnnotations["prometheus.io/scrape"]: the operator sets this key' in ready["message"]
    assert cluster.apps.list_namespaced_deployment(namespace).items == []
