"""Attack: name a ModelDeployment after objects that are not its own (issue 13, item 5,
"Ownership").

The victims are another app's objects in the namespace, owned by nobody and named exactly like
a ModelDeployment's children: a plain Service (selector app=web) named ``<name>``, a
Deployment named ``<name>-stable``, an autoscaler named ``<name>``. The attacker creates the
ModelDeployment. Each kind is attacked on its own (the test is parametrized by kind), so each
takeover is shown to work before the real policy is shown to refuse it:

(a) Weakened policy: the ModelDeployment controller, run in this process against the real API
    server with its ownership policy replaced by "everything is mine" (what the operator did
    before: server-side apply with ``force``). The victim is taken over - the Service re-pointed
    at model pods, the model server container put into the Deployment's pods, the autoscaler
    made to scale the ModelDeployment - gets the ModelDeployment's controller reference and the
    ``kubeloop`` field manager, and when the ModelDeployment is deleted the garbage collector
    deletes it: the attack is real, and the collector runs in this cluster. The Deployment
    victim selects its pods with the labels the operator's Deployment uses (labels are free to
    write): a Deployment with another selector was safe from the old apply only by the
    accident of the selector being immutable (a 422), which no policy should rely on.
(b) Real operator (a ``kubeloop operator`` process): the ModelDeployment is ``Degraded`` with
    ``ResourceConflict`` naming the victim, an Event says so, the victim is not written (same
    resourceVersion/generation, spec, labels, owner references; no ``kubeloop`` field
    manager), none of the ModelDeployment's other children is created, and after the
    ModelDeployment is deleted and the collector has deleted a witness it did own, the victim
    is still there, unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, events_once, wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubeloop.config import OperatorConfig
from kubeloop.controllers.kube import FIELD_MANAGER, Kube
from kubeloop.controllers.modeldeployment import ModelDeploymentController
from kubeloop.controllers.trainingrun import TrainingRunController
from kubeloop.resources.serving import track_selector

GROUP, VERSION = "kubeloop.io", "v1alpha1"
SHA = "a" * 64
RUNTIME_IMAGE = "kubeloop:test"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"



def victim_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": 8080}]},
    }


def victim_deployment(name: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    """The other app's Deployment; ``selector``: the labels its pods are selected by (default
    app=web)."""
    selector = selector or {"app": "web"}
    security = {
        "allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65534,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {"app": "web", **selector}},
                "spec": {"containers": [{"name": "web", "image": PAUSE_IMAGE, "securityContext": security}]},
            },
        },
    }


def victim_hpa(name: str) -> dict[str, Any]:
    # It scales a Deployment that does not exist, so the autoscaler never touches the victims.
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-frontend"},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": 70}}}],
        },
    }


def attacker_md(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"model": {"storageUri": "s3://models/churn/model.skops", "sha256": SHA}, "replicas": 1,
                 "autoscaling": {"minReplicas": 1, "maxReplicas": 3}},
    }


def stable_deployment_victim(name: str) -> dict[str, Any]:
    """A Deployment named ``name`` whose pods carry the labels the stable Deployment of
    ModelDeployment ``<name without -stable>`` selects."""
    return victim_deployment(name, track_selector(name.removesuffix("-stable"), "stable"))


def serves_the_model(obj: dict[str, Any]) -> bool:
    """Whether the weakened apply took ``obj`` over for the ModelDeployment it names."""
    md = obj["metadata"]["name"].removesuffix("-stable")
    if obj["kind"] == "Service":
        return bool(obj["spec"]["selector"] != {"app": "web"}
                    and obj["spec"]["selector"].get("kubeloop.io/modeldeployment") == md)
    if obj["kind"] == "Deployment":
        containers = obj["spec"]["template"]["spec"]["containers"]
        return any(c["image"] == RUNTIME_IMAGE for c in containers)
    return bool(obj["spec"]["scaleTargetRef"] == {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": md})


# kind, name suffix of the ModelDeployment's child, the victim
VICTIMS = (
    ("Service", "", victim_service),
    ("Deployment", "-stable", stable_deployment_victim),
    ("HorizontalPodAutoscaler", "", victim_hpa),
)
CHILDREN = (("Service", ""), ("Service", "-stable"), ("Service", "-canary"), ("Deployment", "-stable"),
            ("Deployment", "-canary"), ("HorizontalPodAutoscaler", ""))


def create_victim(kube: Kube, namespace: str, victim: Callable[[str], dict[str, Any]], name: str) -> None:
    obj = victim(name)
    obj["metadata"]["namespace"] = namespace
    kube.create(obj)


def fingerprint(obj: dict[str, Any]) -> dict[str, Any]:
    """What a write by the operator would change: everything but the status its own
    controller writes (the Deployment's and the autoscaler's status move on their own)."""
    meta = obj["metadata"]
    return {
        "uid": meta["uid"],
        "generation": meta.get("generation"),
        "labels": meta.get("labels"),
        "annotations": meta.get("annotations"),
        "ownerReferences": meta.get("ownerReferences"),
        "managers": sorted({m.get("manager") for m in meta.get("managedFields") or []
                            if m.get("subresource") != "status"}),
        "spec": obj["spec"],
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


@pytest.mark.parametrize(("kind", "suffix", "victim"), VICTIMS, ids=[v[0] for v in VICTIMS])
def test_modeldeployment_named_like_foreign_objects_takes_nothing_over(
    kubeconfig_path: str, kube_api: Any, namespace: str, crds: None, tmp_path: Path,
    kind: str, suffix: str, victim: Callable[[str], dict[str, Any]],
) -> None:
    kube = Kube(kube_api)
    core = client.CoreV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)

    # --- (a) weakened policy: the controller in-process, ownership check replaced -----------
    create_victim(kube, namespace, victim, f"victim{suffix}")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", attacker_md("victim"))
    md_uid = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "victim")[
        "metadata"]["uid"]
    weakened = ModelDeploymentController(
        Kube.from_environment(kubeconfig_path), OperatorConfig(runtime_image=RUNTIME_IMAGE, metrics_port=0)
    )
    weakened.ownership_conflict = lambda kind, name, existing, owner: None
    try:
        weakened.reconcile(namespace, "victim")
    finally:
        weakened.stop()
    taken = kube.get(kind, namespace, f"victim{suffix}")
    assert serves_the_model(taken), f"the attack must take {kind} victim{suffix} over: {taken['spec']}"
    assert [r["uid"] for r in taken["metadata"]["ownerReferences"]] == [md_uid]
    assert FIELD_MANAGER in fingerprint(taken)["managers"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "victim")
    # ... and deleting the ModelDeployment has the garbage collector delete the other app's object.
    wait_for(lambda: kube.get_or_none(kind, namespace, f"victim{suffix}") is None, timeout=90,
             what=f"weakened: garbage collector deletes {kind} victim{suffix}")

    # --- (b) the real operator -------------------------------------------------------------------
    create_victim(kube, namespace, victim, f"churn{suffix}")
    if kind == "Deployment":
        # Let the other app settle (its pods ready, its status written) before the fingerprint.
        wait_for(lambda: (lambda d: (d.get("status") or {}).get("readyReplicas") == 1
                          and d["status"].get("observedGeneration") == d["metadata"]["generation"])(
            kube.get("Deployment", namespace, "churn-stable")), timeout=60, what="victim Deployment ready")
    before = kube.get(kind, namespace, f"churn{suffix}")
    operator = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        env={"KUBELOOP_RUNTIME_IMAGE": RUNTIME_IMAGE, "KUBELOOP_ROLLOUT_TICK_SECONDS": "1"},
        inherit_kubeloop_env=False,
    )
    operator.start()
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", attacker_md("churn"))
        md = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "churn")

        def degraded() -> dict[str, Any] | None:
            got = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "churn")
            found = condition(got, "Degraded")
            return found if found.get("reason") == "ResourceConflict" else None

        found = wait_for(degraded, timeout=60, what=f"ResourceConflict (operator log:\n{operator.log_tail()})")
        assert found["status"] == "True"
        assert found["message"].startswith(
            f"{kind} churn{suffix} already exists and it is not managed by ModelDeployment churn")
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "churn")["status"]
        assert status["phase"] == "Degraded"
        assert condition({"status": status}, "Ready")["reason"] == "ResourceConflict"
        events = [e for e in events_once(core, namespace, lambda found: any(e.reason == "ResourceConflict" for e in found),
                                         "the ResourceConflict Warning", name="churn")
                  if e.reason == "ResourceConflict"]
        assert events and events[0].type == "Warning" and f"{kind} churn{suffix}" in events[0].message

        # Several resyncs (2s) and rollout ticks later: nothing was written, no Event storm.
        time.sleep(8)
        assert operator.alive(), operator.log_tail()
        after = kube.get(kind, namespace, f"churn{suffix}")
        assert fingerprint(after) == fingerprint(before), f"{kind} churn{suffix} was modified"
        assert FIELD_MANAGER not in fingerprint(after)["managers"]
        if kind == "Service":  # a Deployment's and an autoscaler's status move on their own
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        for child, child_suffix in CHILDREN:
            if (child, child_suffix) != (kind, suffix):
                assert kube.get_or_none(child, namespace, f"churn{child_suffix}") is None, \
                    f"{child} churn{child_suffix} must not be created"
        events = [e for e in core.list_namespaced_event(namespace).items
                  if e.involved_object.name == "churn" and e.reason == "ResourceConflict"]
        assert len(events) == 1 and (events[0].count or 1) == 1

        # Delete the ModelDeployment; a witness it does own shows the collector has run.
        core.create_namespaced_config_map(namespace, {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "witness", "ownerReferences": [{
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": "churn",
                "uid": md["metadata"]["uid"], "controller": True}]},
            "data": {},
        })
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "churn")
        wait_for(lambda: kube.get_or_none("ModelDeployment", namespace, "churn") is None, timeout=60,
                 what="ModelDeployment deleted")
        wait_for(lambda: not _exists(core, namespace, "witness"), timeout=90,
                 what="garbage collector deletes the witness")
        time.sleep(3)
        after = kube.get(kind, namespace, f"churn{suffix}")
        assert fingerprint(after) == fingerprint(before), f"{kind} churn{suffix} changed after deletion"
        assert not serves_the_model(after)
    finally:
        operator.stop()


def _exists(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


# --- a TrainingRun's Job -------------------------------------------------------------------------


def foreign_job(name: str, run_name: str) -> dict[str, Any]:
    """A Job prepared under a run's Job name, labelled like the operator's own (labels are
    free to write; an owner reference to a run that does not exist yet is not)."""
    labels = {"kubeloop.io/trainingrun": run_name, "app.kubernetes.io/managed-by": "kubeloop"}
    pod = victim_deployment("x")["spec"]["template"]["spec"]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels},
                                                 "spec": {**pod, "restartPolicy": "Never"}}},
    }


def trainingrun(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name},
        "spec": {
            "model": {"name": "cancer", "estimator": "sklearn.linear_model.LogisticRegression",
                      "task": "classification"},
            "data": {"source": "sklearn://breast_cancer", "target": "target"},
            "evaluation": {"metric": "accuracy", "threshold": 0.8},
        },
    }


def test_trainingrun_does_not_adopt_a_job_prepared_under_its_job_name(
    kubeconfig_path: str, kube_api: Any, namespace: str, crds: None, tmp_path: Path,
) -> None:
    kube = Kube(kube_api)
    custom = client.CustomObjectsApi(kube_api)

    def run(name: str) -> dict[str, Any]:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", name)  # type: ignore[no-any-return]

    def finished(job: str) -> bool:
        conditions = (kube.get("Job", namespace, job).get("status") or {}).get("conditions") or []
        return any(c["type"] in {"Complete", "Failed"} and c["status"] == "True" for c in conditions)

    # --- (a) weakened: the TrainingRun controller in-process, ownership check replaced --------
    kube.create({**foreign_job("forged-train", "forged"), "metadata": {
        **foreign_job("forged-train", "forged")["metadata"], "namespace": namespace}})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", trainingrun("forged"))
    weakened = TrainingRunController(
        Kube.from_environment(kubeconfig_path), OperatorConfig(runtime_image=RUNTIME_IMAGE, metrics_port=0)
    )
    weakened.ownership_conflict = lambda kind, name, existing, owner: None
    weakened.reconcile(namespace, "forged")
    assert run("forged")["status"]["jobName"] == "forged-train", "the attack must make the run adopt the Job"
    wait_for(lambda: finished("forged-train"), timeout=60, what="the prepared Job finishes")
    weakened.reconcile(namespace, "forged")
    # The prepared Job decided the run's outcome.
    assert run("forged")["status"]["phase"] == "Failed"
    assert "forged-train" in run("forged")["status"]["message"]

    # --- (b) the real operator -------------------------------------------------------------------
    kube.create({**foreign_job("honest-train", "honest"), "metadata": {
        **foreign_job("honest-train", "honest")["metadata"], "namespace": namespace}})
    wait_for(lambda: finished("honest-train"), timeout=60, what="the prepared Job finishes")
    before = kube.get("Job", namespace, "honest-train")
    operator = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        env={"KUBELOOP_RUNTIME_IMAGE": RUNTIME_IMAGE}, inherit_kubeloop_env=False,
    )
    operator.start()
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", trainingrun("honest"))
        ready = wait_for(lambda: (lambda c: c if c.get("reason") == "ResourceConflict" else None)(
            condition(run("honest"), "Ready")), timeout=60, what=f"ResourceConflict (log:\n{operator.log_tail()})")
        assert ready["status"] == "False"
        assert ready["message"].startswith("Job honest-train already exists and it is not managed by TrainingRun honest")
        time.sleep(5)  # a few resyncs
        status = run("honest")["status"]
        assert status["phase"] == "Pending" and "jobName" not in status
        after = kube.get("Job", namespace, "honest-train")
        assert fingerprint(after) == fingerprint(before) and not after["metadata"].get("ownerReferences")
        # Once the other Job is gone, the run gets a Job of its own.
        kube.delete("Job", namespace, "honest-train")
        uid = run("honest")["metadata"]["uid"]
        own = wait_for(lambda: (lambda j: j if j and j["metadata"].get("ownerReferences") else None)(
            kube.get_or_none("Job", namespace, "honest-train")), timeout=60, what="the run's own Job")
        assert [r["uid"] for r in own["metadata"]["ownerReferences"]] == [uid]
    finally:
        operator.stop()
