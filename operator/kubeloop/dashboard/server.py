"""The dashboard's web server: the standard library's ThreadingHTTPServer on 127.0.0.1.

Why not starlette/uvicorn: they are in the ``serve`` extra only, while the plugin installs with
the core dependencies; a local single-user page with one server-sent-events stream per tab and
a few JSON routes needs nothing an asyncio stack adds, and a thread per connection is what the
blocking Kubernetes client wants anyway.

What it does, with the user's own kubeconfig (nothing new runs in the cluster):

* one thread per kind lists, then watches TrainingRuns, ModelDeployments and DriftPolicies
  (relisting when a watch ends) into a :class:`Store`; every change bumps its version;
* ``GET /api/events`` (server-sent events) sends the page a new snapshot on every change;
* ``GET /api/drift/NS/NAME`` reads the reference profile (``/profile``) and live bin counters
  (``/metrics``) of the target's ready stable pods through the API server's pod proxy;
* ``POST /api/action`` runs the plugin's own :func:`kubeloop.plugin.steer`, so a button does
  exactly what ``kubectl kubeloop promote|abort|retry|undo|pause|resume`` does, and a refusal
  is the API server's text.

Only requests whose ``Host`` is this address are answered (a page elsewhere cannot rebind a
name to it), and writes carry a per-process token embedded in the page (a page elsewhere
cannot read it), so another site open in the same browser cannot press the buttons.
"""

from __future__ import annotations

import errno
import secrets
import sys
import threading
import webbrowser
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote

import orjson
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as TransportError

from kubeloop.analysis.scrape import parse_metrics
from kubeloop.controllers.kube import KINDS, Kube, NotFound, TooLarge
from kubeloop.controllers.profiles import MAX_PROFILE_BYTES, PROFILE_PATH, parse_served_profile
from kubeloop.controllers.scraping import proxy_get, ready_pods
from kubeloop.dashboard import views
from kubeloop.drift.profile import Profile
from kubeloop.plugin import STEERING, CommandFailed, ObjectRef, server_error_text, steer

WATCHED = ("TrainingRun", "ModelDeployment", "DriftPolicy")
WATCH_SECONDS = 240
"""How long one watch request lasts before the API server ends it and we relist."""
RETRY_SECONDS = 3.0
KEEPALIVE_SECONDS = 15.0
MAX_METRICS_BYTES = 16 * 1024 * 1024
ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    # Everything the page loads comes from this server; the SVG charts are inline markup.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

