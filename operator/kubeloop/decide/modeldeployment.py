"""What a ModelDeployment should look like next: the rollout state machine. Pure: no I/O, no clock.

The controller reads the ModelDeployment, its Deployments, autoscaler, disruption budget,
router object and the TrainingRun its spec names; runs the analysis measurements
:func:`analysis_plan` asks for; then calls :func:`decide` with all of it and ``now``, and
applies what comes back.

The state lives in ``status`` (so a crash and restart resume at the same step):

* ``stable`` - the model answering users; ``canary`` - the model being rolled out (kept after
  an abort, so ``retry`` knows what to retry); ``previous`` - the model before the last
  promotion (``undo`` sets spec.model to it);
* ``currentStep`` / ``stepStartedAt`` - where the rollout is and since when (pause and shadow
  durations count from the moment the step's pods were ready);
* ``canaryWeight`` - the weight *applied* (a weight is applied only once the canary's pods
  for it are ready); ``shadowPercent`` - the share mirrored to the canary;
* ``analysis`` - the latest measurements; ``aborted``; ``handledRequests``.

A rollout:

1. ``spec.model`` names another artifact than ``status.stable`` -> the canary Deployment
   runs it, ``currentStep`` 0. Undo (the new model is ``status.previous``) skips the steps:
   rolling back to the model served before is the fast path, not an experiment.
2. Steps run in order. ``shadow``: the canary gets pods but no user traffic, and the stable
   Deployment is restarted with ``--shadow-url``/``--shadow-percent`` so it mirrors; the
   duration starts once both are ready. ``setWeight``: the canary is scaled for the weight
   first, the weight is applied when those pods are ready. ``pause``: hold for the duration,
   or until promoted. ``analysis``: measure now (and every interval) until ``count`` rounds
   pass; more than ``failureLimit`` failed rounds abort; a shadow step's mirroring goes on
   through it, and the canary keeps at least one pod.
3. Background analysis (``rollout.analysis``) measures every ``interval`` while the canary
   is up; more than ``failureLimit`` consecutive failed rounds abort.
4. After the last step (or ``kubeloop.io/promote-full``) comes promotion, designed to leave
   no traffic gap: the stable Deployment is updated to the canary's model (a rolling update
   that never removes a ready pod first) while the canary keeps its share; once every stable
   pod runs the new model and is ready, all traffic goes to stable and the canary is scaled
   to 0. Roles are never swapped, so ``track="stable"`` series always mean the served model.
5. Abort (failed analysis or ``kubeloop.io/abort``): weight 0 and shadow off at once (the
   stable pods never went away), the canary scaled to 0, ``Degraded`` naming the metric and
   its value. ``kubeloop.io/retry`` starts the same rollout again from step 0; a new
   ``spec.model`` starts a new one; ``spec.model`` back to the stable model cancels it.

``spec.paused`` freezes steps and their timers; analysis keeps running (a paused canary that
goes bad is still aborted). The moment a pause began is the ``Progressing`` condition's
``lastTransitionTime`` (status Unknown, reason Paused), so resuming shifts ``stepStartedAt``
by the paused time and a pause of a timed step neither shortens nor restarts it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubeloop.analysis.base import AnalysisTarget, Measurement, Verdict, judge
from kubeloop.api.common import parse_duration
from kubeloop.api.conditions import ConditionType, Reason
from kubeloop.api.modeldeployment import (
    ABORT_ANNOTATION,
    MAX_ANALYSIS_RUNS,
    PROMOTE_ANNOTATION,
    PROMOTE_FULL_ANNOTATION,
    RETRY_ANNOTATION,
)
from kubeloop.api.wire import InvalidResource, from_wire
from kubeloop.decide.common import Event, parse_wire_time, set_wire_condition, wire_time
from kubeloop.decide.server_pods import POD_CHECK_AFTER, ServerRefusal, server_refusal
from kubeloop.registry.decide import REGISTRY_UNAVAILABLE, Resolution
from kubeloop.resources.serving import (
    SHA_ANNOTATION,
    ModelRef,
    RegistryVersion,
    ServingSettings,
    Shadow,
    build_hpa,
    build_pdb,
    build_services,
    build_track_deployment,
    deployment_name,
    hpa_name,
    pdb_name,
    pod_metadata_conflicts,
    selector_string,
    server_port,
    shadow_url,
    track_selector,
    track_service_name,
)
from kubeloop.traffic import Backends, WeightPatch, router_for
from kubeloop.trust.images import IMAGE_NOT_ALLOWED, ImagePolicy

PROGRESSING, HEALTHY, PAUSED, DEGRADED = "Progressing", "Healthy", "Paused", "Degraded"
DEFAULT_INTERVAL = "1m"
DEFAULT_MIN_SAMPLES = 10
DEFAULT_INCONCLUSIVE_LIMIT = 3
REASON_TRAFFIC_ROUTING = "TrafficRoutingFailed"
REASON_ROLLOUT_CANCELLED = "RolloutCancelled"
REASON_REQUEST_IGNORED = "RequestIgnored"
REASON_PROMOTING = "Promoting"

REQUESTS = {
    "abort": ABORT_ANNOTATION,
    "retry": RETRY_ANNOTATION,
    "promoteFull": PROMOTE_FULL_ANNOTATION,
    "promote": PROMOTE_ANNOTATION,
}


@dataclass(frozen=True)
class Observed:
    """The ModelDeployment's children and references as last read from the API server."""

    stable: Mapping[str, Any] | None = None
    canary: Mapping[str, Any] | None = None
    hpa: Mapping[str, Any] | None = None
    route: Mapping[str, Any] | None = None
    training_run: Mapping[str, Any] | None = None
    pdb: Mapping[str, Any] | None = None
    registry: Resolution | None = None
    """What ``spec.model.registry`` resolved to (:mod:`kubeloop.registry.decide`), if set."""
    server_pods: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    """A track's server pods, read only for the tracks :func:`tracks_to_inspect` names."""
    route_refused: str | None = None
    """Why the API server refused this reconcile's write of the route's weights, if it did
    (the controller then decides again with it: the rollout holds as TrafficRoutingFailed)."""


@dataclass
class Decision:
    """What the controller must do, in this order: route weights and Services, Deployments,
    autoscaler, disruption budget, then status and events."""

    status: dict[str, Any]
    deployments: list[dict[str, Any]] = field(default_factory=list)
    scale_to_zero: list[str] = field(default_factory=list)
    """Deployments to scale to 0 without rewriting them (a canary with no model in status)."""
    services: list[dict[str, Any]] = field(default_factory=list)
    hpa: dict[str, Any] | None = None
    delete_hpa: str | None = None
    pdb: dict[str, Any] | None = None
    """The stable track's PodDisruptionBudget (spec.server.podDisruptionBudget)."""
    delete_pdb: str | None = None
    route: WeightPatch | None = None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass(frozen=True)
class AnalysisPlan:
    """The metrics to measure now (wire-form ``AnalysisMetric`` dicts, unique by name)."""

    metrics: list[dict[str, Any]]
    target: AnalysisTarget
    background: list[dict[str, Any]]
    step: list[dict[str, Any]]


