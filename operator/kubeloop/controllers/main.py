"""``kubeloop operator``: configure kopf as a good citizen, wire the controllers, run."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import io
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import kopf
from prometheus_client import start_http_server

from kubeloop import API_GROUP
from kubeloop.config import OperatorConfig
from kubeloop.controllers import driftpolicy, metrics, modeldeployment, trainingrun
from kubeloop.controllers.cache import ObjectCache
from kubeloop.controllers.kube import EventWriter, Kube
from kubeloop.controllers.peering import PeeringView, always_active, peering_priority
from kubeloop.notifications.delivery import Metrics, Notifier, SinkConfigError
from kubeloop.resources.serving import OWNER_LABEL

FINALIZER = f"{API_GROUP}/finalizer"
#: Seconds a replica's peering keep-alive counts. kopf writes a keep-alive every
#: ``lifetime - 5..10`` s (at least every 1 s) and a standby resumes once the active replica's
#: last keep-alive is older than this, so a killed active replica is replaced within it.
PEERING_LIFETIME_SECONDS = 12
#: Sync handlers run in kopf's thread pool; each thread needs its own pooled connection, else
#: urllib3 discards connections and every call pays a new TLS handshake.
HANDLER_THREADS = 32


class HandlerSuccessFilter(logging.Filter):
    """Leaves out kopf's "Handler '...' succeeded." lines. kopf writes one at INFO for every
    watch event every handler takes (the operator's handlers take them all, most only to feed
    its cache): 300 ModelDeployments being created log thousands of them and bury what the
    operator decided. Failures, retries and the operator's own lines still pass; ``--verbose``
    keeps everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and record.name == "kopf.objects"
            and record.getMessage().startswith("Handler ")
            and record.getMessage().endswith(" succeeded.")
        )


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not verbose:
        logging.getLogger("kopf.objects").addFilter(HandlerSuccessFilter())


