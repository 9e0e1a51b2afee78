"""The operator's only door to the Kubernetes API: plain JSON objects in and out.

Builders and decisions speak in plain dicts (the wire form); this module turns them into REST
calls with the official client's transport, auth and TLS. Keeping every call here makes the
RBAC the operator needs readable in one place (``KINDS`` and the verbs used below), which the
chart's least-privilege test checks.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from kubeloop.controllers import metrics
from kubeloop.controllers.cache import ObjectCache

FIELD_MANAGER = "kubeloop"
log = logging.getLogger("kubeloop.kube")

JsonObject = dict[str, Any]
EventHook = Callable[..., Sequence[tuple[str, str]]]
"""Called after every Event the operator posts: ``hook(obj, type, reason, message, time,
status=..., related=...)`` (the notifier, :class:`kubeloop.notifications.delivery.Notifier`).
It must return at once and never raise; it returns Warning Events (reason, message) to post on
the object (e.g. an annotation naming a notification sink that does not exist)."""


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


# Every kind the operator touches. The Helm chart's RBAC is derived from this table.
KINDS: dict[str, Kind] = {
    "TrainingRun": Kind("kubeloop.io", "v1alpha1", "trainingruns"),
    "ModelDeployment": Kind("kubeloop.io", "v1alpha1", "modeldeployments"),
    "DriftPolicy": Kind("kubeloop.io", "v1alpha1", "driftpolicies"),
    "Job": Kind("batch", "v1", "jobs"),
    "Pod": Kind("", "v1", "pods"),
    "Service": Kind("", "v1", "services"),
    "Event": Kind("", "v1", "events"),
    "Deployment": Kind("apps", "v1", "deployments"),
    "HorizontalPodAutoscaler": Kind("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": Kind("policy", "v1", "poddisruptionbudgets"),
    "HTTPRoute": Kind("gateway.networking.k8s.io", "v1", "httproutes"),
    "VirtualService": Kind("networking.istio.io", "v1", "virtualservices"),
    # kopf's peering objects: read to know whether this replica is the working one.
    "ClusterKopfPeering": Kind("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False),
    "KopfPeering": Kind("kopf.dev", "v1", "kopfpeerings"),
}


def request_labels(method: str, path: str, content_type: str = "application/json") -> tuple[str, str]:
    """The Kubernetes verb and resource (``deployments``, ``pods/proxy``; ``-`` for paths that
    name none, like ``/version``) of a request, for kubeloop_api_requests_total: bounded
    labels (never a namespace or a name) that say which requests a reconcile costs."""
    parts = [part for part in path.split("?", 1)[0].split("/") if part]
    # /api/v1/... or /apis/<group>/<version>/...: what follows is the resource path.
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:] if parts[:1] == ["apis"] else []
    if len(rest) >= 2 and rest[0] == "namespaces":
        # namespaces/<ns>/<resource>/...; "namespaces/<ns>" alone is the namespace itself.
        rest = rest[2:] if len(rest) > 2 else ["namespaces", rest[1]]
    if not rest:
        return method.lower(), "-"
    resource = rest[0] if len(rest) < 3 else f"{rest[0]}/{rest[2]}"
    named = len(rest) >= 2
    if method == "GET":
        verb = "get" if named else "list"
    elif method == "POST":
        verb = "create"
    elif method == "PATCH":
        verb = "apply" if content_type == "application/apply-patch+yaml" else "patch"
    elif method == "PUT":
        verb = "update"
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = method.lower()
    return verb, resource


class NotFound(LookupError):
    """The object does not exist (HTTP 404)."""


class Conflict(RuntimeError):
    """The object exists already or changed under us (HTTP 409)."""


def lasting_refusal(error: Exception) -> int | None:
    """The HTTP status of a write the API server refused for good: 404 (:class:`NotFound`) or a
    4xx other than 409 (a conflict) and 429 (throttled), which no retry of the same request
    changes; None for what may pass later (5xx, throttling, a conflict, no status at all)."""
    if isinstance(error, NotFound):
        return 404
    status = error.status if isinstance(error, ApiException) else None
    if status is None or not 400 <= status < 500 or status in (409, 429):
        return None
    return int(status)


class TooLarge(ValueError):
    """An answer longer than the caller's limit (read no further than the limit)."""


