"""The rollout state machine, step by step, with the clock in the test's hand."""

from __future__ import annotations

from typing import Any

import pytest
from modeldeployment_world import SHA_A, SHA_B, SHA_C, World, model, modeldeployment

from kubeloop.analysis.base import Measurement
from kubeloop.api.modeldeployment import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    PROMOTE_FULL_ANNOTATION,
    RETRY_ANNOTATION,
)

STABLE_ONLY = {"kubeloop.io/modeldeployment": "churn", "kubeloop.io/track": "stable"}
BOTH = {"kubeloop.io/modeldeployment": "churn"}
CANARY_ONLY = {"kubeloop.io/modeldeployment": "churn", "kubeloop.io/track": "canary"}

WALK = [
    {"shadow": {"percent": 50, "duration": "60s"}},
    {"setWeight": 20},
    {"pause": {"duration": "30s"}},
    {"setWeight": 50},
    {"pause": {}},
    {"setWeight": 100},
]


def healthy(steps: list[dict[str, Any]] | None = None, **spec: Any) -> World:
    world = World(modeldeployment(steps, **spec))
    world.run()
    assert world.status["phase"] == "Healthy", world.status
    return world


def test_first_deployment_serves_the_model_pinned_by_sha() -> None:
    world = World(modeldeployment())
    world.kubelet_ready = False
    world.reconcile()
    assert world.status["phase"] == "Progressing"
    assert world.condition("Ready")["status"] == "False"
    args = world.args("stable")
    assert args[:2] == ["serve", "--model-uri"]
    assert world.served_sha("stable") == SHA_A
    assert args[args.index("--track") + 1] == "stable"
    assert world.replicas("stable") == 4 and "churn-canary" not in world.deployments
    assert world.main_selector() == STABLE_ONLY
    assert set(world.services) == {"churn", "churn-stable", "churn-canary"}
    world.kubelet_ready = True
    world.settle_all()
    world.reconcile()
    status = world.status
    assert status["phase"] == "Healthy"
    assert world.condition("Ready")["status"] == "True"
    assert status["stable"]["sha256"] == SHA_A and status["stable"]["revision"] == "sha256:aaaaaaaaaaaa"
    assert status["replicas"] == 4 and status["readyReplicas"] == 4
    assert status["selector"] == "kubeloop.io/modeldeployment=churn,kubeloop.io/track=stable"


