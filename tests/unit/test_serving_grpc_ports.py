"""The ModelDeployment's pods and Services expose the server's gRPC port next to HTTP.

Given a ModelDeployment, when the operator builds a track's Deployment and the Services,
then the server runs with ``--grpc-port``, the container declares that port as ``grpc`` and
every Service (main and per track) forwards it, marked ``appProtocol: grpc``; the gRPC port
never collides with the HTTP or metrics port the spec chose.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubeloop.resources.serving import (
    SERVER_CONTAINER,
    ModelRef,
    ServingSettings,
    build_services,
    build_track_deployment,
)


def modeldeployment(port: int | None, metrics_port: int | None = None) -> dict[str, Any]:
    server: dict[str, Any] = {"server": {}}
    if port is not None:
        server["server"]["port"] = port
    if metrics_port is not None:
        server["server"]["metricsPort"] = metrics_port
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "namespace": "ml-a", "uid": "0f0e0d0c-0000-4000-8000-1"},
        "spec": {"model": {"trainingRunRef": {"name": "churn-1"}}, "replicas": 2, **server},
    }


@pytest.mark.parametrize(
    ("http_port", "metrics", "expected_http", "expected_grpc"),
    [
        (None, None, 8080, 8081),
        (9000, None, 9000, 8081),
        (8081, None, 8081, 8082),
        (8081, 8082, 8081, 8083),
        (8080, 8081, 8080, 8082),
    ],
)
def test_grpc_port_on_the_container_and_every_service(
    http_port: int | None, metrics: int | None, expected_http: int, expected_grpc: int
) -> None:
    md = modeldeployment(http_port, metrics)
    model = ModelRef("file:///models/churn/churn-1/model.skops", "a" * 64, "churn-1")
    deployment = build_track_deployment(md, "stable", model, 2, ServingSettings(image="k:1"))
    container = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == SERVER_CONTAINER
    )  # fmt: skip
    args = container["args"]
    assert args[args.index("--grpc-port") + 1] == str(expected_grpc)
    assert args[args.index("--port") + 1] == str(expected_http)
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert declared["http"] == expected_http and declared["grpc"] == expected_grpc
    assert len(set(declared.values())) == len(declared), "two names for one port"
    services = build_services(md, canary_weight=20)
    assert len(services) == 3
    for service in services:
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert ports["grpc"]["port"] == expected_grpc
        assert ports["grpc"]["targetPort"] == "grpc"
        assert ports["grpc"]["appProtocol"] == "grpc"
        assert ports["http"]["port"] == expected_http
