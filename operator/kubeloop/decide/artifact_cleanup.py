"""What to do about a TrainingRun's artifacts when it is deleted (``spec.cleanupPolicy``). Pure.

``Delete`` runs carry our own finalizer, :data:`FINALIZER` (not kopf's ``kubeloop.io/finalizer``,
which kopf manages itself). When such a run is deleted the operator, in this order, stops its
training Job if it still runs and waits until no trainer pod is left (a trainer that kept
running could write into the directory after it was deleted), waits while any ModelDeployment
in the namespace serves (stable or canary) or references the run's model, runs the cleanup
Job (``kubeloop artifacts delete``), and removes the finalizer once the Job succeeded. A run that never produced a model has nothing to delete. Every step is read from
the objects as they are, so a crash between two steps only repeats a read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from kubeloop.decide.common import Event
from kubeloop.resources.cleanupjob import CLEANUP_CONTAINER, build_cleanup_job, cleanup_job_name
from kubeloop.resources.trainingjob import TrainerSettings, run_directory_uri

FINALIZER = "kubeloop.io/artifact-cleanup"
TERMINAL_PHASES = {"Succeeded", "Failed"}

REASON_STOPPING_TRAINING = "StoppingTraining"
REASON_ARTIFACTS_IN_USE = "ArtifactsInUse"
REASON_CLEANUP_STARTED = "CleanupStarted"
REASON_ARTIFACTS_DELETED = "ArtifactsDeleted"
REASON_CLEANUP_FAILED = "CleanupFailed"


class Action(StrEnum):
    NOTHING = "Nothing"
    ADD_FINALIZER = "AddFinalizer"
    STOP_TRAINING = "StopTraining"
    WAIT_FOR_TRAINING = "WaitForTraining"
    WAIT_IN_USE = "WaitInUse"
    CREATE_JOB = "CreateJob"
    WAIT_FOR_JOB = "WaitForJob"
    REMOVE_FINALIZER = "RemoveFinalizer"
    JOB_FAILED = "JobFailed"


@dataclass
class CleanupDecision:
    """What the controller must do about the run's artifacts.

    ``finalizers`` is the run's new finalizer list when it must change; ``delete_job`` names
    the training Job to delete (its pods with it); ``message`` is what the
    run's status.message should say while it is being deleted ("" leaves the status alone).
    Events are only those the controller must post now: a repeated reconcile in the same state
    (same ``message``) posts none.
    """

    action: Action
    finalizers: list[str] | None = None
    create_job: dict[str, Any] | None = None
    delete_job: str | None = None
    events: list[Event] = field(default_factory=list)
    message: str = ""


def wants_cleanup(run: Mapping[str, Any]) -> bool:
    return (run.get("spec") or {}).get("cleanupPolicy") == "Delete"


def has_finalizer(run: Mapping[str, Any]) -> bool:
    return FINALIZER in ((run.get("metadata") or {}).get("finalizers") or [])


def needs_cleanup_reconcile(run: Mapping[str, Any]) -> bool:
    """Whether the run still has work here: a finalizer to add, or a deletion to finish."""
    meta = run.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return has_finalizer(run)
    return wants_cleanup(run) and not has_finalizer(run)


def _served_by(deployment: Mapping[str, Any], run_name: str, model: Mapping[str, Any], directory: str) -> str | None:
    """How ``deployment`` uses the run's model, in words (None: it does not)."""
    spec_model = (deployment.get("spec") or {}).get("model") or {}
    if (spec_model.get("trainingRunRef") or {}).get("name") == run_name:
        return "spec.model.trainingRunRef names it"
    uri, sha256 = model.get("uri") or "", model.get("sha256") or ""

    def same_model(candidate: Mapping[str, Any]) -> bool:
        if candidate.get("trainingRun") == run_name:
            return True
        candidate_uri = candidate.get("uri") or candidate.get("storageUri") or ""
        if candidate_uri and (candidate_uri == uri or (directory and candidate_uri.startswith(directory + "/"))):
            return True
        return bool(sha256) and candidate.get("sha256") == sha256

    if same_model(spec_model):
        return "spec.model points at its artifact"
    status = deployment.get("status") or {}
    for track in ("stable", "canary"):
        if status.get(track) and same_model(status[track]):
            return f"it serves it as {track}"
    return None


def models_in_use(
    run: Mapping[str, Any], deployments: Sequence[Mapping[str, Any]], settings: TrainerSettings
) -> list[tuple[str, str]]:
    """The ModelDeployments (name, how) that serve or reference the run's model."""
    run_name = run["metadata"]["name"]
    model = (run.get("status") or {}).get("model") or {}
    directory = run_directory_uri(run, settings)
    found = []
    for deployment in deployments:
        how = _served_by(deployment, run_name, model, directory)
        if how is not None:
            found.append((deployment["metadata"]["name"], how))
    return sorted(found)


def job_finished(job: Mapping[str, Any]) -> str | None:
    """"Complete" or "Failed" once the Job has ended, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in {"Complete", "Failed"}:
            return str(condition["type"])
    return None


def cleanup_result(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest result `kubeloop artifacts delete` left in a pod's termination message."""
    def created(pod: Mapping[str, Any]) -> str:
        return str((pod.get("metadata") or {}).get("creationTimestamp") or "")

    for pod in sorted(pods, key=created, reverse=True):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != CLEANUP_CONTAINER:
                continue
            terminated = (status.get("state") or {}).get("terminated") or {}
            message = (terminated.get("message") or "").strip()
            if message.startswith("{"):
                try:
                    parsed = orjson.loads(message)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(parsed, dict):
                    return parsed
            elif message:
                return {"status": "Failed", "message": message[-500:]}
    return None


