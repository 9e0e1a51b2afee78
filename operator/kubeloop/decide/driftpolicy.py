"""What a DriftPolicy should do next: check, retrain, promote. Pure: no I/O, the clock is an argument.

The controller asks :func:`check_due` whether to measure drift now, measures it (I/O), then
hands everything to :func:`decide`, which returns the next status, the TrainingRun to create
(if any), the ModelDeployment patch that promotes a winning run (if any), and Events.

Rules, in the order they apply:

* a retrain is wanted on drift, when the schedule fires, or on a manual request (the
  ``kubeloop.io/retrain`` annotation set to a new value);
* at most one retrain is in flight per policy; drift and schedule also respect ``cooldown``
  and ``maxRetrainsPerDay`` (a manual request skips the cooldown but not the daily limit);
* a finished retrain is judged from its TrainingRun: Succeeded means it passed its gates
  against the champion; with ``autoPromote`` the ModelDeployment is pointed at it (its canary
  does the rest), otherwise it waits for a person; a run refused by its gate leaves the
  champion in place, and both metrics are recorded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from croniter import croniter

from kubeloop.api.common import parse_duration
from kubeloop.api.conditions import ConditionType, Reason
from kubeloop.api.driftpolicy import (
    DEFAULT_MIN_LABELS,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_TOLERANCE,
    MAX_HISTORY,
    RETRAIN_ANNOTATION,
    ignored_settings,
)
from kubeloop.decide.common import Event, parse_wire_time, set_wire_condition, wire_time
from kubeloop.decide.model_source import model_source_patch
from kubeloop.drift import performance as perf
from kubeloop.drift.defaults import DEFAULT_ALPHA, DISTANCE_TESTS, P_VALUE_TESTS
from kubeloop.drift.profile import PREDICTION_FEATURE, Profile
from kubeloop.drift.report import DriftConfig, DriftReport, FeatureSettings, unused_feature_settings
from kubeloop.drift.result import DriftCheckResult
from kubeloop.registry.decide import REGISTRY_UNAVAILABLE, Resolution, describe_source
from kubeloop.resources.meta import child_name, labels_for, owner_reference
from kubeloop.trust.images import IMAGE_NOT_ALLOWED, ImagePolicy

RetrainReason = Literal["Drift", "Performance", "Schedule", "Manual"]
IN_FLIGHT = {"Pending", "Running"}


@dataclass(frozen=True)
class Verdict:
    """What one drift check concluded, whichever way it was measured (live counters or a
    dataset Job)."""

    drifted: bool
    drifted_features: list[str]
    share: float
    feature_count: int
    prediction_drifted: bool
    scores: list[dict[str, Any]]


def _limit(test: str, limit: float) -> dict[str, float]:
    """The status field a feature's limit goes in: alpha for p-value tests, else threshold."""
    return {"alpha": limit} if test in P_VALUE_TESTS else {"threshold": limit}


def verdict_from_report(report: DriftReport) -> Verdict:
    features = [*report.features, *([report.prediction] if report.prediction else [])]
    scores = [
        {
            "feature": f.feature,
            "test": f.test,
            "score": round(f.score, 6),
            **_limit(f.test, f.threshold),
            "drifted": f.drifted,
            **(
                {"pValue": f.p_value_adjusted if f.p_value_adjusted is not None else f.p_value}
                if f.p_value is not None
                else {}
            ),
            "samples": f.sample_size,
        }
        for f in features
    ]
    return Verdict(
        report.drifted,
        report.drifted_features,
        report.share,
        len(report.features),
        report.prediction_drifted,
        scores,
    )


def verdict_from_check(check: DriftCheckResult, config: DriftConfig) -> Verdict:
    """The verdict a dataset Job reported (its result keeps scores, not thresholds)."""
    scores = [
        {
            "feature": name,
            "test": test,
            "score": score,
            **_limit(test, config.threshold_for(name, test)),
            "drifted": drifted,
            **({"pValue": p_value} if p_value is not None else {}),
            "samples": check.sample_size,
        }
        for name, (test, score, p_value, drifted) in check.features.items()
    ]
    inputs = [name for name in check.features if name != PREDICTION_FEATURE]
    return Verdict(
        check.drifted,
        check.drifted_features,
        check.share,
        len(inputs),
        check.prediction_drifted,
        scores,
    )


@dataclass(frozen=True)
class PerformanceReading:
    """Live performance over the labels that arrived in the span compared (spec.performance),
    and the reference it is judged against."""

    metric: str
    labels: int
    live: float | None
    reference: float
    first_scrape: bool = False
    """No span yet: the first scrape of the pods only recorded their counters."""