# --- reading the spec and status ----------------------------------------------------------------


def _steps(md: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(((md["spec"].get("rollout") or {}).get("steps")) or [])


def _background(md: Mapping[str, Any]) -> dict[str, Any]:
    return dict(((md["spec"].get("rollout") or {}).get("analysis")) or {})


def registry_version(block: Mapping[str, Any] | None) -> RegistryVersion | None:
    """``{name, version}`` of a status block (or a resolution's source and version) as a
    :class:`RegistryVersion`; None when either is missing or the version is not a number."""
    if not block or not block.get("name"):
        return None
    try:
        version = int(str(block.get("version")))
    except ValueError:
        return None
    return RegistryVersion(str(block["name"]), version) if version >= 1 else None


def _model_ref(block: Mapping[str, Any] | None) -> ModelRef | None:
    if not block or not block.get("uri") or not block.get("sha256"):
        return None
    return ModelRef(
        str(block["uri"]),
        str(block["sha256"]),
        block.get("trainingRun"),
        registry_version(block.get("registry")),
    )


def _served_block(model: ModelRef, deployment: Mapping[str, Any] | None) -> dict[str, Any]:
    observed = (deployment or {}).get("status") or {}
    block: dict[str, Any] = {
        "uri": model.uri,
        "sha256": model.sha256,
        "revision": model.revision,
        "replicas": int(observed.get("replicas") or 0),
        "readyReplicas": int(observed.get("readyReplicas") or 0),
    }
    if model.training_run:
        block["trainingRun"] = model.training_run
    if model.registry is not None:
        block["registry"] = model.registry.wire()
    return block


def resolve_target(
    md: Mapping[str, Any],
    training_run: Mapping[str, Any] | None,
    registry: Resolution | None = None,
) -> tuple[ModelRef | None, tuple[str, str, bool] | None]:
    """The model spec.model names, or why it cannot be served yet: ``(reason, message,
    is_failure)`` - a failure needs a person, anything else is waiting."""
    source = md["spec"].get("model") or {}
    if source.get("registry"):
        if registry is None:
            return None, (REGISTRY_UNAVAILABLE, "spec.model.registry is not resolved yet", False)
        if registry.uri is None or registry.sha256 is None:
            return None, (
                str(registry.reason or REGISTRY_UNAVAILABLE),
                str(registry.message or "spec.model.registry is not resolved yet"),
                not registry.waiting,
            )
        origin = registry_version({"name": source["registry"].get("name"), "version": registry.version})
        return ModelRef(registry.uri, registry.sha256, registry=origin), None
    ref = (source.get("trainingRunRef") or {}).get("name")
    if not ref:
        return ModelRef(str(source["storageUri"]), str(source["sha256"])), None
    if training_run is None:
        return None, (
            Reason.MODEL_NOT_FOUND,
            f"TrainingRun {ref!r} (spec.model.trainingRunRef) does not exist in this namespace; "
            "create it or point spec.model at an existing run",
            True,
        )
    status = training_run.get("status") or {}
    phase = status.get("phase") or "Pending"
    model = status.get("model") or {}
    if phase == "Failed":
        return None, (
            Reason.MODEL_NOT_READY,
            f"TrainingRun {ref!r} failed ({status.get('message') or 'see kubectl describe tr/' + ref}); "
            "it has no model to serve: point spec.model at a succeeded run",
            True,
        )
    if phase != "Succeeded":
        return None, (
            Reason.MODEL_NOT_READY,
            f"TrainingRun {ref!r} is {phase}, not Succeeded: its model is served once it succeeds",
            False,
        )
    if not model.get("uri") or not model.get("sha256"):
        return None, (
            Reason.MODEL_NOT_FOUND,
            f"TrainingRun {ref!r} succeeded but its status.model has no uri and sha256",
            True,
        )
    return ModelRef(str(model["uri"]), str(model["sha256"]), ref), None


def deployment_rolled(deployment: Mapping[str, Any] | None, sha256: str, replicas: int) -> bool:
    """Whether a Deployment runs ``replicas`` ready pods, all of the template serving ``sha256``
    (and, when shadowing, all with the current flags: the template is what we applied)."""
    if deployment is None:
        return False
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    template = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    if template.get(SHA_ANNOTATION) != sha256 or int(spec.get("replicas") or 0) != replicas:
        return False
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False
    if replicas == 0:
        return int(status.get("replicas") or 0) == 0
    return (
        int(status.get("updatedReplicas") or 0) >= replicas
        and int(status.get("readyReplicas") or 0) >= replicas
        and int(status.get("replicas") or 0) == replicas
    )


def shadow_flags(deployment: Mapping[str, Any] | None) -> tuple[str | None, int]:
    """The ``--shadow-url`` and ``--shadow-percent`` a Deployment's server was started with."""
    containers = (((deployment or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []
    args: list[str] = list((containers[0].get("args") or []) if containers else [])
    url, percent = None, 0
    for flag, value in itertools.pairwise(args):
        if flag == "--shadow-url":
            url = value
        elif flag == "--shadow-percent":
            percent = int(float(value))
    return url, percent


def ready_replicas(deployment: Mapping[str, Any] | None, sha256: str) -> int:
    """Ready pods of a Deployment whose template serves ``sha256`` (0 for another model)."""
    if deployment is None:
        return 0
    template = (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
        "annotations"
    ) or {}
    if template.get(SHA_ANNOTATION) != sha256:
        return 0
    status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return 0
    return min(int(status.get("readyReplicas") or 0), int(status.get("updatedReplicas") or 0))


def tracks_to_inspect(md: Mapping[str, Any], observed: Observed, now: datetime) -> list[str]:
    """The tracks whose server pods the controller should read: those with pods asked for
    that have not been ready for :data:`POD_CHECK_AFTER` (the track's Ready condition has
    been False that long). Their container statuses say whether the server refused the model
    (:mod:`kubeloop.decide.server_pods`). A healthy or just-starting track is not read."""
    status = md.get("status") or {}
    tracks = []
    for track, deployment, condition_type in (
        ("stable", observed.stable, ConditionType.STABLE_READY),
        ("canary", observed.canary, ConditionType.CANARY_READY),
    ):
        model = _model_ref(status.get(track))
        if model is None or deployment is None or (track == "canary" and not _rollout_active(status)):
            continue
        wanted = int((deployment.get("spec") or {}).get("replicas") or 0)
        if wanted == 0 or ready_replicas(deployment, model.sha256) >= wanted:
            continue
        condition = _condition(status, condition_type) or {}
        since = _time(condition.get("lastTransitionTime"))
        if condition.get("status") == "False" and since is not None and now - since >= POD_CHECK_AFTER:
            tracks.append(track)
    return tracks


def _track_ready_condition(
    r: _Rollout, observed: Observed, track: str, model: ModelRef, ready: bool, counts: str
) -> ServerRefusal | None:
    """Set StableReady or CanaryReady; a track not ready whose server refused its model says
    why (its reason, and what the pod wrote in the message). Returns that refusal."""
    refusal = None if ready else server_refusal(observed.server_pods.get(track) or (), model.sha256)
    reason = Reason.REPLICAS_READY if ready else refusal.reason if refusal else Reason.REPLICAS_NOT_READY
    message = f"{model.revision}: {counts}" + (f"; {refusal.detail()}" if refusal else "")
    condition_type = ConditionType.STABLE_READY if track == "stable" else ConditionType.CANARY_READY
    r.condition(condition_type, ready, reason, message)
    return refusal


def _time(text: Any) -> datetime | None:
    return parse_wire_time(str(text)) if text else None


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _interval(text: str | None) -> timedelta:
    return parse_duration(text or DEFAULT_INTERVAL)


def _rollout_active(status: Mapping[str, Any]) -> bool:
    return bool(status.get("canary")) and not status.get("aborted")


# --- analysis: what to measure, and what the measurements mean ----------------------------------


def _step_metrics(md: Mapping[str, Any], step: Mapping[str, Any]) -> list[dict[str, Any]]:
    analysis = step.get("analysis") or {}
    return list(analysis.get("metrics") or _background(md).get("metrics") or [])


def _runs(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(((status.get("analysis") or {}).get("runs")) or [])


def _last_round(status: Mapping[str, Any]) -> datetime | None:
    times = [t for t in (_time(r.get("time")) for r in _runs(status)) if t is not None]
    return max(times) if times else None


def analysis_plan(
    md: Mapping[str, Any], observed: Observed, now: datetime
) -> AnalysisPlan | None:
    """Which metrics are due now, or None. Measurements happen only while a rollout runs (not
    while it promotes) and the canary has a ready pod; background metrics every ``interval``
    from the moment the canary became ready; an analysis step's at once, then every interval."""
    status = md.get("status") or {}
    if not _rollout_active(status) or _paused_inconclusive(status):
        return None
    canary = _model_ref(status.get("canary"))
    steps = _steps(md)
    current = int(status.get("currentStep") or 0)
    if canary is None or current >= len(steps) or ready_replicas(observed.canary, canary.sha256) < 1:
        return None
    last = _last_round(status)
    background = _background(md)
    background_metrics = list(background.get("metrics") or [])
    interval = _interval(background.get("interval"))
    due_background: list[dict[str, Any]] = []
    if background_metrics:
        ready_since = _time((_condition(status, ConditionType.CANARY_READY) or {}).get("lastTransitionTime"))
        # Background rounds keep their own cadence: an analysis step measuring more often
        # must not push them back for as long as it runs.
        anchor = _time((status.get("analysis") or {}).get("lastBackgroundTime")) or ready_since
        if anchor is not None and now >= anchor + interval:
            # shadowAgreement counts mirrored requests: in the background it is measured while
            # the stable pods mirror to the canary, and left out of rounds when nothing is
            # mirrored (it would only ever be inconclusive there).
            mirroring = bool(status.get("shadowPercent"))
            due_background = [m for m in background_metrics if mirroring or not _is_shadow_agreement(m)]
    due_step: list[dict[str, Any]] = []
    step = steps[current]
    window = interval
    if step.get("analysis") is not None:
        started = _time(status.get("stepStartedAt"))
        step_interval = _interval(step["analysis"].get("interval") or background.get("interval"))
        window = step_interval
        if started is not None and (last is None or last < started or now >= last + step_interval):
            due_step = _step_metrics(md, step)
    if not due_background and not due_step:
        return None
    unique: dict[str, dict[str, Any]] = {}
    for metric in [*due_step, *due_background]:
        unique.setdefault(str(metric["name"]), metric)
    target = AnalysisTarget(md["metadata"]["namespace"], md["metadata"]["name"], window)
    return AnalysisPlan(list(unique.values()), target, due_background, due_step)


def _is_shadow_agreement(metric: Mapping[str, Any]) -> bool:
    return (metric.get("provider") or "builtin") == "builtin" and metric.get("builtin") == "shadowAgreement"


def _run_block(verdict: Verdict, step: int, now: datetime) -> dict[str, Any]:
    block: dict[str, Any] = {"name": verdict.name, "passed": verdict.passed, "step": step, "time": wire_time(now)}
    for key, value in (("value", verdict.value), ("min", verdict.min), ("max", verdict.max)):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            block[key] = value
    if verdict.message:
        block["message"] = verdict.message[:4096]
    return block


def _describe(verdicts: Sequence[Verdict]) -> str:
    return ", ".join(
        f"{v.name}={v.value:.4g}" if v.value is not None else f"{v.name}=?" for v in verdicts
    )


# --- the decision ------------------------------------------------------------------------------


class _Rollout:
    """The working copy of a ModelDeployment's status while one decision is made."""

    def __init__(self, md: Mapping[str, Any], now: datetime) -> None:
        self.md = md
        self.now = now
        self.name = md["metadata"]["name"]
        self.generation = int(md["metadata"].get("generation") or 1)
        self.old: dict[str, Any] = dict(md.get("status") or {})
        self.status: dict[str, Any] = {k: v for k, v in self.old.items()}
        self.status["observedGeneration"] = self.generation
        self.conditions: list[dict[str, Any]] = list(self.old.get("conditions") or [])
        self.events: list[Event] = []
        self.steps = _steps(md)
        self.restarted = False
        self.router_error: str | None = None
        # The last step is done but no background round has passed yet (see _advance).
        self.holding_for_analysis = False

    # conditions and events
    def condition(self, type_: str, status: str | bool, reason: str, message: str) -> None:
        self.conditions = set_wire_condition(
            self.conditions, type_, status, reason, message, self.now, self.generation
        )

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def failure(self, reason: str, message: str) -> None:
        self.status["lastFailure"] = {"reason": reason, "message": message, "time": wire_time(self.now)}

    # rollout bookkeeping
    @property
    def step_index(self) -> int:
        return int(self.status.get("currentStep") or 0)

    @property
    def weight(self) -> int:
        return int(self.status.get("canaryWeight") or 0)

    def start(self, canary: ModelRef, first_step: int, reason: str, message: str) -> None:
        self.restarted = True
        self.status.update(
            canary=_served_block(canary, None),
            currentStep=first_step,
            canaryWeight=0,
            shadowPercent=0,
            aborted=False,
            analysis={"runs": [], "consecutiveFailures": 0, "failures": 0},
        )
        self.status.pop("stepStartedAt", None)
        self.event(reason, message)

    def enter_step(self, index: int) -> None:
        self.status["currentStep"] = index
        self.status.pop("stepStartedAt", None)

    def abort(self, reason: str, message: str) -> None:
        self.status.update(aborted=True, canaryWeight=0, shadowPercent=0)
        self.status.pop("stepStartedAt", None)
        self.condition(ConditionType.DEGRADED, True, reason, message)
        self.failure(reason, message)
        self.event(reason, message, warning=True)


def decide(
    md: Mapping[str, Any],
    observed: Observed,
    settings: ServingSettings,
    now: datetime,
    measurements: Mapping[str, Measurement] | None = None,
) -> Decision:
    """The next state of a ModelDeployment and the children that serve it."""
    r = _Rollout(md, now)
    try:
        from_wire("ModelDeployment", {**md, "status": None})
    except InvalidResource as error:
        message = f"{error}; fix the spec"
        r.condition(ConditionType.READY, False, Reason.INVALID_SPEC, message)
        r.condition(ConditionType.DEGRADED, True, Reason.INVALID_SPEC, message)
        if r.old.get("phase") != DEGRADED or r.old.get("message") != message:
            r.event(Reason.INVALID_SPEC, message, warning=True)
        r.failure(Reason.INVALID_SPEC, message)
        r.status.update(phase=DEGRADED, message=message, conditions=r.conditions)
        return Decision(status=r.status, events=r.events)
    image_problem = ImagePolicy.from_settings(settings.image, settings.allowed_images).problem(
        "spec.server.image", (md["spec"].get("server") or {}).get("image")
    )
    if image_problem is not None:
        return refused(md, now, IMAGE_NOT_ALLOWED, image_problem)
    metadata_conflicts = pod_metadata_conflicts(md)
    if metadata_conflicts:
        return refused(md, now, Reason.INVALID_SPEC, "; ".join(metadata_conflicts))

    spec = md["spec"]
    total = int(spec.get("replicas", 1))
    router = router_for((spec.get("rollout") or {}).get("trafficRouting"))
    target, problem = resolve_target(md, observed.training_run, observed.registry)
    _first_sight_of_requests(r)

    stable = _model_ref(r.status.get("stable"))
    if stable is None and target is not None:
        # First deployment: there is nothing to compare a canary with, so the model is stable.
        stable = target
        r.status["stable"] = _served_block(target, None)
        r.event(Reason.ROLLOUT_STARTED, f"serving {target.revision} on {total} replica(s)")

    # Is a rollout starting, going on, cancelled?
    canary = _model_ref(r.status.get("canary"))
    if target is not None and stable is not None:
        previous = _model_ref(r.status.get("previous"))
        if target.same_artifact(stable):
            if stable.registry is None and target.registry is not None:
                # A stable model recorded before status kept registry versions: learn it now,
                # so a later undo can pin it.
                r.status["stable"] = {**r.status["stable"], "registry": target.registry.wire()}
            if canary is not None:
                what = "rolled back" if not r.status.get("aborted") else "cleared"
                r.event(
                    REASON_ROLLOUT_CANCELLED,
                    f"spec.model is the stable model {stable.revision} again: rollout of "
                    f"{canary.revision} {what}",
                )
                _end_rollout(r)
                canary = None
        elif not target.same_artifact(canary):
            if target.same_artifact(previous):
                r.start(target, len(r.steps), Reason.ROLLED_BACK,
                        f"undo: rolling back to the previous model {target.revision} without steps")
            else:
                r.start(target, 0, Reason.ROLLOUT_STARTED,
                        f"rollout of {target.revision} started (stable: {stable.revision}, "
                        f"{len(r.steps)} step(s))")
            canary = target
    elif target is None and canary is not None and problem is not None:
        r.event(REASON_ROLLOUT_CANCELLED, f"spec.model no longer names {canary.revision}: "
                f"its rollout is stopped ({problem[1]})")
        _end_rollout(r)
        canary = None

    _handle_requests(r)
    verdicts = _record_analysis(r, md, observed, measurements or {})

    promoted = False
    if _rollout_active(r.status) and canary is not None and stable is not None:
        _unpause_shift(r, spec)
        _check_analysis(r, md, verdicts)
        # A route that cannot carry the weights (missing, or without our backends) holds the
        # rollout where it is: no step advances and nothing is promoted (TrafficRoutingFailed).
        routable = _route_error(md, observed, router, r.weight) is None
        if _rollout_active(r.status) and routable:
            if not spec.get("paused") and not _paused_inconclusive(r.status):
                _advance(r, md, observed, router, total, canary, stable)
            if r.step_index >= len(r.steps):
                promoted = _promote(r, observed, total, canary, stable)
                if promoted:
                    stable, canary = canary, None

    decision = Decision(status=r.status)
    _desired_children(r, decision, md, observed, settings, router, total)
    _write_status(r, md, observed, problem, total, promoted)
    r.status["conditions"] = r.conditions
    decision.status = r.status
    decision.events = r.events
    decision.requeue_after = _requeue(r, md)
    return decision


def refused(md: Mapping[str, Any], now: datetime, reason: str, message: str) -> Decision:
    """The operator will not act on this ModelDeployment (an image it may not run, a child
    name taken by an object it does not own): ``Degraded`` with ``reason``, one Warning Event
    per new message, and no children to write - what is running stays as it is."""
    r = _Rollout(md, now)
    r.condition(ConditionType.READY, False, reason, message)
    r.condition(ConditionType.DEGRADED, True, reason, message)
    if r.old.get("phase") != DEGRADED or r.old.get("message") != message:
        r.event(reason, message, warning=True)
        r.failure(reason, message)
    r.status.update(phase=DEGRADED, message=message, conditions=r.conditions)
    return Decision(status=r.status, events=r.events)


def _first_sight_of_requests(r: _Rollout) -> None:
    # A request annotation present before the operator ever wrote status (e.g. re-applied from
    # an old manifest) is recorded as handled, not acted on: requests are for a live rollout.
    if r.old.get("handledRequests") is not None or r.old.get("stable"):
        return
    annotations = r.md["metadata"].get("annotations") or {}
    r.status["handledRequests"] = {
        key: annotations[annotation] for key, annotation in REQUESTS.items() if annotation in annotations
    }


def _end_rollout(r: _Rollout) -> None:
    for key in ("canary", "stepStartedAt"):
        r.status.pop(key, None)
    r.status.update(canaryWeight=0, shadowPercent=0, aborted=False, currentStep=len(r.steps))
    r.status.pop("analysis", None)


def _handle_requests(r: _Rollout) -> None:
    annotations = r.md["metadata"].get("annotations") or {}
    handled = dict(r.status.get("handledRequests") or {})
    for key, annotation in REQUESTS.items():
        token = annotations.get(annotation)
        if token is None or handled.get(key) == token:
            continue
        handled[key] = token
        active = _rollout_active(r.status)
        canary = _model_ref(r.status.get("canary"))
        if key == "abort":
            if active:
                r.abort(Reason.ABORTED, f"rollout of {canary.revision if canary else '?'} aborted by "
                        f"request ({annotation}); all traffic is on stable")
            else:
                r.event(REASON_REQUEST_IGNORED, f"{annotation}: no rollout in progress, nothing to abort")
        elif key == "retry":
            if r.status.get("aborted") and canary is not None:
                r.start(canary, 0, Reason.ROLLOUT_STARTED,
                        f"retry ({annotation}): rollout of {canary.revision} starts again from step 0")
                r.condition(ConditionType.DEGRADED, False, Reason.ROLLOUT_STARTED, "rollout retried")
            else:
                r.event(REASON_REQUEST_IGNORED, f"{annotation}: no aborted rollout to retry")
        elif key == "promoteFull":
            if active:
                r.enter_step(len(r.steps))
                r.event(Reason.PROMOTED, f"promote-full requested: skipping the remaining steps, "
                        f"{canary.revision if canary else '?'} becomes stable")
            else:
                r.event(REASON_REQUEST_IGNORED, f"{annotation}: no rollout in progress, nothing to promote")
        elif key == "promote" and active and _paused_inconclusive(r.status):
            analysis = dict(r.status.get("analysis") or {})
            analysis.update(pausedInconclusive=False, consecutiveInconclusive=0)
            r.status["analysis"] = analysis
            r.event(Reason.STEP_ADVANCED, f"promote requested: rollout resumed after inconclusive "
                    f"analysis, step {r.step_index} ({_step_text(r.steps[r.step_index]) if r.step_index < len(r.steps) else 'promotion'}) goes on")
        elif key == "promote":
            if active and r.step_index < len(r.steps):
                index = r.step_index
                r.enter_step(index + 1)
                r.event(Reason.STEP_ADVANCED, f"promote requested: step {index} "
                        f"({_step_text(r.steps[index])}) skipped")
            else:
                r.event(REASON_REQUEST_IGNORED, f"{annotation}: no rollout step to promote past")
    r.status["handledRequests"] = handled


def _step_text(step: Mapping[str, Any]) -> str:
    if step.get("setWeight") is not None:
        return f"setWeight {step['setWeight']}"
    if step.get("shadow") is not None:
        shadow = step["shadow"]
        return f"shadow {shadow.get('percent', 100)}% for {shadow.get('duration')}"
    if step.get("pause") is not None:
        duration = step["pause"].get("duration")
        return f"pause {duration}" if duration else "pause until promoted"
    return "analysis"


def _record_analysis(
    r: _Rollout, md: Mapping[str, Any], observed: Observed, measurements: Mapping[str, Measurement]
) -> dict[str, list[Verdict]]:
    """Append this round's measurements to status, judged against each bound they serve."""
    if not measurements or not _rollout_active(r.status) or r.restarted:
        return {}
    plan = analysis_plan({**md, "status": r.old}, observed, r.now)
    if plan is None:
        return {}
    step = int(r.old.get("currentStep") or 0)
    verdicts: dict[str, list[Verdict]] = {"background": [], "step": []}
    runs = _runs(r.status)
    min_samples = int(_background(md).get("minSamples", DEFAULT_MIN_SAMPLES))
    for purpose, metrics in (("step", plan.step), ("background", plan.background)):
        for metric in metrics:
            name = str(metric["name"])
            measurement = measurements.get(name) or Measurement(name, None, "not measured")
            verdict = judge(metric, measurement, min_samples)
            verdicts[purpose].append(verdict)
    recorded: set[tuple[str, Any, Any]] = set()
    for verdict in [*verdicts["step"], *verdicts["background"]]:
        key = (verdict.name, verdict.min, verdict.max)
        if key not in recorded:
            recorded.add(key)
            runs.append(_run_block(verdict, step, r.now))
    analysis = dict(r.status.get("analysis") or {})
    analysis["runs"] = runs[-MAX_ANALYSIS_RUNS:]
    background = verdicts["background"]
    if background:
        failed = [v for v in background if not v.passed and not v.inconclusive]
        if failed:
            analysis["consecutiveFailures"] = int(analysis.get("consecutiveFailures") or 0) + 1
            analysis["failures"] = int(analysis.get("failures") or 0) + 1
        elif all(v.passed for v in background):
            analysis["consecutiveFailures"] = 0
        analysis["lastBackgroundResult"] = _round_result(background)
        analysis["lastBackgroundTime"] = wire_time(r.now)
    everything = [*verdicts["step"], *background]
    # A round that measured nothing usable neither passes nor fails; too many in a row pause
    # the rollout (see _check_analysis) instead of letting steps run out and promote.
    if _round_result(everything) == "Inconclusive":
        analysis["consecutiveInconclusive"] = int(analysis.get("consecutiveInconclusive") or 0) + 1
    else:
        analysis["consecutiveInconclusive"] = 0
    r.status["analysis"] = analysis
    if any(not v.passed and not v.inconclusive for v in everything):
        r.condition(ConditionType.ANALYSIS_PASSING, False, Reason.ANALYSIS_FAILED, _failed_text(everything))
    elif all(v.passed for v in everything):
        r.condition(ConditionType.ANALYSIS_PASSING, True, Reason.ANALYSIS_PASSED, _describe(everything))
    else:
        waiting = "; ".join(f"{v.name}: {v.message}" for v in everything if v.inconclusive)
        r.condition(ConditionType.ANALYSIS_PASSING, "Unknown", Reason.ANALYSIS_PENDING, waiting)
    _record_refusals(r, measurements)
    return verdicts


def _record_refusals(r: _Rollout, measurements: Mapping[str, Measurement]) -> None:
    """A metric the operator refused to measure (e.g. a prometheusUrl it may not query) is a
    spec problem, not missing data: AnalysisPassing False with the refusal's reason, and one
    Warning Event when it first appears (the rollout stays where it is, as for inconclusive)."""
    refusals = [m for m in measurements.values() if m.refusal]
    if not refusals:
        return
    reason = str(refusals[0].refusal)
    message = "; ".join(m.message or m.name for m in refusals)
    before: Mapping[str, Any] = next(
        (c for c in r.old.get("conditions") or [] if c.get("type") == ConditionType.ANALYSIS_PASSING), {}
    )
    r.condition(ConditionType.ANALYSIS_PASSING, False, reason, message)
    if before.get("reason") != reason:
        r.event(reason, message, warning=True)


def _round_result(verdicts: Sequence[Verdict]) -> str:
    if any(not v.passed and not v.inconclusive for v in verdicts):
        return "Failed"
    return "Passed" if all(v.passed for v in verdicts) else "Inconclusive"


def _paused_inconclusive(status: Mapping[str, Any]) -> bool:
    return bool((status.get("analysis") or {}).get("pausedInconclusive"))


def _inconclusive_limit(md: Mapping[str, Any], step: Mapping[str, Any] | None) -> int:
    default = int(_background(md).get("inconclusiveLimit", DEFAULT_INCONCLUSIVE_LIMIT))
    own = ((step or {}).get("analysis") or {}).get("inconclusiveLimit")
    return default if own is None else int(own)


def _background_gate_open(r: _Rollout, md: Mapping[str, Any]) -> bool:
    """With background metrics, the last step completes only after a background round passed."""
    metrics = _background(md).get("metrics") or []
    if not metrics:
        return True
    if all(_is_shadow_agreement(m) for m in metrics) and not any(s.get("shadow") is not None for s in r.steps):
        return True  # nothing is ever mirrored, so nothing of the background can be measured
    return (r.status.get("analysis") or {}).get("lastBackgroundResult") == "Passed"


def _failed_text(verdicts: Sequence[Verdict]) -> str:
    return "; ".join(v.message or v.name for v in verdicts if not v.passed and not v.inconclusive)


def _check_analysis(r: _Rollout, md: Mapping[str, Any], verdicts: Mapping[str, list[Verdict]]) -> None:
    """Abort when background or step analysis has failed more often than it may."""
    canary = _model_ref(r.status.get("canary"))
    revision = canary.revision if canary else "?"
    background = _background(md)
    limit = int(background.get("failureLimit") or 0)
    consecutive = int((r.status.get("analysis") or {}).get("consecutiveFailures") or 0)
    if verdicts.get("background") and consecutive > limit:
        failed = _failed_text(verdicts["background"])
        r.abort(Reason.ANALYSIS_FAILED,
                f"analysis failed {consecutive} time(s) in a row (failureLimit {limit}): {failed}; "
                f"rollout of {revision} aborted, all traffic is on stable")
        return
    index = r.step_index
    _check_inconclusive(r, md, verdicts)
    if index >= len(r.steps) or r.steps[index].get("analysis") is None:
        return
    step = r.steps[index]["analysis"]
    _, failed_rounds = _step_rounds(r, md, index)
    step_limit = int(step.get("failureLimit") or 0)
    if len(failed_rounds) > step_limit:
        r.abort(Reason.ANALYSIS_FAILED,
                f"analysis step {index} failed {len(failed_rounds)} time(s) (failureLimit "
                f"{step_limit}): {failed_rounds[-1]}; rollout of {revision} aborted, all traffic "
                "is on stable")


def _check_inconclusive(r: _Rollout, md: Mapping[str, Any], verdicts: Mapping[str, list[Verdict]]) -> None:
    """Pause the rollout when more rounds in a row were inconclusive than the limit allows."""
    analysis = dict(r.status.get("analysis") or {})
    if analysis.get("pausedInconclusive") or not any(verdicts.values()):
        return
    index = r.step_index
    limit = _inconclusive_limit(md, r.steps[index] if index < len(r.steps) else None)
    rounds = int(analysis.get("consecutiveInconclusive") or 0)
    if rounds <= limit:
        return
    waiting = "; ".join(
        f"{v.name}: {v.message}" for v in [*verdicts.get("step", []), *verdicts.get("background", [])]
        if v.inconclusive
    )
    analysis["pausedInconclusive"] = True
    r.status["analysis"] = analysis
    canary = _model_ref(r.status.get("canary"))
    r.event(Reason.ANALYSIS_INCONCLUSIVE,
            f"analysis inconclusive {rounds} round(s) in a row (inconclusiveLimit {limit}): {waiting}; "
            f"rollout of {canary.revision if canary else '?'} paused with the current weights; "
            "kubectl kubeloop promote resumes it, kubectl kubeloop abort sends all traffic to stable",
            warning=True)


def _step_rounds(r: _Rollout, md: Mapping[str, Any], index: int) -> tuple[int, list[str]]:
    """Passed rounds, and the failure text of failed rounds, of the analysis step ``index``."""
    started = _time(r.status.get("stepStartedAt"))
    if started is None:
        return 0, []
    names = {str(m["name"]) for m in _step_metrics(md, r.steps[index])}
    rounds: dict[str, list[dict[str, Any]]] = {}
    for run in _runs(r.status):
        moment = _time(run.get("time"))
        if run.get("step") == index and run.get("name") in names and moment is not None and moment >= started:
            rounds.setdefault(str(run["time"]), []).append(run)
    passed, failed = 0, []
    for runs in rounds.values():
        if any(not run.get("passed") and run.get("value") is not None for run in runs):
            failed.append("; ".join(str(run.get("message") or run["name"]) for run in runs if not run.get("passed")))
        elif len({run["name"] for run in runs}) == len(names) and all(run.get("passed") for run in runs):
            passed += 1
    return passed, failed


def _unpause_shift(r: _Rollout, spec: Mapping[str, Any]) -> None:
    # Resuming: the time spent paused does not count against the step's duration.
    progressing = _condition(r.old, ConditionType.PROGRESSING) or {}
    was_paused = progressing.get("status") == "Unknown" and progressing.get("reason") == Reason.PAUSED
    started = _time(r.status.get("stepStartedAt"))
    paused_since = _time(progressing.get("lastTransitionTime"))
    if spec.get("paused") or not was_paused or started is None or paused_since is None:
        return
    r.status["stepStartedAt"] = wire_time(started + max(timedelta(0), r.now - paused_since))


def _advance(
    r: _Rollout,
    md: Mapping[str, Any],
    observed: Observed,
    router: Any,
    total: int,
    canary: ModelRef,
    stable: ModelRef,
) -> None:
    """Run steps in order while they complete; stop at the first that must wait."""
    for _ in range(len(r.steps) + 1):
        index = r.step_index
        if index >= len(r.steps):
            r.status["shadowPercent"] = 0
            return
        step = r.steps[index]
        started = _time(r.status.get("stepStartedAt"))
        done = False
        if step.get("shadow") is not None:
            percent = int(step["shadow"].get("percent", 100))
            r.status["shadowPercent"] = percent
            split = router.split(total, applied_weight=r.weight, target_weight=r.weight, shadow_percent=percent)
            url, mirrored = shadow_flags(observed.stable)
            gate = (
                ready_replicas(observed.canary, canary.sha256) >= split.canary
                and url == shadow_url(md)
                and mirrored == percent
                and deployment_rolled(observed.stable, stable.sha256, split.stable)
            )
            if gate and started is None:
                r.status["stepStartedAt"] = wire_time(r.now)
                r.event(Reason.STEP_ADVANCED, f"step {index}: mirroring {percent}% of requests to "
                        f"{canary.revision} for {step['shadow'].get('duration')}")
            elif started is not None:
                done = r.now >= started + parse_duration(step["shadow"]["duration"])
        elif step.get("setWeight") is not None:
            weight = int(step["setWeight"])
            r.status["shadowPercent"] = 0
            split = router.split(total, applied_weight=r.weight, target_weight=weight)
            routable = _route_error(md, observed, router, weight) is None
            if routable and ready_replicas(observed.canary, canary.sha256) >= split.canary:
                if r.weight != weight:
                    r.event(Reason.STEP_ADVANCED, f"step {index}: {weight}% of traffic on {canary.revision}")
                r.status["canaryWeight"] = weight
                done = True
        elif step.get("pause") is not None:
            r.status["shadowPercent"] = 0
            duration = step["pause"].get("duration")
            if started is None:
                r.status["stepStartedAt"] = wire_time(r.now)
                started = r.now
                if not duration:
                    r.event(Reason.PAUSED, f"step {index}: paused until promoted "
                            "(kubectl kubeloop promote, or annotate kubeloop.io/promote)")
            done = bool(duration) and r.now >= started + parse_duration(duration)
        else:
            # An analysis step keeps the mirroring of a shadow step before it (shadowPercent is
            # left as that step set it): shadowAgreement right after a shadow step measures
            # requests that are still being mirrored, not a canary that just lost its traffic.
            if started is None:
                r.status["stepStartedAt"] = wire_time(r.now)
            else:
                passed, _ = _step_rounds(r, md, index)
                count = int(step["analysis"].get("count") or 1)
                done = passed >= count
        if not done:
            return
        if index + 1 == len(r.steps) and not _background_gate_open(r, md):
            r.holding_for_analysis = True
            return
        if step.get("analysis") is not None:
            r.event(Reason.ANALYSIS_PASSED, f"step {index}: analysis passed")
        r.enter_step(index + 1)


def _route_error(md: Mapping[str, Any], observed: Observed, router: Any, weight: int) -> str | None:
    """Why the router cannot put ``weight`` on its object, if it cannot."""
    if router.object_kind is None:
        return None
    if observed.route_refused:
        return observed.route_refused
    patch: WeightPatch = router.weight_patch(observed.route, _backends(md), weight)
    return patch.error


def _backends(md: Mapping[str, Any]) -> Backends:
    name = md["metadata"]["name"]
    return Backends(
        namespace=md["metadata"]["namespace"],
        stable_service=track_service_name(name, "stable"),
        canary_service=track_service_name(name, "canary"),
        port=server_port(md),
    )


def _promote(r: _Rollout, observed: Observed, total: int, canary: ModelRef, stable: ModelRef) -> bool:
    """Promotion: True once every stable pod serves the canary's model and is ready."""
    r.status["shadowPercent"] = 0
    if not deployment_rolled(observed.stable, canary.sha256, total):
        return False
    r.status["previous"] = {k: v for k, v in (("uri", stable.uri), ("sha256", stable.sha256),
                                              ("trainingRun", stable.training_run),
                                              ("registry", stable.registry and stable.registry.wire()),
                                              ("revision", stable.revision)) if v}
    r.status["stable"] = _served_block(canary, observed.stable)
    _end_rollout(r)
    r.condition(ConditionType.DEGRADED, False, Reason.PROMOTED, f"{canary.revision} promoted")
    r.event(Reason.PROMOTED, f"{canary.revision} is now stable (previous: {stable.revision})")
    return True


def _desired_children(
    r: _Rollout,
    decision: Decision,
    md: Mapping[str, Any],
    observed: Observed,
    settings: ServingSettings,
    router: Any,
    total: int,
) -> None:
    name = r.name
    stable = _model_ref(r.status.get("stable"))
    canary = _model_ref(r.status.get("canary"))
    active = _rollout_active(r.status)
    promoting = active and r.step_index >= len(r.steps)
    weight = r.weight if active else 0
    shadow_percent = int(r.status.get("shadowPercent") or 0) if active and not promoting else 0
    target_weight = weight
    if active and not promoting:
        step = r.steps[r.step_index]
        if step.get("setWeight") is not None:
            target_weight = max(weight, int(step["setWeight"]))
    if active:
        split = router.split(total, applied_weight=weight, target_weight=target_weight,
                             shadow_percent=shadow_percent)
        stable_replicas, canary_replicas = split.stable, split.canary
        if not promoting and r.steps[r.step_index].get("analysis") is not None:
            # Measurements need a ready canary pod; at weight 0 without mirroring the split
            # gives none, and the step would wait forever for a measurement.
            canary_replicas = max(canary_replicas, 1)
    else:
        stable_replicas, canary_replicas = total, 0
    if promoting and canary is not None:
        # The stable Deployment rolls to the new model at full size; the canary keeps its share
        # until that is done (see the module docstring).
        stable, stable_replicas = canary, total
    r.status["canaryWeight"] = weight
    r.status["shadowPercent"] = shadow_percent
    if stable is not None:
        shadow = Shadow(shadow_url(md), shadow_percent) if shadow_percent else None
        decision.deployments.append(
            build_track_deployment(md, "stable", stable, stable_replicas, settings, shadow)
        )
    if canary is not None:
        decision.deployments.append(build_track_deployment(md, "canary", canary, canary_replicas, settings))
    elif observed.canary is not None and int((observed.canary.get("spec") or {}).get("replicas") or 0) > 0:
        decision.scale_to_zero.append(deployment_name(name, "canary"))
    decision.services = build_services(md, weight)
    decision.hpa = build_hpa(md)
    if decision.hpa is None and observed.hpa is not None:
        decision.delete_hpa = hpa_name(name)
    decision.pdb = build_pdb(md)
    if decision.pdb is None and observed.pdb is not None:
        decision.delete_pdb = pdb_name(name)
    if router.object_kind is not None:
        decision.route = router.weight_patch(observed.route, _backends(md), weight)
        r.router_error = observed.route_refused or decision.route.error


def _write_status(
    r: _Rollout,
    md: Mapping[str, Any],
    observed: Observed,
    problem: tuple[str, str, bool] | None,
    total: int,
    promoted: bool,
) -> None:
    spec = md["spec"]
    status = r.status
    stable = _model_ref(status.get("stable"))
    canary = _model_ref(status.get("canary"))
    active = _rollout_active(status)
    promoting = active and r.step_index >= len(r.steps)
    if stable is not None:
        stable_deployment = observed.stable
        status["stable"] = _served_block(stable, stable_deployment)
    if canary is not None:
        status["canary"] = _served_block(canary, observed.canary)
    stable_status = (observed.stable or {}).get("status") or {}
    status["replicas"] = int(stable_status.get("replicas") or 0)
    status["readyReplicas"] = int(stable_status.get("readyReplicas") or 0)
    status["selector"] = selector_string(track_selector(r.name, "stable"))
    if status.get("currentStep") is None:
        status["currentStep"] = len(r.steps)

    # Ready: the stable model answers (at least one ready pod, or none were asked for).
    stable_ready = stable is not None and (
        ready_replicas(observed.stable, stable.sha256) >= 1 or total == 0
    )
    # A server that refused its model (exit code and termination message of a pod, read only
    # while the track is not ready): the reason says why; only a condition's message quotes
    # what the pod wrote.
    stable_refusal: ServerRefusal | None = None
    canary_refusal: ServerRefusal | None = None
    if stable is None:
        r.condition(ConditionType.STABLE_READY, False, Reason.REPLICAS_NOT_READY, "no model is served yet")
    else:
        wanted = int(((observed.stable or {}).get("spec") or {}).get("replicas") or 0)
        all_ready = stable_ready and ready_replicas(observed.stable, stable.sha256) >= wanted
        stable_refusal = _track_ready_condition(
            r, observed, "stable", stable, all_ready, f"{status['readyReplicas']}/{wanted} ready"
        )
    if canary is not None and active:
        canary_ready = ready_replicas(observed.canary, canary.sha256)
        wanted = int((observed.canary or {}).get("spec", {}).get("replicas") or 0)
        ok = canary_ready >= 1 and canary_ready >= wanted
        canary_refusal = _track_ready_condition(r, observed, "canary", canary, ok, f"{canary_ready} ready")
    elif _condition(status, ConditionType.CANARY_READY) is not None:
        r.condition(ConditionType.CANARY_READY, False, Reason.REPLICAS_NOT_READY, "no canary running")

    # Phase, Ready, Progressing, Degraded, message.
    if problem is not None and stable is None:
        reason, message, is_failure = problem
        phase = DEGRADED if is_failure else PROGRESSING
        r.condition(ConditionType.READY, False, reason, message)
        r.condition(ConditionType.PROGRESSING, not is_failure, reason, message)
        r.condition(ConditionType.DEGRADED, is_failure, reason, message)
        _set_phase(r, phase, message, reason, warning=is_failure)
        return
    ready_message = f"serving {stable.revision if stable else '?'} ({status['readyReplicas']}/{total} ready)"
    if stable_ready or stable_refusal is None:
        r.condition(ConditionType.READY, stable_ready,
                    Reason.HEALTHY if stable_ready else Reason.REPLICAS_NOT_READY, ready_message)
    else:
        r.condition(ConditionType.READY, False, stable_refusal.reason,
                    f"{ready_message}; {stable_refusal.detail()}")
    if problem is not None:
        reason, message, is_failure = problem
        message = f"{message}; still {ready_message}"
        r.condition(ConditionType.PROGRESSING, not is_failure, reason, message)
        r.condition(ConditionType.DEGRADED, is_failure, reason, message)
        _set_phase(r, DEGRADED if is_failure else PROGRESSING, message, reason, warning=is_failure)
        return
    if status.get("aborted"):
        last = status.get("lastFailure") or {}
        message = (
            f"rollout of {canary.revision if canary else '?'} aborted: {last.get('message', '')}; "
            f"{ready_message}; retry with kubeloop.io/retry or set a new spec.model"
        )
        r.condition(ConditionType.PROGRESSING, False, str(last.get("reason") or Reason.ABORTED), message)
        _set_phase(r, DEGRADED, message, str(last.get("reason") or Reason.ABORTED))
        return
    route_error = r.router_error
    if active and canary is not None:
        index = r.step_index
        where = (
            f"promoting {canary.revision}: waiting for every stable pod to run it"
            if promoting
            else f"step {index + 1}/{len(r.steps)} ({_step_text(r.steps[index])})"
        )
        message = f"rolling out {canary.revision}: {where}; canary weight {r.weight}%"
        if status.get("shadowPercent"):
            message += f", shadow {status['shadowPercent']}%"
        if route_error:
            message += f"; {route_error}"
        if canary_refusal is not None:
            message += f"; canary {canary_refusal.short()}"
        if r.holding_for_analysis:
            message += "; waiting for a background analysis round to pass before promoting"
        paused_step = (
            not promoting
            and r.steps[index].get("pause") is not None
            and not r.steps[index]["pause"].get("duration")
        )
        if route_error:
            # The rollout waits where it is (no step advances, see _advance) until the route
            # can carry the weights: the reason says so, whatever the step.
            r.condition(ConditionType.PROGRESSING, False, REASON_TRAFFIC_ROUTING, message)
            _set_phase(r, PROGRESSING, message, REASON_TRAFFIC_ROUTING)
        elif spec.get("paused"):
            r.condition(ConditionType.PROGRESSING, "Unknown", Reason.PAUSED,
                        f"{message} (paused: spec.paused is true)")
            _set_phase(r, PAUSED, f"{message} (paused)", Reason.PAUSED)
        elif _paused_inconclusive(status):
            rounds = int((status.get("analysis") or {}).get("consecutiveInconclusive") or 0)
            text = (f"{message} (paused: analysis inconclusive {rounds} round(s) in a row; "
                    "kubectl kubeloop promote resumes, abort rolls back)")
            r.condition(ConditionType.PROGRESSING, "Unknown", Reason.ANALYSIS_INCONCLUSIVE, text)
            _set_phase(r, PAUSED, text, Reason.ANALYSIS_INCONCLUSIVE)
        else:
            reason = REASON_PROMOTING if promoting else (Reason.PAUSED if paused_step else Reason.STEP_ADVANCED)
            r.condition(ConditionType.PROGRESSING, True, reason, message)
            _set_phase(r, PAUSED if paused_step else PROGRESSING, message, reason)
        r.condition(ConditionType.DEGRADED, False, Reason.ROLLOUT_STARTED, "rollout in progress")
        return
    if stable_refusal is not None:
        # Kubernetes restarts the server, which refuses the same file again: a person must
        # act (retrain, or pin the digest of the file they trust).
        message = f"{ready_message}; {stable_refusal.short()}"
        r.condition(ConditionType.PROGRESSING, False, stable_refusal.reason, message)
        r.condition(ConditionType.DEGRADED, True, stable_refusal.reason, message)
        _set_phase(r, DEGRADED, message, stable_refusal.reason, warning=True)
        return
    r.condition(ConditionType.DEGRADED, False, Reason.HEALTHY, ready_message)
    if stable_ready and deployment_rolled(observed.stable, stable.sha256 if stable else "", total):
        r.condition(ConditionType.PROGRESSING, False, Reason.HEALTHY, ready_message)
        _set_phase(r, HEALTHY, ready_message, Reason.HEALTHY)
    else:
        r.condition(ConditionType.PROGRESSING, True, Reason.REPLICAS_NOT_READY, ready_message)
        _set_phase(r, PROGRESSING, ready_message, Reason.REPLICAS_NOT_READY)


def _set_phase(r: _Rollout, phase: str, message: str, reason: str, warning: bool = False) -> None:
    if warning and (r.old.get("phase") != phase or r.old.get("message") != message):
        r.event(reason, message, warning=True)
        r.failure(reason, message)
    elif phase == HEALTHY and r.old.get("phase") not in (HEALTHY, None):
        r.event(Reason.HEALTHY, message)
    r.status["phase"] = phase
    r.status["message"] = message
    r.status["conditions"] = r.conditions


def _requeue(r: _Rollout, md: Mapping[str, Any]) -> float | None:
    """Seconds until a timer (step duration, analysis interval) makes the next decision differ."""
    status = r.status
    if not _rollout_active(status) or md["spec"].get("paused") or _paused_inconclusive(status):
        return None
    moments: list[datetime] = []
    index = r.step_index
    started = _time(status.get("stepStartedAt"))
    if index < len(r.steps) and started is not None:
        step = r.steps[index]
        duration = (step.get("pause") or {}).get("duration") or (step.get("shadow") or {}).get("duration")
        if duration:
            moments.append(started + parse_duration(duration))
    background = _background(md)
    interval = _interval(background.get("interval"))
    if background.get("metrics"):
        last_background = _time((status.get("analysis") or {}).get("lastBackgroundTime")) or r.now
        moments.append(max(last_background + interval, r.now))
    if index < len(r.steps) and r.steps[index].get("analysis") is not None:
        step_interval = _interval(r.steps[index]["analysis"].get("interval") or background.get("interval"))
        moments.append((_last_round(status) or r.now) + step_interval)
    if not moments:
        return None
    return max(0.5, min((m - r.now).total_seconds() for m in moments))