def decide_cleanup(
    run: Mapping[str, Any],
    deployments: Sequence[Mapping[str, Any]],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    settings: TrainerSettings,
    *,
    training_job: Mapping[str, Any] | None = None,
    training_pods: Sequence[Mapping[str, Any]] = (),
) -> CleanupDecision:
    """The next step for the run's artifacts (see the module doc).

    ``job`` and ``pods`` are the cleanup Job's; ``training_job`` and ``training_pods`` the run's
    own training Job and its pods, as they are now.
    """
    meta = run["metadata"]
    name = meta["name"]
    finalizers: list[str] = list(meta.get("finalizers") or [])
    status = run.get("status") or {}
    old_message = status.get("message") or ""

    if not meta.get("deletionTimestamp"):
        if wants_cleanup(run) and FINALIZER not in finalizers:
            return CleanupDecision(Action.ADD_FINALIZER, finalizers=[*finalizers, FINALIZER])
        return CleanupDecision(Action.NOTHING)
    if FINALIZER not in finalizers:
        return CleanupDecision(Action.NOTHING)
    without = [f for f in finalizers if f != FINALIZER]

    def once(type_: str, reason: str, message: str) -> list[Event]:
        return [] if message == old_message else [Event(type_, reason, message)]

    directory = run_directory_uri(run, settings)
    has_model = bool((status.get("model") or {}).get("uri"))
    if not wants_cleanup(run):
        return CleanupDecision(Action.REMOVE_FINALIZER, finalizers=without)
    if training_job is not None and job_finished(training_job) is None:
        training_ref = training_job["metadata"]["name"]
        message = (
            f"stopping the training Job {training_ref} before deleting the artifacts at "
            f"{directory}: a trainer left running could write there afterwards"
        )
        return CleanupDecision(
            Action.STOP_TRAINING, delete_job=training_ref,
            events=once("Normal", REASON_STOPPING_TRAINING, message), message=message,
        )
    running = sorted(
        pod["metadata"]["name"] for pod in training_pods
        if (pod.get("status") or {}).get("phase") not in {"Succeeded", "Failed"}
    )
    if running:
        message = (
            f"waiting for the trainer pod(s) {', '.join(running)} to stop before deleting the "
            f"artifacts at {directory}"
        )
        return CleanupDecision(Action.WAIT_FOR_TRAINING, message=message)
    if not directory or (not has_model and status.get("phase") in TERMINAL_PHASES and job is None):
        message = "the run produced no model: no artifacts to delete"
        return CleanupDecision(
            Action.REMOVE_FINALIZER, finalizers=without,
            events=[Event("Normal", REASON_ARTIFACTS_DELETED, message)],
        )

    finished = job_finished(job) if job is not None else None
    if finished != "Complete":
        users = models_in_use(run, deployments, settings)
        if users:
            named = "; ".join(f"md/{user} ({how})" for user, how in users)
            message = (
                f"artifacts at {directory} are in use by {named}: they are deleted once no "
                "ModelDeployment serves or references them"
            )
            return CleanupDecision(
                Action.WAIT_IN_USE, events=once("Normal", REASON_ARTIFACTS_IN_USE, message), message=message
            )

    if job is None:
        created = build_cleanup_job(run, settings)
        job_ref = created["metadata"]["name"]
        message = f"deleting the artifacts at {directory} (Job {job_ref})"
        return CleanupDecision(
            Action.CREATE_JOB, create_job=created,
            events=once("Normal", REASON_CLEANUP_STARTED, message), message=message,
        )

    job_ref = job["metadata"]["name"]
    result = cleanup_result(pods) or {}
    if finished is None:
        return CleanupDecision(
            Action.WAIT_FOR_JOB, message=f"deleting the artifacts at {directory} (Job {job_ref})"
        )
    if finished == "Complete":
        said = result.get("message") or f"deleted {directory}"
        return CleanupDecision(
            Action.REMOVE_FINALIZER, finalizers=without,
            events=[Event("Normal", REASON_ARTIFACTS_DELETED, str(said))],
        )

    reason = result.get("message") or ((job.get("status") or {}).get("conditions") or [{}])[-1].get("message") \
        or "the cleanup Job failed"
    index = finalizers.index(FINALIZER)
    advice = (
        "fix the storage access (or the directory) and the operator retries when the Job expires "
        f"(ttlSecondsAfterFinished) or at once after `kubectl delete job/{job_ref} -n {meta['namespace']}`"
        if result.get("status") != "Refused" else
        "nothing was deleted; remove what `kubeloop train` did not write, then "
        f"`kubectl delete job/{job_ref} -n {meta['namespace']}` to retry"
    )
    message = (
        f"deleting the artifacts at {directory} failed: {reason}; {advice}; or keep the artifacts "
        f"and let the run go: `kubectl patch tr/{name} -n {meta['namespace']} --type=json "
        f"-p '[{{\"op\":\"remove\",\"path\":\"/metadata/finalizers/{index}\"}}]'`"
    )
    return CleanupDecision(
        Action.JOB_FAILED, events=once("Warning", REASON_CLEANUP_FAILED, message), message=message
    )


__all__ = [
    "FINALIZER",
    "Action",
    "CleanupDecision",
    "cleanup_job_name",
    "decide_cleanup",
    "models_in_use",
    "needs_cleanup_reconcile",
]