@dataclass(frozen=True)
class DriftMeasurement:
    """The outcome of one drift check, as the controller measured it."""

    verdict: Verdict | None = None
    performance: PerformanceReading | None = None
    samples: int = 0
    error: str | None = None  # why no measurement could be made (target, profile, source)
    error_reason: str = Reason.SOURCE_UNAVAILABLE
    report: str | None = None
    """Dataset checks: the URI of the HTML report the check Job wrote (its annotation)."""


@dataclass
class Decision:
    status: dict[str, Any]
    create_run: dict[str, Any] | None = None
    promote: dict[str, Any] | None = None  # merge patch for the target ModelDeployment
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


# --- promotion --------------------------------------------------------------------------------


def promotion_patch(run_name: str) -> dict[str, Any]:
    """The merge patch that points the target ModelDeployment at a winning retrain: its
    ``spec.model.trainingRunRef``, with every other source deleted - a pinned ``storageUri`` and
    ``sha256``, and a ``registry`` source too (the deployment then follows the run, no longer an
    MLflow alias; the CRD refuses two sources)."""
    return model_source_patch({"trainingRunRef": {"name": run_name}})


def _replaced_source(target_model: Mapping[str, Any] | None) -> str:
    """Words for the source a promotion replaces ('' when it is another TrainingRun)."""
    model = target_model or {}
    if model.get("registry"):
        return f" leaves its MLflow registry source {describe_source(model['registry'])} and"
    if model.get("storageUri"):
        return f" leaves its pinned storageUri {model['storageUri']} and"
    return ""


def promotion_refused(
    decision: Decision, policy: Mapping[str, Any], error: str, now: datetime
) -> Decision:
    """The decision once the API server refused :attr:`Decision.promote` for good (the target
    is gone, the patch is invalid or forbidden): the retrain stays Succeeded but not promoted,
    ``Degraded=True`` (reason ``PromotionFailed``), ``lastFailure`` and a Warning Event say why,
    and nothing is tried again - a person promotes it (or the next retrain supersedes it)."""
    status = copy.deepcopy(decision.status)
    generation = int(policy["metadata"].get("generation") or 1)
    last = dict(status.get("lastRetrain") or {})
    target = policy["spec"]["targetRef"]["name"]
    run = last.get("name", "?")
    message = (
        f"retrain {run} succeeded but was not promoted: ModelDeployment {target} refused "
        f"spec.model.trainingRunRef={run}: {error}; point spec.model at it by hand to roll it out"
    )[:1024]
    last["outcome"] = "Succeeded"
    last["message"] = message
    status["lastRetrain"] = last
    status["lastFailure"] = {
        "reason": Reason.PROMOTION_FAILED,
        "message": message,
        "time": wire_time(now),
    }
    status["conditions"] = set_wire_condition(
        status.get("conditions") or [],
        ConditionType.DEGRADED,
        True,
        Reason.PROMOTION_FAILED,
        message,
        now,
        generation,
    )
    status["message"] = message
    events = [
        event
        for event in decision.events
        if not (event.reason == Reason.RETRAIN_SUCCEEDED and " promoted: " in event.message)
    ]
    events.append(Event("Warning", Reason.PROMOTION_FAILED, message))
    return Decision(
        status=status,
        create_run=decision.create_run,
        promote=None,
        events=events,
        requeue_after=decision.requeue_after,
    )


# --- configuration from the spec ------------------------------------------------------------


def drift_config(spec: Mapping[str, Any]) -> DriftConfig:
    """The statistics' configuration the policy's spec asks for: a test per type (``auto``
    unless set), score thresholds for the distance tests, alpha for ks and chi2."""
    tests = spec.get("tests") or {}
    thresholds = spec.get("thresholds") or {}
    alpha = spec.get("alpha") or {}
    score_thresholds = {
        test: thresholds[test]
        for test in sorted(DISTANCE_TESTS)
        if thresholds.get(test) is not None
    }
    feature_thresholds = thresholds.get("features") or {}
    feature_alphas = alpha.get("features") or {}
    features = {
        name: FeatureSettings(
            threshold=feature_thresholds.get(name), alpha=feature_alphas.get(name)
        )
        for name in sorted({*feature_thresholds, *feature_alphas})
    }
    return DriftConfig(
        numerical_test=tests.get("numerical", "auto"),
        categorical_test=tests.get("categorical", "auto"),
        thresholds=score_thresholds,
        alpha=alpha.get("default", DEFAULT_ALPHA),
        features=features,
        drift_share=max(spec.get("driftShare", 0.5), 1e-9),
    )