#: glibc malloc arenas. By default glibc gives threads up to 8 arenas per core, and the
#: operator's ~60 threads (handlers, new runs, requests, Event writers) each parse and drop
#: JSON: memory freed in one arena is not reused by another, and the peak RSS grew with N.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before any thread starts (MALLOC_ARENA_MAX, set from inside).
    False where the C library is not glibc (nothing to do there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


#: Table libraries the operator never uses but its estimator check would load: scikit-learn,
#: XGBoost and LightGBM each import pandas (and pandas pyarrow) when they can, 54 MiB of the
#: operator's memory. Only the trainer, drift and server pods handle tables.
TABLE_LIBRARIES = ("pandas",)


@contextlib.contextmanager
def table_libraries_left_out() -> Iterator[None]:
    """``import pandas`` fails inside (unless something imported it before: an in-process test),
    and works again after."""
    left_out = [name for name in TABLE_LIBRARIES if name not in sys.modules]
    for name in left_out:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ModuleNotFoundError
    try:
        yield
    finally:
        for name in left_out:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def configure_kopf(settings: kopf.OperatorSettings, config: OperatorConfig, priority: int) -> None:
    """Our own finalizer name and annotation prefix; nothing written into our status schema."""
    # No handler needs kopf's finalizer any more (kubeloop.controllers.resync); its name stays
    # so kopf recognises, and removes, the one earlier versions put on objects.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    # Watches are re-established before load balancers cut idle connections.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.posting.level = logging.WARNING  # our own Events are written by the controllers
    settings.execution.max_workers = HANDLER_THREADS
    # No cap on kopf's per-object workers (its default): they are coroutines, the handler
    # threads above bound the work. A cap of 64 made the 65th new object wait until a worker
    # idled out (queueing.idle_timeout, 5 s after its object's last event): with 100 runs or
    # ModelDeployments applied at once, seconds of apply -> Job / Healthy were that wait.
    settings.queueing.worker_limit = None
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.standalone = False
        # A replica waits for the peering before it touches anything (no two workers at start).
        settings.peering.mandatory = True
        # Distinct per replica (kopf pauses every replica that sees a live peer of the same
        # priority) and highest for the oldest (kubeloop.controllers.peering.peering_priority).
        settings.peering.priority = priority
        settings.peering.lifetime = PEERING_LIFETIME_SECONDS
    else:
        settings.peering.standalone = True


def watched_objects() -> ObjectCache:
    """The cache the controllers' watch handlers feed: the kinds and labels kopf watches."""
    cache = ObjectCache()
    cache.cover("TrainingRun")
    cache.cover("Job", trainingrun.RUN_LABEL)
    cache.cover("Pod", trainingrun.RUN_LABEL)
    cache.cover("ModelDeployment")
    cache.cover("Deployment", OWNER_LABEL)
    cache.cover("Service", OWNER_LABEL)
    cache.cover("HorizontalPodAutoscaler", OWNER_LABEL)
    cache.cover("PodDisruptionBudget", OWNER_LABEL)
    return cache


def build_registry(
    kube: Kube, config: OperatorConfig, namespaces: Sequence[str] = ()
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    priority = peering_priority()
    # The operator's own lanes (resyncs, wake-ups) act only while kopf would: see
    # kubeloop.controllers.peering.
    active = (
        PeeringView(kube, config.peering, priority, namespaces).active if config.peering else always_active
    )

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, config, priority)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod: the ServiceAccount token; elsewhere: $KUBECONFIG (kopf's own readers).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    trainingrun.register(registry, trainingrun.TrainingRunController(kube, config, active=active), config)
    driftpolicy.register(registry, driftpolicy.DriftPolicyController(kube, config, active=active), config)
    modeldeployment.register(
        registry, modeldeployment.ModelDeploymentController(kube, config, active=active), config
    )
    return registry


def notification_metrics() -> Metrics:
    """Delivery outcomes on the operator's registry."""
    return Metrics(
        delivered=lambda sink, trigger, result: metrics.NOTIFICATIONS.labels(sink, trigger, result).inc(),
        attempt=lambda sink, outcome: metrics.NOTIFICATION_ATTEMPTS.labels(sink, outcome).inc(),
        dropped=lambda sink: metrics.NOTIFICATIONS_DROPPED.labels(sink).inc(),
        queued=lambda sink, length: metrics.NOTIFICATION_QUEUE.labels(sink).set(length),
        latency=lambda sink, seconds: metrics.NOTIFICATION_SECONDS.labels(sink).observe(seconds),
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="kubeloop operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig to use outside a cluster (default: $KUBECONFIG)")
    parser.add_argument(
        "--namespace", action="append", default=None,
        help="watch only this namespace (repeatable); default: KUBELOOP_NAMESPACES or all",
    )
    parser.add_argument(
        "--verbose", action="store_true",
        help="log at DEBUG, and keep kopf's line for every handler that succeeded",
    )
    args = parser.parse_args(list(argv))
    limit_malloc_arenas()
    with table_libraries_left_out():
        return operate(parser, args)


def operate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the operator until kopf stops (SIGTERM)."""
    # `kill -USR1 <pid>` prints every thread's stack to stderr (a stuck reconcile, a deadlock)
    # without stopping the operator.
    with contextlib.suppress(io.UnsupportedOperation, ValueError):  # stderr without a file (in-process)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    configure_logging(args.verbose)

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's login reads it from there
    config = OperatorConfig()
    namespaces = args.namespace or config.namespaces
    # Sink URLs are resolved and checked now: a sink the operator cannot use stops it here,
    # with the sink and the setting named (never the URL).
    try:
        notifier = Notifier(config.notifications, notification_metrics())
    except SinkConfigError as error:
        parser.exit(2, f"kubeloop operator: {error}\n")
    threads = (
        HANDLER_THREADS + trainingrun.NEW_RUN_THREADS + trainingrun.RESYNC_THREADS
        + driftpolicy.RESYNC_THREADS + modeldeployment.REQUEST_THREADS + modeldeployment.WAKEUP_THREADS
    )
    kube = Kube.from_environment(args.kubeconfig, connections=threads + 4)
    kube.cache = watched_objects()
    kube.event_writer = events = EventWriter()
    if notifier.enabled:
        kube.event_hook = notifier
    registry = build_registry(kube, config, namespaces or ())
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=metrics.REGISTRY)
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    try:
        kopf.run(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces or (),
            standalone=not config.peering,
            peering_name=config.peering or None,
            liveness_endpoint=liveness,
        )
    finally:
        # Events of the last decisions are still queued when SIGTERM stops kopf; the pod's
        # grace period (30 s) leaves time to write them (the workers are daemons and would
        # drop them), then to send the notifications those Events queued.
        events.flush(timeout=5.0)
        notifier.stop(timeout=10.0)
    return 0
