"""Attack: make the operator fetch a URL of the attacker's choosing and copy the answer into
status (issue 13, item 4 and "Outgoing URLs").

The target is a fake cloud-metadata endpoint: a real HTTP server on 127.0.0.1 answering every
path with credentials (``{"AccessKeyId": "AKIA-SECRET…", …}``, status 200), and paths under
``/err`` with an error body carrying the same secret (status 500). The operator runs as a real
process against the real API server; DriftPolicies and a ModelDeployment's analysis metrics
name the endpoint as ``prometheusUrl``, and TrainingRun statuses name it (or a local file with
the secret) as ``profileUri``.

Each attack runs against a weakened policy first, where it must reach its target (the endpoint
records the request, the file is handed to a check Job), then against the real one, where the endpoint is never
contacted, the condition names the refusal, and the secret appears nowhere: not in status, not
in Events, not in the operator's log.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import OperatorProcess, events_once, wait_for
from kubernetes import client

GROUP, VERSION = "kubeloop.io", "v1alpha1"
SECRET = "AKIA-SECRET-7d1e2b9c"
CREDENTIALS = {"Code": "Success", "AccessKeyId": SECRET, "SecretAccessKey": "wJalr-" + SECRET, "Token": "IQo" + SECRET}
ROLE = "/latest/meta-data/iam/security-credentials"
SHA_A, SHA_B = "a" * 64, "b" * 64


class MetadataEndpoint:
    """A fake cloud-metadata service on 127.0.0.1: credentials for any path, an error body
    with the secret under /err; every request's path is recorded."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    outer.paths.append(urllib.parse.unquote_plus(self.path))
                if self.path.startswith("/err"):
                    status, body = 500, orjson.dumps({"message": "internal error", "credentials": CREDENTIALS})
                else:
                    status, body = 200, orjson.dumps(CREDENTIALS)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def requested(self, prefix: str, containing: str = "") -> list[str]:
        with self.lock:
            return [p for p in self.paths if p.startswith(prefix) and containing in p]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata() -> Iterator[MetadataEndpoint]:
    endpoint = MetadataEndpoint()
    yield endpoint
    endpoint.close()



def operator_process(kubeconfig: str, namespace: str, log: Path, env: dict[str, str]) -> OperatorProcess:
    process = OperatorProcess(
        kubeconfig, namespace, log,
        env={"KUBELOOP_RUNTIME_IMAGE": "kubeloop:test", "KUBELOOP_ROLLOUT_TICK_SECONDS": "1", **env},
        inherit_kubeloop_env=False,
    )
    process.start()
    return process


def pinned_md(name: str, uri: str, sha: str, rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"storageUri": uri, "sha256": sha}, "replicas": 1}
    if rollout:
        spec["rollout"] = rollout
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def live_policy(name: str, target: str, prometheus_url: str | None) -> dict[str, Any]:
    live = {"prometheusUrl": prometheus_url} if prometheus_url else {}
    # window applies only to Prometheus; without it the API refuses one.
    window = {"window": "30s"} if prometheus_url else {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": name},
        "spec": {"targetRef": {"name": target}, "source": {"live": live}, "interval": "2s", **window,
                 "minSamples": 10},
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def refusal_events(core: client.CoreV1Api, namespace: str, reason: str, names: set[str]) -> list[Any]:
    """The Events of ``reason``, once there is one for each of ``names``."""
    def refusals(found: list[Any]) -> list[Any]:
        return [e for e in found if e.reason == reason]

    found = events_once(core, namespace, lambda found: {e.involved_object.name for e in refusals(found)} >= names,
                        f"{reason} events")
    return refusals(found)


def everything_said(core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, operator: OperatorProcess) -> str:
    """Every status, Event and operator log line of the test: where a secret would land."""
    said = []
    for plural in ("driftpolicies", "modeldeployments", "trainingruns"):
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]:
            said.append(orjson.dumps(item.get("status") or {}).decode())
    said += [f"{e.reason} {e.message}" for e in core.list_namespaced_event(namespace).items]
    said.append(operator.log_path.read_text(errors="replace"))
    return "\n".join(said)