def invalid_spec(spec: Mapping[str, Any], profile: Profile) -> str | None:
    """Why the spec cannot be followed as written against this reference profile, naming the
    field and the fix; None when every setting is used.

    The CRD refuses what the spec alone shows (:func:`kubeloop.api.driftpolicy.ignored_settings`,
    checked here again for a CRD installed before those rules); what depends on the profile
    (feature names, each feature's type) is checked here, by the rule a dataset check Job
    applies too (:func:`kubeloop.drift.report.unused_feature_settings`).
    """
    ignored = ignored_settings(spec)
    if ignored:
        field_name, message = ignored[0]
        return f"{field_name}: {message}"
    known = [f.name for f in profile.all_features()]
    for name in spec.get("features") or []:
        if name not in known:
            return f"spec.features: {name!r} is not in the reference profile (it has: {', '.join(known)}); remove it or fix the name"
    checked = spec.get("features") or [f.name for f in profile.features]
    for unused in unused_feature_settings(drift_config(spec), profile, checked):
        field_name, other = (
            ("spec.thresholds.features", "alpha.features")
            if unused.setting == "threshold"
            else ("spec.alpha.features", "thresholds.features")
        )
        if unused.cause == "unknown":
            return f"{field_name}: {unused.feature!r} is not in the reference profile (it has: {', '.join(known)}); remove it or fix the name"
        if unused.cause == "unchecked":
            return f"{field_name}: {unused.feature!r} is not checked (spec.features leaves it out); remove it or add it to spec.features"
        what = (
            "a score threshold, for psi, wasserstein and jensenshannon"
            if unused.setting == "threshold"
            else "an alpha, for ks and chi2"
        )
        return (
            f"{field_name}: {unused.feature!r} is {unused.kind} and tests.{unused.kind} is {unused.test}, so this value ({what}) "
            f"is never used; move it to {other} or change tests.{unused.kind}"
        )
    return None


def next_schedule_time(schedule: str, after: datetime) -> datetime:
    result: datetime = croniter(schedule, after).get_next(datetime)
    return result


def due_time(policy: Mapping[str, Any]) -> datetime:
    """When the next check is due: creation for the first, then ``interval`` after the last."""
    status = policy.get("status") or {}
    if not status.get("lastCheckTime"):
        return parse_wire_time(
            policy["metadata"].get("creationTimestamp") or "1970-01-01T00:00:00Z"
        )
    return parse_wire_time(status["lastCheckTime"]) + parse_duration(
        policy["spec"].get("interval", "5m")
    )


def config_wire(config: DriftConfig) -> dict[str, Any]:
    """The statistics' configuration as ``kubeloop drift --config`` takes it."""
    wire: dict[str, Any] = config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return wire


def check_due(policy: Mapping[str, Any], now: datetime) -> bool:
    """Whether a drift check is due: never checked, or ``interval`` has passed since the last."""
    status = policy.get("status") or {}
    if not status.get("lastCheckTime"):
        return True
    interval = parse_duration(policy["spec"].get("interval", "5m"))
    return now >= parse_wire_time(status["lastCheckTime"]) + interval


def waiting_for_registry(status: Mapping[str, Any]) -> bool:
    """Whether a retrain waits for MLflow: the last failure is the registry's, and no retrain
    was created since."""
    failure = status.get("lastFailure") or {}
    if failure.get("reason") != REGISTRY_UNAVAILABLE:
        return False
    created = str((status.get("lastRetrain") or {}).get("time") or "")
    return created <= str(failure.get("time") or "")