def test_pods_are_restricted_and_probed_on_the_ready_endpoint() -> None:
    world = healthy()
    pod = world.deployments["churn-stable"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    strategy = world.deployments["churn-stable"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_a_model_change_walks_shadow_20_pause_50_pause_100_and_promotes() -> None:
    world = healthy(WALK)
    world.change_spec(model=model(SHA_B))

    # shadow: canary pods for 50 % of 4, zero user traffic, stable mirrors to the canary Service
    world.run()
    status = world.status
    assert status["currentStep"] == 0 and status["canaryWeight"] == 0 and status["shadowPercent"] == 50
    assert (world.replicas("stable"), world.replicas("canary")) == (4, 2)
    assert world.served_sha("canary") == SHA_B and world.served_sha("stable") == SHA_A
    stable_args = world.args("stable")
    assert stable_args[stable_args.index("--shadow-url") + 1] == "http://churn-canary.ml.svc:8080"
    assert stable_args[stable_args.index("--shadow-percent") + 1] == "50"
    assert world.main_selector() == STABLE_ONLY
    assert status["phase"] == "Progressing" and "stepStartedAt" in status
    world.tick(59)
    world.run()
    assert world.status["currentStep"] == 0

    # 60 s later: setWeight 20 (canary 1 of 4 pods), then the 30 s pause
    world.tick(1)
    world.run()
    status = world.status
    assert status["currentStep"] == 2 and status["canaryWeight"] == 20 and status["shadowPercent"] == 0
    assert (world.replicas("stable"), world.replicas("canary")) == (3, 1)
    assert "--shadow-url" not in world.args("stable")
    assert world.main_selector() == BOTH

    world.tick(30)
    world.run()
    status = world.status
    # 50 %, then a pause without duration: waits for promote
    assert status["currentStep"] == 4 and status["canaryWeight"] == 50
    assert (world.replicas("stable"), world.replicas("canary")) == (2, 2)
    assert status["phase"] == "Paused"
    world.tick(3600)
    world.run()
    assert world.status["currentStep"] == 4

    world.annotate(PROMOTE_ANNOTATION, "t1")
    world.kubelet_ready = False
    world.reconcile()
    status = world.status
    # setWeight 100: the canary is grown to 4 pods first; users stay at 50 % meanwhile
    assert status["currentStep"] == 5 and status["canaryWeight"] == 50
    assert (world.replicas("stable"), world.replicas("canary")) == (2, 4)
    world.kubelet_ready = True
    world.settle_all()
    world.kubelet_ready = False
    world.reconcile()
    status = world.status
    # 100 %: all users on the canary; promotion begins: the stable Deployment rolls to B at
    # full size while the canary answers everyone
    assert status["canaryWeight"] == 100 and status["currentStep"] == 6
    assert world.main_selector() == CANARY_ONLY
    assert world.served_sha("stable") == SHA_B and world.replicas("stable") == 4
    assert world.replicas("canary") == 4
    assert status["canary"]["sha256"] == SHA_B and status["phase"] == "Progressing"
    world.kubelet_ready = True
    world.settle_all()
    world.reconcile()
    status = world.status
    # promotion done: stable serves B on every pod, then the canary is scaled to 0
    assert status["stable"]["sha256"] == SHA_B
    assert "canary" not in status
    assert status["previous"]["sha256"] == SHA_A
    assert status["phase"] == "Healthy" and status["canaryWeight"] == 0
    assert world.replicas("stable") == 4 and world.replicas("canary") == 0
    assert world.served_sha("stable") == SHA_B
    assert world.main_selector() == STABLE_ONLY
    reasons = world.event_reasons()
    assert reasons.count("Promoted") == 1
    assert "RolloutStarted" in reasons and "StepAdvanced" in reasons


def test_weight_is_applied_only_when_the_canary_pods_are_ready() -> None:
    world = healthy([{"setWeight": 50}, {"pause": {}}])
    world.change_spec(model=model(SHA_B))
    world.kubelet_ready = False
    world.run()
    status = world.status
    assert status["canaryWeight"] == 0 and status["currentStep"] == 0
    # canary sized for 50 %, stable still full: no capacity lost while waiting
    assert (world.replicas("stable"), world.replicas("canary")) == (4, 2)
    assert world.main_selector() == STABLE_ONLY
    world.kubelet_ready = True
    world.settle_all()
    world.run()
    assert world.status["canaryWeight"] == 50 and world.status["currentStep"] == 1
    assert (world.replicas("stable"), world.replicas("canary")) == (2, 2)


def test_promotion_keeps_the_canary_serving_until_every_stable_pod_runs_the_new_model() -> None:
    world = healthy([{"setWeight": 50}])
    world.change_spec(model=model(SHA_B))
    world.reconcile()  # canary scaled for 50 %
    world.kubelet_ready = False
    world.reconcile()  # weight 50 applied (canary pods were ready), steps done -> promoting
    status = world.status
    assert status["currentStep"] == 1 and status["canary"]["sha256"] == SHA_B
    assert world.served_sha("stable") == SHA_B and world.replicas("stable") == 4
    assert world.replicas("canary") == 2 and status["canaryWeight"] == 50
    assert world.main_selector() == BOTH
    world.reconcile()
    assert world.status.get("canary") is not None  # stable not rolled yet: the canary stays
    world.kubelet_ready = True
    world.settle_all()
    world.reconcile()
    assert "canary" not in world.status and world.replicas("canary") == 0
    assert world.main_selector() == STABLE_ONLY


def test_promote_request_is_acted_on_once_per_token() -> None:
    world = healthy([{"pause": {}}, {"pause": {}}, {"pause": {}}])
    world.change_spec(model=model(SHA_B))
    world.run()
    assert world.status["currentStep"] == 0
    world.annotate(PROMOTE_ANNOTATION, "first")
    world.run()
    assert world.status["currentStep"] == 1
    assert world.status["handledRequests"]["promote"] == "first"
    world.run()  # the same token again: nothing more
    assert world.status["currentStep"] == 1
    world.annotate(PROMOTE_ANNOTATION, "second")
    world.run()
    assert world.status["currentStep"] == 2


def test_promote_full_skips_every_remaining_step() -> None:
    world = healthy(WALK)
    world.change_spec(model=model(SHA_B))
    world.run()
    world.annotate(PROMOTE_FULL_ANNOTATION, "go")
    world.run()
    assert world.status["stable"]["sha256"] == SHA_B and "canary" not in world.status


def test_abort_request_sends_all_traffic_back_and_retry_starts_again() -> None:
    world = healthy([{"setWeight": 50}, {"pause": {}}])
    world.change_spec(model=model(SHA_B))
    world.run()
    assert world.status["canaryWeight"] == 50
    world.annotate(ABORT_ANNOTATION, "stop")
    world.reconcile()
    status = world.status
    assert status["aborted"] is True and status["canaryWeight"] == 0
    assert status["phase"] == "Degraded"
    assert world.condition("Degraded")["status"] == "True"
    assert world.condition("Degraded")["reason"] == "Aborted"
    assert world.main_selector() == STABLE_ONLY  # at once, in the same reconcile
    assert world.replicas("canary") == 0 and world.replicas("stable") == 4
    assert status["stable"]["sha256"] == SHA_A and status["canary"]["sha256"] == SHA_B
    assert any(e.type == "Warning" and e.reason == "Aborted" for e in world.events)
    world.run()
    assert world.status["aborted"] is True  # stays aborted: level-based

    world.annotate(RETRY_ANNOTATION, "again")
    world.run()
    status = world.status
    assert status["aborted"] is False and status["currentStep"] == 1 and status["canaryWeight"] == 50
    assert world.condition("Degraded")["status"] == "False"


def test_requests_present_before_the_first_reconcile_are_not_acted_on() -> None:
    md = modeldeployment([{"pause": {}}])
    md["metadata"]["annotations"][PROMOTE_FULL_ANNOTATION] = "old"
    world = World(md)
    world.run()
    world.change_spec(model=model(SHA_B))
    world.run()
    assert world.status["currentStep"] == 0 and world.status["canary"]["sha256"] == SHA_B


def test_spec_change_mid_rollout_restarts_with_the_newest_model() -> None:
    world = healthy([{"setWeight": 50}, {"pause": {}}])
    world.change_spec(model=model(SHA_B))
    world.run()
    world.change_spec(model=model(SHA_C))
    world.reconcile()
    status = world.status
    assert status["canary"]["sha256"] == SHA_C and status["currentStep"] == 0
    assert status["canaryWeight"] == 0
    assert world.served_sha("canary") == SHA_C
    world.run()
    assert world.status["canaryWeight"] == 50


def test_spec_back_to_the_stable_model_cancels_the_rollout() -> None:
    world = healthy([{"setWeight": 50}, {"pause": {}}])
    world.change_spec(model=model(SHA_B))
    world.run()
    world.change_spec(model=model(SHA_A))
    world.run()
    status = world.status
    assert "canary" not in status and status["canaryWeight"] == 0 and status["phase"] == "Healthy"
    assert world.replicas("canary") == 0 and world.main_selector() == STABLE_ONLY
    assert "RolloutCancelled" in world.event_reasons()


def test_undo_rolls_back_to_the_previous_model_without_steps() -> None:
    world = healthy([{"setWeight": 50}, {"pause": {}}])
    world.change_spec(model=model(SHA_B))
    world.run()
    world.annotate(PROMOTE_FULL_ANNOTATION, "1")
    world.run()
    assert world.status["stable"]["sha256"] == SHA_B
    previous = world.status["previous"]
    world.change_spec(model={"storageUri": previous["uri"], "sha256": previous["sha256"]})
    world.run()
    status = world.status
    assert status["stable"]["sha256"] == SHA_A and status["previous"]["sha256"] == SHA_B
    assert "RolledBack" in world.event_reasons()
    assert status["phase"] == "Healthy"


def test_pause_with_duration_expires_on_the_injected_clock() -> None:
    world = healthy([{"pause": {"duration": "5m"}}, {"pause": {}}])
    world.change_spec(model=model(SHA_B))
    world.run()
    decision = world.reconcile()
    assert world.status["currentStep"] == 0
    assert decision.requeue_after == pytest.approx(300)
    world.tick(299)
    assert world.reconcile().requeue_after == pytest.approx(1)
    assert world.status["currentStep"] == 0
    world.tick(1)
    world.reconcile()
    assert world.status["currentStep"] == 1


def test_spec_paused_freezes_the_step_timer_and_resume_keeps_the_time_already_served() -> None:
    world = healthy([{"pause": {"duration": "100s"}}, {"pause": {}}])
    world.change_spec(model=model(SHA_B))
    world.run()
    world.tick(40)
    world.change_spec(paused=True)
    world.run()
    assert world.status["phase"] == "Paused"
    assert world.condition("Progressing")["status"] == "Unknown"
    world.tick(1000)
    world.run()
    assert world.status["currentStep"] == 0
    world.change_spec(paused=False)
    world.run()
    assert world.status["currentStep"] == 0  # 40 s served, 60 s to go
    world.tick(59)
    world.run()
    assert world.status["currentStep"] == 0
    world.tick(1)
    world.run()
    assert world.status["currentStep"] == 1


# --- analysis ------------------------------------------------------------------------------------

ANALYSIS = {
    "interval": "30s",
    "failureLimit": 1,
    "metrics": [
        {"name": "error-rate", "provider": "builtin", "builtin": "errorRate", "max": 0.05},
        {"name": "shift", "provider": "builtin", "builtin": "predictionShift", "max": 0.2},
    ],
}


def analysed(steps: list[dict[str, Any]], analysis: dict[str, Any] = ANALYSIS) -> World:
    world = healthy(steps, rollout={"steps": steps, "analysis": analysis})
    world.change_spec(model=model(SHA_B))
    world.run()
    return world


def test_background_analysis_is_due_every_interval_from_canary_readiness() -> None:
    world = analysed([{"setWeight": 20}, {"pause": {}}])
    assert world.plan() is None
    world.tick(29)
    assert world.plan() is None
    world.tick(1)
    plan = world.plan()
    assert plan is not None and [m["name"] for m in plan.metrics] == ["error-rate", "shift"]
    assert plan.target.window_seconds == 30
    world.reconcile({"error-rate": 0.01, "shift": 0.05})
    assert world.plan() is None
    runs = world.status["analysis"]["runs"]
    assert [(r["name"], r["value"], r["passed"]) for r in runs] == [("error-rate", 0.01, True), ("shift", 0.05, True)]
    assert runs[0]["max"] == 0.05 and runs[0]["step"] == 1
    assert world.condition("AnalysisPassing")["status"] == "True"
    world.tick(30)
    assert world.plan() is not None


def test_failed_analysis_aborts_within_one_interval_when_failure_limit_is_spent() -> None:
    world = analysed([{"setWeight": 50}, {"pause": {}}])
    world.tick(30)
    world.reconcile({"error-rate": 0.30, "shift": 0.05})  # 1st failure: tolerated (limit 1)
    assert world.status["aborted"] is False
    assert world.status["analysis"]["consecutiveFailures"] == 1
    assert world.condition("AnalysisPassing")["status"] == "False"
    world.tick(30)
    world.reconcile({"error-rate": 0.31, "shift": 0.05})  # 2nd in a row: abort now
    status = world.status
    assert status["aborted"] is True and status["canaryWeight"] == 0
    assert world.main_selector() == STABLE_ONLY and world.replicas("canary") == 0
    degraded = world.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "AnalysisFailed"
    assert "error-rate=0.31" in degraded["message"] and "above its maximum 0.05" in degraded["message"]
    assert status["lastFailure"]["reason"] == "AnalysisFailed"
    assert status["phase"] == "Degraded"


def test_a_passing_round_resets_consecutive_failures_and_no_data_is_not_a_failure() -> None:
    world = analysed([{"setWeight": 50}, {"pause": {}}])
    for values in ({"error-rate": 0.3, "shift": 0.0}, {"error-rate": 0.0, "shift": 0.0},
                   {"error-rate": 0.3, "shift": 0.0}, {"error-rate": None, "shift": None},
                   {"error-rate": None, "shift": None}):
        world.tick(30)
        world.reconcile(values)
    analysis = world.status["analysis"]
    assert world.status["aborted"] is False
    assert analysis["consecutiveFailures"] == 1 and analysis["failures"] == 2
    assert world.condition("AnalysisPassing")["status"] == "Unknown"


def test_analysis_step_measures_at_once_and_advances_after_count_passes() -> None:
    steps = [{"setWeight": 20}, {"analysis": {"count": 2, "interval": "10s"}}, {"pause": {}}]
    world = analysed(steps)
    assert world.status["currentStep"] == 1
    plan = world.plan()
    assert plan is not None and plan.target.window_seconds == 10  # "run now"
    world.reconcile({"error-rate": 0.0, "shift": 0.0})
    assert world.status["currentStep"] == 1
    world.tick(5)
    assert world.plan() is None
    world.tick(5)
    world.reconcile({"error-rate": 0.0, "shift": 0.0})
    assert world.status["currentStep"] == 2
    assert "AnalysisPassed" in world.event_reasons()


def test_analysis_step_after_a_shadow_step_keeps_mirroring_and_measures_the_canary() -> None:
    # The quickstart's rollout: shadow, then an analysis step on shadowAgreement. The analysis
    # step must keep the canary up and mirrored to, or it can never measure (it once waited
    # forever with the canary scaled to 0: the real-node Helm loop found it).
    agreement = {"metrics": [{"name": "agree", "provider": "builtin", "builtin": "shadowAgreement", "min": 0.9}]}
    world = analysed([{"shadow": {"percent": 100, "duration": "20s"}}, {"analysis": agreement},
                      {"setWeight": 20}, {"pause": {}}], analysis={"interval": "15s"})
    world.tick(20)
    world.run()
    status = world.status
    assert status["currentStep"] == 1
    assert status["shadowPercent"] == 100 and status["canaryWeight"] == 0
    assert world.replicas("canary") >= 1 and world.main_selector() == STABLE_ONLY
    stable_args = world.args("stable")
    assert stable_args[stable_args.index("--shadow-percent") + 1] == "100"
    plan = world.plan()
    assert plan is not None and [m["name"] for m in plan.metrics] == ["agree"]
    world.reconcile({"agree": 0.97})
    world.run()
    status = world.status
    assert status["currentStep"] == 3 and status["canaryWeight"] == 20 and status["shadowPercent"] == 0
    assert "--shadow-url" not in world.args("stable")


def test_background_shadow_agreement_is_measured_only_while_mirroring_and_aborts_a_bad_canary() -> None:
    agreement = {"name": "agree", "provider": "builtin", "builtin": "shadowAgreement", "min": 0.9}
    background = {"interval": "15s", "failureLimit": 0,
                  "metrics": [{"name": "error-rate", "builtin": "errorRate", "max": 0.05}, agreement]}
    # Mirroring: the round one interval after the canary is ready measures agreement too, and
    # a canary that disagrees is out then, not after the shadow step's duration.
    world = analysed([{"shadow": {"percent": 100, "duration": "2m"}}, {"setWeight": 50}, {"pause": {}}], background)
    world.tick(15)
    plan = world.plan()
    assert plan is not None and [m["name"] for m in plan.metrics] == ["error-rate", "agree"]
    world.reconcile({"error-rate": 0.0, "agree": 0.65})
    assert world.status["aborted"] is True and "agree=0.65" in world.condition("Degraded")["message"]

    # Not mirroring: background rounds leave agreement out (it could only be inconclusive).
    world = analysed([{"setWeight": 50}, {"pause": {}}], background)
    world.tick(15)
    plan = world.plan()
    assert plan is not None and [m["name"] for m in plan.metrics] == ["error-rate"]


def test_analysis_step_at_weight_zero_without_shadow_still_has_a_canary_pod() -> None:
    world = analysed([{"analysis": {"count": 1}}, {"setWeight": 50}, {"pause": {}}])
    assert world.status["currentStep"] == 0 and world.status["canaryWeight"] == 0
    assert world.replicas("canary") == 1 and world.main_selector() == STABLE_ONLY
    assert world.plan() is not None


def test_analysis_step_failure_aborts() -> None:
    steps = [{"setWeight": 20}, {"analysis": {"metrics": [
        {"name": "p99", "provider": "builtin", "builtin": "latencyP99", "max": 0.1}]}}, {"pause": {}}]
    world = analysed(steps, analysis={})
    world.reconcile({"p99": 0.5})
    assert world.status["aborted"] is True
    assert "p99=0.5 is above its maximum 0.1" in world.condition("Degraded")["message"]


def test_no_analysis_after_abort_or_while_promoting() -> None:
    world = analysed([{"setWeight": 50}])
    world.kubelet_ready = False
    world.tick(30)
    world.reconcile({"error-rate": 0.0, "shift": 0.0})
    assert world.status["currentStep"] == 1  # promoting
    world.tick(30)
    assert world.plan() is None


# --- analysis that measured nothing cannot pass (issue 15) ------------------------------------

NO_TRAFFIC = {"error-rate": None, "shift": None}


def test_last_step_waits_for_a_passing_background_round_before_promoting() -> None:
    world = analysed([{"setWeight": 50}])
    assert world.status["currentStep"] == 0, "promoted before any background round"
    assert "waiting for a background analysis round to pass" in world.status["message"]
    assert world.status["canaryWeight"] == 50
    world.tick(30)
    world.reconcile(NO_TRAFFIC)
    assert world.status["currentStep"] == 0
    assert world.status["analysis"]["lastBackgroundResult"] == "Inconclusive"
    world.tick(30)
    world.reconcile({"error-rate": 0.0, "shift": 0.01})
    assert world.status["currentStep"] == 1
    assert world.status["analysis"]["lastBackgroundResult"] == "Passed"


def test_rollout_without_traffic_pauses_at_the_inconclusive_limit_instead_of_promoting() -> None:
    world = analysed([{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 50}],
                     analysis={**ANALYSIS, "inconclusiveLimit": 2})
    for round_ in range(1, 4):
        world.tick(30)
        world.reconcile(NO_TRAFFIC)
        assert world.status["analysis"]["consecutiveInconclusive"] == round_
        if round_ <= 2:
            assert world.status["phase"] == "Progressing"
    assert world.status["phase"] == "Paused"
    assert world.condition("Progressing")["reason"] == "AnalysisInconclusive"
    assert world.status["analysis"]["pausedInconclusive"] is True
    assert world.event_reasons().count("AnalysisInconclusive") == 1
    assert world.status["currentStep"] == 2 and world.status["canaryWeight"] == 50
    # Paused: nothing is measured, time does not move it on, no further events.
    for _ in range(5):
        world.tick(60)
        assert world.plan() is None
        world.reconcile()
    assert world.status["phase"] == "Paused" and world.status["currentStep"] == 2
    assert world.event_reasons().count("AnalysisInconclusive") == 1
    assert world.status["stable"]["sha256"] == SHA_A
    # A person resumes it; analysis runs again and a passing round lets it promote.
    world.annotate(PROMOTE_ANNOTATION, "go-on")
    world.reconcile()
    assert world.status["analysis"]["pausedInconclusive"] is False
    assert world.status["currentStep"] == 2 and world.status["phase"] == "Progressing"
    world.tick(30)
    world.reconcile({"error-rate": 0.0, "shift": 0.0})
    assert world.status["currentStep"] == 3


def test_a_conclusive_round_resets_the_inconclusive_count() -> None:
    world = analysed([{"setWeight": 20}, {"pause": {}}], analysis={**ANALYSIS, "inconclusiveLimit": 1})
    world.tick(30)
    world.reconcile(NO_TRAFFIC)
    world.tick(30)
    world.reconcile({"error-rate": 0.0, "shift": 0.0})
    assert world.status["analysis"]["consecutiveInconclusive"] == 0
    world.tick(30)
    world.reconcile(NO_TRAFFIC)
    assert world.status["phase"] == "Paused" and world.condition("Progressing")["reason"] == "Paused"
    assert not world.status["analysis"].get("pausedInconclusive")


@pytest.mark.parametrize(
    ("samples", "min_samples", "verdict"),
    [
        (None, 10, "Passed"),  # a custom query: the provider cannot count samples
        (0, 10, "Inconclusive"),
        (9, 10, "Inconclusive"),
        (10, 10, "Passed"),
        (3, 0, "Passed"),
        (500, 10, "Passed"),
    ],
)
def test_a_value_resting_on_too_few_samples_is_inconclusive(
    samples: float | None, min_samples: int, verdict: str
) -> None:
    world = analysed([{"setWeight": 20}, {"pause": {}}], analysis={**ANALYSIS, "minSamples": min_samples})
    world.tick(30)
    world.reconcile({"error-rate": Measurement("error-rate", 0.0, samples=samples),
                     "shift": Measurement("shift", 0.0, samples=samples)})
    assert world.status["analysis"]["lastBackgroundResult"] == verdict
    if verdict == "Inconclusive":
        assert f"minSamples is {min_samples}" in world.condition("AnalysisPassing")["message"]


def test_a_step_may_tolerate_more_inconclusive_rounds_than_the_default() -> None:
    steps = [{"setWeight": 20}, {"analysis": {"count": 1, "interval": "10s", "inconclusiveLimit": 4}}]
    world = analysed(steps, analysis={**ANALYSIS, "inconclusiveLimit": 0})
    for _ in range(4):
        world.reconcile(NO_TRAFFIC)
        world.tick(10)
    assert world.status["phase"] != "Paused"
    world.reconcile(NO_TRAFFIC)
    assert world.status["phase"] == "Paused"
    assert world.condition("Progressing")["reason"] == "AnalysisInconclusive"


# --- model references ------------------------------------------------------------------------


def run_object(phase: str, sha: str | None = SHA_B) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "message": "boom" if phase == "Failed" else ""}
    if sha:
        status["model"] = {"uri": "s3://models/run/model.skops", "sha256": sha}
    return {"metadata": {"name": "churn-7"}, "status": status}


@pytest.mark.parametrize(
    ("run", "phase", "reason", "degraded"),
    [
        (None, "Degraded", "ModelNotFound", "True"),
        (run_object("Training", None), "Progressing", "ModelNotReady", "False"),
        (run_object("Failed", None), "Degraded", "ModelNotReady", "True"),
    ],
)
def test_training_run_that_has_not_succeeded_is_refused(
    run: dict[str, Any] | None, phase: str, reason: str, degraded: str
) -> None:
    world = World(modeldeployment(model={"trainingRunRef": {"name": "churn-7"}}), training_run=run)
    world.run()
    assert world.status["phase"] == phase
    assert world.condition("Ready")["status"] == "False"
    assert world.condition("Ready")["reason"] == reason
    assert world.condition("Degraded")["status"] == degraded
    assert "churn-7" in world.status["message"]
    assert not world.deployments


def test_training_run_ref_resolves_to_the_runs_model() -> None:
    world = World(modeldeployment(model={"trainingRunRef": {"name": "churn-7"}}),
                  training_run=run_object("Succeeded"))
    world.run()
    assert world.served_sha("stable") == SHA_B
    assert world.status["stable"]["trainingRun"] == "churn-7"
    assert world.status["stable"]["revision"] == "churn-7"
    assert world.status["phase"] == "Healthy"


def test_new_run_still_training_keeps_stable_serving() -> None:
    world = healthy([{"setWeight": 50}])
    world.training_run = run_object("Training", None)
    world.change_spec(model={"trainingRunRef": {"name": "churn-7"}})
    world.run()
    assert world.status["phase"] == "Progressing"
    assert world.condition("Ready")["status"] == "True"
    assert "canary" not in world.status and world.served_sha("stable") == SHA_A


def test_invalid_spec_is_degraded_naming_the_field() -> None:
    md = modeldeployment()
    md["spec"]["rollout"] = {"steps": [{"setWeight": 20, "pause": {}}]}
    world = World(md)
    world.reconcile()
    assert world.status["phase"] == "Degraded"
    assert "rollout.steps[0]" in world.status["message"]
    assert world.condition("Degraded")["reason"] == "InvalidSpec"
    assert not world.deployments


# --- routers, autoscaling, scale ---------------------------------------------------------------


def test_gateway_api_route_weights_follow_the_steps() -> None:
    steps = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]
    world = healthy(steps, rollout={"steps": steps, "trafficRouting": {"gatewayAPI": {"httpRoute": "churn"}}})
    world.route = {
        "metadata": {"name": "churn", "resourceVersion": "1"},
        "spec": {"rules": [{"backendRefs": [{"name": "churn-stable", "port": 8080},
                                            {"name": "churn-canary", "port": 8080}]}]},
    }
    world.run()

    def weights() -> list[int]:
        assert world.route is not None
        return [ref["weight"] for ref in world.route["spec"]["rules"][0]["backendRefs"]]

    assert weights() == [100, 0]
    world.change_spec(model=model(SHA_B))
    world.run()
    assert weights() == [80, 20]
    # a mesh router keeps stable at full size
    assert (world.replicas("stable"), world.replicas("canary")) == (4, 1)
    world.annotate(PROMOTE_ANNOTATION, "1")
    world.run()
    assert weights() == [50, 50]
    world.annotate(ABORT_ANNOTATION, "1")
    world.reconcile()
    assert weights() == [100, 0]