def test_prometheus_url_attack_on_drift_policies_and_canary_analysis(
    kubeconfig_path: str, kube_api: Any, namespace: str, crds: None, tmp_path: Path, metadata: MetadataEndpoint,
) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    root = tmp_path / "models"
    # The weakened policy: the operator is configured to allow the metadata endpoint's
    # ".../reader" path (and /err). The real policy: ".../admin" is not allowed, and a '#'
    # (which would cut off the appended /api/v1/query) is refused even on an allowed base.
    reader, admin = f"{metadata.url}{ROLE}/reader", f"{metadata.url}{ROLE}/admin"
    allowed = f"{reader},{metadata.url}/err"
    operator = operator_process(kubeconfig_path, namespace, tmp_path / "operator.log", {
        "KUBELOOP_DEFAULT_STORAGE_URI": f"file://{root}", "KUBELOOP_ALLOWED_PROMETHEUS_URLS": allowed,
    })
    try:
        create = custom.create_namespaced_custom_object
        create(GROUP, VERSION, namespace, "modeldeployments", pinned_md("served", f"file://{root}/served/model.skops", SHA_A))
        attacks = {
            "dp-admin-fragment": f"{admin}#",
            "dp-admin": admin,
            "dp-allowed-fragment": f"{reader}#",
            "dp-weakened": reader,
            "dp-error-body": f"{metadata.url}/err",
        }
        for name, url in attacks.items():
            create(GROUP, VERSION, namespace, "driftpolicies", live_policy(name, "served", url))
        metrics = [
            {"name": "admin-fragment", "provider": "builtin", "builtin": "errorRate", "max": 0.05, "prometheusUrl": f"{admin}#"},
            {"name": "weakened", "provider": "builtin", "builtin": "errorRate", "max": 0.05, "prometheusUrl": reader},
            {"name": "error-body", "provider": "prometheus", "query": "up", "max": 1, "prometheusUrl": f"{metadata.url}/err"},
        ]
        rollout = {"steps": [{"setWeight": 50}, {"pause": {}}], "analysis": {"interval": "2s", "metrics": metrics}}
        create(GROUP, VERSION, namespace, "modeldeployments", pinned_md("canary", f"file://{root}/a/model.skops", SHA_A, rollout))

        def policy(name: str) -> dict[str, Any]:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", name)  # type: ignore[no-any-return]

        def md(name: str) -> dict[str, Any]:
            return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", name)  # type: ignore[no-any-return]

        wait_for(lambda: (md("canary").get("status") or {}).get("stable"), timeout=60, what="canary md serves A")
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "canary", {
            "spec": {"model": {"storageUri": f"file://{root}/b/model.skops", "sha256": SHA_B}}})

        # Weakened policy: the allowed endpoint IS contacted, by the drift check and by the
        # analysis, so the test reaches its target.
        wait_for(lambda: metadata.requested(f"{ROLE}/reader/api/v1/query", 'model="served"'), timeout=60,
                 what="drift check queries the allowed endpoint")
        wait_for(lambda: metadata.requested(f"{ROLE}/reader/api/v1/query", 'model="canary"'), timeout=90,
                 what="analysis queries the allowed endpoint")
        wait_for(lambda: metadata.requested("/err/api/v1/query", "query=up"), timeout=60, what="analysis queries /err")
        wait_for(lambda: metadata.requested("/err/api/v1/query", 'model="served"'), timeout=60, what="drift queries /err")

        # Real policy: refused with a condition naming the field, an Event, and no request.
        for name in ("dp-admin-fragment", "dp-admin", "dp-allowed-fragment"):
            ready = wait_for(lambda n=name: (lambda c: c if c.get("reason") == "PrometheusUrlNotAllowed" else None)(
                condition(policy(n), "Ready")), timeout=60, what=f"{name} refused")
            assert ready["status"] == "False"
            assert ready["message"].startswith("spec.source.live.prometheusUrl ")
            assert reader in ready["message"] and "rollout.allowedPrometheusUrls" in ready["message"]
        analysis = wait_for(lambda: (lambda c: c if c.get("reason") == "PrometheusUrlNotAllowed" else None)(
            condition(md("canary"), "AnalysisPassing")), timeout=90, what="analysis metric refused")
        assert analysis["status"] == "False"
        assert "prometheusUrl of analysis metric 'admin-fragment'" in analysis["message"]
        assert "fragment" in analysis["message"] and reader in analysis["message"]

        # Answers of the allowed endpoint are summarised, never copied.
        weakened = wait_for(lambda: (lambda s: s if "HTTP 200" in (s.get("message") or "") else None)(
            policy("dp-weakened").get("status") or {}), timeout=60, what="dp-weakened summary")
        assert "not a Prometheus error document (body not shown)" in weakened["message"]
        assert condition(policy("dp-weakened"), "Ready")["reason"] == "SourceUnavailable"
        error_body = wait_for(lambda: (lambda s: s if "HTTP 500" in (s.get("message") or "") else None)(
            policy("dp-error-body").get("status") or {}), timeout=60, what="dp-error-body summary")
        assert "body not shown" in error_body["message"]
        runs = wait_for(lambda: (lambda r: r if {"weakened", "error-body"} <= {x["name"] for x in r} else None)(
            ((md("canary").get("status") or {}).get("analysis") or {}).get("runs") or []), timeout=60, what="analysis runs")
        by_name = {r["name"]: r for r in runs}
        assert "HTTP 200" in by_name["weakened"]["message"] and "HTTP 500" in by_name["error-body"]["message"]

        # Events are written in the background: they may land after the conditions.
        refused_by_url = {"dp-admin-fragment", "dp-admin", "dp-allowed-fragment", "canary"}
        refusals = refusal_events(core, namespace, "PrometheusUrlNotAllowed", refused_by_url)
        assert {e.involved_object.name for e in refusals} >= {"dp-admin-fragment", "dp-admin", "dp-allowed-fragment", "canary"}
        assert all(e.type == "Warning" for e in refusals)

        # Nothing was ever requested outside the allowed bases: not the admin role, not an
        # allowed base with the fragment trick (which would request ".../reader" itself).
        assert metadata.requested(f"{ROLE}/admin") == []
        assert all(p.startswith((f"{ROLE}/reader/api/v1/query?", "/err/api/v1/query?")) for p in metadata.paths), metadata.paths
    finally:
        operator.stop()
    # Read once the operator has stopped: it writes its queued Events before it exits.
    said = everything_said(core, custom, namespace, operator)
    assert operator.log_path.read_text(errors="replace")  # the operator did log
    assert SECRET not in said
    assert SECRET not in operator.log_path.read_text(errors="replace")


