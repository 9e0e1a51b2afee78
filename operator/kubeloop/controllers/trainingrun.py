"""TrainingRun controller: read the run and its Job, ask :mod:`kubeloop.decide.trainingrun`, apply."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kopf

from kubeloop import API_GROUP, API_VERSION
from kubeloop.config import OperatorConfig
from kubeloop.controllers import metrics
from kubeloop.controllers.kube import Conflict, Kube, post_event
from kubeloop.controllers.peering import always_active
from kubeloop.controllers.resync import Resyncs
from kubeloop.controllers.workqueue import CoalescingLocks
from kubeloop.decide.artifact_cleanup import (
    Action,
    decide_cleanup,
    has_finalizer,
    needs_cleanup_reconcile,
)
from kubeloop.decide.common import parse_wire_time, set_wire_condition, wire_time
from kubeloop.decide.trainingrun import (
    TERMINAL_PHASES,
    Observed,
    champion_from_candidates,
    decide,
    job_condition,
    job_name,
    latest_results,
)
from kubeloop.registry import champion as registry_champion
from kubeloop.registry import runs as mlflow_runs
from kubeloop.registry.client import Credentials, RegistryError
from kubeloop.registry.decide import REGISTRY_UNAVAILABLE, TRACKING_FAILED
from kubeloop.resources.cleanupjob import CLEANUP_COMPONENT, cleanup_job_name
from kubeloop.resources.trainingjob import (
    TRAINING_COMPONENT,
    Champion,
    TrainerSettings,
    tracking_env,
    with_tracking,
)
from kubeloop.trust import estimators, ownership

log = logging.getLogger("kubeloop.trainingrun")
KIND = "TrainingRun"
RUN_LABEL = "kubeloop.io/trainingrun"
_JOB_EXISTS = object()
_STATUS_CONFLICT = object()
#: Threads that only reconcile runs with no status yet (their first reconcile creates the Job).
#: A first reconcile is mostly waiting for two writes (the Job, the status): with 8 threads,
#: 1,000 runs applied at once waited p99 35 s for their Job (the lane made ~25 Jobs a second
#: while the runs came at ~33 a second); with 32, p99 3.5 s (hack/bench/operator/results.md).
NEW_RUN_THREADS = 32
#: Resyncs of unchanged runs read the cache and write nothing: 2 threads keep up with 1,000
#: runs every 30 s.
RESYNC_THREADS = 2


def trainer_settings(config: OperatorConfig) -> TrainerSettings:
    return TrainerSettings(
        image=config.runtime_image,
        image_pull_policy=config.image_pull_policy,
        default_storage_uri=config.default_storage_uri,
        allowed_estimator_prefixes=tuple(config.allowed_estimator_prefixes),
        job_ttl_seconds=config.job_ttl_seconds,
        models_pvc=config.models_pvc,
        pod_labels=tuple(sorted(config.pod_labels.items())),
        allowed_images=tuple(config.allowed_images),
    )


def tracking_settings(config: OperatorConfig) -> mlflow_runs.TrackingSettings:
    return mlflow_runs.TrackingSettings(
        tracking_uri=config.mlflow_tracking_uri,
        track_by_default=config.mlflow_track_by_default,
        experiment_prefix=config.mlflow_experiment_prefix,
        credentials=Credentials(
            config.mlflow_tracking_token, config.mlflow_tracking_username, config.mlflow_tracking_password
        ),
        timeout_seconds=config.mlflow_timeout_seconds,
    )


class ChampionWaiting(Exception):
    """The run's champion is the MLflow registry's, and MLflow does not answer."""


def needs_tracking_finish(status: Mapping[str, Any]) -> bool:
    """A finished run whose MLflow run the operator has not ended (and registered) yet."""
    mlflow = status.get("mlflow") or {}
    return status.get("phase") in TERMINAL_PHASES and bool(mlflow.get("runId")) and not mlflow.get("finished")


def run_resync_after(status: Mapping[str, Any], every: float) -> float | None:
    """Seconds to a run's next resync: while it is not finished, or its MLflow update failed
    (MLflow was down when it finished); None once there is nothing left to look at."""
    if status.get("phase") not in TERMINAL_PHASES or needs_tracking_finish(status):
        return every
    return None


class TrainingRunController:
    """The I/O around :func:`decide`: one reconcile per call, safe to repeat at any time."""

    def __init__(
        self, kube: Kube, config: OperatorConfig, active: Callable[[], bool] = always_active
    ) -> None:
        self.kube = kube
        self.settings = trainer_settings(config)
        self.tracking = tracking_settings(config)
        self.locks = CoalescingLocks()
        # A lane of its own for new runs: their Job is not queued behind the Job and pod events
        # of the runs already training (kopf's one handler pool serves every event in order).
        self.new_runs = ThreadPoolExecutor(NEW_RUN_THREADS, thread_name_prefix="new-runs")
        self.resync_seconds = config.resync_seconds
        self.resyncs = Resyncs(self.resync, KIND, workers=RESYNC_THREADS, active=active)
        self.phases = metrics.PhaseTracker(KIND)
        # Deleted runs whose artifacts a ModelDeployment still serves: a change to any
        # ModelDeployment in their namespace looks at them again (a finished run has no resync).
        self.waiting_for_deployments: set[tuple[str, str]] = set()
        # The one ownership policy (kubeloop.trust.ownership). Not configurable: only the
        # attack tests replace it in-process, to show what the operator did without it.
        self.ownership_conflict: Callable[
            [str, str, Mapping[str, Any] | None, ownership.Owner], str | None
        ] = ownership.conflict

    def estimator_refusal(self, spec: Mapping[str, Any]) -> str | None:
        """:func:`kubeloop.trust.estimators.spec_refusal` for the run's model, params and sweep."""
        model = spec.get("model") or {}
        return estimators.spec_refusal(
            str(model.get("estimator", "")),
            model.get("params"),
            self.settings.allowed_estimator_prefixes,
            (spec.get("sweep") or {}).get("grid"),
        )

    def find_champion(self, run: Mapping[str, Any]) -> tuple[Champion | None, str | None]:
        spec = run["spec"]
        evaluation = spec.get("evaluation") or {}
        if evaluation.get("compareTo") != "champion":
            return None, None
        namespace = run["metadata"]["namespace"]
        deployment = None
        deployment_name = (evaluation.get("championRef") or {}).get("name")
        if deployment_name:
            deployment = self.kube.get_or_none("ModelDeployment", namespace, deployment_name)
        source = registry_champion.champion_source(deployment)
        if source is not None and self.tracking.enabled:
            # A deployment serving from the MLflow registry: the registry's champion (docs/mlflow.md).
            resolved = registry_champion.resolve_champion(self.tracking.client(), source)
            if resolved.uri and resolved.sha256:
                label = registry_champion.champion_label(source, resolved)
                return Champion(resolved.uri, resolved.sha256, label), None
            if resolved.reason == REGISTRY_UNAVAILABLE:
                # No Job yet: the run waits rather than be judged against the wrong model.
                raise ChampionWaiting(str(resolved.message))
        runs = self.kube.list(KIND, namespace, labels=None)
        champion = champion_from_candidates(spec["model"]["name"], deployment, runs, run["metadata"]["name"])
        if champion is None:
            return None, (
                f"no champion found for model {spec['model']['name']!r} (no stable model in "
                f"ModelDeployment {deployment_name!r} and no earlier Succeeded run): "
                "the run is judged by its absolute threshold only"
            )
        return champion, None

    def reconcile(self, namespace: str, name: str) -> None:
        with self.locks.turn(KIND, namespace, name) as mine:
            if mine and self._reconcile(namespace, name) is _STATUS_CONFLICT:
                # Decide once more from the run as the API server has it now (kopf's own writes,
                # e.g. its finalizer, do not always reach a handler as an event).
                self.kube.get_fresh(KIND, namespace, name)
                self._reconcile(namespace, name)

    def _reconcile(self, namespace: str, name: str) -> object:
        with metrics.reconcile_timer(KIND):
            run = self.kube.get_or_none(KIND, namespace, name)
            if run is None or run["metadata"].get("deletionTimestamp"):
                self.phases.observe(namespace, name, None)
                if run is not None and has_finalizer(run):
                    self.reconcile_cleanup(run)
                else:
                    self.waiting_for_deployments.discard((namespace, name))
                return None
            if needs_cleanup_reconcile(run):
                self.reconcile_cleanup(run)
            old_status = run.get("status") or {}
            if old_status.get("phase") in TERMINAL_PHASES:
                self.phases.observe(namespace, name, old_status["phase"])
                if needs_tracking_finish(old_status):
                    self.finish_tracking(run, old_status, [], datetime.now(UTC))
                return None
            # A new run's Job is looked for in the watches' cache only: the create below meets
            # any Job of that name the cache does not hold (409), and the run is decided again
            # with that Job as the API server has it.
            if old_status.get("phase"):
                job = self.kube.get_or_none("Job", namespace, job_name(name))
            else:
                job = self.kube.cached("Job", namespace, job_name(name))
            outcome = self._reconcile_with(run, job)
            if outcome is _JOB_EXISTS:
                outcome = self._reconcile_with(run, self.kube.get_or_none("Job", namespace, job_name(name)))
            return outcome

    def _reconcile_with(self, run: dict[str, Any], job: dict[str, Any] | None) -> object:
        """Decide with the run's Job as read and apply; :data:`_JOB_EXISTS` if the Job the
        decision created was there already (nothing else was written), :data:`_STATUS_CONFLICT`
        if the run moved on before its status was written."""
        namespace, name = run["metadata"]["namespace"], run["metadata"]["name"]
        old_status = run.get("status") or {}
        # A Job with the run's Job name that is not the run's is neither adopted nor replaced.
        conflict = self.ownership_conflict("Job", job_name(name), job, ownership.Owner.of(run, RUN_LABEL))
        if conflict is not None:
            job = None
        # A finished Job ends the run for good: its pods (their termination messages) are read
        # from the API server, which has them before the Job controller counts them, while the
        # pods' watch may not have delivered them yet.
        finished = job is not None and (job_condition(job, "Complete") or job_condition(job, "Failed")) is not None
        pods = self.kube.list("Pod", namespace, labels={RUN_LABEL: name}, fresh=finished) if job else []
        champion, champion_missing = (None, None)
        estimator_refusal = None
        if job is None:
            # Before any Job: the one estimator policy, with this process's scikit-learn.
            estimator_refusal = self.estimator_refusal(run["spec"])
        if job is None and conflict is None and estimator_refusal is None:
            try:
                champion, champion_missing = self.find_champion(run)
            except ChampionWaiting as waiting:
                # Nothing created; the run's resync looks again (docs/mlflow.md).
                log.warning("run %s/%s waits for its champion: %s", namespace, name, waiting)
                post_event(
                    self.kube,
                    run,
                    "Warning",
                    REGISTRY_UNAVAILABLE,
                    str(waiting),
                    wire_time(datetime.now(UTC)),
                )
                return None
        now = datetime.now(UTC)
        observed = Observed(job=job, pods=pods, conflict=conflict)
        decision = decide(
            run, observed, self.settings, now, champion, champion_missing,
            estimator_refusal=estimator_refusal,
        )

        create_job, new_status = decision.create_job, decision.status
        if create_job is not None and mlflow_runs.tracked(run, self.tracking):
            create_job, new_status = self.start_tracking(run, create_job, new_status, now)
        if create_job is not None:
            try:
                self.kube.create(create_job)
            except Conflict:
                # Created by an earlier attempt that died before writing status, or someone
                # else's: the deterministic name keeps it from becoming a second Job, and
                # the caller decides again with the Job as it is.
                log.info("job %s/%s exists already", namespace, create_job["metadata"]["name"])
                if job is None and conflict is None:
                    return _JOB_EXISTS
        if new_status != old_status:
            try:
                self.kube.patch_status(
                    KIND, namespace, name, new_status, resource_version=run["metadata"].get("resourceVersion")
                )
            except Conflict:
                # The run moved on since it was read: its newer version is an event that
                # reconciles it again, and nothing decided from the old one is written.
                log.info("run %s/%s changed since it was read; deciding again", namespace, name)
                return _STATUS_CONFLICT
        if needs_tracking_finish(new_status):
            self.finish_tracking(run, new_status, pods, now)
        now_text = wire_time(now)
        for event in decision.events:
            post_event(self.kube, run, event.type, event.reason, event.message, now_text, status=decision.status)
        phase = decision.status.get("phase")
        self.phases.observe(namespace, name, phase)
        if phase in TERMINAL_PHASES and old_status.get("phase") != phase:
            _observe_training_time(decision.status, str(phase))
        return None

    # --- MLflow (issue 17; docs/mlflow.md) ----------------------------------------------------

    def start_tracking(
        self, run: Mapping[str, Any], job: dict[str, Any], status: dict[str, Any], now: datetime
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Job with the trainer's MLflow environment and the status with the MLflow run;
        when MLflow cannot be reached, the Job unchanged (training does not wait for tracking)
        and a TrackingFailed condition saying the run is not tracked."""
        status = dict(status)
        known = (run.get("status") or {}).get("mlflow") or {}
        try:
            mlflow = dict(known) if known.get("runId") else mlflow_runs.ensure_run(run, self.tracking, self.settings.image)
        except RegistryError as error:
            log.warning("MLflow run for %s/%s: %s", run["metadata"]["namespace"], run["metadata"]["name"], error)
            status["conditions"] = set_wire_condition(
                status.get("conditions") or [], TRACKING_FAILED, True, TRACKING_FAILED,
                f"not tracked in MLflow (training goes on without it): {error}",
                now, run["metadata"].get("generation"),
            )
            return job, status
        status["mlflow"] = mlflow
        env = tracking_env(run["spec"], self.tracking.tracking_uri, mlflow["runId"], mlflow["experimentId"])
        return with_tracking(job, env), status

    def finish_tracking(
        self, run: Mapping[str, Any], status: Mapping[str, Any], pods: list[dict[str, Any]], now: datetime
    ) -> None:
        """End the MLflow run and register a Succeeded model; a failure is the TrackingFailed
        condition (the run stays Succeeded) and is retried by the run's resync."""
        namespace, name = run["metadata"]["namespace"], run["metadata"]["name"]
        generation = run["metadata"].get("generation")
        conditions = list(status.get("conditions") or [])
        patch: dict[str, Any] = {}
        trainer_errors = sorted({r.tracking_error for r in latest_results(pods).values() if r.tracking_error})
        try:
            patch["mlflow"] = mlflow_runs.finish_run({**run, "status": status}, self.tracking)
        except RegistryError as error:
            log.warning("finishing MLflow run of %s/%s: %s", namespace, name, error)
            message = f"the run's outcome stands, but MLflow was not updated (retried): {error}"
            updated = set_wire_condition(conditions, TRACKING_FAILED, True, TRACKING_FAILED, message, now, generation)
            if updated != conditions:
                self.kube.patch_status(KIND, namespace, name, {"conditions": updated})
            return
        if trainer_errors:
            message = "the trainer could not log to MLflow: " + "; ".join(trainer_errors)
            patch["conditions"] = set_wire_condition(
                conditions, TRACKING_FAILED, True, TRACKING_FAILED, message[:1024], now, generation
            )
        elif any(c.get("type") == TRACKING_FAILED for c in conditions):
            patch["conditions"] = set_wire_condition(
                conditions, TRACKING_FAILED, False, "Tracked", "logged to MLflow", now, generation
            )
        self.kube.patch_status(KIND, namespace, name, patch)

    def resync(self, namespace: str, name: str) -> float | None:
        """The safety net (an event missed, a Job gone unnoticed, MLflow back up): the run's
        reconcile, or its MLflow update once it finished; seconds to the next one."""
        run = self.kube.cached(KIND, namespace, name)
        if run is None:
            return None
        if (run.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            self.reconcile(namespace, name)
        else:
            self.reconcile_tracking(namespace, name)
        run = self.kube.cached(KIND, namespace, name)
        return None if run is None else run_resync_after(run.get("status") or {}, self.resync_seconds)

    def watch_resync(self, namespace: str, name: str, type: str, run: Mapping[str, Any]) -> None:
        """An event of the run: arm its next resync (or drop it: deleted, or nothing left)."""
        if type == "DELETED":
            self.resyncs.forget(namespace, name)
        else:
            self.resyncs.arm(namespace, name, run_resync_after(run.get("status") or {}, self.resync_seconds))

    def reconcile_tracking(self, namespace: str, name: str) -> None:
        """A finished run whose MLflow update failed before."""
        with self.locks.turn(KIND, namespace, name) as mine:
            if not mine:
                return
            run = self.kube.get_or_none(KIND, namespace, name)
            if run is not None and needs_tracking_finish(run.get("status") or {}):
                self.finish_tracking(run, run["status"], [], datetime.now(UTC))

    def reconcile_cleanup(self, run: Mapping[str, Any]) -> None:
        """The run's artifacts under spec.cleanupPolicy: add our finalizer, or finish a deletion."""
        meta = run["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        deployments: list[dict[str, Any]] = []
        job, pods, training_job, training_pods = None, [], None, []
        if meta.get("deletionTimestamp"):
            # A deletion is final: what it waits for and what it deletes are read fresh.
            deployments = self.kube.list("ModelDeployment", namespace, labels=None, fresh=True)
            owner = ownership.Owner.of(run, RUN_LABEL)
            # The cleanup Job has no owner reference (the run is being deleted): its labels mark it.
            labelled = ownership.Owner.of(run, RUN_LABEL, by_reference=False)
            job = self._own_job(self.kube.get_or_none("Job", namespace, cleanup_job_name(name)), labelled)
            if job is not None:
                pods = self.kube.list(
                    "Pod", namespace, labels={RUN_LABEL: name, "app.kubernetes.io/component": CLEANUP_COMPONENT},
                    fresh=True,
                )
            training_job = self._own_job(self.kube.get_or_none("Job", namespace, job_name(name)), owner)
            training_pods = self.kube.list(
                "Pod", namespace, labels={RUN_LABEL: name, "app.kubernetes.io/component": TRAINING_COMPONENT},
                fresh=True,
            )
        cleanup = decide_cleanup(
            run, deployments, job, pods, self.settings,
            training_job=training_job, training_pods=training_pods,
        )
        key = (namespace, name)
        if cleanup.action == Action.WAIT_IN_USE:
            self.waiting_for_deployments.add(key)
        else:
            self.waiting_for_deployments.discard(key)
        if cleanup.delete_job is not None:
            # Background: the Job goes at once and the garbage collector stops its pods,
            # whose deletion events bring the run back here.
            self.kube.delete("Job", namespace, cleanup.delete_job, propagation="Background")
        if cleanup.create_job is not None:
            try:
                self.kube.create(cleanup.create_job)
            except Conflict:
                log.info("cleanup job of %s/%s exists already", namespace, name)
        if cleanup.message and cleanup.message != (run.get("status") or {}).get("message"):
            self.kube.patch_status(KIND, namespace, name, {"message": cleanup.message})
        if cleanup.finalizers is not None:
            try:
                # The resourceVersion makes this a compare-and-swap: kopf keeps its own
                # finalizer in the same list, and a merge patch replaces the list whole.
                self.kube.patch(
                    KIND, namespace, name,
                    {"metadata": {"finalizers": cleanup.finalizers, "resourceVersion": meta["resourceVersion"]}},
                )
            except Conflict:
                # The run changed under us; that change is an event that reconciles it again.
                log.info("finalizers of %s/%s changed concurrently; looking again", namespace, name)
                return
        now_text = wire_time(datetime.now(UTC))
        for event in cleanup.events:
            post_event(self.kube, dict(run), event.type, event.reason, event.message, now_text)

    def _own_job(self, job: dict[str, Any] | None, owner: ownership.Owner) -> dict[str, Any] | None:
        """The Job if it is the run's; another's Job of the same name is never waited on or deleted."""
        if job is None:
            return None
        return job if self.ownership_conflict("Job", job["metadata"]["name"], job, owner) is None else None

    def reconcile_waiting(self, namespace: str) -> None:
        """Look again at the deleted runs of ``namespace`` that wait for a ModelDeployment."""
        for waiting_namespace, name in sorted(self.waiting_for_deployments):
            if waiting_namespace == namespace:
                self.reconcile(namespace, name)


def _observe_training_time(status: Mapping[str, Any], phase: str) -> None:
    start, end = status.get("startTime"), status.get("completionTime")
    if not start or not end:
        return
    elapsed = parse_wire_time(end) - parse_wire_time(start)
    metrics.TRAINING_SECONDS.labels(phase).observe(elapsed.total_seconds())


def _import_scikit_learn() -> None:
    try:
        importlib.import_module("sklearn.base")
    except ImportError:
        log.info("scikit-learn is not installed: estimator paths are checked as strings only")


def register(registry: kopf.OperatorRegistry, controller: TrainingRunController, config: OperatorConfig) -> None:
    """Wire the triggers: the run's own events (which also arm its resync), its Job's and pods'
    events."""

    def is_new(status: Mapping[str, Any], **_: Any) -> bool:
        return not status.get("phase")

    def not_new(status: Mapping[str, Any], **_: Any) -> bool:
        return bool(status.get("phase"))

    # Each handler first hands its event to the Kube's cache (kubeloop.controllers.cache), so
    # the reconcile it starts reads what this event said, whatever order kopf calls handlers in.
    # Each event also arms the run's resync (kubeloop.controllers.resync; not a kopf timer,
    # which would put kopf's finalizer on every run).
    @kopf.on.event(API_GROUP, API_VERSION, "trainingruns", when=is_new, registry=registry)
    async def on_new_run_event(
        name: str, namespace: str | None, type: str, event: Mapping[str, Any], body: Mapping[str, Any], **_: Any
    ) -> None:
        controller.kube.observe(event)
        if namespace:
            controller.watch_resync(namespace, name, type, body)
        if type != "DELETED" and namespace:
            await asyncio.get_running_loop().run_in_executor(controller.new_runs, controller.reconcile, namespace, name)

    @kopf.on.event(API_GROUP, API_VERSION, "trainingruns", when=not_new, registry=registry)
    def on_run_event(
        name: str, namespace: str | None, type: str, event: Mapping[str, Any], body: Mapping[str, Any], **_: Any
    ) -> None:
        controller.kube.observe(event)
        if namespace:
            controller.watch_resync(namespace, name, type, body)
        if type != "DELETED" and namespace:
            controller.reconcile(namespace, name)

    @kopf.on.startup(registry=registry)
    def import_scikit_learn_early(**_: Any) -> None:
        # The first estimator check imports scikit-learn: seconds on a busy node, which every
        # run reconciled meanwhile would wait for after a start or a standby's takeover.
        threading.Thread(target=_import_scikit_learn, name="import-scikit-learn", daemon=True).start()

    @kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT}, registry=registry)
    def on_job_event(labels: Mapping[str, str], namespace: str | None, event: Mapping[str, Any], **_: Any) -> None:
        controller.kube.observe(event)
        if namespace:
            controller.reconcile(namespace, labels[RUN_LABEL])

    @kopf.on.event(API_GROUP, API_VERSION, "modeldeployments", registry=registry)
    def on_deployment_event_for_cleanup(namespace: str | None, event: Mapping[str, Any], **_: Any) -> None:
        # The cache first: kopf calls this before the ModelDeployment controller's handler, and
        # a deleted ModelDeployment still in the cache would keep the artifacts waiting.
        controller.kube.observe(event)
        # A deleted run's artifacts wait while a ModelDeployment serves them.
        if namespace:
            controller.reconcile_waiting(namespace)

    @kopf.on.event("", "v1", "pods", labels={RUN_LABEL: kopf.PRESENT}, registry=registry)
    def on_pod_event(labels: Mapping[str, str], namespace: str | None, event: Mapping[str, Any], **_: Any) -> None:
        controller.kube.observe(event)
        if namespace:
            controller.reconcile(namespace, labels[RUN_LABEL])