def test_missing_http_route_holds_the_weight_step_and_says_why() -> None:
    steps = [{"setWeight": 20}, {"pause": {}}]
    world = healthy(steps, rollout={"steps": steps, "trafficRouting": {"gatewayAPI": {"httpRoute": "nope"}}})
    world.change_spec(model=model(SHA_B))
    world.run()
    assert world.status["currentStep"] == 0 and world.status["canaryWeight"] == 0
    assert "HTTPRoute 'nope' not found" in world.status["message"]


def test_autoscaling_builds_an_hpa_on_the_scale_subresource_and_removing_it_deletes_it() -> None:
    world = healthy(autoscaling={"minReplicas": 2, "maxReplicas": 8})
    assert world.hpa is not None
    target = world.hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "kubeloop.io/v1alpha1", "kind": "ModelDeployment", "name": "churn"}
    assert (world.hpa["spec"]["minReplicas"], world.hpa["spec"]["maxReplicas"]) == (2, 8)
    world.md["spec"].pop("autoscaling")
    decision = world.reconcile()
    assert decision.delete_hpa == "churn" and decision.hpa is None


def test_scaling_the_modeldeployment_scales_the_stable_pods() -> None:
    world = healthy()
    world.change_spec(replicas=7)
    world.run()
    assert world.replicas("stable") == 7 and world.status["replicas"] == 7


def test_repeating_a_decision_changes_nothing() -> None:
    world = healthy(WALK)
    world.change_spec(model=model(SHA_B))
    world.run()
    before = (dict(world.status), {k: dict(v) for k, v in world.deployments.items()})
    decision = world.reconcile()
    assert decision.events == []
    assert (world.status, world.deployments) == before
