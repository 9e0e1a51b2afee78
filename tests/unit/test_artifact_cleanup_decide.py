"""Table tests of what happens to a TrainingRun's artifacts when it is deleted (cleanupPolicy)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kubeloop.decide.artifact_cleanup import (
    FINALIZER,
    Action,
    decide_cleanup,
    needs_cleanup_reconcile,
)
from kubeloop.resources.cleanupjob import build_cleanup_job, cleanup_job_name
from kubeloop.resources.meta import child_name
from kubeloop.resources.trainingjob import TrainerSettings, build_training_job

SETTINGS = TrainerSettings(
    image="kubeloop:test",
    image_pull_policy="Never",
    default_storage_uri="file:///var/lib/kubeloop/models",
    allowed_estimator_prefixes=("sklearn.",),
    job_ttl_seconds=3600,
)
RUN_DIR = "file:///var/lib/kubeloop/models/churn/churn-1"
MODEL = {"uri": f"{RUN_DIR}/model.skops", "sha256": "a" * 64}
KOPF = "kubeloop.io/finalizer"


def make_run(
    policy: str = "Delete",
    *,
    deleting: bool = False,
    finalizers: tuple[str, ...] = (KOPF, FINALIZER),
    phase: str = "Succeeded",
    model: dict[str, Any] | None = MODEL,
    message: str = "accuracy=0.95",
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "churn-1", "namespace": "ml", "uid": "uid-1", "finalizers": list(finalizers)}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    status: dict[str, Any] = {"phase": phase, "message": message}
    if model:
        status["model"] = model
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": meta,
        "spec": {
            "model": {"name": "churn", "estimator": "sklearn.linear_model.LogisticRegression"},
            "data": {"source": "sklearn://breast_cancer"},
            "cleanupPolicy": policy,
            **spec,
        },
        "status": status,
    }


def deployment(name: str, spec_model: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"model": spec_model}, "status": status}


def cleanup_job(state: str) -> dict[str, Any]:
    conditions = {
        "running": [],
        "succeeded": [{"type": "Complete", "status": "True"}],
        "failed": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}],
    }[state]
    return {"metadata": {"name": "churn-1-cleanup"}, "status": {"conditions": conditions}}


def cleanup_pod(result: dict[str, Any] | str) -> dict[str, Any]:
    message = result if isinstance(result, str) else orjson.dumps(result).decode()
    return {
        "metadata": {"name": "churn-1-cleanup-x", "creationTimestamp": "2026-11-23T12:00:05Z"},
        "status": {"containerStatuses": [{"name": "cleanup", "state": {"terminated": {"exitCode": 3, "message": message}}}]},
    }


OTHER = deployment("other", {"trainingRunRef": {"name": "churn-0"}},
                   stable={"uri": "file:///var/lib/kubeloop/models/churn/churn-0/model.skops", "sha256": "b" * 64, "trainingRun": "churn-0"})


@pytest.mark.parametrize(
    ("run", "deployments", "job", "action", "in_use_by"),
    [
        pytest.param(make_run(finalizers=(KOPF,)), [], None, Action.ADD_FINALIZER, None, id="delete-policy-gets-the-finalizer"),
        pytest.param(make_run(finalizers=()), [], None, Action.ADD_FINALIZER, None, id="even-without-any-finalizer"),
        pytest.param(make_run(phase="Training", model=None, finalizers=()), [], None, Action.ADD_FINALIZER, None, id="from-the-start"),
        pytest.param(make_run(), [], None, Action.NOTHING, None, id="finalizer-already-there"),
        pytest.param(make_run("Retain", finalizers=(KOPF,)), [], None, Action.NOTHING, None, id="retain-never-gets-it"),
        pytest.param(make_run("Retain", deleting=True, finalizers=(KOPF,)), [], None, Action.NOTHING, None, id="retain-deleted"),
        pytest.param(make_run(deleting=True, finalizers=(KOPF,)), [], None, Action.NOTHING, None, id="deleted-without-our-finalizer"),
        pytest.param(make_run(deleting=True, phase="Failed", model=None), [], None, Action.REMOVE_FINALIZER, None, id="no-model-no-job"),
        pytest.param(make_run(deleting=True), [], None, Action.CREATE_JOB, None, id="unused-starts-the-job"),
        pytest.param(make_run(deleting=True), [OTHER], None, Action.CREATE_JOB, None, id="another-runs-deployment-does-not-block"),
        pytest.param(make_run(deleting=True), [deployment("churn", {"trainingRunRef": {"name": "churn-1"}})], None,
                     Action.WAIT_IN_USE, "churn", id="referenced-by-trainingRunRef"),
        pytest.param(make_run(deleting=True), [deployment("web", {"trainingRunRef": {"name": "churn-0"}},
                                                          stable=OTHER["status"]["stable"],
                                                          canary={"uri": MODEL["uri"], "sha256": MODEL["sha256"]})],
                     None, Action.WAIT_IN_USE, "web", id="served-as-canary-by-uri"),
        pytest.param(make_run(deleting=True), [deployment("pinned", {"storageUri": "s3://elsewhere/m.skops", "sha256": "a" * 64})],
                     None, Action.WAIT_IN_USE, "pinned", id="same-sha256-by-storageUri"),
        pytest.param(make_run(deleting=True), [deployment("direct", {"storageUri": MODEL["uri"], "sha256": "c" * 64})],
                     None, Action.WAIT_IN_USE, "direct", id="storageUri-into-the-run-directory"),
        pytest.param(make_run(deleting=True), [deployment("s", {"trainingRunRef": {"name": "x"}}, stable={"trainingRun": "churn-1"})],
                     None, Action.WAIT_IN_USE, "s", id="stable-names-the-run"),
        pytest.param(make_run(deleting=True), [deployment("churn", {"trainingRunRef": {"name": "churn-1"}})], cleanup_job("running"),
                     Action.WAIT_IN_USE, "churn", id="a-new-user-holds-a-running-job"),
        pytest.param(make_run(deleting=True), [], cleanup_job("running"), Action.WAIT_FOR_JOB, None, id="job-running"),
        pytest.param(make_run(deleting=True), [], cleanup_job("succeeded"), Action.REMOVE_FINALIZER, None, id="job-succeeded"),
        pytest.param(make_run(deleting=True), [deployment("churn", {"trainingRunRef": {"name": "churn-1"}})], cleanup_job("succeeded"),
                     Action.REMOVE_FINALIZER, None, id="done-is-done"),
        pytest.param(make_run(deleting=True), [], cleanup_job("failed"), Action.JOB_FAILED, None, id="job-failed"),
        pytest.param(make_run(deleting=True, phase="Training", model=None), [], None, Action.CREATE_JOB, None,
                     id="deleted-while-training-still-cleans"),
    ],
)
def test_cleanup_decision_table(
    run: dict[str, Any], deployments: list[dict[str, Any]], job: dict[str, Any] | None, action: Action, in_use_by: str | None
) -> None:
    decision = decide_cleanup(run, deployments, job, [], SETTINGS)
    assert decision.action == action
    finalizers = run["metadata"]["finalizers"]
    if action == Action.ADD_FINALIZER:
        assert decision.finalizers == [*finalizers, FINALIZER]
    elif action == Action.REMOVE_FINALIZER:
        assert decision.finalizers == [f for f in finalizers if f != FINALIZER]
        assert KOPF not in finalizers or KOPF in decision.finalizers  # kopf's is left alone
    else:
        assert decision.finalizers is None
    assert (decision.create_job is not None) == (action == Action.CREATE_JOB)
    reasons = [e.reason for e in decision.events]
    expected_reason = {
        Action.WAIT_IN_USE: "ArtifactsInUse",
        Action.CREATE_JOB: "CleanupStarted",
        Action.JOB_FAILED: "CleanupFailed",
    }.get(action)
    if action == Action.REMOVE_FINALIZER and run["spec"]["cleanupPolicy"] == "Delete":
        expected_reason = "ArtifactsDeleted"
    assert reasons == ([expected_reason] if expected_reason else [])
    if in_use_by:
        assert f"md/{in_use_by} " in decision.events[0].message
        assert decision.message == decision.events[0].message


def test_a_repeated_reconcile_in_the_same_state_posts_no_second_event() -> None:
    blocking = [deployment("churn", {"trainingRunRef": {"name": "churn-1"}})]
    first = decide_cleanup(make_run(deleting=True), blocking, None, [], SETTINGS)
    again = decide_cleanup(make_run(deleting=True, message=first.message), blocking, None, [], SETTINGS)
    assert again.action == Action.WAIT_IN_USE and not again.events
    failed = decide_cleanup(make_run(deleting=True), [], cleanup_job("failed"), [], SETTINGS)
    repeated = decide_cleanup(make_run(deleting=True, message=failed.message), [], cleanup_job("failed"), [], SETTINGS)
    assert repeated.events == [] and repeated.message == failed.message


def test_failure_says_why_and_what_the_user_can_do() -> None:
    pods = [cleanup_pod({"status": "Failed", "uri": RUN_DIR, "message": "cannot delete: Access Denied"})]
    decision = decide_cleanup(make_run(deleting=True), [], cleanup_job("failed"), pods, SETTINGS)
    (event,) = decision.events
    assert event.type == "Warning"
    assert "Access Denied" in event.message
    assert "fix the storage access" in event.message and "kubectl delete job/churn-1-cleanup -n ml" in event.message
    # The finalizer is the second in the list: the patch removes index 1.
    assert '"path":"/metadata/finalizers/1"' in event.message and "kubectl patch tr/churn-1 -n ml --type=json" in event.message

    refused = [cleanup_pod({"status": "Refused", "uri": RUN_DIR, "message": "refusing to delete x: it holds notes.txt"})]
    decision = decide_cleanup(make_run(deleting=True), [], cleanup_job("failed"), refused, SETTINGS)
    assert "nothing was deleted" in decision.message and "notes.txt" in decision.message
    crashed = [cleanup_pod("Traceback ...\nPermissionError: [Errno 13]")]
    decision = decide_cleanup(make_run(deleting=True), [], cleanup_job("failed"), crashed, SETTINGS)
    assert "PermissionError" in decision.message


def test_success_event_carries_the_command_result() -> None:
    pods = [cleanup_pod({"status": "Deleted", "uri": RUN_DIR, "files": 4, "message": f"deleted {RUN_DIR} (4 files)"})]
    decision = decide_cleanup(make_run(deleting=True), [], cleanup_job("succeeded"), pods, SETTINGS)
    assert [e.message for e in decision.events] == [f"deleted {RUN_DIR} (4 files)"]


@pytest.mark.parametrize(
    ("run", "needed"),
    [
        (make_run(finalizers=()), True),
        (make_run(), False),
        (make_run("Retain", finalizers=()), False),
        (make_run(deleting=True), True),
        (make_run(deleting=True, finalizers=(KOPF,)), False),
    ],
)
def test_which_runs_need_a_cleanup_reconcile(run: dict[str, Any], needed: bool) -> None:
    assert needs_cleanup_reconcile(run) is needed


def test_cleanup_job_is_built_like_the_training_job() -> None:
    run = make_run(deleting=True, output={"storageUri": "pvc://models/root"}, credentials={"secretRef": {"name": "s3"}},
                   nodeSelector={"disk": "ssd"})
    settings = TrainerSettings(**{**SETTINGS.__dict__, "pod_labels": (("team", "ml"),)})
    job = build_cleanup_job(run, settings)
    training = build_training_job({**run, "metadata": {**run["metadata"]}}, settings)
    pod, train_pod = job["spec"]["template"]["spec"], training["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["artifacts", "delete", "/mnt/pvc/models/root/churn/churn-1",
                                 "--storage-root", "/mnt/pvc/models/root", "--termination-log", "/dev/termination-log"]
    for key in ("securityContext", "automountServiceAccountToken", "restartPolicy", "nodeSelector", "volumes"):
        assert pod[key] == train_pod[key], key
    assert container["securityContext"] == train_pod["containers"][0]["securityContext"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    # The claim is mounted writable, as the trainer has it.
    assert {"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": False} in container["volumeMounts"]
    labels = job["metadata"]["labels"]
    assert labels["kubeloop.io/trainingrun"] == "churn-1"
    assert labels["app.kubernetes.io/component"] == "artifact-cleanup" != training["metadata"]["labels"]["app.kubernetes.io/component"]
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert "ownerReferences" not in job["metadata"]
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["metadata"]["name"] == "churn-1-cleanup"


def test_cleanup_job_name_fits_a_label() -> None:
    long = "r" * 70
    assert len(cleanup_job_name(long)) <= 63
    assert cleanup_job_name(long) == child_name(long, "cleanup") != cleanup_job_name("r" * 71)


def test_file_roots_on_the_models_pvc_are_mounted_writable() -> None:
    settings = TrainerSettings(**{**SETTINGS.__dict__, "models_pvc": "kubeloop-models"})
    container = build_cleanup_job(make_run(deleting=True), settings)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][2] == RUN_DIR
    assert {"name": "pvc-kubeloop-models", "mountPath": "/var/lib/kubeloop/models", "readOnly": False} in container["volumeMounts"]


def training_job(state: str) -> dict[str, Any]:
    conditions = {
        "running": [],
        "complete": [{"type": "Complete", "status": "True"}],
        "failed": [{"type": "Failed", "status": "True"}],
    }[state]
    return {"metadata": {"name": "churn-1-train"}, "status": {"conditions": conditions}}


def trainer_pod(phase: str, name: str = "churn-1-train-abc") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase}}


def test_a_run_deleted_while_it_trains_stops_the_trainer_before_any_cleanup() -> None:
    run = make_run(deleting=True, phase="Training", model=None)
    # Given the training Job still runs: it is deleted first, and nothing is cleaned yet.
    stop = decide_cleanup(
        run, [], None, [], SETTINGS,
        training_job=training_job("running"), training_pods=[trainer_pod("Running")],
    )
    assert stop.action == Action.STOP_TRAINING
    assert stop.delete_job == "churn-1-train"
    assert stop.create_job is None and stop.finalizers is None
    assert [e.reason for e in stop.events] == ["StoppingTraining"]
    assert "churn-1-train" in stop.message and RUN_DIR in stop.message
    # The same state again posts no second event.
    again = decide_cleanup(
        make_run(deleting=True, phase="Training", model=None, message=stop.message), [], None, [],
        SETTINGS, training_job=training_job("running"),
    )
    assert again.action == Action.STOP_TRAINING and again.events == []
    # When the Job is gone but its pod still terminates: wait, naming the pod.
    wait = decide_cleanup(run, [], None, [], SETTINGS, training_pods=[trainer_pod("Running")])
    assert wait.action == Action.WAIT_FOR_TRAINING
    assert wait.delete_job is None and wait.create_job is None and wait.events == []
    assert "churn-1-train-abc" in wait.message
    # When no trainer is left: the cleanup Job starts.
    gone = decide_cleanup(run, [], None, [], SETTINGS, training_pods=[trainer_pod("Failed")])
    assert gone.action == Action.CREATE_JOB


@pytest.mark.parametrize("state", ["complete", "failed"])
def test_a_finished_training_job_is_left_alone(state: str) -> None:
    decision = decide_cleanup(
        make_run(deleting=True), [], None, [], SETTINGS,
        training_job=training_job(state), training_pods=[trainer_pod("Succeeded")],
    )
    assert decision.action == Action.CREATE_JOB
    assert decision.delete_job is None