def test_profile_uri_attack_reads_nothing_outside_the_storage_root(
    kubeconfig_path: str, kube_api: Any, namespace: str, crds: None, tmp_path: Path, metadata: MetadataEndpoint,
) -> None:
    """A poisoned ``status.model.profileUri`` (a trainer's termination message sets it) must
    not make anything read outside the storage roots. The operator itself reads no profile
    (live checks ask the stable server, ``kubeloop.controllers.profiles``; the import contract
    "The operator reads nothing from model storage" keeps it so); a dataset check hands the URI
    to its Job, which reads it, so the URI is checked before any Job exists."""
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    batch = client.BatchV1Api(kube_api)
    root = tmp_path / "models"
    root.mkdir()
    # A "profile" outside the storage root that holds the secret.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "profile.json").write_bytes(orjson.dumps(CREDENTIALS))
    attacks = {
        "file": f"file://{outside}/profile.json",
        "passwd": "file:///etc/passwd",
        "metadata": f"{metadata.url}{ROLE}/admin",
    }
    template = {"model": {"name": "m", "estimator": "sklearn.linear_model.LogisticRegression", "task": "classification"},
                "data": {"source": "sklearn://breast_cancer", "target": "target"}}
    for name, uri in attacks.items():
        # The attacker plays the termination message by patching the status before the
        # operator sees the run (a finished run is a record).
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": f"run-{name}"},
            "spec": template})
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "trainingruns", f"run-{name}", {
            "status": {"phase": "Succeeded", "model": {
                "uri": f"file://{root}/m/run-{name}/model.skops", "sha256": SHA_A, "profileUri": uri}}})
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": f"md-{name}"},
            "spec": {"model": {"trainingRunRef": {"name": f"run-{name}"}}, "replicas": 1}})
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": f"dp-{name}"},
            "spec": {"targetRef": {"name": f"md-{name}"}, "interval": "2s",
                     "source": {"dataset": {"uri": f"file://{root}/current.csv"}}}})

    def ready(name: str) -> dict[str, Any]:
        return condition(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", name), "Ready")

    def check_jobs(policy: str) -> list[Any]:
        return batch.list_namespaced_job(namespace, label_selector=f"kubeloop.io/driftpolicy={policy}").items

    # Weakened policy: a storage root that covers the outside directory. The attack reaches its
    # target: a check Job is created that reads the outside file as its profile.
    weak = operator_process(kubeconfig_path, namespace, tmp_path / "weak.log", {"KUBELOOP_DEFAULT_STORAGE_URI": f"file://{tmp_path}"})
    try:
        jobs = wait_for(lambda: check_jobs("dp-file"), timeout=60, what="the weakened operator hands the outside file to a Job")
        assert f"file://{outside}/profile.json" in " ".join(jobs[0].spec.template.spec.containers[0].args)
    finally:
        weak.stop()
    said_weak = everything_said(core, custom, namespace, weak)  # once its queued Events are written
    assert SECRET not in said_weak  # the operator itself read nothing
    weak_jobs = {job.metadata.name for name in attacks for job in check_jobs(f"dp-{name}")}

    # Real policy: the storage root is the models directory; no Job gets the URI.
    real = operator_process(kubeconfig_path, namespace, tmp_path / "real.log", {"KUBELOOP_DEFAULT_STORAGE_URI": f"file://{root}"})
    try:
        for name in attacks:
            refused = wait_for(lambda n=name: (lambda c: c if c.get("reason") == "StorageUriNotAllowed" else None)(
                ready(f"dp-{n}")), timeout=60, what=f"dp-{name} refused")
            assert refused["status"] == "False"
            assert refused["message"].startswith(f"TrainingRun 'run-{name}' status.model.profileUri ")
            # The refused URI itself is not repeated.
            assert "/etc/passwd" not in refused["message"] and "elsewhere" not in refused["message"]
            # No Job of its own: only what the weakened operator left.
            assert {job.metadata.name for job in check_jobs(f"dp-{name}")} <= weak_jobs
        assert "storage roots" in ready("dp-file")["message"] and "http://" in ready("dp-metadata")["message"]
        # Events are written in the background: they may land after the conditions.
        events = refusal_events(core, namespace, "StorageUriNotAllowed", {f"dp-{n}" for n in attacks})
        assert {e.involved_object.name for e in events} >= {"dp-file", "dp-passwd", "dp-metadata"}
    finally:
        real.stop()
    said = everything_said(core, custom, namespace, real)  # once its queued Events are written
    assert metadata.paths == []  # the http:// profileUri was never requested, by either operator
    assert SECRET not in said and "root:x:0:0" not in said
