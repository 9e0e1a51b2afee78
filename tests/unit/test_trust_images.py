"""The image policy (kubeloop.trust.images) as a table, and the decisions that use it:
a TrainingRun or ModelDeployment asking for an image the operator may not run gets
``ImageNotAllowed`` naming the field, the image and the allowed list, and no Job/Deployment."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubeloop.config import OperatorConfig
from kubeloop.decide import driftpolicy as dp_decide
from kubeloop.decide import modeldeployment as md_decide
from kubeloop.decide import trainingrun as tr_decide
from kubeloop.resources.serving import ServingSettings
from kubeloop.resources.trainingjob import TrainerSettings
from kubeloop.trust.images import ImagePolicy, ImageSettingError, check_allowed_entry, is_reference

NOW = datetime(2030, 1, 1, tzinfo=UTC)
RUNTIME = "registry.example/kubeloop:1.4"
EVIL = "evil.example/x:1"
TR_SPEC: dict[str, Any] = {
    "model": {"name": "cancer", "estimator": "sklearn.linear_model.LogisticRegression", "task": "classification"},
    "data": {"source": "sklearn://breast_cancer", "target": "target"},
    "evaluation": {"metric": "accuracy", "threshold": 0.9},
}

ALLOW = [
    # (allowed entries, image, allowed?)
    ((), RUNTIME, True),
    ((), "registry.example/kubeloop:1.5", False),
    ((), "evil.example/x:1", False),
    ((), "registry.example/kubeloop", False),
    (("registry.example/kubeloop:",), "registry.example/kubeloop:1.5", True),
    (("registry.example/kubeloop:",), "registry.example/kubeloop:1.5@sha256:" + "a" * 64, True),
    (("registry.example/kubeloop:",), "registry.example/kubeloop-evil:1", False),
    (("registry.example/kubeloop:",), "registry.example/kubeloop:1/../../evil", False),
    (("registry.example:",), "registry.example:5000/evil/x:1", False),  # ':' allows tags only
    (("registry.example/team/",), "registry.example/team/trainer:2", True),
    (("registry.example/team/",), "registry.example/team/sub/trainer:2", True),
    (("registry.example/team/",), "registry.example/team/../evil:1", False),
    (("registry.example/team/",), "registry.example/teamevil/x:1", False),
    (("registry.example/team/",), "registry.example/team/", False),
    (("registry.example/team/",), "registry.example/team/X:1", False),  # not a reference
    (("registry.example/team/trainer:2",), "registry.example/team/trainer:2", True),
    (("registry.example/team/trainer:2",), "registry.example/team/trainer:22", False),
    (("python:3.12",), "docker.io/library/python:3.12", False),  # matched as written
    (("evil.example/",), "evil.example/x:1", True),
    ((), "", False),
    ((), "evil.example/x:1 --privileged", False),
]


@pytest.mark.parametrize(("allowed", "image", "expected"), ALLOW)
def test_policy_table(allowed: tuple[str, ...], image: str, expected: bool) -> None:
    policy = ImagePolicy.from_settings(RUNTIME, allowed)
    assert policy.allows(image) is expected
    problem = policy.problem("spec.image", image)
    assert (problem is None) is expected
    if problem is not None:
        assert problem.startswith(f"spec.image {image!r} is not allowed")
        assert repr(RUNTIME) in problem and "runtime.allowedImages" in problem and "KUBELOOP_ALLOWED_IMAGES" in problem


def test_no_image_means_the_runtime_image() -> None:
    assert ImagePolicy(RUNTIME).problem("spec.server.image", None) is None


@pytest.mark.parametrize("entry", ["*", "/", ":", "registry.example/team", "evil.example/x:1"])
def test_entries_that_mean_what_they_say_are_accepted_or_named(entry: str) -> None:
    if entry in {"registry.example/team", "evil.example/x:1"}:
        assert check_allowed_entry(entry) == entry  # exact references
    else:
        with pytest.raises(ImageSettingError, match=repr(entry)):
            check_allowed_entry(entry)


def test_reference_grammar() -> None:
    assert is_reference("kubeloop:dev")
    assert is_reference("localhost:5000/a/b:c")
    assert not is_reference("http://evil.example/x")
    assert not is_reference("a/../b")


def test_operator_setting_is_validated_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("KUBELOOP_"):
            monkeypatch.delenv(key)
    assert OperatorConfig().allowed_images == []
    monkeypatch.setenv("KUBELOOP_ALLOWED_IMAGES", "registry.example/team/, registry.example/kubeloop:")
    assert OperatorConfig().allowed_images == ["registry.example/team/", "registry.example/kubeloop:"]
    monkeypatch.setenv("KUBELOOP_ALLOWED_IMAGES", "*")
    with pytest.raises(ValidationError, match="allowed image"):
        OperatorConfig()


# --- the decisions ------------------------------------------------------------------------------


def _run(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "churn-1", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {
            "model": {"name": "churn", "estimator": "sklearn.linear_model.LogisticRegression", "task": "classification"},
            "data": {"source": "sklearn://breast_cancer"},
            **spec,
        },
    }


def _trainer(*allowed: str) -> TrainerSettings:
    return TrainerSettings(
        image=RUNTIME, image_pull_policy="Never", default_storage_uri="file:///m",
        allowed_estimator_prefixes=("sklearn.",), job_ttl_seconds=60, allowed_images=allowed,
    )


def test_trainingrun_with_a_foreign_image_fails_without_a_job() -> None:
    decision = tr_decide.decide(_run(image="evil.example/x:1"), tr_decide.Observed(), _trainer(), NOW)
    assert decision.create_job is None
    assert decision.status["phase"] == "Failed"
    ready = next(c for c in decision.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ImageNotAllowed"
    assert "spec.image 'evil.example/x:1'" in ready["message"]
    assert [e.reason for e in decision.events] == ["ImageNotAllowed"]


def test_trainingrun_with_an_allowed_image_gets_its_job() -> None:
    decision = tr_decide.decide(
        _run(image="evil.example/x:1"), tr_decide.Observed(), _trainer("evil.example/"), NOW
    )
    assert decision.create_job is not None
    containers = decision.create_job["spec"]["template"]["spec"]["containers"]
    assert containers[0]["image"] == "evil.example/x:1"


def _md(image: str | None) -> dict[str, Any]:
    server = {"image": image} if image else {}
    return {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {"model": {"storageUri": "s3://m/a/model.skops", "sha256": "a" * 64}, "replicas": 1,
                 **({"server": server} if server else {})},
    }


def test_modeldeployment_with_a_foreign_server_image_is_degraded_without_children() -> None:
    decision = md_decide.decide(_md("evil.example/x:1"), md_decide.Observed(), ServingSettings(image=RUNTIME), NOW)
    assert decision.deployments == [] and decision.services == [] and decision.hpa is None
    assert decision.status["phase"] == "Degraded"
    degraded = next(c for c in decision.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ImageNotAllowed"
    assert "spec.server.image 'evil.example/x:1'" in degraded["message"]
    assert [e.reason for e in decision.events] == ["ImageNotAllowed"]
    # Repeating the reconcile on the refused object posts no second Event (no storm).
    again = md_decide.decide(
        {**_md("evil.example/x:1"), "status": decision.status}, md_decide.Observed(),
        ServingSettings(image=RUNTIME), NOW,
    )
    assert again.events == [] and again.status == decision.status


def test_modeldeployment_with_the_runtime_image_or_an_allowed_one_is_served() -> None:
    for image, settings in [
        (None, ServingSettings(image=RUNTIME)),
        ("evil.example/x:1", ServingSettings(image=RUNTIME, allowed_images=("evil.example/",))),
    ]:
        decision = md_decide.decide(_md(image), md_decide.Observed(), settings, NOW)
        assert [d["spec"]["template"]["spec"]["containers"][0]["image"] for d in decision.deployments] == [
            image or RUNTIME
        ]


# --- the chart configures the policy ------------------------------------------------------------


def test_the_chart_value_becomes_the_operators_image_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_chart_support import one, render

    for key in list(os.environ):
        if key.startswith("KUBELOOP_"):
            monkeypatch.delenv(key)
    values = {"runtime": {"image": RUNTIME, "allowedImages": ["registry.example/ml/", "registry.example/trainer:"]}}
    container = one(render(tmp_path, values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for key in ("KUBELOOP_ALLOWED_IMAGES", "KUBELOOP_RUNTIME_IMAGE"):
        monkeypatch.setenv(key, env[key])
    config = OperatorConfig()
    policy = ImagePolicy.from_settings(config.runtime_image, config.allowed_images)
    assert policy == ImagePolicy(RUNTIME, ("registry.example/ml/", "registry.example/trainer:"))
    assert policy.allows("registry.example/ml/x:1") and not policy.allows("evil.example/x:1")
    default = one(render(tmp_path), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in default["env"]}["KUBELOOP_ALLOWED_IMAGES"] == ""


@pytest.mark.parametrize("bad", ["*", "evil.example/x:1 extra", "a,b", ""])
def test_the_chart_refuses_allowed_images_that_cannot_be_entries(tmp_path: Path, bad: str) -> None:
    from test_chart_support import helm, template_args

    args = template_args({"runtime": {"allowedImages": [bad]}}, values_file=tmp_path / "v.json")
    proc = helm(*args, check=False)
    assert proc.returncode != 0 and "allowedImages" in proc.stderr


# --- a DriftPolicy's retrain runs -----------------------------------------------------------------


def _drift_decision(retrain: dict[str, Any], images: ImagePolicy | None, source: dict[str, Any] | None = None) -> Any:
    import test_driftpolicy_decide as dp

    policy = dp.policy(retrain={"cooldown": "1h", "maxRetrainsPerDay": 3, **retrain})
    return dp_decide.decide(policy, dp.NOW, dp.DRIFT, {}, source, images=images)


@pytest.mark.parametrize(("retrain", "source", "field"), [
    ({"template": {"spec": {**TR_SPEC, "image": EVIL}}}, None, "spec.retrain.template.spec.image"),
    ({"fromTrainingRun": {"name": "cancer-1"}, "overrides": {"image": EVIL}}, TR_SPEC, "spec.retrain.overrides.image"),
    ({"fromTrainingRun": {"name": "cancer-1"}}, {**TR_SPEC, "image": EVIL},
     "spec.image of TrainingRun cancer-1 (copied by spec.retrain.fromTrainingRun)"),
])
def test_driftpolicy_creates_no_retrain_run_with_a_foreign_image(
    retrain: dict[str, Any], source: dict[str, Any] | None, field: str,
) -> None:
    for images in (ImagePolicy(RUNTIME), None):
        decision = _drift_decision(retrain, images, source)
        assert decision.create_run is None
        ready = next(c for c in decision.status["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "ImageNotAllowed" and ready["status"] == "False"
        assert ready["message"].startswith(f"{field} {EVIL!r} is not allowed")
        assert decision.status["lastFailure"]["reason"] == "ImageNotAllowed"
        assert "ImageNotAllowed" in {e.reason for e in decision.events}
        assert "retrainCount" not in decision.status
    # Allowed: the run is created with that image.
    allowed = _drift_decision(retrain, ImagePolicy(RUNTIME, ("evil.example/",)), source)
    assert allowed.create_run is not None and allowed.create_run["spec"]["image"] == EVIL


def test_driftpolicy_retrain_without_an_image_uses_the_runtime_image() -> None:
    decision = _drift_decision({"template": {"spec": TR_SPEC}}, ImagePolicy(RUNTIME))
    assert decision.create_run is not None and "image" not in decision.create_run["spec"]
