"""ModelDeployment controller: read, measure, ask :mod:`kubeloop.decide.modeldeployment`, apply.

One reconcile, safe to repeat at any moment (and after a crash):

1. read the ModelDeployment, its two Deployments, its HPA and PodDisruptionBudget, the router's
   object (HTTPRoute or VirtualService) and the TrainingRun ``spec.model`` names;
2. if :func:`analysis_plan` says metrics are due, measure them (Prometheus over HTTP, or the
   pods' /metrics through the API server's pod proxy) - the only slow I/O, done here so the
   decision gets plain values;
3. :func:`decide` with ``now``;
4. apply in an order that never drops traffic: Services and router weights first (an abort
   moves users back to stable before any canary pod goes), then the Deployments, then the
   autoscaler and the disruption budget; then the status (as a merge patch that also removes what the decision dropped)
   and the Events.

Time-based progress (pause and shadow durations, analysis intervals) is driven by the wake-up
lane: a wake-up at the moment the decision said the next thing happens, and every
ModelDeployment always has one pending no later than :func:`resync_after` says (a rollout's
tick, the resync; not kopf timers, which would put kopf's finalizer on every object).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import kopf
import orjson
from kubernetes.client.exceptions import ApiException

from kubeloop import API_GROUP, API_VERSION
from kubeloop.analysis.base import AnalysisTarget, Measurement
from kubeloop.analysis.builtin import BuiltinProvider
from kubeloop.analysis.prometheus import PrometheusProvider
from kubeloop.analysis.scrape import ScrapeProvider, ScrapeRound
from kubeloop.config import OperatorConfig
from kubeloop.controllers import metrics
from kubeloop.controllers.kube import Conflict, Kube, NotFound, lasting_refusal, post_event
from kubeloop.controllers.peering import always_active
from kubeloop.controllers.scraping import scrape_round
from kubeloop.controllers.wakeups import WakeUps
from kubeloop.controllers.workqueue import CoalescingLocks
from kubeloop.decide.common import set_wire_condition, wire_time
from kubeloop.decide.modeldeployment import (
    AnalysisPlan,
    Decision,
    Observed,
    analysis_plan,
    decide,
    refused,
    tracks_to_inspect,
)
from kubeloop.registry import decide as registry_decide
from kubeloop.registry.client import RegistryError
from kubeloop.registry.decide import Resolution
from kubeloop.resources.serving import (
    OWNER_LABEL,
    TRACK_LABEL,
    ServingSettings,
    deployment_name,
    hpa_name,
    pdb_name,
)
from kubeloop.traffic import router_for
from kubeloop.trust import ownership
from kubeloop.trust.urls import PrometheusUrlPolicy, error_summary

log = logging.getLogger("kubeloop.modeldeployment")
_T = TypeVar("_T")
#: Threads for the reads and applies one reconcile makes side by side (see all_at_once).
REQUEST_THREADS = 16
#: Threads that run the reconciles whose wake-up came due (one thread waits for all of them).
WAKEUP_THREADS = 8
#: Seconds between a Deployment's event and the reconcile it asks for (the events of one
#: rollout come in bursts; one reconcile answers a burst).
DEPLOYMENT_EVENT_DELAY = 0.1
KIND = "ModelDeployment"
REGISTRY_RESOLVED = "RegistryResolved"
"""Condition type: whether spec.model.registry resolved (False: waiting or refused, and why)."""


def serving_settings(config: OperatorConfig) -> ServingSettings:
    return ServingSettings(
        image=config.runtime_image,
        image_pull_policy=config.image_pull_policy,
        default_storage_uri=config.default_storage_uri,
        models_pvc=config.models_pvc,
        allowed_images=tuple(config.allowed_images),
    )


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``old`` into ``new``: changed keys, and None for every key
    the new status no longer has (a plain merge would keep them), at any depth of objects."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = status_patch(before, value)
            if nested:
                patch[key] = nested
        elif before != value or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


class ModelDeploymentController:
    """The I/O around :func:`decide`: one reconcile per call, safe to repeat at any time."""

    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        prometheus_url: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        active: Callable[[], bool] = always_active,
    ) -> None:
        self.kube = kube
        self.settings = serving_settings(config)
        self.intervals = ResyncIntervals.from_config(config)
        self.active = active
        self.locks = CoalescingLocks()
        self.phases = metrics.PhaseTracker(KIND)
        self.clock = clock
        self.retry_seconds = config.rollout_tick_seconds
        # One URL policy (kubeloop.trust.urls): a metric's prometheusUrl must be configured.
        policy = PrometheusUrlPolicy.from_settings(
            prometheus_url or config.prometheus_url, config.allowed_prometheus_urls
        )
        self.prometheus = PrometheusProvider(policy=policy)
        self.builtin = BuiltinProvider(policy=policy)
        self.scrape = ScrapeProvider()
        self.wakeups = WakeUps(self._woken, workers=WAKEUP_THREADS, name="md-wakeups")
        # What our last server-side apply of each child sent (digest) and left (see
        # untouched_since).
        self._applied: dict[tuple[str, str, str], tuple[str, tuple[Any, ...]]] = {}
        self._children: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self._requests = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="md-requests")
        # MLflow (issue 17): registry sources, and the champion/challenger aliases.
        from kubeloop.controllers.trainingrun import tracking_settings

        self.tracking = tracking_settings(config)
        self._registry_notes: dict[tuple[str, str], str] = {}
        self._versions_by_sha256: dict[tuple[str, str], str] = {}
        self._applied_guard = threading.Lock()
        # The one ownership policy (kubeloop.trust.ownership). Not configurable: only the
        # attack tests replace it in-process, to show what the operator did without it.
        self.ownership_conflict: Callable[
            [str, str, Mapping[str, Any] | None, ownership.Owner], str | None
        ] = ownership.conflict

    # --- reading --------------------------------------------------------------------------------

    def observe(self, md: Mapping[str, Any], said_missing: set[tuple[str, str]] | None = None) -> Observed:
        """What the decision needs to see; ``said_missing`` collects the children the API
        server answered 404 for in this call (see :meth:`conflicts`)."""
        namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
        spec = md["spec"]
        router = router_for((spec.get("rollout") or {}).get("trafficRouting"))
        route = None
        if router.object_kind is not None and router.object_name is not None:
            route = self._get_tolerant(router.object_kind, namespace, router.object_name)
        run_name = ((spec.get("model") or {}).get("trainingRunRef") or {}).get("name")
        # Children are ours only with our label (own_children checks the rest): a child the
        # server said is missing stays missing until the watch says otherwise.
        read = self.read_all(
            namespace,
            [
                ("Deployment", deployment_name(name, "stable")),
                ("Deployment", deployment_name(name, "canary")),
                ("HorizontalPodAutoscaler", hpa_name(name)),
                ("PodDisruptionBudget", pdb_name(name)),
            ],
            ours=True,
            said_missing=said_missing,
        )
        return Observed(
            stable=read[0],
            canary=read[1],
            hpa=read[2],
            route=route,
            training_run=self.kube.get_or_none("TrainingRun", namespace, run_name)
            if run_name
            else None,
            pdb=read[3],
            registry=self.resolve_registry(md),
        )

    def read_all(
        self,
        namespace: str,
        names: list[tuple[str, str]],
        ours: bool = False,
        said_missing: set[tuple[str, str]] | None = None,
    ) -> list[dict[str, Any] | None]:
        """The objects (kind, name), None for a missing one: what the cache answers at once,
        the rest from the API server side by side. Cache answers never queue in the request
        pool: behind a burst of new ModelDeployments' writes, a reconcile that needed no
        request waited there for seconds. ``ours``: see :meth:`Kube.get_ours_or_none`;
        ``said_missing`` gets the (kind, name) the server answered 404 for in this call."""
        found: list[dict[str, Any] | None] = []
        asks: list[int] = []
        for index, (kind, name) in enumerate(names):
            answered, obj = self.kube.known(kind, namespace, name, ours=ours)
            found.append(obj)
            if not answered:
                asks.append(index)
        read = self.kube.get_ours_or_none if ours else self.kube.get_or_none
        fetched = self.all_at_once(
            *(lambda kind=names[i][0], name=names[i][1]: read(kind, namespace, name) for i in asks)
        )
        for index, obj in zip(asks, fetched, strict=True):
            found[index] = obj
            if obj is None and said_missing is not None:
                said_missing.add(names[index])
        return found

    def all_at_once(self, *calls: Callable[[], _T]) -> list[_T]:
        """The calls' results, the calls made side by side: a new ModelDeployment's reconcile
        asks the API server about ~8 objects that do not exist yet, and on a busy server each
        answer takes a quarter of a second; one after another they were most of apply -> Healthy."""
        if len(calls) <= 1:
            return [call() for call in calls]
        futures = [self._requests.submit(call) for call in calls[1:]]
        first = calls[0]()
        return [first, *(future.result() for future in futures)]

    def with_server_pods(self, md: Mapping[str, Any], observed: Observed, now: datetime) -> Observed:
        """``observed`` with the server pods of the tracks that have not been ready for a while
        (:func:`tracks_to_inspect`): one LIST per such track, none on the healthy path. Their
        container statuses say whether the server refused its model (ChecksumMismatch)."""
        tracks = tracks_to_inspect(md, observed, now)
        if not tracks:
            return observed
        namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]

        def pods_of(track: str) -> list[dict[str, Any]]:
            try:
                return self.kube.list("Pod", namespace, labels={OWNER_LABEL: name, TRACK_LABEL: track})
            except Exception as error:
                # Only a diagnosis: without it the condition says ReplicasNotReady, as before.
                log.warning("cannot list the %s pods of %s/%s: %s", track, namespace, name, error)
                return []

        pods = self.all_at_once(*(lambda track=track: pods_of(track) for track in tracks))
        return dataclasses.replace(observed, server_pods=dict(zip(tracks, pods, strict=True)))

    def _get_tolerant(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        # A cluster without the Gateway API or Istio CRDs answers 404 for the whole kind: for
        # the rollout that is the same as a missing object, which its status explains.
        try:
            return self.kube.get_or_none(kind, namespace, name)
        except Exception as error:
            log.warning("cannot read %s %s/%s: %s", kind, namespace, name, error)
            return None

    # --- measuring ------------------------------------------------------------------------------

    def measure(self, md: Mapping[str, Any], plan: AnalysisPlan) -> dict[str, Measurement]:
        """Measure every metric of the plan; a provider failure becomes an inconclusive value."""
        results: dict[str, Measurement] = {}
        scrape_round: ScrapeRound | None = None
        for metric in plan.metrics:
            name = str(metric["name"])
            provider = metric.get("provider") or "builtin"
            try:
                if provider == "prometheus":
                    results[name] = self.prometheus.measure(metric, plan.target)
                elif provider == "builtin" and self.builtin.uses_prometheus(metric):
                    results[name] = self.builtin.measure(metric, plan.target)
                else:
                    if scrape_round is None:
                        scrape_round = self.scrape_round(md, plan.target)
                    results[name] = scrape_round.measure(metric, plan.target)
            except Exception as error:
                # A fixed summary only: an error's text may quote what a remote endpoint said.
                log.warning("measuring %s failed: %s", name, error_summary(error))
                log.debug("measuring %s failed", name, exc_info=True)
                results[name] = Measurement(
                    name, None, f"measurement failed: {error_summary(error)}"
                )
        return results

    def scrape_round(self, md: Mapping[str, Any], target: AnalysisTarget) -> ScrapeRound:
        return scrape_round(self.kube, self.scrape, md, target)

    # --- the reconcile ------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> Decision | None:
        """One reconcile; None if it is gone, or if a waiting reconcile covers this call."""
        with self.locks.turn(KIND, namespace, name) as mine:
            if not mine:
                return None
            try:
                return self._reconcile(namespace, name)
            except Exception:
                # An event's reconcile is never retried by kopf: without this, a failed write
                # (a busy API server's 429 or timeout) would wait for the next resync.
                self.wake_up(namespace, name, self.retry_seconds)
                raise

    def _reconcile(self, namespace: str, name: str) -> Decision | None:
        with metrics.reconcile_timer(KIND):
            md = self.kube.get_or_none(KIND, namespace, name)
            if md is None or md["metadata"].get("deletionTimestamp"):
                self.forget(namespace, name)
                return None
            owner = ownership.Owner.of(md, OWNER_LABEL)
            said_missing: set[tuple[str, str]] = set()
            observed = self.own_children(self.observe(md, said_missing), owner)
            now = self.clock()
            observed = self.with_server_pods(md, observed, now)
            plan = analysis_plan(md, observed, now)
            measurements = None
            if plan is not None:
                measurements = self.measure(md, plan)
                # A measurement may take seconds (a Prometheus query): too old an answer to
                # vouch that a name is still free.
                said_missing.clear()
            decision = decide(md, observed, self.settings, now, measurements)
            problems, current = self.conflicts(md, decision, owner, said_missing)
            if problems:
                # Nothing is written: a colliding object is never modified, scaled or deleted.
                decision = refused(md, now, ownership.RESOURCE_CONFLICT, "; ".join(problems))
            refused_route = self.apply(md, observed, decision, current)
            if refused_route is not None:
                # The weights were not written: decide again knowing it, so the status holds the
                # rollout where it was and says TrafficRoutingFailed (no step, weight or Event
                # of the first decision is recorded).
                observed = dataclasses.replace(observed, route_refused=refused_route)
                decision = decide(md, observed, self.settings, now, measurements)
                self.apply(md, observed, decision, current, write_route=False)
            self.sync_registry(md, observed, decision)
            old_status = md.get("status") or {}
            patch = status_patch(old_status, decision.status)
            if patch:
                try:
                    self.kube.patch_status(
                        KIND, namespace, name, patch, resource_version=md["metadata"].get("resourceVersion")
                    )
                except Conflict:
                    # The ModelDeployment moved on since it was read (a cached read behind the
                    # watch, or a user's change): its newer version is an event that reconciles
                    # it again; no Event from the older decision.
                    log.info("%s/%s changed since it was read; deciding again", namespace, name)
                    # Soon, from the newer version (kopf's own writes, e.g. its finalizer, do not
                    # always reach a handler as an event).
                    self.kube.get_fresh(KIND, namespace, name)
                    self.wake_up(namespace, name, 0.5)
                    return decision
            now_text = wire_time(now)
            for event in decision.events:
                post_event(
                    self.kube,
                    md,
                    event.type,
                    event.reason,
                    event.message,
                    now_text,
                    status=decision.status,
                )
            metrics.CANARY_WEIGHT.labels(namespace, name).set(
                int(decision.status.get("canaryWeight") or 0)
            )
            self.phases.observe(namespace, name, decision.status.get("phase"))
            if decision.requeue_after is not None:
                self.wake_up(namespace, name, decision.requeue_after)
            return decision

    def own_children(self, observed: Observed, owner: ownership.Owner) -> Observed:
        """``observed`` without the Deployments, autoscaler and disruption budget that are not
        this ModelDeployment's: their status is not read as ours, and nothing scales or deletes
        them."""
        md_name = owner.name

        def mine(kind: str, name: str, obj: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
            return obj if self.ownership_conflict(kind, name, obj, owner) is None else None

        return Observed(
            stable=mine("Deployment", deployment_name(md_name, "stable"), observed.stable),
            canary=mine("Deployment", deployment_name(md_name, "canary"), observed.canary),
            hpa=mine("HorizontalPodAutoscaler", hpa_name(md_name), observed.hpa),
            route=observed.route,
            training_run=observed.training_run,
            pdb=mine("PodDisruptionBudget", pdb_name(md_name), observed.pdb),
            registry=observed.registry,
        )

    def conflicts(
        self,
        md: Mapping[str, Any],
        decision: Decision,
        owner: ownership.Owner,
        said_missing: set[tuple[str, str]] | None = None,
    ) -> tuple[list[str], dict[tuple[str, str], dict[str, Any] | None]]:
        """Every object the decision would create or change whose name is taken by an object
        this ModelDeployment does not own, and each of those objects as read (by kind and name).
        A name in ``said_missing`` (the server answered 404 for it earlier in this reconcile,
        milliseconds ago) is not asked again: a new ModelDeployment's stable Deployment was
        read twice. That answer is as old as any read before a write: the window in which
        someone else could take the name is the one every read-then-apply has."""
        namespace = md["metadata"]["namespace"]
        targets: dict[tuple[str, str], None] = {}
        for obj in (*decision.services, *decision.deployments, decision.hpa, decision.pdb):
            if obj is not None:
                targets[(obj["kind"], obj["metadata"]["name"])] = None
        for name in decision.scale_to_zero:
            targets[("Deployment", name)] = None
        if decision.delete_hpa is not None:
            targets[("HorizontalPodAutoscaler", decision.delete_hpa)] = None
        if decision.delete_pdb is not None:
            targets[("PodDisruptionBudget", decision.delete_pdb)] = None
        problems = []
        missing = said_missing or set()
        keys = [key for key in targets if key not in missing]
        found = self.read_all(namespace, keys)
        current: dict[tuple[str, str], dict[str, Any] | None] = dict.fromkeys(targets)
        current.update(zip(keys, found, strict=True))
        for (kind, name), obj in current.items():
            message = self.ownership_conflict(kind, name, obj, owner)
            if message is not None:
                problems.append(message)
        return problems, current

    def _apply(self, obj: dict[str, Any], current: Mapping[str, Any] | None) -> None:
        """Server-side apply, skipped when the object is as our last apply of the same body left
        it: most reconciles (a Deployment's status moved, a tick) change none of the ~5 objects,
        and each apply is a write the API server must process."""
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        digest = applied_digest(obj)
        if current is not None and self._applied.get(key) == (digest, untouched_since(current, obj)):
            return
        answer = self.kube.apply(obj)
        with self._applied_guard:
            self._applied[key] = (digest, untouched_since(answer, obj))
            owner = ((meta.get("labels") or {}).get(OWNER_LABEL)) or ""
            self._children.setdefault((meta["namespace"], owner), set()).add(key)

    def apply(
        self,
        md: Mapping[str, Any],
        observed: Observed,
        decision: Decision,
        current: Mapping[tuple[str, str], dict[str, Any] | None],
        write_route: bool = True,
    ) -> str | None:
        """Write the decision; ``current``: the targets as the ownership check read them.
        Returns why the API server refused the route's weights (a 4xx other than a conflict:
        the route is gone, or a policy or validation refuses the change), else None; a 5xx or
        429 is raised (kopf and the wake-up lane retry)."""
        namespace = md["metadata"]["namespace"]
        refused: str | None = None

        def apply_one(obj: dict[str, Any]) -> None:
            self._apply(obj, current.get((obj["kind"], obj["metadata"]["name"])))

        self.all_at_once(*(lambda service=service: apply_one(service) for service in decision.services))
        route = decision.route
        if write_route and route is not None and route.patch is not None:
            try:
                self.kube.patch(route.kind, namespace, route.name, route.patch)
            except Conflict:
                # Someone edited the route since we read it: retry on the fresh object soon.
                log.info("%s %s/%s changed under us; retrying", route.kind, namespace, route.name)
                self.wake_up(namespace, md["metadata"]["name"], 1.0)
            except (NotFound, ApiException) as error:
                code = lasting_refusal(error)
                if code is None:
                    raise
                said = " ".join(str(error.reason if isinstance(error, ApiException) else error).split())
                refused = (
                    f"{route.kind} {route.name!r}: the API server refused the new weights "
                    f"({code}: {said[:300]})"
                )
                log.warning("%s/%s: %s", namespace, md["metadata"]["name"], refused)
        for deployment in decision.deployments:
            apply_one(deployment)
        for name in decision.scale_to_zero:
            with contextlib.suppress(NotFound):
                self.kube.patch("Deployment", namespace, name, {"spec": {"replicas": 0}})
        if decision.hpa is not None:
            apply_one(decision.hpa)
        if decision.delete_hpa is not None:
            self.kube.delete("HorizontalPodAutoscaler", namespace, decision.delete_hpa)
        if decision.pdb is not None:
            apply_one(decision.pdb)
        if decision.delete_pdb is not None:
            self.kube.delete("PodDisruptionBudget", namespace, decision.delete_pdb)
        return refused

    # --- MLflow registry (issue 17; docs/mlflow.md) -------------------------------------------

    def resolve_registry(self, md: Mapping[str, Any]) -> Resolution | None:
        """What spec.model.registry names now. MLflow unreachable: the version resolved last
        for the same source, if any (what is served and a rollout to it go on; the condition
        says MLflow is unreachable), else waiting."""
        source = (md["spec"].get("model") or {}).get("registry")
        key = (md["metadata"]["namespace"], md["metadata"]["name"])
        self._registry_notes.pop(key, None)
        if not source:
            return None
        if not self.tracking.enabled:
            return Resolution(
                reason=registry_decide.REGISTRY_VERSION_REFUSED,
                message=(
                    "spec.model.registry needs an operator with MLflow: an administrator sets the "
                    "chart value mlflow.trackingUri (KUBELOOP_MLFLOW_TRACKING_URI)"
                ),
            )
        client = self.tracking.client()
        try:
            if source.get("alias"):
                version = client.version_by_alias(str(source["name"]), str(source["alias"]))
            else:
                version = client.get_version(str(source["name"]), str(source.get("version")))
        except RegistryError as error:
            waiting = registry_decide.unavailable(source, str(error))
            last = ((md.get("status") or {}).get("registry")) or {}
            if last.get("source") == registry_decide.describe_source(source) and last.get("sha256"):
                self._registry_notes[key] = str(waiting.message)
                return Resolution(
                    uri=last.get("uri"), sha256=last.get("sha256"), version=last.get("version")
                )
            return waiting
        return registry_decide.resolve_version(source, version)

    def registry_model_name(self, md: Mapping[str, Any], observed: Observed) -> str | None:
        """The registered model whose aliases this deployment moves (None: none)."""
        model = md["spec"].get("model") or {}
        if model.get("registry"):
            return str(model["registry"]["name"])
        if observed.training_run is not None:
            return (
                str(
                    ((observed.training_run.get("spec") or {}).get("model") or {}).get("name") or ""
                )
                or None
            )
        return None

    def version_of(self, model_name: str, sha256: str | None, observed: Observed) -> str | None:
        """The registered version of the artifact with ``sha256`` (cached once found)."""
        if not sha256:
            return None
        resolution = observed.registry
        if resolution is not None and resolution.sha256 == sha256 and resolution.version:
            return resolution.version
        key = (model_name, sha256)
        if key not in self._versions_by_sha256:
            found = self.tracking.client().versions_with_sha256(model_name, sha256)
            if not found:
                return None
            self._versions_by_sha256[key] = str(max(int(v["version"]) for v in found))
        return self._versions_by_sha256[key]

    def sync_registry(self, md: Mapping[str, Any], observed: Observed, decision: Decision) -> None:
        """status.registry and the RegistryResolved condition; the champion/challenger aliases
        moved to what is served (a failure is retried by the next reconcile, nothing else waits)."""
        if not self.tracking.enabled and observed.registry is None:
            return
        namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
        status = decision.status
        old = (md.get("status") or {}).get("registry") or {}
        block: dict[str, Any] = dict(old)
        source = (md["spec"].get("model") or {}).get("registry")
        now = self.clock()
        generation = md["metadata"].get("generation")
        if source:
            resolution = observed.registry or Resolution(
                reason=registry_decide.REGISTRY_UNAVAILABLE
            )
            block["source"] = registry_decide.describe_source(source)
            note = self._registry_notes.get((namespace, name))
            if resolution.resolved:
                block.update(
                    version=resolution.version, uri=resolution.uri, sha256=resolution.sha256
                )
                reason, message = ("Resolved", f"{block['source']} is version {resolution.version}")
                if note:
                    reason, message = (registry_decide.REGISTRY_UNAVAILABLE, note)
                ok = note is None
            else:
                reason, message, ok = str(resolution.reason), str(resolution.message), False
            status["conditions"] = set_wire_condition(
                status.get("conditions") or [],
                REGISTRY_RESOLVED,
                ok,
                reason,
                message,
                now,
                generation,
            )
        model_name = self.registry_model_name(md, observed) if self.tracking.enabled else None
        if model_name:
            try:
                stable = (status.get("stable") or {}).get("sha256")
                canary = (
                    None if status.get("aborted") else (status.get("canary") or {}).get("sha256")
                )
                plan = registry_decide.alias_moves(
                    model_name,
                    old.get("aliases"),
                    self.version_of(model_name, stable, observed),
                    self.version_of(model_name, canary, observed),
                )
                client = self.tracking.client()
                for move in plan.moves:
                    if move.version is None:
                        client.delete_alias(model_name, move.alias)
                    else:
                        client.set_alias(model_name, move.alias, move.version)
                block["aliases"] = plan.record
            except RegistryError as error:
                log.warning("moving MLflow aliases of %s/%s: %s", namespace, name, error)
        if block:
            status["registry"] = block

    # --- time -------------------------------------------------------------------------------------

    def wake_up(self, namespace: str, name: str, seconds: float) -> None:
        """Reconcile again in ``seconds`` (one pending wake-up per object; the earlier wins)."""
        self.wakeups.at_most_in((namespace, name), max(0.1, seconds))

    def _woken(self, key: Hashable) -> None:
        namespace, name = cast(tuple[str, str], key)
        if not self.active():
            return  # a standby: when kopf resumes it, its listing re-arms every object
        metrics.RESYNCS.labels(KIND).inc()
        self.reconcile(namespace, name)
        self.arm_resync(namespace, name)

    def arm_resync(self, namespace: str, name: str) -> None:
        """Keep a wake-up pending no later than the ModelDeployment's next tick or resync."""
        md = self.kube.cached(KIND, namespace, name)
        if md is not None:
            self.wake_up(namespace, name, resync_after(md.get("status") or {}, md.get("spec") or {}, self.intervals))

    def forget(self, namespace: str, name: str) -> None:
        """The ModelDeployment is gone: drop its scrape memory, metrics and wake-up."""
        self.scrape.forget(namespace, name)
        self.phases.observe(namespace, name, None)
        with contextlib.suppress(KeyError):
            metrics.CANARY_WEIGHT.remove(namespace, name)
        self.wakeups.cancel((namespace, name))
        with self._applied_guard:
            for key in self._children.pop((namespace, name), set()):
                self._applied.pop(key, None)

    def stop(self) -> None:
        self.wakeups.stop()