# --- the retrain run ------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def retrain_run(
    policy: Mapping[str, Any],
    number: int,
    reason: RetrainReason,
    source_run_spec: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The TrainingRun a retrain creates: named by its number, so a repeat after a crash
    finds the same name and never makes a second run."""
    meta = policy["metadata"]
    spec = policy["spec"]
    retrain = spec["retrain"]
    template = retrain.get("template") or {}
    if template:
        run_spec = copy.deepcopy(template["spec"])
    else:
        if source_run_spec is None:
            raise ValueError("spec.retrain.fromTrainingRun names a TrainingRun that does not exist")
        run_spec = deep_merge(source_run_spec, retrain.get("overrides") or {})
    # A retrain is always judged against what is served now, on the same fresh holdout.
    evaluation = dict(run_spec.get("evaluation") or {})
    evaluation["compareTo"] = "champion"
    evaluation["championRef"] = {"name": spec["targetRef"]["name"]}
    evaluation.setdefault(
        "metric", "accuracy" if run_spec["model"].get("task") == "classification" else "rmse"
    )
    run_spec["evaluation"] = evaluation
    template_meta = template.get("metadata") or {}
    labels = {
        **(template_meta.get("labels") or {}),
        **labels_for("driftpolicy", meta["name"], "retrain", retrain_reason=reason.lower()),
    }
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {
            "name": child_name(meta["name"], f"r{number}"),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(template_meta.get("annotations") or {}),
            "ownerReferences": [owner_reference(policy)],
        },
        "spec": run_spec,
    }


def retrain_image_field(retrain: Mapping[str, Any]) -> str:
    """Where a retrain run's image comes from, as a refusal names it."""
    if retrain.get("template"):
        return "spec.retrain.template.spec.image"
    if "image" in (retrain.get("overrides") or {}):
        return "spec.retrain.overrides.image"
    source = (retrain.get("fromTrainingRun") or {}).get("name", "?")
    return f"spec.image of TrainingRun {source} (copied by spec.retrain.fromTrainingRun)"


# --- the decision ---------------------------------------------------------------------------


def _run_outcome(run: Mapping[str, Any] | None) -> tuple[str, str]:
    """(outcome, message) of a retrain run from its status."""
    if run is None:
        return "Failed", "the retrain TrainingRun was deleted before it finished"
    status = run.get("status") or {}
    phase = status.get("phase") or "Pending"
    model = status.get("model") or {}
    metrics = model.get("metrics") or {}
    champion = model.get("championMetrics") or {}
    metric = (run["spec"].get("evaluation") or {}).get("metric", "")
    if phase == "Succeeded":
        return (
            "Succeeded",
            f"{metric}={metrics.get(metric)} beats the champion's {champion.get(metric)}",
        )
    if phase == "Failed":
        reason = (status.get("lastFailure") or {}).get("reason", "")
        if reason == Reason.GATE_FAILED:
            return "Rejected", (
                f"the champion stays: challenger {metric}={metrics.get(metric)}, "
                f"champion {metric}={champion.get(metric)}"
            )
        return "Failed", status.get("message") or "the retrain failed"
    return (
        "Running" if phase == "Training" else "Pending"
    ), f"retrain {run['metadata']['name']} is {phase}"