class Kube:
    """A thin JSON client over the official client's transport."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        event_hook: EventHook | None = None,
        cache: ObjectCache | None = None,
    ) -> None:
        self.api_client = api_client
        self.event_hook = event_hook
        # The operator's watches (kubeloop.controllers.cache): reads of what they hold cost no
        # request, and what our writes answer is remembered. None: every read asks the server.
        self.cache = cache
        # Events written in the background (the operator's), or by the caller (None).
        self.event_writer: EventWriter | None = None

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, connections: int | None = None) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig; ``connections``:
        how many threads call at once (each keeps a pooled connection)."""
        configuration = k8s_client.Configuration()
        if connections is not None:
            configuration.connection_pool_maxsize = connections
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
        return cls(k8s_client.ApiClient(configuration))

    def _call(
        self,
        method: str,
        path: str,
        body: Any,
        query: Mapping[str, str] | None,
        content_type: str,
        accept: str,
        limit: int | None = None,
    ) -> bytes:
        method_, url, headers, body_, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params={"Accept": accept, "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        verb, resource = request_labels(method, path, content_type)
        started = time.perf_counter()
        try:
            response = self.api_client.call_api(method_, url, headers, body_, _request_timeout=30)
        except Exception:
            metrics.observe_api_request(verb, resource, "error", time.perf_counter() - started)
            raise
        metrics.observe_api_request(verb, resource, str(response.status), time.perf_counter() - started)
        data: bytes
        if limit is None:
            response.read()  # type: ignore[no-untyped-call]
            data = response.data or b""
        else:
            # What a pod answers through the proxy is the pod's to choose: never hold more
            # than the limit of it.
            raw = response.response
            try:
                data = raw.read(limit + 1) or b""
            finally:
                raw.release_conn()
            if len(data) > limit and response.status < 400:
                raise TooLarge(f"{path}: the answer exceeds {limit} bytes")
        # call_api hands back error responses as they are; turn them into exceptions here.
        if response.status == 404:
            raise NotFound(f"{path}: {_message(data)}")
        if response.status == 409:
            raise Conflict(_message(data))
        if response.status >= 400:
            raise ApiException(status=response.status, reason=_message(data))
        return data

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> JsonObject:
        """A JSON call; ``accept`` may ask for another JSON rendering (a server-side Table)."""
        data = self._call(method, path, body, query, content_type, accept)
        if not data:
            return {}
        parsed: JsonObject = orjson.loads(data)
        return parsed

    def request_text(
        self, method: str, path: str, query: Mapping[str, str] | None = None, limit: int | None = None
    ) -> str:
        """A call whose answer is text (pod logs, a pod's /metrics through the proxy); with
        ``limit``, an answer longer than ``limit`` bytes raises :class:`TooLarge`."""
        return self._call(method, path, None, query, "application/json", "*/*", limit).decode(errors="replace")

    # --- verbs -------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> JsonObject:
        return self.request("GET", KINDS[kind].path(namespace, name))

    def get_or_none(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        """The object from the watches' cache, else from the API server (None: it does not exist)."""
        found = self.cached(kind, namespace, name)
        if found is not None:
            return found
        try:
            return self.get(kind, namespace, name)
        except NotFound:
            return None

    def get_ours_or_none(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        """Like :meth:`get_or_none` for a reader that only wants objects carrying the cache's
        label (ours): once the server has said 404, that answer stands until the watch says
        otherwise, so a missing child costs one request, not one per reconcile."""
        answered, found = self.known(kind, namespace, name, ours=True)
        if answered:
            return found
        if self.cache is None:
            return self.get_or_none(kind, namespace, name)
        count = self.cache.change_count(kind, namespace, name)
        try:
            return self.get(kind, namespace, name)
        except NotFound:
            self.cache.mark_absent(kind, namespace, name, count)
            return None

    def known(self, kind: str, namespace: str, name: str, ours: bool = False) -> tuple[bool, JsonObject | None]:
        """What the cache says with no request: ``(True, object)`` when the watches hold it,
        ``(True, None)`` for a name the server said is missing (``ours``: see
        :meth:`get_ours_or_none`), ``(False, None)`` when only the server can answer."""
        found = self.cached(kind, namespace, name)
        if found is not None:
            return True, found
        if ours and self.cache is not None and self.cache.absent(kind, namespace, name):
            return True, None
        return False, None

    def get_fresh(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        """The object from the API server (None: gone), remembered in the cache."""
        try:
            return self._remember(self.get(kind, namespace, name))
        except NotFound:
            return None

    def cached(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        """The object as the watches last saw it, with no request; None says only "not seen"."""
        return self.cache.get(kind, namespace, name) if self.cache is not None else None

    def list(
        self, kind: str, namespace: str, labels: Mapping[str, str] | None = None, fresh: bool = False
    ) -> list[JsonObject]:
        """The objects from the watches' cache where it can answer, else (or ``fresh``) from
        the API server. ``fresh`` is for decisions that cannot be taken back: each watch is its
        own stream, so the cache may hold a Job's completion before its pod's last status."""
        if self.cache is not None and not fresh:
            cached = self.cache.list(kind, namespace, labels)
            if cached is not None:
                return cached
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else {}
        items: list[JsonObject] = self.request("GET", KINDS[kind].path(namespace), query=query).get("items", [])
        return items

    def observe(self, event: Mapping[str, Any]) -> None:
        """A watch event kopf handed to a handler (``{"type": ..., "object": ...}``) into the cache."""
        if self.cache is not None and event.get("object"):
            self.cache.observe(event.get("type"), event["object"])

    def _remember(self, obj: JsonObject) -> JsonObject:
        if self.cache is not None and obj:
            self.cache.remember(obj)
        return obj

    def create(self, obj: JsonObject) -> JsonObject:
        kind = KINDS[obj["kind"]]
        return self._remember(self.request("POST", kind.path(obj["metadata"].get("namespace")), body=obj))

    def apply(self, obj: JsonObject) -> JsonObject:
        """Server-side apply with our field manager: idempotent, and safe to repeat after a crash."""
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        return self._remember(
            self.request(
                "PATCH",
                kind.path(meta.get("namespace"), meta["name"]),
                body=obj,
                query={"fieldManager": FIELD_MANAGER, "force": "true"},
                content_type="application/apply-patch+yaml",
            )
        )

    def patch(self, kind: str, namespace: str, name: str, patch: JsonObject, sub: str = "") -> JsonObject:
        """JSON merge patch (lists are replaced whole, which is what status writes want)."""
        return self._remember(
            self.request(
                "PATCH",
                KINDS[kind].path(namespace, name, sub),
                body=patch,
                content_type="application/merge-patch+json",
            )
        )

    def patch_status(
        self, kind: str, namespace: str, name: str, status: JsonObject, resource_version: str | None = None
    ) -> JsonObject:
        """A merge patch of the status; with ``resource_version``, only onto that version of the
        object (else :class:`Conflict`): a status decided from a read the object has moved past
        (a cached read behind the watch, another replica's write) is never written."""
        patch: JsonObject = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        return self.patch(kind, namespace, name, patch, sub="status")

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Background") -> None:
        with suppress(NotFound):
            self.request(
                "DELETE",
                KINDS[kind].path(namespace, name),
                body={"propagationPolicy": propagation},
            )


def _message(data: bytes) -> str:
    """The human part of a Kubernetes Status answer."""
    try:
        message: str = orjson.loads(data or b"{}").get("message") or data.decode(errors="replace")
    except (orjson.JSONDecodeError, AttributeError):
        message = data.decode(errors="replace")
    return message


class KeyedLocks:
    """One lock per object key, so two triggers never reconcile the same object at once."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}

    @contextmanager
    def hold(self, kind: str, namespace: str, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault((kind, namespace, name), threading.Lock())
        with lock:
            yield


class EventWriter:
    """Writes Events off the reconcile's path, as client-go's event recorder does.

    An Event is one more request per decision, and under load each request waits for a busy
    API server: written inline, it was a third of a new run's first reconcile. Events of one
    object keep their order (one worker per object, chosen by its uid); a failed write is
    logged and counted, never retried by reconciling again (the decision is already applied).
    """

    def __init__(self, workers: int = 8, queue_size: int = 2000) -> None:
        self._queues: list[queue.Queue[Callable[[], None] | None]] = [
            queue.Queue(queue_size) for _ in range(workers)
        ]
        self._threads = [
            threading.Thread(target=self._work, args=(q,), name=f"events-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str, write: Callable[[], None]) -> None:
        # A full queue makes the reconcile wait (back-pressure) rather than lose Events.
        self._queues[zlib.crc32(key.encode()) % len(self._queues)].put(write)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every Event submitted so far is written (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        for q in self._queues:
            while q.unfinished_tasks and time.monotonic() < deadline:
                time.sleep(0.01)

    @staticmethod
    def _work(q: queue.Queue[Callable[[], None] | None]) -> None:
        while True:
            write = q.get()
            try:
                if write is None:
                    return
                write()
            except Exception:
                metrics.EVENT_WRITE_FAILURES.inc()
                log.warning("writing an Event failed", exc_info=True)
            finally:
                q.task_done()


def post_event(
    kube: Kube,
    obj: JsonObject,
    type_: str,
    reason: str,
    message: str,
    now_text: str,
    *,
    status: Mapping[str, Any] | None = None,
    related: Mapping[str, Any] | None = None,
) -> None:
    """Record an Event on ``obj`` (what `kubectl describe` shows under Events), then hand it to
    the Kube's event hook (notifications) with ``status``, the object's status after this
    reconcile, and ``related`` objects by role (a DriftPolicy's ``retrain`` run)."""
    meta = obj["metadata"]
    # Counted before the write: an alert on the reason fires even if the Event cannot be stored.
    metrics.EVENTS.labels(meta["namespace"], obj["kind"], meta["name"], type_, reason).inc()
    if kube.event_writer is not None:
        kube.event_writer.submit(
            str(meta.get("uid") or meta["name"]),
            lambda: _write_event(kube, obj, type_, reason, message, now_text, status=status, related=related),
        )
    else:
        _write_event(kube, obj, type_, reason, message, now_text, status=status, related=related)


def _write_event(
    kube: Kube,
    obj: JsonObject,
    type_: str,
    reason: str,
    message: str,
    now_text: str,
    *,
    status: Mapping[str, Any] | None,
    related: Mapping[str, Any] | None,
) -> None:
    meta = obj["metadata"]
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "namespace": meta["namespace"],
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
            },
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "kubeloop-operator"},
            "reportingComponent": "kubeloop.io/operator",
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": now_text,
            "lastTimestamp": now_text,
            "count": 1,
        }
    )
    # After the write: the notification says what the cluster's Events say.
    if kube.event_hook is not None:
        for warning_reason, warning in kube.event_hook(
            obj, type_, reason, message, now_text, status=status, related=related
        ):
            post_event(kube, obj, "Warning", warning_reason, warning, now_text)
