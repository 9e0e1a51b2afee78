"""DriftPolicy controller: measure drift when due, then let :mod:`kubeloop.decide.driftpolicy` decide."""

from __future__ import annotations

import contextlib
import functools
import logging
import posixpath
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubeloop import API_GROUP, API_VERSION
from kubeloop.analysis.base import AnalysisTarget
from kubeloop.analysis.prometheus import PrometheusClient, PrometheusError
from kubeloop.analysis.scrape import ScrapeProvider, ScrapeRound
from kubeloop.api.common import parse_duration
from kubeloop.api.conditions import Reason
from kubeloop.api.driftpolicy import DEFAULT_PROMETHEUS_WINDOW, ignored_settings
from kubeloop.config import OperatorConfig
from kubeloop.controllers import metrics
from kubeloop.controllers.kube import (
    Conflict,
    JsonObject,
    KeyedLocks,
    Kube,
    NotFound,
    lasting_refusal,
    post_event,
)
from kubeloop.controllers.peering import always_active
from kubeloop.controllers.profiles import (
    MAX_PROFILE_BYTES,
    PROFILE_PATH,
    ProfileUnavailable,
    ServedProfiles,
)
from kubeloop.controllers.resync import Resyncs
from kubeloop.controllers.scraping import proxy_get, ready_pods, scrape_round
from kubeloop.controllers.trainingrun import tracking_settings, trainer_settings
from kubeloop.decide.common import wire_time
from kubeloop.decide.driftpolicy import (
    DriftMeasurement,
    PerformanceReading,
    check_due,
    config_wire,
    decide,
    drift_config,
    due_time,
    invalid_spec,
    labelled_counts,
    live_counts_query,
    performance_reading,
    promotion_refused,
    reference_value,
    verdict_from_check,
    verdict_from_report,
)
from kubeloop.drift import performance as perf
from kubeloop.drift.profile import PREDICTION_FEATURE, Profile
from kubeloop.drift.report import counts_from_bin_labels, drift_report
from kubeloop.drift.result import parse_result as parse_drift_result
from kubeloop.registry import champion as registry_champion
from kubeloop.registry.decide import REGISTRY_UNAVAILABLE, Resolution
from kubeloop.resources.driftjob import REPORT_ANNOTATION, build_drift_job, drift_job_name
from kubeloop.trust import ownership
from kubeloop.trust.images import ImagePolicy
from kubeloop.trust.urls import (
    PrometheusUrlPolicy,
    UrlNotAllowed,
    check_operator_read,
)

log = logging.getLogger("kubeloop.driftpolicy")
KIND = "DriftPolicy"
POLICY_LABEL = "kubeloop.io/driftpolicy"
#: A policy's resync measures drift when its check is due (a query, a scrape, a Job's result):
#: on 2 threads of their own, a slow check delays other policies' resyncs, never an event.
RESYNC_THREADS = 2
# The sample name prometheus_client's parser gives the server's per-bin counter.
FEATURE_BIN_SAMPLE = "kubeloop_serve_feature_bin_total"


class MeasurementError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


LIVE_URL_FIELD = "spec.source.live.prometheusUrl"
PROFILE_MISMATCH = (
    "the live bin counters do not match the reference profile (a series without feature/bin "
    "labels, a bin the profile lacks, or an invalid count; values not shown): check that "
    "prometheusUrl scrapes this ModelDeployment's servers"
)

FEEDBACK_MISMATCH = (
    "the live feedback counters are not the model server's (a kubeloop_serve_feedback_class "
    "series without class/outcome labels; values not shown): check that prometheusUrl scrapes "
    "this ModelDeployment's servers"
)


def prometheus_query(
    base_url: str, query: str, timeout: float = 10.0
) -> list[tuple[dict[str, str], float]]:
    """An instant PromQL query: (labels, value) per series. ``base_url`` must have passed the
    URL policy; failures are fixed summaries (the shared client never repeats an answer)."""
    try:
        series = PrometheusClient(base_url, timeout).vector(query)
    except PrometheusError as error:
        raise MeasurementError(
            Reason.SOURCE_UNAVAILABLE, f"Prometheus query failed: {error}"
        ) from None
    return [(s.labels, s.value) for s in series]


