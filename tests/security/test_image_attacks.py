"""Attack: run your own code in the operator's training and serving pods by naming your own
image (issue 13, item 6, "Images").

The estimator allow-list and skops trust bound what the operator's runtime image does with a
spec; a spec that picks the image picks the code. The attacker's TrainingRun sets
``spec.image: evil.example/x:1`` and the attacker's ModelDeployment ``spec.server.image``.

(a) Weakened policy: the operator (a real ``kubeloop operator`` process against the real API
    server) configured with an allow-list that admits the attacker's registry
    (``KUBELOOP_ALLOWED_IMAGES=evil.example/``): the training Job and the serving Deployment are
    created with the attacker's image - the attack is real.
(b) Default configuration (only the runtime image): each object gets a condition with reason
    ``ImageNotAllowed`` naming the field, the image and the allowed list, and a Warning Event;
    no Job and no Deployment exist for it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, event_keys, events_once, install_crds, wait_for
from kubernetes import client

from kubeloop.controllers.kube import Kube

GROUP, VERSION = "kubeloop.io", "v1alpha1"
RUNTIME_IMAGE = "kubeloop:test"
EVIL = "evil.example/x:1"


@pytest.fixture
def crds(kubectl: Any) -> None:
    install_crds(kubectl)


def trainingrun(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name},
        "spec": {
            "image": EVIL,
            "model": {"name": "cancer", "estimator": "sklearn.linear_model.LogisticRegression",
                      "task": "classification"},
            "data": {"source": "sklearn://breast_cancer", "target": "target"},
            "evaluation": {"metric": "accuracy", "threshold": 0.8},
        },
    }


def modeldeployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"model": {"storageUri": "s3://models/cancer/model.skops", "sha256": "a" * 64},
                 "replicas": 1, "server": {"image": EVIL}},
    }


def operator(kubeconfig: str, namespace: str, log: Path, env: dict[str, str]) -> OperatorProcess:
    process = OperatorProcess(
        kubeconfig, namespace, log,
        env={"KUBELOOP_RUNTIME_IMAGE": RUNTIME_IMAGE, "KUBELOOP_ROLLOUT_TICK_SECONDS": "1", **env},
        inherit_kubeloop_env=False,
    )
    process.start()
    return process


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def test_spec_images_are_refused_unless_the_operator_allows_them(
    kubeconfig_path: str, kube_api: Any, namespace: str, crds: None, tmp_path: Path,
) -> None:
    kube = Kube(kube_api)
    core = client.CoreV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)

    def create(plural: str, body: dict[str, Any]) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)

    def image_of(kind: str, name: str) -> str | None:
        obj = kube.get_or_none(kind, namespace, name)
        return None if obj is None else str(obj["spec"]["template"]["spec"]["containers"][0]["image"])

    # --- (a) weakened: the operator allows the attacker's registry -------------------------------
    weak = operator(kubeconfig_path, namespace, tmp_path / "weak.log", {"KUBELOOP_ALLOWED_IMAGES": "evil.example/"})
    try:
        create("trainingruns", trainingrun("weak-run"))
        create("modeldeployments", modeldeployment("weak-md"))
        assert wait_for(lambda: image_of("Job", "weak-run-train"), timeout=60,
                        what=f"weakened: training Job (log:\n{weak.log_tail()})") == EVIL
        assert wait_for(lambda: image_of("Deployment", "weak-md-stable"), timeout=60,
                        what=f"weakened: serving Deployment (log:\n{weak.log_tail()})") == EVIL
    finally:
        weak.stop()

    # --- (b) the default configuration: only the runtime image -----------------------------------
    real = operator(kubeconfig_path, namespace, tmp_path / "real.log", {})
    try:
        create("trainingruns", trainingrun("evil-run"))
        create("modeldeployments", modeldeployment("evil-md"))

        def refused(plural: str, name: str, type_: str) -> dict[str, Any] | None:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            found = condition(obj, type_)
            return found if found.get("reason") == "ImageNotAllowed" else None

        run_ready = wait_for(lambda: refused("trainingruns", "evil-run", "Ready"), timeout=60,
                             what=f"TrainingRun refused (log:\n{real.log_tail()})")
        md_degraded = wait_for(lambda: refused("modeldeployments", "evil-md", "Degraded"), timeout=60,
                               what=f"ModelDeployment refused (log:\n{real.log_tail()})")
        assert run_ready["status"] == "False"
        assert run_ready["message"].startswith(f"spec.image {EVIL!r} is not allowed")
        assert md_degraded["status"] == "True"
        assert md_degraded["message"].startswith(f"spec.server.image {EVIL!r} is not allowed")
        for message in (run_ready["message"], md_degraded["message"]):
            assert repr(RUNTIME_IMAGE) in message and "runtime.allowedImages" in message
        run = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "evil-run")
        assert run["status"]["phase"] == "Failed"
        expected = {("evil-run", "ImageNotAllowed", "Warning"), ("evil-md", "ImageNotAllowed", "Warning")}
        events = events_once(core, namespace, lambda found: expected <= event_keys(found), "ImageNotAllowed events")
        reasons = event_keys(events)
        assert ("evil-run", "ImageNotAllowed", "Warning") in reasons
        assert ("evil-md", "ImageNotAllowed", "Warning") in reasons

        time.sleep(5)  # a few resyncs: still nothing created for the refused objects
        assert real.alive(), real.log_tail()
        assert kube.get_or_none("Job", namespace, "evil-run-train") is None
        for name in ("evil-md-stable", "evil-md-canary"):
            assert kube.get_or_none("Deployment", namespace, name) is None
        pods = kube.list("Pod", namespace)
        images = {c["image"] for p in pods for c in p["spec"]["containers"]
                  if p["metadata"]["name"].startswith("evil-")}
        assert images == set()
    finally:
        real.stop()