JsonObject = dict[str, Any]
Key = tuple[str, str]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """The objects the user can see, the weight and score histories seen while the dashboard
    runs, and a version that every change bumps (server-sent-event streams wait on it)."""

    def __init__(self, scope: str, clock: Callable[[], str] = _now) -> None:
        self.scope = scope
        self._clock = clock
        self._changed = threading.Condition()
        self._objects: dict[str, dict[Key, JsonObject]] = {kind: {} for kind in WATCHED}
        self._errors: dict[str, str] = {}
        self._weights: dict[Key, list[JsonObject]] = {}
        self._scores: dict[Key, list[JsonObject]] = {}
        self._synced: set[str] = set()
        self.version = 0

    @staticmethod
    def key(obj: Mapping[str, Any]) -> Key:
        return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]

    def _record(self, kind: str, obj: JsonObject) -> None:
        key = self.key(obj)
        if kind == "ModelDeployment":
            views.add_weight_point(
                self._weights.setdefault(key, []), views.weight_point(obj, self._clock())
            )
        elif kind == "DriftPolicy":
            views.add_score_points(self._scores.setdefault(key, []), views.score_point(obj))

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()

    def replace(self, kind: str, items: list[JsonObject]) -> None:
        """A fresh list of ``kind``: what the watch will update from here."""
        with self._changed:
            self._objects[kind] = {self.key(o): o for o in items}
            for obj in items:
                self._record(kind, obj)
            self._errors.pop(kind, None)
            self._synced.add(kind)
            self._bump()

    def apply(self, kind: str, event_type: str, obj: JsonObject) -> None:
        """One watch event (ADDED, MODIFIED or DELETED)."""
        with self._changed:
            if event_type == "DELETED":
                self._objects[kind].pop(self.key(obj), None)
            else:
                self._objects[kind][self.key(obj)] = obj
                self._record(kind, obj)
            self._bump()

    def fail(self, kind: str, message: str) -> None:
        with self._changed:
            if self._errors.get(kind) != message:
                self._errors[kind] = message
                self._synced.add(kind)
                self._bump()

    def wait_newer(self, version: int, timeout: float) -> int:
        """The version once it is newer than ``version``, or the same after ``timeout``."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != version, timeout)
            return self.version

    def objects(self, kind: str) -> list[JsonObject]:
        with self._changed:
            return list(self._objects[kind].values())

    def get(self, kind: str, key: Key) -> JsonObject | None:
        with self._changed:
            return self._objects[kind].get(key)

    def score_history(self, key: Key) -> list[JsonObject]:
        with self._changed:
            return list(self._scores.get(key, []))

    def snapshot(self) -> JsonObject:
        """What every page renders from, as JSON."""
        with self._changed:
            runs = list(self._objects["TrainingRun"].values())
            deployments = list(self._objects["ModelDeployment"].values())
            policies = list(self._objects["DriftPolicy"].values())
            weights = {k: list(v) for k, v in self._weights.items()}
            errors = [self._errors[k] for k in WATCHED if k in self._errors]
            version, synced = self.version, len(self._synced) == len(WATCHED)
        order = sorted(deployments, key=self.key)
        return {
            "version": version,
            "synced": synced,
            "scope": self.scope,
            "errors": errors,
            "models": views.models_view(runs, deployments),
            "rollouts": [views.rollout_view(md, weights.get(self.key(md), [])) for md in order],
            "drift": [views.drift_view(p, None, {}, runs) for p in sorted(policies, key=self.key)],
            "sweeps": [
                views.runs_view(r)
                for r in sorted(runs, key=self.key)
                if (r.get("spec") or {}).get("sweep") or (r.get("status") or {}).get("trials")
            ],
        }


# --- watching --------------------------------------------------------------------------------


def watch_events(kube: Kube, path: str, resource_version: str) -> Iterator[JsonObject]:
    """The events of one watch request, as they arrive, until the API server ends it."""
    query = [
        ("watch", "true"),
        ("resourceVersion", resource_version),
        ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", str(WATCH_SECONDS)),
    ]
    method, url, headers, body, _ = kube.api_client.param_serialize(
        method="GET",
        resource_path=path,
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = kube.api_client.call_api(
        method, url, headers, body, _request_timeout=(10, WATCH_SECONDS + 30)
    )
    raw = response.response
    try:
        if response.status >= 400:
            data = raw.read() or b""
            message = (
                str(orjson.loads(data).get("message") or data.decode(errors="replace"))
                if data
                else ""
            )
            raise ApiException(status=response.status, reason=message)
        pending = b""
        for chunk in raw.stream(64 * 1024):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield orjson.loads(line)
    finally:
        raw.release_conn()


def keep_watching(
    kube: Kube, store: Store, kind: str, namespace: str | None, stop: threading.Event
) -> None:
    """List, then watch ``kind`` until ``stop``; relist when a watch ends or the API server
    says its resourceVersion is too old. Failures are shown on the page, then retried."""
    path = KINDS[kind].path(namespace)
    while not stop.is_set():
        try:
            listed = kube.request("GET", path)
            store.replace(kind, list(listed.get("items") or []))
            version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
            for event in watch_events(kube, path, version):
                if stop.is_set():
                    return
                if event.get("type") in {"ADDED", "MODIFIED", "DELETED"}:
                    store.apply(kind, str(event["type"]), event["object"])
                elif event.get("type") == "ERROR":  # 410 Gone: relist
                    break
        except NotFound:
            store.fail(
                kind,
                f"the API server does not serve {KINDS[kind].plural}.kubeloop.io: "
                "are Kubeloop's CRDs installed?",
            )
            stop.wait(RETRY_SECONDS)
        except ApiException as error:
            store.fail(kind, f"cannot list {KINDS[kind].plural}: {server_error_text(error)}")
            stop.wait(RETRY_SECONDS)
        except (TransportError, OSError, ValueError) as error:
            store.fail(
                kind, f"cannot reach the API server: {getattr(error, 'reason', None) or error}"
            )
            stop.wait(RETRY_SECONDS)


# --- drift details ---------------------------------------------------------------------------


def drift_details(kube: Kube, store: Store, namespace: str, name: str) -> JsonObject:
    """The drift page of one policy: reference profile and live counts of its target's ready
    stable pods (through the pod proxy, with the user's RBAC), with charts."""
    policy = kube.get("DriftPolicy", namespace, name)
    target_name = ((policy.get("spec") or {}).get("targetRef") or {}).get("name", "")
    problems: list[str] = []
    profile: Profile | None = None
    live: dict[str, dict[str, float]] = {}
    pods: list[str] = []
    md = kube.get_or_none("ModelDeployment", namespace, target_name)
    sha = str((((md or {}).get("status") or {}).get("stable") or {}).get("sha256") or "")
    if md is None:
        problems.append(f"spec.targetRef: ModelDeployment {target_name!r} does not exist")
    elif not sha:
        problems.append(f"ModelDeployment {target_name!r} serves no stable model yet")
    else:
        try:
            pods = [p.name for p in ready_pods(kube, md, "stable")]
        except ApiException as error:
            problems.append(f"cannot list the stable pods: {server_error_text(error)}")
        if not pods and not problems:
            problems.append(f"ModelDeployment {target_name!r} has no ready stable pod to read from")
        samples: list[tuple[str, dict[str, str], float]] = []
        for pod in pods:
            try:
                if profile is None:
                    served = parse_served_profile(
                        proxy_get(kube, md, pod, PROFILE_PATH, limit=MAX_PROFILE_BYTES).encode()
                    )
                    if served.model_sha256 == sha:
                        profile = served.profile
                        if profile is None:
                            problems.append(
                                f"the stable model {sha[:12]} has no profile.json beside it"
                            )
                text = proxy_get(kube, md, pod, "/metrics", limit=MAX_METRICS_BYTES)
                snapshot = parse_metrics(text)
                samples += [(n, dict(labels), v) for (n, labels), v in snapshot.values.items()]
            except ApiException as error:
                problems.append(f"pod {pod}: {server_error_text(error)}")
            except (NotFound, TooLarge, ValueError) as error:
                problems.append(f"pod {pod}: {error}")
            except (TransportError, OSError) as error:
                problems.append(f"pod {pod}: cannot reach it through the API server: {error}")
        live = views.live_bin_counts(samples, sha[:12])
    try:
        view = views.drift_view(
            policy,
            profile,
            live,
            store.objects("TrainingRun"),
            store.score_history((namespace, name)),
        )
    except (KeyError, ValueError) as error:  # a profile that does not match the live counters
        problems.append(f"the live counters do not match the reference profile: {error}")
        view = views.drift_view(
            policy, None, {}, store.objects("TrainingRun"), store.score_history((namespace, name))
        )
    view["pods"] = pods
    view["modelSha256"] = sha
    view["problems"] = problems
    return view


# --- HTTP ------------------------------------------------------------------------------------


def _asset(name: str) -> bytes:
    return resources.files("kubeloop.dashboard").joinpath("static", name).read_bytes()


class Dashboard:
    """The state one ``kubectl kubeloop dashboard`` process serves."""

    def __init__(self, kube: Kube, namespace: str | None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.store = Store(namespace or "")
        self.token = secrets.token_urlsafe(24)
        self.stop = threading.Event()
        self.hosts: set[str] = set()

    def start_watching(self) -> None:
        for kind in WATCHED:
            threading.Thread(
                target=keep_watching,
                args=(self.kube, self.store, kind, self.namespace, self.stop),
                name=f"watch-{kind}",
                daemon=True,
            ).start()

    def in_scope(self, namespace: str) -> bool:
        return self.namespace is None or namespace == self.namespace

    def act(self, request: Mapping[str, Any]) -> tuple[int, JsonObject]:
        """A button: the plugin's own steering command; (HTTP status, answer).

        The dashboard answers 200 whenever it carried the command to the API server; whether
        the API server accepted it is in the answer (``ok``, and ``status``, ``error`` when it
        refused): a refusal is the user's RBAC speaking, not a failure of this page."""
        command = str(request.get("command") or "")
        namespace, name = str(request.get("namespace") or ""), str(request.get("name") or "")
        if command not in STEERING or not namespace or not name:
            return 400, {
                "ok": False,
                "error": f"command must be one of {', '.join(STEERING)}, with namespace and name",
            }
        if not self.in_scope(namespace):
            return 400, {
                "ok": False,
                "error": f"namespace {namespace} is not shown by this dashboard",
            }
        kind = "DriftPolicy" if command == "retrain" else "ModelDeployment"
        try:
            done = steer(
                self.kube, command, ObjectRef(kind, name), namespace, full=bool(request.get("full"))
            )
        except ApiException as error:
            return 200, {"ok": False, "status": error.status, "error": server_error_text(error)}
        except CommandFailed as error:
            return 200, {"ok": False, "status": 409, "error": str(error)}
        except (TransportError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            return 200, {
                "ok": False,
                "status": 502,
                "error": f"cannot reach the API server: {reason}",
            }
        return 200, {"ok": True, "message": done}


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # the terminal shows the address and errors, not every request

    @property
    def dashboard(self) -> Dashboard:
        return self.server.dashboard

    def _send(
        self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for header, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(header, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, document: Any) -> None:
        self._send(status, orjson.dumps(document), "application/json")

    def _host_allowed(self) -> bool:
        if self.headers.get("Host", "") in self.dashboard.hosts:
            return True
        self._json(
            HTTPStatus.MISDIRECTED_REQUEST,
            {"error": "this dashboard answers only on its own address"},
        )
        return False

    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        path = self.path.split("?", 1)[0]
        if path in {"/", "/index.html"}:
            page = _asset("index.html").replace(b"{{TOKEN}}", self.dashboard.token.encode())
            self._send(200, page, "text/html; charset=utf-8")
        elif path.startswith("/static/") and path.removeprefix("/static/") in ASSETS:
            name = path.removeprefix("/static/")
            self._send(200, _asset(name), ASSETS[name])
        elif path == "/favicon.ico":
            self._send(200, _asset("favicon.svg"), ASSETS["favicon.svg"])
        elif path == "/api/state":
            self._json(200, self.dashboard.store.snapshot())
        elif path == "/api/events":
            self._events()
        elif path.startswith("/api/drift/"):
            self._drift(path)
        else:
            self._json(404, {"error": f"no page {path}"})

    def _drift(self, path: str) -> None:
        """The drift details; a refusal or a missing policy is said in ``error`` (with 200: the
        page asked properly, the cluster said no)."""
        parts = [unquote(p) for p in path.removeprefix("/api/drift/").split("/")]
        if len(parts) != 2 or not all(parts) or not self.dashboard.in_scope(parts[0]):
            self._json(404, {"error": "use /api/drift/NAMESPACE/NAME of a DriftPolicy shown here"})
            return
        try:
            self._json(200, drift_details(self.dashboard.kube, self.dashboard.store, *parts))
        except NotFound:
            self._json(200, {"error": f"driftpolicy {parts[1]} not found in namespace {parts[0]}"})
        except ApiException as error:
            self._json(200, {"error": server_error_text(error)})
        except (TransportError, OSError) as error:
            self._json(200, {"error": f"cannot reach the API server: {error}"})

    def _events(self) -> None:
        """Server-sent events: a ``state`` event with the snapshot now and on every change."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        for header, value in SECURITY_HEADERS.items():
            self.send_header(header, value)
        self.end_headers()
        self.close_connection = True
        store, version = self.dashboard.store, -1
        try:
            while not self.dashboard.stop.is_set():
                newer = store.wait_newer(version, KEEPALIVE_SECONDS)
                if newer == version:
                    self.wfile.write(b": keepalive\n\n")
                else:
                    version = newer
                    self.wfile.write(
                        b"event: state\ndata: " + orjson.dumps(store.snapshot()) + b"\n\n"
                    )
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return

    def do_POST(self) -> None:
        if not self._host_allowed():
            return
        if self.path != "/api/action":
            self._json(404, {"error": f"no action at {self.path}"})
            return
        if not secrets.compare_digest(
            self.headers.get("X-Kubeloop-Token", ""), self.dashboard.token
        ):
            self._json(
                403, {"error": "missing or wrong X-Kubeloop-Token: use the dashboard's own page"}
            )
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = orjson.loads(self.rfile.read(min(length, 64 * 1024)) or b"{}")
        except orjson.JSONDecodeError:
            self._json(400, {"error": "the body must be JSON: {command, namespace, name, full}"})
            return
        if not isinstance(request, dict):
            self._json(
                400, {"error": "the body must be a JSON object: {command, namespace, name, full}"}
            )
            return
        status, answer = self.dashboard.act(request)
        self._json(status, answer)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dashboard: Dashboard, port: int) -> None:
        self.dashboard = dashboard
        super().__init__(("127.0.0.1", port), Handler)
        bound = self.server_address[1]
        dashboard.hosts = {f"127.0.0.1:{bound}", f"localhost:{bound}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


def serve_dashboard(kube: Kube, namespace: str | None, *, port: int, open_browser: bool) -> int:
    """Serve until Ctrl-C; ``namespace`` None shows every namespace the user can list."""
    dashboard = Dashboard(kube, namespace)
    try:
        server = DashboardServer(dashboard, port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise CommandFailed(
                f"port {port} on 127.0.0.1 is in use: choose another with --port"
            ) from None
        raise CommandFailed(f"cannot listen on 127.0.0.1:{port}: {error.strerror}") from None
    dashboard.start_watching()
    where = "all namespaces" if namespace is None else f"namespace {namespace}"
    print(f"Kubeloop dashboard ({where}) on {server.url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        dashboard.stop.set()
        server.server_close()
    print("dashboard stopped", file=sys.stderr)
    return 0
