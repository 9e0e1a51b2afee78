"""Traffic routers: one module per router behind :class:`~kubeloop.traffic.base.TrafficRouter`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeloop.traffic.base import Backends, ReplicaSplit, TrafficRouter, WeightPatch
from kubeloop.traffic.gatewayapi import GatewayAPIRouter
from kubeloop.traffic.istio import IstioRouter
from kubeloop.traffic.replicas import ReplicasRouter


def router_for(traffic_routing: Mapping[str, Any] | None) -> TrafficRouter:
    """The router ``spec.rollout.trafficRouting`` (wire form) asks for; replicas by default."""
    routing = traffic_routing or {}
    gateway = routing.get("gatewayAPI")
    if gateway:
        return GatewayAPIRouter(gateway["httpRoute"])
    istio = routing.get("istio")
    if istio:
        return IstioRouter(istio["virtualService"], istio.get("routes") or ())
    return ReplicasRouter()


__all__ = ["Backends", "ReplicaSplit", "TrafficRouter", "WeightPatch", "router_for"]
