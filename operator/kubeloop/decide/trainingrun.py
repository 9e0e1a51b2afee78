"""What a TrainingRun should look like next, given its Job and pods. Pure: no I/O, no clock.

The controller reads the run, its Job and the Job's pods, calls :func:`decide`, then applies
what comes back. Everything here is a function of its arguments, so the whole life of a run
is covered by table tests without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kubeloop.api.conditions import ConditionType, Reason
from kubeloop.decide.common import Event, set_wire_condition, wire_time
from kubeloop.resources.trainingjob import (
    EXIT_DATA_VALIDATION,
    EXIT_GATE,
    TRAINER_CONTAINER,
    Champion,
    TrainerSettings,
    build_training_job,
    job_name,
)
from kubeloop.training.result import (
    EXIT_UNAVAILABLE,
    REASON_CHAMPION_UNAVAILABLE,
    REASON_DATA_UNAVAILABLE,
    REASON_ESTIMATOR_NOT_ALLOWED,
    REASON_FIT_FAILED,
    REASON_SPEC_INVALID,
    REASON_STORAGE_FAILED,
    TrainingResult,
    parse_result,
)
from kubeloop.trust.estimators import EstimatorNotAllowedError, EstimatorSpecError, check_spec_paths
from kubeloop.trust.images import IMAGE_NOT_ALLOWED, ImagePolicy
from kubeloop.trust.ownership import RESOURCE_CONFLICT

PENDING, TRAINING, SUCCEEDED, FAILED = "Pending", "Training", "Succeeded", "Failed"
TERMINAL_PHASES = {SUCCEEDED, FAILED}
MAX_TRIALS_IN_STATUS = 100

REASON_CHAMPION_NOT_FOUND = "ChampionNotFound"

LOWER_IS_BETTER = {"rmse", "mae", "log_loss"}

# The trainer's own reasons for a TrainingFailed, each with what to do about it. A failed run's
# condition carries the trainer's reason when it is one of these; the termination message is
# written by a pod, so any other reason reads as TrainerFailed.
TRAINER_FAILURE_HINTS: dict[str, str] = {
    REASON_SPEC_INVALID: "fix the spec field the message names and create a new run (a run's spec "
                         "cannot change)",
    REASON_ESTIMATOR_NOT_ALLOWED: "name an estimator class under the operator's allowed prefixes "
                                  "(chart value training.allowedEstimatorPrefixes) in a new run",
    REASON_FIT_FAILED: "the estimator raised on this data with these params; see {logs}",
    REASON_CHAMPION_UNAVAILABLE: "the champion's model could not be read, trusted or scored on "
                                 "this holdout; see {logs}",
    REASON_DATA_UNAVAILABLE: "check spec.data.source and its credentials (spec.credentials)",
    REASON_STORAGE_FAILED: "check that the output storage (spec.output.storageUri) is reachable "
                           "and writable",
}


@dataclass
class Decision:
    """What the controller must do: create the Job (if any), write status, post events."""

    status: dict[str, Any]
    create_job: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass(frozen=True)
class Observed:
    """The run's children as last read from the API server."""

    job: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    conflict: str | None = None
    """A Job with the run's Job name exists but is not the run's (kubeloop.trust.ownership):
    its message; ``job`` is then None and nothing is created."""


# --- reading the children ---------------------------------------------------------------------


def trainer_result(pod: Mapping[str, Any]) -> TrainingResult | None:
    """The result `kubeloop train` left in its termination message, if any.

    With ``FallbackToLogsOnError`` a crashed trainer's message is its log tail, not JSON:
    that reads as "no result", and the failure is then explained from the exit code.
    """
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != TRAINER_CONTAINER:
            continue
        terminated = (status.get("state") or {}).get("terminated") or {}
        message = (terminated.get("message") or "").strip()
        if not message.startswith("{"):
            return None
        try:
            return parse_result(message)
        except ValidationError:
            return None
    return None


def terminated_exit_code(pod: Mapping[str, Any]) -> int | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated is not None:
                return int(terminated.get("exitCode", 0))
    return None


def job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            found: Mapping[str, Any] = condition
            return found
    return None


