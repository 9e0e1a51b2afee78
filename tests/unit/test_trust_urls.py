"""The operator's URL policy (kubeloop.trust.urls): which Prometheus a spec may name, which
storage URIs the operator reads itself, and what of a remote answer it repeats (issue 13)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

import kubeloop.analysis.prometheus as prometheus_module
from kubeloop.analysis.base import AnalysisTarget
from kubeloop.analysis.builtin import BuiltinProvider
from kubeloop.analysis.prometheus import PrometheusProvider
from kubeloop.analysis.scrape import PodTarget, ScrapeProvider
from kubeloop.config import OperatorConfig
from kubeloop.trust.urls import (
    PrometheusUrlPolicy,
    UrlNotAllowed,
    check_operator_read,
    clean_text,
    configured_prometheus_urls,
    error_summary,
    normalise_prometheus_url,
    operator_read_problem,
    prometheus_error_summary,
)

SECRET = "AKIA-SECRET-4f1c9e"
CREDENTIALS = {"AccessKeyId": SECRET, "SecretAccessKey": "wJalr-SECRET-KEY", "Token": "t-SECRET"}
TARGET = AnalysisTarget("ml", "churn", timedelta(seconds=30))
POLICY = PrometheusUrlPolicy.from_settings(
    "http://prometheus.monitoring.svc:9090/", ["https://prom.team-a.example/prometheus"]
)


# --- which Prometheus a spec may name ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        (None, "http://prometheus.monitoring.svc:9090"),
        ("", "http://prometheus.monitoring.svc:9090"),
        ("http://prometheus.monitoring.svc:9090", "http://prometheus.monitoring.svc:9090"),
        ("http://prometheus.monitoring.svc:9090/", "http://prometheus.monitoring.svc:9090"),
        ("HTTP://Prometheus.Monitoring.svc:9090", "http://prometheus.monitoring.svc:9090"),
        ("https://prom.team-a.example/prometheus/", "https://prom.team-a.example/prometheus"),
    ],
)
def test_configured_prometheus_urls_and_empty_are_allowed(url: str | None, resolved: str) -> None:
    assert POLICY.resolve(url, "spec.x.prometheusUrl") == resolved


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/admin#", "fragment"),
        ("http://169.254.169.254/latest/meta-data/", "not one of"),
        ("http://prometheus.monitoring.svc:9090#", "fragment"),
        ("http://prometheus.monitoring.svc:9090/#/x", "fragment"),
        ("http://prometheus.monitoring.svc:9090?x=1", "query string"),
        ("http://user:pw@prometheus.monitoring.svc:9090", "user information"),
        ("http://prometheus.monitoring.svc:9091", "not one of"),
        ("https://prometheus.monitoring.svc:9090", "not one of"),
        ("http://prometheus.monitoring.svc:9090/api", "not one of"),
        ("https://prom.team-a.example/prometheus/../admin", "'..'"),
        ("https://prom.team-a.example/prometheus/x/..", "'..'"),
        ("file:///etc/passwd", "http:// or https://"),
        ("gopher://prometheus.monitoring.svc:9090", "http:// or https://"),
        ("http://prometheus.monitoring.svc:9090/\tx", "control"),
        ("http://:9090", "no host"),
    ],
)
def test_other_prometheus_urls_are_refused_naming_the_field_and_the_allowed_values(url: str, why: str) -> None:
    with pytest.raises(UrlNotAllowed) as refused:
        POLICY.resolve(url, "spec.source.live.prometheusUrl")
    assert refused.value.reason == "PrometheusUrlNotAllowed"
    message = refused.value.message
    assert message.startswith("spec.source.live.prometheusUrl ")
    assert why in message
    assert "http://prometheus.monitoring.svc:9090, https://prom.team-a.example/prometheus" in message
    assert "rollout.allowedPrometheusUrls" in message
    assert "169.254" not in message  # the refused URL is not repeated


def test_an_operator_without_prometheus_refuses_every_url_and_says_what_to_configure() -> None:
    policy = PrometheusUrlPolicy.from_settings("", [])
    assert policy.resolve("", "f") is None
    with pytest.raises(UrlNotAllowed, match="allows no Prometheus"):
        policy.resolve("http://127.0.0.1:9090", "f")


@pytest.mark.parametrize(
    ("default", "allowed", "expected"),
    [
        ("", [], ()),
        ("http://p:9090/", ["http://p:9090", "http://q:9090/"], ("http://p:9090", "http://q:9090")),
        ("", ["https://q/x/"], ("https://q/x",)),
    ],
)
def test_configured_urls_are_normalised_without_repeats(default: str, allowed: list[str], expected: tuple[str, ...]) -> None:
    assert configured_prometheus_urls(default, allowed) == expected


@pytest.mark.parametrize("bad", ["p:9090", "http://p:9090#x", "http://u@p:9090"])
def test_a_bad_configured_url_stops_the_operator_naming_the_setting(bad: str) -> None:
    with pytest.raises(ValueError, match="KUBELOOP_ALLOWED_PROMETHEUS_URLS"):
        configured_prometheus_urls("", [bad])


def test_the_allowed_list_comes_from_the_environment_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBELOOP_ALLOWED_PROMETHEUS_URLS", "http://a:9090, https://b/prom/")
    assert OperatorConfig().allowed_prometheus_urls == ["http://a:9090", "https://b/prom/"]


def test_normalising_keeps_scheme_host_port_and_path() -> None:
    assert normalise_prometheus_url(" https://Prom.example:8443/a/b/ ") == "https://prom.example:8443/a/b"


# --- what of an answer is repeated ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"},
         "HTTP 400, Prometheus bad_data: parse error at char 3"),
        (422, {"status": "error", "errorType": "execution", "error": "line1\nline2\x1b[31m\u202e"},
         "HTTP 422, Prometheus execution: line1 line2[31m"),
        (400, {"status": "error", "errorType": "bad_data", "error": "x" * 500}, "HTTP 400, Prometheus bad_data: " + "x" * 199 + "…"),
        (200, CREDENTIALS, "HTTP 200, not a Prometheus error document (body not shown)"),
        (500, {"status": "error", "errorType": "Secret " + SECRET, "error": SECRET}, "HTTP 500, not a Prometheus error document (body not shown)"),
        (500, {"status": "error", "error": SECRET}, "HTTP 500, not a Prometheus error document (body not shown)"),
        (502, [SECRET], "HTTP 502, not a Prometheus error document (body not shown)"),
    ],
)
def test_prometheus_error_summary_is_fixed(status: int, body: Any, expected: str) -> None:
    assert prometheus_error_summary(status, orjson.dumps(body)) == expected


def test_a_non_json_body_is_never_repeated() -> None:
    summary = prometheus_error_summary(500, f"<html>{SECRET}</html>".encode())
    assert summary == "HTTP 500, not a Prometheus error document (body not shown)"


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("plain", 200, "plain"),
        ("a\x00b\x07c\u200bd", 200, "abcd"),
        ("  many\t\tspaces \r\n here ", 200, "many spaces here"),
        ("abcdef", 4, "abc…"),
    ],
)
def test_clean_text(text: str, limit: int, expected: str) -> None:
    assert clean_text(text, limit) == expected


def test_error_summary_names_the_type_and_status_never_the_message() -> None:
    class ApiError(Exception):
        status = 502

    assert error_summary(ApiError(SECRET)) == "ApiError (HTTP 502)"
    assert error_summary(ValueError(SECRET)) == "ValueError"
    assert error_summary(ConnectionRefusedError(111, "Connection refused")) == "ConnectionRefusedError (Connection refused)"
    assert error_summary(TimeoutError()) == "TimeoutError (timed out)"


# --- what the operator reads itself --------------------------------------------------------

ROOT = "file:///var/lib/kubeloop/models"


@pytest.mark.parametrize(
    ("uri", "run_root"),
    [
        ("file:///var/lib/kubeloop/models/churn/r1/profile.json", None),
        ("file:///var/lib/kubeloop/models/", None),
        ("s3://ml-bucket/models/churn/r1/profile.json", "s3://ml-bucket/models"),
        ("gs://b/x/profile.json", "gs://b/"),
    ],
)
def test_uris_under_the_storage_roots_are_readable(uri: str, run_root: str | None) -> None:
    assert operator_read_problem(uri, ROOT, run_root) is None
    assert check_operator_read(uri, "f", ROOT, run_root) == uri


@pytest.mark.parametrize(
    ("uri", "run_root", "why"),
    [
        ("file:///etc/passwd", None, "outside"),
        ("file:///var/lib/kubeloop/models-evil/profile.json", None, "outside"),
        ("file:///var/lib/kubeloop/models/../../../etc/passwd", None, "'..'"),
        ("file://host/var/lib/kubeloop/models/p.json", None, "absolute path"),
        ("/var/lib/kubeloop/models/p.json", None, "plain path"),
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/admin", None, "http://"),
        ("https://models.example/profile.json", "https://models.example/", "https://"),
        ("pvc://models/churn/profile.json", None, "pvc://"),
        ("s3://other-bucket/profile.json", "s3://ml-bucket/models", "outside"),
        ("s3://ml-bucket/models-x/profile.json", "s3://ml-bucket/models", "outside"),
        # A run's own root counts only when it is an object store: a file:// output root
        # elsewhere would make the operator read its own files.
        ("file:///etc/passwd", "file:///etc", "outside"),
        ("file:///var/lib/kubeloop/models/p.json?x=1", None, "query"),
        ("file:///var/lib/kubeloop/models/p.json#x", None, "fragment"),
    ],
)
def test_other_uris_are_refused_naming_the_field(uri: str, run_root: str | None, why: str) -> None:
    problem = operator_read_problem(uri, ROOT, run_root)
    assert problem is not None and why in problem
    with pytest.raises(UrlNotAllowed) as refused:
        check_operator_read(uri, "TrainingRun 'r1' status.model.profileUri", ROOT, run_root)
    assert refused.value.reason == "StorageUriNotAllowed"
    assert refused.value.message.startswith("TrainingRun 'r1' status.model.profileUri ")
    assert "passwd" not in refused.value.message and "169.254" not in refused.value.message


# --- the providers against a real HTTP server ----------------------------------------------


class Endpoint:
    """A real HTTP server on 127.0.0.1 answering every path with one fixed answer (like a cloud
    metadata service), recording the paths it was asked for."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=[(200, CREDENTIALS), (500, {"message": "denied", "AccessKeyId": SECRET}), (400, {"status": "error", "errorType": "bad_data", "error": "x" * 300 + SECRET})])