class DriftPolicyController:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        clock: Callable[[], datetime] | None = None,
        active: Callable[[], bool] = always_active,
    ) -> None:
        self.kube = kube
        self.config = config
        self.resyncs = Resyncs(self.resync, KIND, workers=RESYNC_THREADS, active=active)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.locks = KeyedLocks()
        self.profiles = ServedProfiles()
        self.scrape = ScrapeProvider()
        # One URL policy (kubeloop.trust.urls): the same the canary analysis applies.
        self.prometheus_urls = PrometheusUrlPolicy.from_settings(
            config.prometheus_url, config.allowed_prometheus_urls
        )
        # One image policy (kubeloop.trust.images): the same the TrainingRuns it creates meet.
        self.images = ImagePolicy.from_settings(config.runtime_image, config.allowed_images)
        self.tracking = tracking_settings(config)

    # --- measuring ----------------------------------------------------------------------------

    def profile_uri(self, namespace: str, stable: Mapping[str, Any]) -> str:
        """Where the stable model's reference profile is, for a dataset check Job: the run's
        ``status.model.profileUri``, else ``profile.json`` beside the model. Either must lie
        under the storage roots (:func:`~kubeloop.trust.urls.check_operator_read`): a
        termination message or a pinned URI must not make the Job read anything else. (The
        operator reads no profile itself: :meth:`served_profile`.)"""
        run_name = stable.get("trainingRun")
        run_root: str | None = None
        if run_name:
            run = self.kube.get_or_none("TrainingRun", namespace, run_name) or {}
            run_root = ((run.get("spec") or {}).get("output") or {}).get("storageUri")
            uri = ((run.get("status") or {}).get("model") or {}).get("profileUri")
            if uri:
                return self._readable(
                    str(uri), f"TrainingRun {run_name!r} status.model.profileUri", run_root
                )
        model_uri = str(stable["uri"])
        directory = model_uri if not model_uri.endswith(".skops") else posixpath.dirname(model_uri)
        return self._readable(
            f"{directory.rstrip('/')}/profile.json",
            "the stable model's profile.json (status.stable.uri)",
            run_root,
        )

    def _readable(self, uri: str, field: str, run_root: str | None) -> str:
        try:
            return check_operator_read(uri, field, self.config.default_storage_uri, run_root)
        except UrlNotAllowed as error:
            raise MeasurementError(error.reason, error.message) from None

    def served_profile(self, target: Mapping[str, Any]) -> Profile:
        """The stable model's reference profile, as the namespace's own stable servers loaded it
        (:mod:`kubeloop.controllers.profiles`): the operator reads nothing from model storage."""
        try:
            return self.profiles.of(
                target,
                lambda: [pod.name for pod in ready_pods(self.kube, target, track="stable")],
                lambda pod: proxy_get(
                    self.kube, target, pod, PROFILE_PATH, limit=MAX_PROFILE_BYTES
                ).encode(),
            )
        except ProfileUnavailable as error:
            raise MeasurementError(error.reason, error.message) from None

    def measure(self, policy: Mapping[str, Any]) -> DriftMeasurement | None:
        try:
            return self._measure(policy)
        except MeasurementError as error:
            return DriftMeasurement(error=error.message, error_reason=error.reason)

    def _measure(self, policy: Mapping[str, Any]) -> DriftMeasurement | None:
        namespace = policy["metadata"]["namespace"]
        spec = policy["spec"]
        target_name = spec["targetRef"]["name"]
        live = spec["source"].get("live")
        ignored = ignored_settings(spec)
        if ignored:
            # The CRD refuses these on apply; a CRD from before those rules lets them through.
            raise MeasurementError(Reason.INVALID_SPEC, "; ".join(f"{f}: {m}" for f, m in ignored))
        url: str | None = None
        if live is not None and live.get("prometheusUrl"):
            # Refused before anything is read or requested.
            try:
                url = self.prometheus_urls.resolve(str(live["prometheusUrl"]), LIVE_URL_FIELD)
            except UrlNotAllowed as error:
                raise MeasurementError(error.reason, error.message) from None
        target = self.kube.get_or_none("ModelDeployment", namespace, target_name)
        if target is None:
            raise MeasurementError(
                Reason.TARGET_NOT_FOUND,
                f"spec.targetRef: ModelDeployment {target_name!r} does not exist",
            )
        stable = (target.get("status") or {}).get("stable") or {}
        if not stable.get("uri") or not stable.get("sha256"):
            raise MeasurementError(
                Reason.MODEL_NOT_READY,
                f"ModelDeployment {target_name!r} serves no stable model yet",
            )
        if spec.get("performance") is not None:
            return self.measure_performance(policy, target, stable, url)
        if live is None:
            # The check Job reads the profile from the namespace's own claim and checks the
            # feature names against it; the operator reads none.
            return self.dataset_check(policy, self.profile_uri(namespace, stable))
        window = parse_duration(spec.get("window") or DEFAULT_PROMETHEUS_WINDOW)
        short_sha = stable["sha256"][:12]
        if url:
            samples = prometheus_query(url, live_counts_query(target_name, short_sha, window))
        else:
            scraped = self.scraped_counts(policy, target, short_sha, window)
            if scraped is None:
                return DriftMeasurement(samples=0)
            samples = scraped
        profile = self.served_profile(target)
        problem = invalid_spec(spec, profile)
        if problem is not None:
            raise MeasurementError(Reason.INVALID_SPEC, problem)
        try:
            grouped = labelled_counts(samples)
        except KeyError:
            raise MeasurementError(Reason.SOURCE_UNAVAILABLE, PROFILE_MISMATCH) from None
        wanted = set(spec.get("features") or [f.name for f in profile.features]) | {
            PREDICTION_FEATURE
        }
        grouped = {name: bins for name, bins in grouped.items() if name in wanted}
        if not grouped:
            return DriftMeasurement(samples=0)
        try:
            counts = counts_from_bin_labels(profile, grouped)
            report = drift_report(profile, counts, drift_config(spec))
        except ValueError:
            raise MeasurementError(Reason.PROFILE_NOT_FOUND, PROFILE_MISMATCH) from None
        return DriftMeasurement(verdict=verdict_from_report(report), samples=report.sample_size)

    def measure_performance(
        self,
        policy: Mapping[str, Any],
        target: Mapping[str, Any],
        stable: Mapping[str, Any],
        url: str | None,
    ) -> DriftMeasurement:
        """Live performance over the labels that arrived in the span compared (the window with
        Prometheus, else the time since the previous check), and its reference."""
        namespace, spec = policy["metadata"]["namespace"], policy["spec"]
        performance = spec["performance"]
        metric = str(performance["metric"])
        run_name = stable.get("trainingRun")
        run = self.kube.get_or_none("TrainingRun", namespace, run_name) if run_name else None
        reference, problem = reference_value(performance, run, run_name)
        if problem is not None or reference is None:
            reason, message = problem or (Reason.REFERENCE_UNAVAILABLE, "no reference")
            raise MeasurementError(reason, message)
        short_sha = stable["sha256"][:12]
        window = parse_duration(spec.get("window") or DEFAULT_PROMETHEUS_WINDOW)
        series = perf.METRIC_SERIES[metric]
        samples: list[tuple[str, Mapping[str, str], float]] = []
        if url:
            seconds = max(int(window.total_seconds()), 1)
            for sample in series:
                query = perf.increase_query(sample, target["metadata"]["name"], short_sha, seconds)
                samples += [
                    (sample, labels, value) for labels, value in prometheus_query(url, query)
                ]
        else:
            found = self._scrape_stable(policy, target, window)
            if found.compared_pods == 0:
                # The first scrape only records the counters; the next check compares.
                return DriftMeasurement(
                    performance=PerformanceReading(metric, 0, None, reference, first_scrape=True)
                )
            samples = [
                (sample, dict(labels), value)
                for (sample, labels), value in found.increases.values.items()
                if sample in series and dict(labels).get("sha") == short_sha
            ]
        try:
            counts = perf.counts_from_samples(samples)
        except KeyError:
            raise MeasurementError(Reason.SOURCE_UNAVAILABLE, FEEDBACK_MISMATCH) from None
        reading = performance_reading(metric, counts, reference)
        return DriftMeasurement(performance=reading, samples=reading.labels)

    def _scrape_stable(
        self, policy: Mapping[str, Any], target: Mapping[str, Any], window: timedelta
    ) -> ScrapeRound:
        """One scrape round of the stable pods, compared with this policy's previous round
        (kept per policy: two policies on one deployment must not take each other's deltas)."""
        namespace, name = target["metadata"]["namespace"], target["metadata"]["name"]
        key = f"{name}/driftpolicy/{policy['metadata']['name']}"
        return scrape_round(
            self.kube, self.scrape, target, AnalysisTarget(namespace, key, window), track="stable"
        )

    def scraped_counts(
        self,
        policy: Mapping[str, Any],
        target: Mapping[str, Any],
        short_sha: str,
        window: timedelta,
    ) -> list[tuple[dict[str, str], float]] | None:
        """Bin-counter increases of the stable pods since the previous check (direct scrape).

        Without Prometheus the window is the time between two checks; the first check after a
        start only records (None), like Prometheus' increase() needs two samples.
        """
        found = self._scrape_stable(policy, target, window)
        if found.compared_pods == 0:
            return None
        return [
            (dict(labels), value)
            for (sample, labels), value in found.increases.values.items()
            if sample == FEATURE_BIN_SAMPLE and dict(labels).get("sha") == short_sha
        ]

    def dataset_check(self, policy: Mapping[str, Any], profile_uri: str) -> DriftMeasurement | None:
        """Run the due check as a Job (``kubeloop drift``); None while it runs."""
        namespace, name = policy["metadata"]["namespace"], policy["metadata"]["name"]
        due_epoch = int(due_time(policy).timestamp())
        job_name = drift_job_name(name, due_epoch)
        job = self.kube.get_or_none("Job", namespace, job_name)
        # A Job of that name that is not this policy's is not read (its result could be forged)
        # and not replaced (kubeloop.trust.ownership).
        conflict = ownership.conflict(
            "Job", job_name, job, ownership.Owner.of(policy, POLICY_LABEL)
        )
        if conflict is not None:
            raise MeasurementError(ownership.RESOURCE_CONFLICT, conflict)
        if job is None:
            config = drift_config(policy["spec"])
            job = build_drift_job(
                policy, due_epoch, profile_uri, config_wire(config), trainer_settings(self.config)
            )
            with contextlib.suppress(Conflict):
                self.kube.create(job)
            return None
        finished = {
            c.get("type")
            for c in (job.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"
        } & {"Complete", "Failed"}
        if not finished:
            return None
        pods = self.kube.list("Pod", namespace, labels={"job-name": job_name})
        messages = [
            ((s.get("state") or {}).get("terminated") or {}).get("message") or ""
            for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))
            for s in (pod.get("status") or {}).get("containerStatuses") or []
        ]
        try:
            check = parse_drift_result(
                next(m for m in reversed(messages) if m.strip().startswith("{"))
            )
        except (StopIteration, ValueError):
            raise MeasurementError(
                Reason.SOURCE_UNAVAILABLE,
                f"drift check Job {job_name} ended without a result; see `kubectl logs job/{job_name}`",
            ) from None
        if check.status == "Failed":
            raise MeasurementError(
                check.reason or Reason.SOURCE_UNAVAILABLE, check.message or "the drift check failed"
            )
        return DriftMeasurement(
            verdict=verdict_from_check(check, drift_config(policy["spec"])),
            samples=check.sample_size,
            # The operator reads no storage: it only names the page the Job wrote.
            report=(job["metadata"].get("annotations") or {}).get(REPORT_ANNOTATION),
        )

    def registry_champion(self, policy: Mapping[str, Any]) -> Resolution | None:
        """What the registry's ``champion`` alias names, when the target serves from
        ``spec.model.registry`` (None: it does not, or the operator has no MLflow)."""
        target = self.kube.get_or_none(
            "ModelDeployment", policy["metadata"]["namespace"], policy["spec"]["targetRef"]["name"]
        )
        source = registry_champion.champion_source(target)
        if source is None or not self.tracking.enabled:
            return None
        return registry_champion.resolve_champion(self.tracking.client(), source)

    def promote(self, policy: Mapping[str, Any], patch: JsonObject) -> str | None:
        """Point the target at the winning retrain; why the API server refused it for good
        (None: done). A refusal that may pass later (the server unavailable, throttled, a
        conflict) raises, and the next reconcile tries again (the status is not written)."""
        namespace, target = policy["metadata"]["namespace"], policy["spec"]["targetRef"]["name"]
        try:
            self.kube.patch("ModelDeployment", namespace, target, patch)
        except (NotFound, ApiException) as error:
            code = lasting_refusal(error)
            if code is None:
                raise
            if isinstance(error, NotFound):
                return f"it does not exist in namespace {namespace}"
            return f"the API server answered {code}: {error.reason}"
        return None

    # --- reconciling --------------------------------------------------------------------------

    def resync(self, namespace: str, name: str) -> float | None:
        """The schedule's clock and the safety net: every policy is looked at this often."""
        return self.config.resync_seconds if self.reconcile(namespace, name) else None

    def reconcile(self, namespace: str, name: str) -> bool:
        """One reconcile; False when the policy is gone (or going)."""
        with self.locks.hold(KIND, namespace, name), metrics.reconcile_timer(KIND):
            policy = self.kube.get_or_none(KIND, namespace, name)
            if policy is None or policy["metadata"].get("deletionTimestamp"):
                return False
            now = self.clock()
            runs = {
                run["metadata"]["name"]: run
                for run in self.kube.list("TrainingRun", namespace, labels={POLICY_LABEL: name})
            }
            source_run_spec = None
            source_ref = ((policy["spec"].get("retrain") or {}).get("fromTrainingRun") or {}).get(
                "name"
            )
            if source_ref:
                source_run = self.kube.get_or_none("TrainingRun", namespace, source_ref)
                source_run_spec = source_run["spec"] if source_run else None
            measurement = self.measure(policy) if check_due(policy, now) else None
            # The target's spec.model: for the promotion's words, and to see a refused
            # promotion done by hand (read from the watch cache: no request).
            target = self.kube.get_or_none(
                "ModelDeployment", namespace, policy["spec"]["targetRef"]["name"]
            )
            target_model = (target or {}).get("spec", {}).get("model")
            decide_now = functools.partial(
                decide,
                policy,
                now,
                measurement,
                runs,
                source_run_spec,
                images=self.images,
                target_model=target_model,
            )
            decision = decide_now()
            if decision.create_run is not None:
                # A target serving from the MLflow registry: the retrain is judged against the
                # registry's champion; MLflow unreachable, it waits and nothing is created.
                champion = self.registry_champion(policy)
                if champion is not None and champion.reason == REGISTRY_UNAVAILABLE:
                    decision = decide_now(registry_champion=champion)

            if decision.create_run is not None:
                try:
                    self.kube.create(decision.create_run)
                except Conflict:
                    log.info(
                        "retrain run %s exists already", decision.create_run["metadata"]["name"]
                    )
                else:
                    reason = decision.status["lastRetrain"]["reason"].lower()
                    metrics.RETRAINS.labels(namespace, name, reason).inc()
            if decision.promote is not None:
                refusal = self.promote(policy, decision.promote)
                if refusal is not None:
                    decision = promotion_refused(decision, policy, refusal, now)
            if decision.status != (policy.get("status") or {}):
                self.kube.patch_status(KIND, namespace, name, decision.status)
            retrain = runs.get(str((decision.status.get("lastRetrain") or {}).get("name")))
            for event in decision.events:
                post_event(
                    self.kube,
                    policy,
                    event.type,
                    event.reason,
                    event.message,
                    wire_time(now),
                    status=decision.status,
                    related={"retrain": retrain},
                )
            for score in decision.status.get("scores") or []:
                metrics.DRIFT_SCORE.labels(namespace, name, score["feature"], score["test"]).set(
                    score["score"]
                )
            return True


