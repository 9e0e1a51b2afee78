"""Routers' desired objects: only our backends' weights change, anything else stays as the user wrote it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubeloop.traffic import router_for
from kubeloop.traffic.base import Backends
from kubeloop.traffic.gatewayapi import GatewayAPIRouter
from kubeloop.traffic.istio import IstioRouter
from kubeloop.traffic.replicas import ReplicasRouter

BACKENDS = Backends(namespace="ml", stable_service="churn-stable", canary_service="churn-canary", port=8080)


def http_route() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "churn", "namespace": "ml", "resourceVersion": "42"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/churn"}}],
                    "backendRefs": [
                        {"name": "churn-stable", "port": 8080, "weight": 100},
                        {"name": "churn-canary", "port": 8080, "weight": 0},
                        {"name": "other-service", "port": 80, "weight": 7},
                    ],
                },
                {"backendRefs": [{"name": "docs", "port": 80}]},
            ],
        },
    }


@pytest.mark.parametrize("weight", [0, 1, 20, 50, 99, 100])
def test_gateway_api_sets_only_our_weights(weight: int) -> None:
    route = http_route()
    original = copy.deepcopy(route)
    patch = GatewayAPIRouter("churn").weight_patch(route, BACKENDS, weight)
    assert route == original  # the input is not changed
    if weight == 0:
        assert patch.patch is None and patch.error is None  # already there
        return
    assert patch.kind == "HTTPRoute" and patch.name == "churn"
    assert patch.patch is not None
    assert patch.patch["metadata"] == {"resourceVersion": "42"}
    rules = patch.patch["spec"]["rules"]
    refs = rules[0]["backendRefs"]
    assert refs[0] == {"name": "churn-stable", "port": 8080, "weight": 100 - weight}
    assert refs[1] == {"name": "churn-canary", "port": 8080, "weight": weight}
    assert refs[2] == original["spec"]["rules"][0]["backendRefs"][2]
    assert rules[0]["matches"] == original["spec"]["rules"][0]["matches"]
    assert rules[1] == original["spec"]["rules"][1]


def test_gateway_api_ignores_refs_to_same_named_services_elsewhere() -> None:
    route = http_route()
    route["spec"]["rules"][0]["backendRefs"][1]["namespace"] = "other-namespace"
    patch = GatewayAPIRouter("churn").weight_patch(route, BACKENDS, 30)
    assert patch.patch is None
    assert patch.error is not None and "churn-canary" in patch.error and "add both" in patch.error


def test_gateway_api_missing_route_says_what_to_create() -> None:
    patch = GatewayAPIRouter("churn").weight_patch(None, BACKENDS, 30)
    assert patch.error is not None
    assert "HTTPRoute 'churn' not found" in patch.error and "gatewayAPI.httpRoute" in patch.error


def virtual_service() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "churn", "namespace": "ml", "resourceVersion": "9"},
        "spec": {
            "hosts": ["churn.example.com"],
            "http": [
                {
                    "name": "primary",
                    "route": [
                        {"destination": {"host": "churn-stable.ml.svc.cluster.local"}, "weight": 100},
                        {"destination": {"host": "churn-canary"}, "weight": 0},
                    ],
                },
                {
                    "name": "mirror-free",
                    "route": [
                        {"destination": {"host": "churn-stable"}, "weight": 100},
                        {"destination": {"host": "churn-canary"}, "weight": 0},
                    ],
                },
            ],
        },
    }


def test_istio_weights_every_route_by_default() -> None:
    patch = IstioRouter("churn").weight_patch(virtual_service(), BACKENDS, 25)
    assert patch.patch is not None
    http = patch.patch["spec"]["http"]
    for route in http:
        assert [d["weight"] for d in route["route"]] == [75, 25]
    assert patch.patch["metadata"] == {"resourceVersion": "9"}


def test_istio_weights_only_the_named_routes() -> None:
    patch = IstioRouter("churn", routes=["primary"]).weight_patch(virtual_service(), BACKENDS, 25)
    assert patch.patch is not None
    http = patch.patch["spec"]["http"]
    assert [d["weight"] for d in http[0]["route"]] == [75, 25]
    assert [d["weight"] for d in http[1]["route"]] == [100, 0]


def test_istio_route_without_our_hosts_is_an_error_naming_the_fix() -> None:
    patch = IstioRouter("churn", routes=["nope"]).weight_patch(virtual_service(), BACKENDS, 25)
    assert patch.error is not None and "['nope']" in patch.error and "trafficRouting.istio" in patch.error


def test_router_for_picks_the_configured_router() -> None:
    assert isinstance(router_for(None), ReplicasRouter)
    assert isinstance(router_for({"replicas": {}}), ReplicasRouter)
    gateway = router_for({"gatewayAPI": {"httpRoute": "r"}})
    assert isinstance(gateway, GatewayAPIRouter) and gateway.object_name == "r"
    istio = router_for({"istio": {"virtualService": "vs", "routes": ["a"]}})
    assert isinstance(istio, IstioRouter) and istio.routes == ("a",)
    assert ReplicasRouter().weight_patch(None, BACKENDS, 50) is None