def applied_digest(obj: Mapping[str, Any]) -> str:
    """A digest of a body we apply (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def untouched_since(obj: Mapping[str, Any], applied: Mapping[str, Any]) -> tuple[Any, ...]:
    """What changes when anyone changes what our apply of ``applied`` set: the object's
    identity, its spec's generation (or, for kinds without one, its resourceVersion), the values
    of the labels and annotations we apply, and its owners. Status updates (a Deployment's
    rollout, an autoscaler's reading) leave it as is, and so do labels and annotations of others:
    the Deployment controller's revision annotation, written once per rollout, cost every new
    ModelDeployment a second apply of its Deployment that changed nothing."""
    meta = obj.get("metadata") or {}
    ours = applied.get("metadata") or {}
    version = meta.get("generation") if "generation" in meta else meta.get("resourceVersion")

    def values_of_ours(field: str) -> bytes:
        present = meta.get(field) or {}
        return orjson.dumps([(key, present.get(key)) for key in sorted(ours.get(field) or {})])

    return (
        meta.get("uid"),
        version,
        values_of_ours("labels"),
        values_of_ours("annotations"),
        orjson.dumps(meta.get("ownerReferences") or [], option=orjson.OPT_SORT_KEYS),
    )


@dataclass(frozen=True)
class ResyncIntervals:
    """How often a ModelDeployment is looked at with no event (OperatorConfig's settings)."""

    rollout_tick: float
    resync: float
    settled: float
    registry_poll: float

    @classmethod
    def from_config(cls, config: OperatorConfig) -> ResyncIntervals:
        return cls(
            config.rollout_tick_seconds, config.resync_seconds,
            config.settled_resync_seconds, config.mlflow_registry_poll_seconds,
        )


def resync_after(status: Mapping[str, Any], spec: Mapping[str, Any], every: ResyncIntervals) -> float:
    """Seconds to a ModelDeployment's next reconcile with no event.

    A canary in flight: every tick (its pauses' and analysis' moments). A first rollout waits
    only for its Deployment, whose events reconcile it: ticking those too was most of 300 new
    ModelDeployments' reconciles (13 each). Healthy with no canary: the slow resync (every
    change of it or its children is an event; at ~15 requests a reconcile, a 30 s resync of
    every settled one was the idle API load). A model from the MLflow registry: MLflow sends no
    events, so its alias is looked at every poll (a moved alias starts a canary; an unreachable
    registry is retried).
    """
    rolling_out = bool(status.get("canary")) and not status.get("aborted")
    settled = status.get("phase") == "Healthy" and not status.get("canary")
    seconds = [every.settled if settled else every.resync]
    if rolling_out:
        seconds.append(every.rollout_tick)
    if (spec.get("model") or {}).get("registry"):
        seconds.append(every.registry_poll)
    return min(seconds)


RUN_INDEX = "deployments_by_run"
"""The kopf index of ModelDeployments by the TrainingRun they serve (its id is its kwarg name)."""


def register(
    registry: kopf.OperatorRegistry, controller: ModelDeploymentController, config: OperatorConfig
) -> None:
    """Wire the triggers: the resource's own events (which also arm its resync), its
    Deployments' and the TrainingRuns' events."""

    @kopf.on.event(API_GROUP, API_VERSION, "modeldeployments", registry=registry)
    def on_modeldeployment_event(
        name: str, namespace: str | None, type: str, event: Mapping[str, Any], **_: Any
    ) -> None:
        controller.kube.observe(event)
        if not namespace:
            return
        if type == "DELETED":
            controller.forget(namespace, name)
            return
        controller.reconcile(namespace, name)
        controller.arm_resync(namespace, name)

    # A Deployment's progress is looked at on the wake-up lane, and the handler is a coroutine:
    # on kopf's handler threads (a plain function runs there) it queued behind new
    # ModelDeployments' first reconciles (each waits seconds for its Services' creation on a
    # busy API server), and 300 ModelDeployments applied at once waited a median ~30 s between
    # their Deployment being available and Healthy. A burst of one Deployment's status events
    # becomes one reconcile.
    @kopf.on.event(
        "apps", "v1", "deployments", labels={OWNER_LABEL: kopf.PRESENT}, registry=registry
    )
    async def on_deployment_event(
        labels: Mapping[str, str], namespace: str | None, event: Mapping[str, Any], **_: Any
    ) -> None:
        controller.kube.observe(event)
        if namespace:
            controller.wake_up(namespace, labels[OWNER_LABEL], DEPLOYMENT_EVENT_DELAY)

    def feed(event: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, Mapping[str, Any]]:
        """Into the cache; the metadata the cache held before (None: not held) and the event's."""
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        before = controller.kube.cached(str(obj.get("kind") or ""), str(meta.get("namespace")), str(meta.get("name")))
        controller.kube.observe(event)
        return (None if before is None else before.get("metadata") or {}), meta

    # The Services, autoscaler and disruption budget: in the watches' cache (no read per
    # reconcile), and a change someone else makes to them (or their deletion) reconciles the
    # ModelDeployment at once instead of at its next resync. An autoscaler's or budget's own
    # status updates (every few seconds) change nothing the operator decides from.
    @kopf.on.event("", "v1", "services", labels={OWNER_LABEL: kopf.PRESENT}, registry=registry)
    def on_service_event(
        labels: Mapping[str, str], namespace: str | None, type: str, event: Mapping[str, Any], **_: Any
    ) -> None:
        before, meta = feed(event)
        # The echo of our own apply (the version it answered) brings nothing new: no status of
        # a Service is read by a decision.
        echo = before is not None and before.get("resourceVersion") == meta.get("resourceVersion")
        if namespace and (type == "DELETED" or not echo):
            controller.reconcile(namespace, labels[OWNER_LABEL])

    def on_child_event(
        labels: Mapping[str, str], namespace: str | None, type: str, event: Mapping[str, Any], **_: Any
    ) -> None:
        before, meta = feed(event)
        changed = before is None or before.get("generation") != meta.get("generation")
        if namespace and (type == "DELETED" or changed):
            controller.reconcile(namespace, labels[OWNER_LABEL])

    kopf.on.event(
        "autoscaling", "v2", "horizontalpodautoscalers", labels={OWNER_LABEL: kopf.PRESENT},
        id="on_autoscaler_event", registry=registry,
    )(on_child_event)
    kopf.on.event(
        "policy", "v1", "poddisruptionbudgets", labels={OWNER_LABEL: kopf.PRESENT},
        id="on_disruption_budget_event", registry=registry,
    )(on_child_event)

    # kopf passes an index to handlers under its handler id, which defaults to the function's
    # __qualname__ ("register.<locals>.deployments_by_run"): without an explicit id the
    # TrainingRun handler's kwargs["deployments_by_run"] was a KeyError on every event, and
    # waiting ModelDeployments moved only at their resync.
    @kopf.index(API_GROUP, API_VERSION, "modeldeployments", id=RUN_INDEX, registry=registry)
    def deployments_by_run(
        name: str, namespace: str | None, spec: Mapping[str, Any], **_: Any
    ) -> dict[tuple[str | None, str], str] | None:
        # In memory, from the watch: a run's event costs no LIST of ModelDeployments.
        ref = ((spec.get("model") or {}).get("trainingRunRef") or {}).get("name")
        return {(namespace, ref): name} if ref else None

    @kopf.on.event(API_GROUP, API_VERSION, "trainingruns", registry=registry)
    def on_trainingrun_event(
        name: str, namespace: str | None, event: Mapping[str, Any], **kwargs: Any
    ) -> None:
        controller.kube.observe(event)
        # A run a ModelDeployment waits for may just have succeeded.
        if not namespace:
            return
        index: kopf.Index[tuple[str | None, str], str] = kwargs[RUN_INDEX]
        for md_name in sorted(set(index.get((namespace, name), ()))):
            controller.reconcile(namespace, md_name)