def register(
    registry: kopf.OperatorRegistry, controller: DriftPolicyController, config: OperatorConfig
) -> None:
    # Each event also arms the policy's resync, its schedule's clock
    # (kubeloop.controllers.resync; not a kopf timer, which would put kopf's finalizer on it).
    @kopf.on.event(API_GROUP, API_VERSION, "driftpolicies", registry=registry)
    def on_policy_event(name: str, namespace: str | None, type: str, **_: Any) -> None:
        if not namespace:
            return
        if type == "DELETED":
            controller.resyncs.forget(namespace, name)
            return
        exists = controller.reconcile(namespace, name)
        controller.resyncs.arm(namespace, name, config.resync_seconds if exists else None)

    @kopf.on.event("batch", "v1", "jobs", labels={POLICY_LABEL: kopf.PRESENT}, registry=registry)
    def on_check_job_event(
        labels: Mapping[str, str], namespace: str | None, event: Mapping[str, Any], **_: Any
    ) -> None:
        controller.kube.observe(event)
        if namespace:
            controller.reconcile(namespace, labels[POLICY_LABEL])

    @kopf.on.event(
        API_GROUP,
        API_VERSION,
        "trainingruns",
        labels={POLICY_LABEL: kopf.PRESENT},
        registry=registry,
    )
    def on_retrain_event(
        labels: Mapping[str, str], namespace: str | None, event: Mapping[str, Any], **_: Any
    ) -> None:
        controller.kube.observe(event)  # the cache first (kubeloop.controllers.cache)
        if namespace:
            controller.reconcile(namespace, labels[POLICY_LABEL])
