"""`kubeloop serve` with a bearer token and a separate metrics port, over real sockets.

Given a real server started with KUBELOOP_SERVE_AUTH_TOKEN (from the environment, as the
ModelDeployment's secretKeyRef gives it) and --metrics-port, when clients call it with and
without the token and on either port, then inference and feedback need the token (401 with
WWW-Authenticate), health stays open, and /metrics is served on the metrics port alone.
/metrics and /profile stay open without the token by design (Prometheus and the operator read
them): what keeps other clients from them is the metrics port and a NetworkPolicy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_fixtures import RunningServer, StoredModel, free_port, serving, train_models

TOKEN = "s3cret-token-of-the-clients"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> StoredModel:
    return train_models(tmp_path_factory.mktemp("models"))["diabetes_ridge"]


@pytest.fixture(scope="module")
def guarded(
    model: StoredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, str]]:
    metrics_port = free_port()
    with serving(
        model,
        tmp_path_factory.mktemp("logs"),
        "--metrics-port",
        str(metrics_port),
        workers=2,
        env={"KUBELOOP_SERVE_AUTH_TOKEN": TOKEN},
    ) as server:
        yield server, f"http://127.0.0.1:{metrics_port}"


ROW = {"instances": [[0.01] * 10]}
V2 = {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": [0.01] * 10}]}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/predict", ROW), ("/v2/models/model/infer", V2), ("/feedback", {"id": "x", "label": 1})],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic " + TOKEN, TOKEN])
def test_without_the_token_inference_and_feedback_are_401(
    guarded: tuple[RunningServer, str], path: str, body: object, authorization: str | None
) -> None:
    server, _ = guarded
    headers = {"authorization": authorization} if authorization else {}
    answer = httpx.post(server.url + path, json=body, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == 'Bearer realm="kubeloop"'
    assert "Bearer" in answer.json()["error"]


def test_with_the_token_everything_works_and_labels_reach_every_worker(
    guarded: tuple[RunningServer, str],
) -> None:
    server, _ = guarded
    auth = {"authorization": "Bearer " + TOKEN}
    ids = []
    for _ in range(8):  # two workers: some labels land on the other one and are forwarded
        answer = httpx.post(server.url + "/predict", json=ROW, headers=auth)
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["id"])
    assert (
        httpx.post(server.url + "/v2/models/model/infer", json=V2, headers=auth).status_code == 200
    )
    labels = [{"id": i, "label": 1.0} for i in ids]
    answer = httpx.post(server.url + "/feedback", json=labels, headers=auth)
    assert answer.status_code == 200, answer.text
    assert sorted(answer.json()["matched"]) == sorted(ids)
    again = httpx.post(server.url + "/feedback", json=labels[:1], headers=auth)
    assert again.status_code == 409 and again.json()["already_labelled"] == ids[:1]


def test_health_stays_open(guarded: tuple[RunningServer, str]) -> None:
    server, _ = guarded
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/model/ready"):
        assert httpx.get(server.url + path).status_code == 200, path


def test_metrics_are_served_on_the_metrics_port_alone(guarded: tuple[RunningServer, str]) -> None:
    server, metrics_url = guarded
    assert httpx.get(server.url + "/metrics").status_code == 404
    scraped = httpx.get(metrics_url + "/metrics")
    assert scraped.status_code == 200 and "kubeloop_serve_requests_total" in scraped.text
    assert httpx.get(metrics_url + "/profile").status_code == 200
    assert httpx.post(metrics_url + "/predict", json=ROW).status_code == 404
    assert httpx.get(metrics_url + "/v2/health/ready").status_code == 404


@pytest.fixture(scope="module")
def guarded_one_port(
    model: StoredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A token and no metrics port: every endpoint on the main port."""
    with serving(
        model, tmp_path_factory.mktemp("logs"), env={"KUBELOOP_SERVE_AUTH_TOKEN": TOKEN}
    ) as server:
        yield server


def test_metrics_and_profile_stay_open_by_design_and_predict_does_not(
    guarded: tuple[RunningServer, str], guarded_one_port: RunningServer
) -> None:
    """Not a boundary (docs/security.md, docs/serving.md): with auth on, /metrics (live traffic's
    bin counts per feature) and /profile (the training data's reference bins and category
    values) answer without a token, because Prometheus and the operator read them with none.
    spec.server.metricsPort moves both to a port of their own, which the chart's
    servingNetworkPolicy opens to Prometheus and the API server alone."""
    server, metrics_url = guarded
    for base in (guarded_one_port.url, metrics_url):
        profile = httpx.get(base + "/profile")
        assert profile.status_code == 200 and profile.json()["profile"]["features"], base
        metrics = httpx.get(base + "/metrics")
        assert metrics.status_code == 200 and "kubeloop_serve_feature_bin_total" in metrics.text
    for url in (guarded_one_port.url, server.url):
        assert httpx.post(url + "/predict", json=ROW).status_code == 401, url
        assert httpx.get(url + "/v2/models/model").status_code == 200  # metadata: open


def test_the_token_is_not_on_the_command_line(guarded: tuple[RunningServer, str]) -> None:
    server, _ = guarded
    command = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert TOKEN.encode() not in command


# -- the ModelDeployment's wiring (pure builders) --------------------------------------------


def _deployment_with(server: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "ml", "uid": "u-1"},
        "spec": {
            "model": {
                "uri": "s3://models/churn/churn-1",
                "credentials": {"secretRef": {"name": "s3"}},
            },
            "server": server,
        },
    }


def test_the_pods_read_the_token_from_the_secret_and_serve_metrics_on_their_own_port() -> None:
    from kubeloop.api.modeldeployment import ServerSpec
    from kubeloop.resources.serving import (
        ModelRef,
        ServingSettings,
        build_track_deployment,
        metrics_port,
    )

    server = {"auth": {"secretRef": {"name": "churn-clients"}}, "metricsPort": 9090}
    ServerSpec.model_validate(server)
    md = _deployment_with(server)
    settings = ServingSettings(image="kubeloop:test", default_storage_uri="file:///m/")
    pod = build_track_deployment(
        md, "stable", ModelRef(uri="s3://m/churn-1", sha256="a" * 64), 1, settings
    )
    template = pod["spec"]["template"]
    container = template["spec"]["containers"][0]
    tokens = [e for e in container["env"] if e["name"] == "KUBELOOP_SERVE_AUTH_TOKEN"]
    # By reference only (and not pinned over by the credentials Secret's pins).
    assert tokens == [
        {
            "name": "KUBELOOP_SERVE_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "churn-clients", "key": "token"}},
        }
    ]
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == "9090"
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert metrics_port(md) == 9090
    # Without the fields: no token, /metrics on the main port, no metrics container port.
    plain = _deployment_with({})
    container = build_track_deployment(
        plain, "stable", ModelRef(uri="s3://m/churn-1", sha256="a" * 64), 1, settings
    )["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"]: e.get("value") for e in container["env"]}
    assert names["KUBELOOP_SERVE_AUTH_TOKEN"] == ""  # pinned: a credentials key cannot set it
    assert "--metrics-port" not in container["args"]
    assert all(p["name"] != "metrics" for p in container["ports"])
    assert metrics_port(plain) == 8080


def test_a_metrics_port_equal_to_the_port_is_refused() -> None:
    from pydantic import ValidationError

    from kubeloop.api.modeldeployment import ServerSpec

    with pytest.raises(ValidationError, match="metricsPort must differ from port"):
        ServerSpec.model_validate({"port": 9000, "metricsPort": 9000})
