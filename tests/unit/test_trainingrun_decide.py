"""Table tests of the TrainingRun decision: every Job/pod state a run can meet."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import pytest

from kubeloop.api.trainingrun import Phase
from kubeloop.decide.trainingrun import (
    TRAINER_FAILURE_HINTS,
    Observed,
    best_trial,
    champion_from_candidates,
    decide,
)
from kubeloop.resources import trainingjob
from kubeloop.resources.trainingjob import (
    Champion,
    TrainerSettings,
    build_training_job,
    sweep_combinations,
)
from kubeloop.training import result as trainer_result
from kubeloop.training.result import Gate, TrainingResult, render_result

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
SETTINGS = TrainerSettings(
    image="kubeloop:test",
    image_pull_policy="Never",
    default_storage_uri="file:///var/lib/kubeloop/models",
    allowed_estimator_prefixes=("sklearn.",),
    job_ttl_seconds=3600,
)


def make_run(status: dict[str, Any] | None = None, **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "churn", "estimator": "sklearn.linear_model.LogisticRegression", "task": "classification"},
        "data": {"source": "sklearn://breast_cancer"},
        "evaluation": {"metric": "accuracy", "threshold": 0.8},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "churn-1", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": spec,
        **({"status": status} if status else {}),
    }


def make_job(*, complete: bool = False, failed_reason: str | None = None, active: int = 0, **spec: Any) -> dict[str, Any]:
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-23T11:59:00Z"})
    if failed_reason:
        conditions.append({"type": "Failed", "status": "True", "reason": failed_reason, "message": "job failed"})
    return {
        "metadata": {"name": "churn-1-train"},
        "spec": {"completions": 1, **spec},
        "status": {"startTime": "2026-11-23T11:58:00Z", "active": active, "conditions": conditions},
    }


def result(status: str = "Succeeded", exit_code: int = 0, accuracy: float = 0.95, trial: int | None = None, **extra: Any) -> TrainingResult:
    return TrainingResult(
        status=status,  # type: ignore[arg-type]
        exit_code=exit_code,
        uri="file:///var/lib/kubeloop/models/churn/churn-1/model.skops",
        sha256="ab" * 32,
        metric="accuracy",
        metrics={"accuracy": accuracy, "f1": accuracy - 0.01},
        data_fingerprint="cd" * 32,
        profile_uri="file:///var/lib/kubeloop/models/churn/churn-1/profile.json",
        trial=trial,
        **extra,
    )


def make_pod(
    outcome: TrainingResult | None = None,
    *,
    exit_code: int | None = None,
    raw_message: str | None = None,
    index: int | None = None,
    created: str = "2026-11-23T11:58:00Z",
    waiting: str | None = None,
    unschedulable: bool = False,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "trainer", "image": "kubeloop:test", "state": {}}
    if outcome is not None or raw_message is not None or exit_code is not None:
        message = raw_message if raw_message is not None else render_result(outcome).decode() if outcome else ""
        code = exit_code if exit_code is not None else (outcome.exit_code if outcome else 1)
        container["state"] = {"terminated": {"exitCode": code, "message": message}}
    elif waiting:
        container["state"] = {"waiting": {"reason": waiting}}
    else:
        container["state"] = {"running": {}}
    conditions = []
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."})
    annotations = {"batch.kubernetes.io/job-completion-index": str(index)} if index is not None else {}
    return {
        "metadata": {"name": f"p-{index}-{created}", "creationTimestamp": created, "annotations": annotations},
        "status": {"containerStatuses": [container], "conditions": conditions},
    }


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


# --- the table -------------------------------------------------------------------------------

CASES: list[tuple[str, dict[str, Any], Observed, str, str, str]] = [
    # id, run overrides, observed, phase, Ready status, Ready reason
    ("job-running", {}, Observed(make_job(active=1), [make_pod()]), "Training", "False", "Training"),
    ("job-waiting-for-pod", {}, Observed(make_job(), []), "Pending", "False", "JobCreated"),
    ("unschedulable", {}, Observed(make_job(), [make_pod(unschedulable=True)]), "Pending", "False", "Unschedulable"),
    ("image-pull", {}, Observed(make_job(), [make_pod(waiting="ImagePullBackOff")]), "Pending", "False", "ImagePullFailed"),
    ("succeeded", {}, Observed(make_job(complete=True), [make_pod(result())]), "Succeeded", "True", "Succeeded"),
    (
        "complete-without-result",
        {},
        Observed(make_job(complete=True), [make_pod(raw_message="Traceback: boom", exit_code=0)]),
        "Failed", "False", "TrainerFailed",
    ),
    (
        "data-validation",
        {},
        Observed(
            make_job(failed_reason="PodFailurePolicy"),
            [make_pod(result("DataValidationFailed", 2, message="column 'age': 12% missing > 5%"))],
        ),
        "Failed", "False", "DataValidationFailed",
    ),
    (
        "gate-failed",
        {},
        Observed(
            make_job(failed_reason="PodFailurePolicy"),
            [make_pod(result("GateFailed", 3, accuracy=0.7, gates=[Gate(name="threshold", passed=False, metric="accuracy", value=0.7, required=0.8)]))],
        ),
        "Failed", "False", "GateFailed",
    ),
    (
        "deadline",
        {"activeDeadlineSeconds": 60},
        Observed(make_job(failed_reason="DeadlineExceeded", activeDeadlineSeconds=60), [make_pod()]),
        "Failed", "False", "DeadlineExceeded",
    ),
    (
        "backoff-crash",
        {},
        Observed(
            make_job(failed_reason="BackoffLimitExceeded"),
            [make_pod(raw_message="MemoryError", exit_code=137, created="a"), make_pod(raw_message="MemoryError", exit_code=137, created="b")],
        ),
        "Failed", "False", "BackoffLimitExceeded",
    ),
    # The trainer's own reason is the run's: at once for a final exit code (4: the Job's
    # podFailurePolicy fails it on the first pod), after all retries for a transient one (5).
    *(
        (
            f"trainer-{reason}",
            {},
            Observed(
                make_job(failed_reason="PodFailurePolicy" if code == 4 else "BackoffLimitExceeded"),
                [make_pod(result("TrainingFailed", code, reason=reason, message="what the trainer said"),
                          created=created) for created in (("a",) if code == 4 else ("a", "b", "c"))],
            ),
            "Failed", "False", reason,
        )
        for reason, code in (
            ("SpecInvalid", 4), ("EstimatorNotAllowed", 4), ("FitFailed", 4), ("ChampionUnavailable", 4),
            ("ChampionUnavailable", 5), ("DataUnavailable", 5), ("StorageFailed", 5),
        )
    ),
    # A termination message is written by a pod: a reason outside the trainer's set is not repeated.
    (
        "trainer-unknown-reason",
        {},
        Observed(make_job(failed_reason="PodFailurePolicy"),
                 [make_pod(result("TrainingFailed", 4, reason="Succeeded", message="all good, really"))]),
        "Failed", "False", "TrainerFailed",
    ),
    (
        "trainer-reason-not-a-reason",
        {},
        Observed(make_job(failed_reason="BackoffLimitExceeded"),
                 [make_pod(result("TrainingFailed", 5, reason="Kubeloop OK; see https://x.example"))]),
        "Failed", "False", "BackoffLimitExceeded",
    ),
    (
        "trainer-reason-of-another-status",
        {},
        Observed(make_job(failed_reason="BackoffLimitExceeded"),
                 [make_pod(result("Succeeded", 1, reason="SpecInvalid"), exit_code=1)]),
        "Failed", "False", "BackoffLimitExceeded",
    ),
]


@pytest.mark.parametrize(("case", "overrides", "observed", "phase", "ready_status", "reason"), CASES, ids=[c[0] for c in CASES])
def test_decide_follows_the_job(
    case: str, overrides: dict[str, Any], observed: Observed, phase: str, ready_status: str, reason: str
) -> None:
    decision = decide(make_run(status={"phase": "Pending"}, **overrides), observed, SETTINGS, NOW)
    assert decision.create_job is None
    assert decision.status["phase"] == phase
    assert ready(decision.status)["status"] == ready_status
    assert ready(decision.status)["reason"] == reason
    assert decision.status["observedGeneration"] == 1
    if phase == "Failed":
        assert decision.status["lastFailure"]["reason"] == reason
        assert decision.events[-1].type == "Warning"
        assert decision.events[-1].reason == reason
        assert decision.status["completionTime"]


def test_a_trainer_reason_says_whether_it_was_retried_and_what_to_do() -> None:
    at_once = decide(make_run(status={"phase": "Pending"}), Observed(
        make_job(failed_reason="PodFailurePolicy"),
        [make_pod(result("TrainingFailed", 4, reason="SpecInvalid",
                         message="spec.data.source file:///etc/passwd is outside the data roots"))],
    ), SETTINGS, NOW).status
    assert at_once["message"] == (
        "training failed (exit code 4): spec.data.source file:///etc/passwd is outside the data roots; "
        "fix the spec field the message names and create a new run (a run's spec cannot change)"
    )
    retried = decide(make_run(status={"phase": "Pending"}), Observed(
        make_job(failed_reason="BackoffLimitExceeded"),
        [make_pod(result("TrainingFailed", 5, reason="StorageFailed", message="cannot write s3://m/x"),
                  created=created) for created in ("a", "b")],
    ), SETTINGS, NOW).status
    assert retried["lastFailure"]["reason"] == "StorageFailed"
    assert retried["message"].startswith("training failed after all retries (exit code 5): cannot write s3://m/x; ")
    assert "spec.output.storageUri" in retried["message"]


def test_every_reason_the_trainer_fails_with_is_known_and_every_known_one_is_the_trainers() -> None:
    assert set(TRAINER_FAILURE_HINTS) == trainer_result.FAILURE_REASONS - {"DataValidationFailed", "GateFailed"}


def test_the_job_fails_at_once_on_the_final_exit_codes_and_retries_the_rest() -> None:
    # The builder keeps its own copy of the trainer's codes (it does not import the trainer).
    assert trainingjob.FINAL_EXIT_CODES == trainer_result.FINAL_EXIT_CODES == (2, 3, 4)
    assert trainingjob.EXIT_UNAVAILABLE == trainer_result.EXIT_UNAVAILABLE == 5
    for overrides, action in (({}, "FailJob"), ({"sweep": {"grid": {"C": [0.1, 1.0]}}}, "FailIndex")):
        job = build_training_job(make_run(**overrides), SETTINGS)
        rule = job["spec"]["podFailurePolicy"]["rules"][0]
        assert rule["action"] == action
        assert rule["onExitCodes"] == {"containerName": "trainer", "operator": "In", "values": [2, 3, 4]}
        assert 5 not in rule["onExitCodes"]["values"]


def test_success_records_the_lineage() -> None:
    decision = decide(make_run(status={"phase": "Training"}), Observed(make_job(complete=True), [make_pod(result())]), SETTINGS, NOW)
    model = decision.status["model"]
    assert model["sha256"] == "ab" * 32
    assert model["dataFingerprint"] == "cd" * 32
    assert model["profileUri"].endswith("profile.json")
    assert model["metrics"]["accuracy"] == pytest.approx(0.95)
    assert decision.status["primaryMetric"] == "accuracy=0.95"
    assert decision.status["startTime"] == "2026-11-23T11:58:00Z"
    assert [e.reason for e in decision.events] == ["Succeeded"]


def test_gate_failure_message_says_the_champion_stays() -> None:
    gate_result = result("GateFailed", 3, accuracy=0.90, champion_metrics={"accuracy": 0.93}, message="minImprovement: 0.90 < champion 0.93")
    decision = decide(make_run(status={"phase": "Training"}), Observed(make_job(failed_reason="PodFailurePolicy"), [make_pod(gate_result)]), SETTINGS, NOW)
    assert "champion stays" in decision.status["message"]
    assert decision.status["model"]["championMetrics"] == {"accuracy": 0.93}


def test_new_run_creates_exactly_one_job_and_is_pending() -> None:
    decision = decide(make_run(), Observed(), SETTINGS, NOW)
    assert decision.create_job is not None
    assert decision.create_job["metadata"]["name"] == "churn-1-train"
    assert decision.status["phase"] == "Pending"
    assert decision.status["jobName"] == "churn-1-train"
    assert [e.reason for e in decision.events] == ["JobCreated"]
    # Same inputs, same Job: a crash between create and status write cannot make a second one.
    again = decide(make_run(), Observed(), SETTINGS, NOW)
    assert again.create_job == decision.create_job


ATTACK = "sklearn.utils._testing.assert_run_python_script_without_output"

# id, model overrides, sweep, the field the refusal names. Decided from the strings alone.
REFUSED_BY_PATH: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]] = [
    ("outside-the-package", {"estimator": "os.system"}, None, "spec.model.estimator 'os.system'"),
    ("package-boundary", {"estimator": "sklearn_evil.Model"}, None, "spec.model.estimator 'sklearn_evil.Model'"),
    ("nested-step", {"estimator": "sklearn.pipeline.Pipeline", "params": {
        "steps": [["s", {"estimator": "sklearn.preprocessing.StandardScaler"}],
                  ["m", {"estimator": "subprocess.Popen", "params": {"args": ["true"]}}]]}},
     None, "spec.model.params.steps[1][1].estimator 'subprocess.Popen'"),
    ("sweep-grid", {"estimator": "sklearn.multiclass.OneVsRestClassifier"},
     {"grid": {"estimator": [{"estimator": "builtins.exec"}]}}, "spec.sweep.grid.estimator[0].estimator"),
]


@pytest.mark.parametrize(
    ("model", "sweep", "field"), [case[1:] for case in REFUSED_BY_PATH], ids=[case[0] for case in REFUSED_BY_PATH]
)
def test_a_disallowed_estimator_path_fails_without_a_job(
    model: dict[str, Any], sweep: dict[str, Any] | None, field: str
) -> None:
    run = make_run(model={"name": "x", "task": "classification", **model}, **({"sweep": sweep} if sweep else {}))
    decision = decide(run, Observed(), SETTINGS, NOW)
    assert decision.create_job is None
    assert decision.status["phase"] == "Failed"
    assert decision.status["message"].startswith(field)
    assert "is not allowed" in decision.status["message"]
    assert ready(decision.status)["reason"] == "EstimatorNotAllowed"
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "EstimatorNotAllowed")]


def test_the_trust_verdict_refuses_what_the_strings_allow() -> None:
    # The attack's path passes any string check (it is under sklearn.); the controller's
    # verdict from kubeloop.trust.estimators is what refuses it, before any Job.
    run = make_run(model={"name": "x", "estimator": ATTACK, "task": "classification",
                          "params": {"source_code": "open('/tmp/pwned', 'w')"}})
    assert decide(run, Observed(), SETTINGS, NOW).create_job is not None  # strings alone: a Job
    verdict = f"spec.model.estimator {ATTACK!r} is not allowed: it is a function"
    decision = decide(run, Observed(), SETTINGS, NOW, estimator_refusal=verdict)
    assert decision.create_job is None
    assert decision.status["phase"] == "Failed"
    assert decision.status["message"] == verdict
    assert ready(decision.status)["reason"] == "EstimatorNotAllowed"
    assert decision.status["lastFailure"]["reason"] == "EstimatorNotAllowed"


def test_the_verdict_is_not_asked_once_the_job_exists() -> None:
    # A run whose Job exists is followed, not re-judged (the Job was created when it was allowed).
    decision = decide(make_run(), Observed(make_job(active=1), [make_pod()]), SETTINGS, NOW,
                      estimator_refusal="spec.model.estimator refused")
    assert decision.status["phase"] == "Training"


def test_finished_run_is_never_touched_again() -> None:
    finished = {"phase": "Succeeded", "conditions": [], "message": "done"}
    decision = decide(make_run(status=finished), Observed(), SETTINGS, NOW)
    assert decision.create_job is None
    assert decision.status == finished


def test_condition_transition_time_is_kept_while_status_holds() -> None:
    first = decide(make_run(status={"phase": "Pending"}), Observed(make_job(active=1), [make_pod()]), SETTINGS, NOW)
    later = NOW.replace(hour=13)
    second = decide(make_run(status=first.status), Observed(make_job(active=1), [make_pod()]), SETTINGS, later)
    assert ready(second.status)["lastTransitionTime"] == ready(first.status)["lastTransitionTime"]
    assert second.events == []  # no phase change, no new Event


# --- sweeps ----------------------------------------------------------------------------------

SWEEP = {"grid": {"C": [0.1, 1.0, 10.0], "penalty": ["l2", None]}, "parallelism": 2}


def test_sweep_job_is_indexed_over_every_combination() -> None:
    job = build_training_job(make_run(sweep=SWEEP) | {"metadata": make_run()["metadata"]}, SETTINGS)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 6
    assert job["spec"]["parallelism"] == 2
    assert job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailIndex"
    assert sweep_combinations(SWEEP["grid"])[0] == {"C": 0.1, "penalty": "l2"}
    assert len({str(c) for c in sweep_combinations(SWEEP["grid"])}) == 6


def test_sweep_picks_the_best_trial_and_lists_all() -> None:
    scores = [0.91, 0.97, 0.93, 0.89, 0.95, 0.90]
    pods = [make_pod(result(accuracy=s, trial=i), index=i) for i, s in enumerate(scores)]
    decision = decide(make_run(status={"phase": "Training"}, sweep=SWEEP), Observed(make_job(complete=True, completions=6), pods), SETTINGS, NOW)
    assert decision.status["phase"] == "Succeeded"
    assert decision.status["bestTrial"] == 1
    assert len(decision.status["trials"]) == 6
    assert decision.status["model"]["metrics"]["accuracy"] == pytest.approx(0.97)
    assert "best of 6 trials" in decision.status["message"]


def test_a_failed_sweep_says_why_its_trial_failed() -> None:
    pods = [
        make_pod(result(accuracy=0.93, trial=0), index=0),
        make_pod(result("TrainingFailed", 4, trial=1, reason="FitFailed",
                        message="fitting sklearn.svm.SVC failed: ValueError: gamma"), index=1),
    ]
    decision = decide(make_run(status={"phase": "Training"}, sweep=SWEEP),
                      Observed(make_job(failed_reason="FailedIndexes", completions=2), pods), SETTINGS, NOW)
    assert decision.status["phase"] == "Failed"
    assert decision.status["lastFailure"]["reason"] == "FitFailed"
    assert decision.status["message"].startswith("training failed (exit code 4): fitting sklearn.svm.SVC")


@pytest.mark.parametrize(
    ("metric", "values", "best"),
    [
        ("accuracy", [0.8, 0.9, 0.85], 1),
        ("rmse", [3.0, 2.0, 2.5], 1),
        ("log_loss", [0.3, 0.5, 0.2], 2),
        ("r2", [0.1, 0.1, 0.05], 0),  # ties keep the first
    ],
)
def test_best_trial_is_direction_aware(metric: str, values: list[float], best: int) -> None:
    trials = {
        i: TrainingResult(status="Succeeded", exit_code=0, sha256="x", metrics={metric: v}) for i, v in enumerate(values)
    }
    assert best_trial(metric, trials) == best


def test_latest_pod_of_an_index_wins_after_a_retry() -> None:
    pods = [
        make_pod(raw_message="oom", exit_code=137, index=0, created="2026-11-23T11:58:00Z"),
        make_pod(result(accuracy=0.9), index=0, created="2026-11-23T11:59:00Z"),
    ]
    decision = decide(make_run(status={"phase": "Training"}), Observed(make_job(complete=True), pods), SETTINGS, NOW)
    assert decision.status["phase"] == "Succeeded"


# --- champion --------------------------------------------------------------------------------


def test_champion_prefers_the_deployments_stable_model() -> None:
    deployment = {"metadata": {"name": "churn"}, "status": {"stable": {"uri": "s3://m/stable", "sha256": "11" * 32}}}
    runs = [{"metadata": {"name": "old"}, "spec": {"model": {"name": "churn"}}, "status": {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z", "model": {"uri": "s3://m/old", "sha256": "22" * 32}}}]
    assert champion_from_candidates("churn", deployment, runs, "new") == Champion("s3://m/stable", "11" * 32, "ModelDeployment/churn")
    assert champion_from_candidates("churn", None, runs, "new") == Champion("s3://m/old", "22" * 32, "TrainingRun/old")
    assert champion_from_candidates("other", None, runs, "new") is None
    assert champion_from_candidates("churn", None, runs, "old") is None


def test_champion_is_passed_to_the_trainer() -> None:
    champion = Champion("file:///var/lib/kubeloop/models/churn/r0/model.skops", "ee" * 32, "TrainingRun/r0")
    decision = decide(make_run(evaluation={"metric": "accuracy", "compareTo": "champion"}), Observed(), SETTINGS, NOW, champion)
    assert decision.create_job is not None
    args = decision.create_job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--champion-uri") + 1] == champion.uri
    assert args[args.index("--champion-sha256") + 1] == champion.sha256
    assert decision.status["champion"]["source"] == "TrainingRun/r0"


def test_every_documented_phase_is_reached_by_the_table_and_no_other() -> None:
    # The API's phase enum (the CRD, `kubectl explain`, the docs) lists only phases a decision
    # really sets: a phase no observed state leads to (such as the former "Validating") is a lie.
    reached = {case[3] for case in CASES} | {"Pending"}  # a new run: test_new_run_creates_...
    assert reached == set(get_args(Phase))