def pending_problem(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """Why the trainer pod cannot start, in words that say what to do."""
    for pod in pods:
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                return (
                    Reason.UNSCHEDULABLE,
                    "the training pod cannot be scheduled: "
                    f"{condition.get('message', 'no node fits')}; lower spec.resources or check "
                    "spec.nodeSelector / spec.tolerations",
                )
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in {"ErrImagePull", "ImagePullBackOff", "InvalidImageName"}:
                return (
                    Reason.IMAGE_PULL_FAILED,
                    f"image {container.get('image')!r} cannot be pulled ({waiting['reason']}): "
                    "check spec.image or the operator's runtime image and pull secrets",
                )
    return None


def trial_index(pod: Mapping[str, Any]) -> int | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    index = annotations.get("batch.kubernetes.io/job-completion-index")
    return int(index) if index is not None else None


def latest_results(pods: Sequence[Mapping[str, Any]]) -> dict[int, TrainingResult]:
    """The newest trainer result per trial index (index 0 for a run without a sweep)."""
    def created(pod: Mapping[str, Any]) -> str:
        return str((pod.get("metadata") or {}).get("creationTimestamp") or "")

    results: dict[int, TrainingResult] = {}
    for pod in sorted(pods, key=created):
        result = trainer_result(pod)
        if result is None:
            continue
        index = trial_index(pod)
        results[index if index is not None else 0] = result
    return results


def metric_is_better(metric: str, candidate: float, incumbent: float) -> bool:
    return candidate < incumbent if metric in LOWER_IS_BETTER else candidate > incumbent


def best_trial(metric: str, trials: Mapping[int, TrainingResult]) -> int | None:
    """The trial with the best value of the evaluation metric among those that made a model."""
    best: int | None = None
    best_value = 0.0
    for index in sorted(trials):
        value = trials[index].metrics.get(metric)
        if value is None or not trials[index].sha256:
            continue
        if best is None or metric_is_better(metric, value, best_value):
            best, best_value = index, value
    return best


# --- the decision -----------------------------------------------------------------------------


def model_block(result: TrainingResult) -> dict[str, Any]:
    """``status.model`` from a trainer result: the lineage from data to artifact."""
    block: dict[str, Any] = {
        "uri": result.uri or "",
        "sha256": result.sha256 or "",
        "metrics": result.metrics,
        "dataFingerprint": result.data_fingerprint or "",
        "profileUri": result.profile_uri or "",
        "reportUri": result.report_uri or "",
        "gates": [
            {
                "name": gate.name,
                "passed": gate.passed,
                "message": gate.message or f"{gate.metric}={gate.value} (required {gate.required})",
                **({"value": gate.value} if gate.value is not None else {}),
                **({"threshold": gate.required} if gate.required is not None else {}),
            }
            for gate in result.gates
        ],
    }
    if result.champion_metrics is not None:
        block["championMetrics"] = result.champion_metrics
    return block


def _format_metric(metric: str, metrics: Mapping[str, Any]) -> str:
    value = metrics.get(metric)
    return f"{metric}={value:.4g}" if isinstance(value, int | float) else ""


def estimator_path_refusal(spec: Mapping[str, Any], prefixes: Sequence[str]) -> str | None:
    """The string part of :mod:`kubeloop.trust.estimators` for every estimator path of a spec
    (model, nested params, sweep grid); imports nothing. The controller adds the full verdict."""
    model = spec.get("model") or {}
    sweep = spec.get("sweep") or {}
    try:
        check_spec_paths(str(model.get("estimator", "")), model.get("params"), prefixes, sweep.get("grid"))
    except (EstimatorNotAllowedError, EstimatorSpecError) as exc:
        return str(exc)
    return None


def decide(
    run: Mapping[str, Any],
    observed: Observed,
    settings: TrainerSettings,
    now: datetime,
    champion: Champion | None = None,
    champion_missing: str | None = None,
    estimator_refusal: str | None = None,
) -> Decision:
    """Next status of a run (and the Job to create, if it has none yet).

    ``estimator_refusal`` is :func:`kubeloop.trust.estimators.spec_refusal`'s verdict on the
    spec, which imports the named modules and so is the controller's to obtain; without it only
    the string check (:func:`estimator_path_refusal`) is made here.
    """
    spec: Mapping[str, Any] = run["spec"]
    generation = int(run["metadata"].get("generation") or 1)
    old: dict[str, Any] = dict(run.get("status") or {})
    status: dict[str, Any] = {**old, "observedGeneration": generation}
    conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
    events: list[Event] = []
    now_text = wire_time(now)
    metric = (spec.get("evaluation") or {}).get("metric") or "accuracy"

    def transition(phase: str, ready: str, reason: str, message: str, warning: bool = False) -> None:
        nonlocal conditions
        if old.get("phase") != phase or (status.get("message") != message and warning):
            events.append(Event("Warning" if warning else "Normal", reason, message))
        status["phase"] = phase
        status["message"] = message
        conditions = set_wire_condition(conditions, ConditionType.READY, ready, reason, message, now, generation)
        progressing = "True" if phase not in TERMINAL_PHASES else "False"
        conditions = set_wire_condition(
            conditions, ConditionType.PROGRESSING, progressing, reason, message, now, generation
        )
        if warning:
            status["lastFailure"] = {"reason": reason, "message": message, "time": now_text}

    if old.get("phase") in TERMINAL_PHASES:
        # A finished run is a record: nothing moves it any more (its Job may be gone by TTL).
        return Decision(status=old)

    if observed.job is None:
        refusal = estimator_refusal or estimator_path_refusal(spec, settings.allowed_estimator_prefixes)
        if refusal is not None:
            transition(FAILED, "False", REASON_ESTIMATOR_NOT_ALLOWED, refusal, warning=True)
            status["completionTime"] = now_text
            status["conditions"] = conditions
            return Decision(status=status, events=events)
        image_problem = ImagePolicy.from_settings(settings.image, settings.allowed_images).problem(
            "spec.image", spec.get("image")
        )
        if image_problem is not None:
            transition(FAILED, "False", IMAGE_NOT_ALLOWED, image_problem, warning=True)
            status["completionTime"] = now_text
            status["conditions"] = conditions
            return Decision(status=status, events=events)
        if observed.conflict is not None:
            # Not adopted, not replaced: the run waits (the resync looks again) until the
            # object is renamed or removed.
            transition(PENDING, "False", RESOURCE_CONFLICT, observed.conflict, warning=True)
            status["conditions"] = conditions
            return Decision(status=status, events=events)
        if champion_missing:
            events.append(Event("Normal", REASON_CHAMPION_NOT_FOUND, champion_missing))
        job = build_training_job(run, settings, champion)
        status["jobName"] = job["metadata"]["name"]
        if champion is not None:
            status["champion"] = {"uri": champion.uri, "sha256": champion.sha256, "source": champion.source}
        transition(PENDING, "False", Reason.JOB_CREATED, f"training Job {job['metadata']['name']} created")
        status["conditions"] = conditions
        return Decision(status=status, create_job=job, events=events, requeue_after=5.0)

    existing_job: Mapping[str, Any] = observed.job
    status["jobName"] = existing_job["metadata"]["name"]
    job_status = existing_job.get("status") or {}
    if job_status.get("startTime"):
        status.setdefault("startTime", job_status["startTime"])

    results = latest_results(observed.pods)
    sweep = spec.get("sweep")
    if sweep:
        status["trials"] = [
            {
                "index": index,
                "phase": "Succeeded" if result.status == "Succeeded" else "Failed",
                "params": result.params,
                "metrics": result.metrics,
                "uri": result.uri or "",
            }
            for index, result in sorted(results.items())
        ][:MAX_TRIALS_IN_STATUS]

    complete = job_condition(existing_job, "Complete")
    failed = job_condition(existing_job, "Failed")
    if complete is None and failed is None:
        problem = pending_problem(observed.pods)
        if problem is not None:
            transition(PENDING, "False", problem[0], problem[1], warning=True)
        elif job_status.get("active") or job_status.get("ready"):
            done = len(results)
            progress = f" ({done}/{existing_job['spec'].get('completions', 1)} trials done)" if sweep else ""
            transition(TRAINING, "False", Reason.TRAINING, f"training{progress}")
        else:
            transition(PENDING, "False", Reason.JOB_CREATED, f"waiting for the pod of Job {existing_job['metadata']['name']}")
        status["conditions"] = conditions
        return Decision(status=status, events=events, requeue_after=None)

    chosen_index = best_trial(metric, results) if sweep else (0 if 0 in results else None)
    result = results.get(chosen_index) if chosen_index is not None else None
    if sweep and chosen_index is not None:
        status["bestTrial"] = chosen_index
    completion = (complete or failed or {}).get("lastTransitionTime") or now_text
    status["completionTime"] = job_status.get("completionTime") or completion

    if result is not None and result.sha256:
        status["model"] = model_block(result)
        status["primaryMetric"] = _format_metric(metric, result.metrics)

    if complete is not None and result is not None and result.status == "Succeeded":
        summary = status.get("primaryMetric") or "model stored"
        trial = f" (best of {len(results)} trials: #{chosen_index})" if sweep else ""
        transition(SUCCEEDED, "True", Reason.SUCCEEDED, f"{summary}{trial}; sha256 {(result.sha256 or '')[:12]}")
    elif complete is not None and result is None:
        transition(
            FAILED, "False", Reason.TRAINER_FAILED,
            "the training Job completed but left no result in its termination message; "
            "check `kubectl logs job/" + existing_job["metadata"]["name"] + "`",
            warning=True,
        )
    else:
        # A sweep fails by its failed trials: the first one's result says why (a run without a
        # sweep has one result, the same).
        failing = next((r for _, r in sorted(results.items()) if r.status != "Succeeded"), result)
        reason, message = _failure(existing_job, failed, failing, observed.pods)
        transition(FAILED, "False", reason, message, warning=True)
    status["conditions"] = conditions
    return Decision(status=status, events=events)


def _failure(
    job: Mapping[str, Any],
    failed: Mapping[str, Any] | None,
    result: TrainingResult | None,
    pods: Sequence[Mapping[str, Any]],
) -> tuple[str, str]:
    """The most specific reason a run failed, with what the user should do about it."""
    exit_codes = [code for code in (terminated_exit_code(p) for p in pods) if code]
    trainer_says = result.message if result is not None else ""
    result_status = result.status if result is not None else None
    if result_status == "GateFailed" or EXIT_GATE in exit_codes:
        return Reason.GATE_FAILED, (
            f"the model did not pass its evaluation gate: {trainer_says or 'see status.model.gates'}; "
            "the champion stays"
        )
    if result_status == "DataValidationFailed" or EXIT_DATA_VALIDATION in exit_codes:
        return Reason.DATA_VALIDATION_FAILED, (
            f"data validation failed: {trainer_says or 'see the Job logs'}; fix the data or spec.validation"
        )
    job_reason = (failed or {}).get("reason", "")
    if job_reason == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, (
            f"training ran longer than spec.activeDeadlineSeconds={job['spec'].get('activeDeadlineSeconds')}; "
            "raise it or train on less data"
        )
    code = f" (exit code {exit_codes[-1]})" if exit_codes else ""
    detail = trainer_says or (failed or {}).get("message") or "the trainer failed"
    retried_out = job_reason in {"BackoffLimitExceeded", "FailedIndexes"}
    trainer_reason = result.reason if result is not None and result_status == "TrainingFailed" else ""
    if trainer_reason in TRAINER_FAILURE_HINTS:
        logs = f"`kubectl logs job/{job['metadata']['name']}`"
        after = " after all retries" if retried_out and result is not None and result.exit_code == EXIT_UNAVAILABLE else ""
        hint = TRAINER_FAILURE_HINTS[trainer_reason].format(logs=logs)
        return trainer_reason, f"training failed{after}{code}: {detail}; {hint}"
    if retried_out:
        return Reason.BACKOFF_LIMIT_EXCEEDED, (
            f"training failed after all retries{code}: {detail}; see `kubectl logs job/{job['metadata']['name']}`"
        )
    return Reason.TRAINER_FAILED, f"training failed{code}: {detail}"


def champion_from_candidates(
    model_name: str,
    deployment: Mapping[str, Any] | None,
    runs: Sequence[Mapping[str, Any]],
    exclude: str,
) -> Champion | None:
    """The model a new run must beat: what the named deployment serves as stable, else the
    latest Succeeded run of the same model name."""
    if deployment is not None:
        stable = (deployment.get("status") or {}).get("stable") or {}
        if stable.get("uri") and stable.get("sha256"):
            return Champion(stable["uri"], stable["sha256"], f"ModelDeployment/{deployment['metadata']['name']}")
    succeeded = [
        r for r in runs
        if r["metadata"]["name"] != exclude
        and (r.get("spec") or {}).get("model", {}).get("name") == model_name
        and (r.get("status") or {}).get("phase") == SUCCEEDED
        and ((r.get("status") or {}).get("model") or {}).get("sha256")
    ]
    if not succeeded:
        return None
    latest = max(succeeded, key=lambda r: str((r.get("status") or {}).get("completionTime") or ""))
    model = latest["status"]["model"]
    return Champion(model["uri"], model["sha256"], f"TrainingRun/{latest['metadata']['name']}")


__all__ = ["Decision", "Event", "Observed", "champion_from_candidates", "decide", "job_name"]