def decide(
    policy: Mapping[str, Any],
    now: datetime,
    measurement: DriftMeasurement | None,
    runs: Mapping[str, Mapping[str, Any]],
    source_run_spec: Mapping[str, Any] | None = None,
    images: ImagePolicy | None = None,
    registry_champion: Resolution | None = None,
    target_model: Mapping[str, Any] | None = None,
) -> Decision:
    """Next status of a DriftPolicy. ``runs`` are its retrain TrainingRuns by name; a retrain
    run is created only with an image ``images`` allows (None: no image may be named).

    ``target_model``: the target ModelDeployment's spec.model when it was read (the promotion's
    message says which source it replaces; a promotion refused before is cleared once the
    target names that run).

    ``registry_champion``: when the target serves from ``spec.model.registry``, what the
    registry's ``champion`` alias resolved to (:mod:`kubeloop.registry.champion`), the model
    the retrain is judged against. MLflow unreachable: the retrain waits (nothing is created,
    what asked for it stays pending and is tried again at the next reconcile)."""
    meta, spec = policy["metadata"], policy["spec"]
    generation = int(meta.get("generation") or 1)
    old: dict[str, Any] = dict(policy.get("status") or {})
    status: dict[str, Any] = {**old, "observedGeneration": generation}
    conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
    events: list[Event] = []
    promote: dict[str, Any] | None = None
    create: dict[str, Any] | None = None
    retrain = spec.get("retrain") or {}

    def condition(type_: str, value: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_wire_condition(conditions, type_, value, reason, message, now, generation)

    def fail(reason: str, message: str) -> None:
        status["lastFailure"] = {"reason": reason, "message": message, "time": wire_time(now)}

    def clear_refused_promotion(reason: str, message: str) -> None:
        """Degraded (a promotion the API server refused, :func:`promotion_refused`) ends."""
        if any(
            c.get("type") == ConditionType.DEGRADED and c.get("status") == "True"
            for c in conditions
        ):
            condition(ConditionType.DEGRADED, False, reason, message)

    # 1. Follow the retrain in flight to its end.
    last = dict(old.get("lastRetrain") or {})
    if last and last.get("outcome") in IN_FLIGHT:
        outcome, message = _run_outcome(runs.get(last["name"]))
        if outcome != last["outcome"]:
            last["outcome"] = outcome
            if outcome == "Succeeded" and retrain.get("autoPromote"):
                promote = promotion_patch(last["name"])
                last["outcome"] = "Promoted"
                message = (
                    f"{message}; ModelDeployment {spec['targetRef']['name']}"
                    f"{_replaced_source(target_model)} now rolls it out as a canary"
                )
                clear_refused_promotion(Reason.PROMOTED, f"retrain {last['name']} was promoted")
                events.append(
                    Event(
                        "Normal",
                        Reason.RETRAIN_SUCCEEDED,
                        f"retrain {last['name']} promoted: {message}",
                    )
                )
            elif outcome == "Succeeded":
                events.append(
                    Event(
                        "Normal",
                        Reason.RETRAIN_SUCCEEDED,
                        f"retrain {last['name']} succeeded: {message}; promote it by hand (autoPromote is off)",
                    )
                )
            elif outcome == "Rejected":
                events.append(
                    Event("Normal", Reason.RETRAIN_REJECTED, f"retrain {last['name']}: {message}")
                )
            elif outcome == "Failed":
                events.append(
                    Event(
                        "Warning",
                        Reason.RETRAIN_FAILED,
                        f"retrain {last['name']} failed: {message}",
                    )
                )
                fail(Reason.RETRAIN_FAILED, message)
            last["message"] = message[:1024]
        status["lastRetrain"] = last
    served_run = ((target_model or {}).get("trainingRunRef") or {}).get("name")
    if last and served_run == last.get("name"):
        clear_refused_promotion(
            Reason.PROMOTED, f"ModelDeployment {spec['targetRef']['name']} serves {served_run}"
        )
    in_flight = bool(last) and last.get("outcome") in IN_FLIGHT
    condition(
        ConditionType.RETRAIN_IN_FLIGHT,
        in_flight,
        Reason.RETRAIN_CREATED if in_flight else Reason.NO_DRIFT,
        f"retrain {last.get('name')} is {last.get('outcome')}"
        if in_flight
        else "no retrain running",
    )

    # 2. Record the drift check.
    wanted: RetrainReason | None = None
    if measurement is not None:
        interval = parse_duration(spec.get("interval", "5m"))
        status["lastCheckTime"] = wire_time(now)
        status["nextCheckTime"] = wire_time(now + interval)
        status["samples"] = measurement.samples
        min_samples = int(spec.get("minSamples", DEFAULT_MIN_SAMPLES))
        if measurement.error is not None:
            condition(ConditionType.READY, False, measurement.error_reason, measurement.error)
            if old.get("message") != measurement.error:
                events.append(Event("Warning", measurement.error_reason, measurement.error))
            fail(measurement.error_reason, measurement.error)
            status["message"] = measurement.error
        elif measurement.performance is not None:
            wanted = _judge_performance(
                spec.get("performance") or {},
                measurement.performance,
                old,
                status,
                condition,
                events,
                now,
            )
        elif measurement.verdict is None or measurement.samples < min_samples:
            message = f"{measurement.samples} samples in the window, fewer than minSamples={min_samples}: no verdict"
            condition(ConditionType.READY, True, Reason.NOT_ENOUGH_SAMPLES, message)
            condition(ConditionType.NOT_ENOUGH_DATA, True, Reason.NOT_ENOUGH_SAMPLES, message)
            status["message"] = message
        else:
            verdict = measurement.verdict
            condition(
                ConditionType.NOT_ENOUGH_DATA,
                False,
                Reason.NO_DRIFT,
                f"{measurement.samples} samples",
            )
            status["scores"] = verdict.scores
            status["drifted"] = verdict.drifted
            status["driftedFeatures"] = verdict.drifted_features
            status["driftedShare"] = round(verdict.share, 4)
            moved = ", ".join(verdict.drifted_features) or "none"
            prediction = " (prediction drifted too)" if verdict.prediction_drifted else ""
            if verdict.drifted:
                message = f"drift: {len(verdict.drifted_features)}/{verdict.feature_count} features moved ({moved}){prediction}"
                condition(ConditionType.DRIFTED, True, Reason.DRIFT_DETECTED, message)
                if not old.get("drifted"):
                    events.append(Event("Warning", Reason.DRIFT_DETECTED, message))
                wanted = "Drift"
            else:
                message = f"no drift: {len(verdict.drifted_features)}/{verdict.feature_count} features moved ({moved}){prediction}"
                condition(ConditionType.DRIFTED, False, Reason.NO_DRIFT, message)
            condition(
                ConditionType.READY,
                True,
                Reason.DRIFT_DETECTED if verdict.drifted else Reason.NO_DRIFT,
                message,
            )
            status["message"] = message
            check: dict[str, Any] = {
                "time": wire_time(now),
                "drifted": verdict.drifted,
                "driftedShare": round(verdict.share, 4),
                "samples": measurement.samples,
            }
            if measurement.report:
                check["report"] = measurement.report
            if measurement.report or old.get("report"):
                status["report"] = measurement.report  # None removes an older page (merge patch)
            history = list(old.get("history") or [])
            history.append(check)
            status["history"] = history[-MAX_HISTORY:]

    # 3. The schedule.
    schedule = spec.get("schedule")
    if schedule:
        base = parse_wire_time(
            old.get("nextScheduleTime") or meta.get("creationTimestamp") or wire_time(now)
        )
        if not old.get("nextScheduleTime"):
            base = next_schedule_time(schedule, base)
        if now >= base:
            wanted = wanted or "Schedule"
            base = next_schedule_time(schedule, now)
        status["nextScheduleTime"] = wire_time(base)

    # 4. A manual request.
    requested = (meta.get("annotations") or {}).get(RETRAIN_ANNOTATION)
    handled = (old.get("handledRequests") or {}).get("retrain")
    if requested and requested != handled:
        wanted = "Manual"
        status["handledRequests"] = {**(old.get("handledRequests") or {}), "retrain": requested}

    # A drift retrain that waits for MLflow is still wanted while the target stays drifted
    # (no new check is made for it: the next one comes at its interval).
    if wanted is None and measurement is None and waiting_for_registry(old) and old.get("drifted"):
        wanted = "Performance" if spec.get("performance") else "Drift"

    # 5. Retrain, within the limits.
    if wanted is not None and retrain:
        day = now.strftime("%Y-%m-%d")
        today = int(old.get("retrainsToday") or 0) if old.get("retrainsDay") == day else 0
        cooldown = parse_duration(retrain.get("cooldown", "1h"))
        last_time = parse_wire_time(last["time"]) if last.get("time") else None
        blocked: tuple[str, str] | None = None
        if in_flight:
            blocked = (
                Reason.RETRAIN_CREATED,
                f"{wanted.lower()} retrain skipped: {last['name']} is still {last['outcome']}",
            )
        elif today >= int(retrain.get("maxRetrainsPerDay", 3)):
            blocked = (
                Reason.RETRAIN_LIMIT_REACHED,
                f"{wanted.lower()} retrain skipped: maxRetrainsPerDay={retrain.get('maxRetrainsPerDay', 3)} reached today",
            )
        elif wanted != "Manual" and last_time is not None and now < last_time + cooldown:
            blocked = (
                Reason.COOLDOWN_ACTIVE,
                f"{wanted.lower()} retrain skipped: cooldown until {wire_time(last_time + cooldown)}",
            )
        registry_down = (
            registry_champion is not None and registry_champion.reason == REGISTRY_UNAVAILABLE
        )
        if blocked is not None:
            events.append(Event("Normal", blocked[0], blocked[1]))
            status["message"] = f"{status.get('message', '')}; {blocked[1]}".lstrip("; ")
        elif registry_down and registry_champion is not None:
            # Nothing half-created: no run that could not be judged against the champion.
            waiting = f"{wanted.lower()} retrain waits: {registry_champion.message}"
            if not waiting_for_registry(old):
                # Once per outage: a repeat would rewrite status and wake the policy again.
                events.append(Event("Warning", REGISTRY_UNAVAILABLE, waiting))
                fail(REGISTRY_UNAVAILABLE, waiting)
            condition(ConditionType.RETRAIN_IN_FLIGHT, False, REGISTRY_UNAVAILABLE, waiting)
            if waiting not in str(status.get("message") or ""):
                status["message"] = f"{status.get('message', '')}; {waiting}".lstrip("; ")
            # What asked for the retrain stays pending, so each reconcile (the resync timer)
            # asks MLflow again: a manual request stays unhandled, a scheduled retrain stays
            # due, and a drifted target stays drifted until its next check.
            if wanted == "Manual":
                status["handledRequests"] = dict(old.get("handledRequests") or {})
                if not status["handledRequests"]:
                    del status["handledRequests"]
            elif wanted == "Schedule":
                status["nextScheduleTime"] = old.get("nextScheduleTime") or wire_time(now)
        else:
            number = int(old.get("retrainCount") or 0) + 1
            try:
                create = retrain_run(policy, number, wanted, source_run_spec)
            except ValueError as error:
                fail(Reason.INVALID_SPEC, str(error))
                condition(ConditionType.READY, False, Reason.INVALID_SPEC, str(error))
                events.append(Event("Warning", Reason.INVALID_SPEC, str(error)))
            image_problem = (
                None
                if create is None
                else (images or ImagePolicy("")).problem(
                    retrain_image_field(retrain), create["spec"].get("image")
                )
            )
            if image_problem is not None:
                # The run would be refused anyway; the policy says why, and nothing is created.
                create = None
                fail(IMAGE_NOT_ALLOWED, image_problem)
                condition(ConditionType.READY, False, IMAGE_NOT_ALLOWED, image_problem)
                events.append(Event("Warning", IMAGE_NOT_ALLOWED, image_problem))
            elif create is not None:
                name = create["metadata"]["name"]
                status["lastRetrain"] = {
                    "name": name,
                    "reason": wanted,
                    "time": wire_time(now),
                    "outcome": "Pending",
                }
                status["retrainCount"] = number
                status["retrainsToday"] = today + 1
                status["retrainsDay"] = day
                reason = {
                    "Drift": Reason.RETRAIN_CREATED,
                    "Performance": Reason.RETRAIN_CREATED,
                    "Schedule": Reason.SCHEDULED_RETRAIN,
                    "Manual": Reason.MANUAL_RETRAIN,
                }[wanted]
                events.append(
                    Event("Normal", reason, f"created TrainingRun {name} ({wanted.lower()})")
                )
                clear_refused_promotion(Reason.RETRAIN_CREATED, f"retrain {name} was created")
                condition(
                    ConditionType.RETRAIN_IN_FLIGHT,
                    True,
                    Reason.RETRAIN_CREATED,
                    f"retrain {name} is Pending",
                )
                judged = measurement is not None and (
                    measurement.verdict is not None
                    or (
                        measurement.performance is not None
                        and measurement.performance.live is not None
                    )
                )
                if status.get("history") and judged:
                    status["history"][-1]["retrain"] = name

    status["conditions"] = conditions
    return Decision(
        status=status,
        create_run=create,
        promote=promote,
        events=events,
        requeue_after=_requeue_after(status, now),
    )


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _judge_performance(
    performance: Mapping[str, Any],
    reading: PerformanceReading,
    old: Mapping[str, Any],
    status: dict[str, Any],
    condition: Callable[[str, bool, str, str], None],
    events: list[Event],
    now: datetime,
) -> RetrainReason | None:
    """Record a performance check in ``status``; "Performance" when a retrain is wanted."""
    metric, labels = reading.metric, reading.labels
    min_labels = int(performance.get("minLabels", DEFAULT_MIN_LABELS))
    tolerance = float(performance.get("tolerance", DEFAULT_TOLERANCE))
    record: dict[str, Any] = {
        "metric": metric,
        "labels": labels,
        "reference": round(reading.reference, 6),
    }
    status["performance"] = record
    if reading.live is None or labels < min_labels:
        message = (
            f"{labels} labelled rows arrived in the window, fewer than performance.minLabels={min_labels}: "
            f"no verdict on {metric} (send labels to the servers' /feedback, or lower minLabels)"
        )
        if reading.first_scrape:
            message = (
                "no verdict yet: the first scrape of the stable pods only records their feedback "
                "counters; the next check compares (the span is interval)"
            )
        condition(ConditionType.READY, True, Reason.NOT_ENOUGH_LABELS, message)
        condition(ConditionType.NOT_ENOUGH_DATA, True, Reason.NOT_ENOUGH_LABELS, message)
        status["message"] = message
        return None
    bound = perf.limit(metric, reading.reference, tolerance)
    is_degraded = perf.degraded(metric, reading.live, reading.reference, tolerance)
    record.update(
        {"live": round(reading.live, 6), "limit": round(bound, 6), "degraded": is_degraded}
    )
    condition(
        ConditionType.NOT_ENOUGH_DATA, False, Reason.PERFORMANCE_HELD, f"{labels} labelled rows"
    )
    worse = "above" if metric in perf.LOWER_IS_BETTER else "below"
    comparison = (
        f"live {metric} {_fmt(reading.live)} over {labels} labels vs reference {_fmt(reading.reference)} "
        f"(limit {_fmt(bound)}, tolerance {tolerance:g})"
    )
    if is_degraded:
        message = f"performance degraded: {comparison}: {worse} the limit"
        condition(ConditionType.DRIFTED, True, Reason.PERFORMANCE_DEGRADED, message)
        condition(ConditionType.READY, True, Reason.PERFORMANCE_DEGRADED, message)
        if not old.get("drifted"):
            events.append(Event("Warning", Reason.PERFORMANCE_DEGRADED, message))
    else:
        message = f"performance held: {comparison}"
        condition(ConditionType.DRIFTED, False, Reason.PERFORMANCE_HELD, message)
        condition(ConditionType.READY, True, Reason.PERFORMANCE_HELD, message)
        if old.get("drifted"):
            events.append(Event("Normal", Reason.PERFORMANCE_HELD, message))
    status["drifted"] = is_degraded
    status["message"] = message
    history = list(old.get("history") or [])
    history.append({"time": wire_time(now), "drifted": is_degraded, "samples": labels})
    status["history"] = history[-MAX_HISTORY:]
    return "Performance" if is_degraded else None


def performance_reading(
    metric: str, counts: perf.LabelledCounts, reference: float
) -> PerformanceReading:
    """The reading of one check from the window's counter increases."""
    return PerformanceReading(metric, counts.labels, perf.live_value(metric, counts), reference)


def reference_value(
    performance: Mapping[str, Any], run: Mapping[str, Any] | None, stable_run_name: str | None
) -> tuple[float | None, tuple[str, str] | None]:
    """(reference, problem): spec.performance.reference, else the metric in the stable model's
    TrainingRun's status.model.metrics. A problem is (reason, message naming the field and the
    fix); the task of that run must fit the metric."""
    metric = str(performance.get("metric"))
    task = perf.METRIC_TASK.get(metric)
    if run is not None:
        run_task = ((run.get("spec") or {}).get("model") or {}).get("task")
        if run_task and task and run_task != task:
            fits = "accuracy or f1" if run_task == "classification" else "mae or rmse"
            return None, (
                Reason.INVALID_SPEC,
                f"spec.performance.metric: {metric} is a {task} metric, and TrainingRun "
                f"{run['metadata']['name']!r} trained a {run_task} model; use {fits}",
            )
    if performance.get("reference") is not None:
        return float(performance["reference"]), None
    if not stable_run_name:
        return None, (
            Reason.REFERENCE_UNAVAILABLE,
            "spec.performance.reference: the stable model was not trained by a TrainingRun (it is "
            f"pinned by storageUri), so there is no holdout {metric} to compare with; set "
            "spec.performance.reference",
        )
    if run is None:
        return None, (
            Reason.REFERENCE_UNAVAILABLE,
            f"spec.performance.reference: TrainingRun {stable_run_name!r}, which trained the stable "
            f"model, is gone, so its holdout {metric} is unknown; set spec.performance.reference",
        )
    value = (((run.get("status") or {}).get("model") or {}).get("metrics") or {}).get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None, (
            Reason.REFERENCE_UNAVAILABLE,
            f"spec.performance.reference: TrainingRun {stable_run_name!r} recorded no holdout "
            f"{metric} (status.model.metrics); pick a metric it recorded or set "
            "spec.performance.reference",
        )
    return float(value), None


def _requeue_after(status: Mapping[str, Any], now: datetime) -> float | None:
    moments = [
        parse_wire_time(status[k]) for k in ("nextCheckTime", "nextScheduleTime") if status.get(k)
    ]
    if not moments:
        return None
    return max(1.0, (min(moments) - now).total_seconds())


def live_counts_query(model: str, sha: str, window: timedelta) -> str:
    """PromQL: per-feature, per-bin counts the stable servers saw over the window, summed
    over replicas."""
    seconds = max(int(window.total_seconds()), 1)
    return (
        "sum by (feature, bin) (increase(kubeloop_serve_feature_bin_total"
        f'{{model="{model}",sha="{sha}"}}[{seconds}s]))'
    )


def labelled_counts(
    samples: Sequence[tuple[Mapping[str, str], float]],
) -> dict[str, dict[str, float]]:
    """Group (labels, value) samples into ``{feature: {bin: count}}``; missing values have no bin."""
    grouped: dict[str, dict[str, float]] = {}
    for labels, value in samples:
        if labels.get("bin") == "missing":
            continue
        feature_bins = grouped.setdefault(labels["feature"], {})
        feature_bins[labels["bin"]] = feature_bins.get(labels["bin"], 0.0) + value
    return grouped