def metadata(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    status, body = request.param
    endpoint = Endpoint(status, orjson.dumps(body))
    yield endpoint
    endpoint.close()


def test_weakened_sanitiser_would_copy_the_secret_so_the_real_one_is_what_keeps_it_out(
    metadata: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack with the summary replaced by the identity (the old behaviour: the body is
    the message) puts the secret into the measurement's message; with the real summary it
    does not. Both against the same real HTTP server, which is contacted both times."""
    metric = {"name": "m", "provider": "prometheus", "query": "up"}
    provider = PrometheusProvider(metadata.url)
    with monkeypatch.context() as weakened:
        weakened.setattr(prometheus_module, "prometheus_error_summary", lambda status, body: body.decode())
        leaked = provider.measure(metric, TARGET)
    assert SECRET in (leaked.message or "")
    assert len(metadata.paths) == 1

    measured = provider.measure(metric, TARGET)
    assert measured.value is None and SECRET not in (measured.message or "")
    assert f"HTTP {metadata.status}" in (measured.message or "")
    assert len(metadata.paths) == 2 and metadata.paths[-1].startswith("/api/v1/query?")


def test_builtin_checks_repeat_no_body_either(metadata: Endpoint) -> None:
    measured = BuiltinProvider(metadata.url).measure({"name": "e", "builtin": "errorRate"}, TARGET)
    assert measured.value is None and SECRET not in (measured.message or "")
    assert metadata.paths


def test_a_refused_url_is_never_requested(metadata: Endpoint) -> None:
    for url in (f"{metadata.url}/latest/meta-data#", f"{metadata.url}/other"):
        for provider in (PrometheusProvider("http://127.0.0.1:9"), BuiltinProvider("http://127.0.0.1:9")):
            measured = provider.measure(
                {"name": "m", "provider": "prometheus", "builtin": "errorRate", "query": "up", "prometheusUrl": url},
                TARGET,
            )
            assert measured.refusal == "PrometheusUrlNotAllowed" and measured.value is None
    assert metadata.paths == []


def test_a_series_label_from_the_answer_is_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"secret": SECRET}, "value": [0, "1"]}, {"metric": {"x": "y"}, "value": [0, "2"]}]}}
    endpoint = Endpoint(200, orjson.dumps(answer))
    try:
        measured = PrometheusProvider(endpoint.url).measure({"name": "m", "query": "up"}, TARGET)
    finally:
        endpoint.close()
    assert "2 series" in (measured.message or "") and SECRET not in (measured.message or "")


def test_a_pod_answer_that_fails_to_parse_is_not_repeated() -> None:
    provider = ScrapeProvider()

    def fetch(pod: str, port: int) -> str:
        return f'kubeloop_serve_requests_total{{x="1"}} not-a-number {SECRET}\n'

    found = provider.round(TARGET, [PodTarget("p-1", 8080, "canary")], fetch)
    assert found.errors and all(SECRET not in e for e in found.errors)
    assert "p-1" in found.errors[0]


# --- the chart configures the policy -------------------------------------------------------


def test_the_chart_value_becomes_the_operators_allowed_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_chart_support import one, render

    values = {"rollout": {"prometheusUrl": "http://prometheus.monitoring.svc:9090",
                          "allowedPrometheusUrls": ["http://prom-a.monitoring.svc:9090", "https://prom-b.example/x"]}}
    deployment = one(render(tmp_path, values), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    monkeypatch.setenv("KUBELOOP_ALLOWED_PROMETHEUS_URLS", env["KUBELOOP_ALLOWED_PROMETHEUS_URLS"])
    monkeypatch.setenv("KUBELOOP_PROMETHEUS_URL", env["KUBELOOP_PROMETHEUS_URL"])
    config = OperatorConfig()
    policy = PrometheusUrlPolicy.from_settings(config.prometheus_url, config.allowed_prometheus_urls)
    assert policy.allowed == (
        "http://prometheus.monitoring.svc:9090", "http://prom-a.monitoring.svc:9090", "https://prom-b.example/x"
    )
    default = one(render(tmp_path), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in default["env"]}["KUBELOOP_ALLOWED_PROMETHEUS_URLS"] == ""


@pytest.mark.parametrize("bad", ["http://prom:9090#x", "http://user@prom:9090", "prom:9090", "http://prom:9090/?q=1"])
def test_the_chart_refuses_an_allowed_url_with_fragment_userinfo_or_query(tmp_path: Path, bad: str) -> None:
    from test_chart_support import helm, template_args

    args = template_args({"rollout": {"allowedPrometheusUrls": [bad]}}, values_file=tmp_path / "v.json")
    proc = helm(*args, check=False)
    assert proc.returncode != 0 and "allowedPrometheusUrls" in proc.stderr
