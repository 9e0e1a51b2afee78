"""Istio router: the canary's share is a route weight in a VirtualService.

Only the ``weight`` of route destinations whose host is the ModelDeployment's stable or canary
Service is changed, in the HTTP routes named in ``routes`` (all of them when empty) that
reference both. A destination host may be the short Service name or its cluster-local FQDN.
The patch carries the resourceVersion (see :mod:`kubeloop.traffic.gatewayapi` for why).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from kubeloop.traffic.base import Backends, ReplicaSplit, RouterError, WeightPatch
from kubeloop.traffic.replicas import mesh_split

KIND = "VirtualService"


def _hosts(service: str, namespace: str) -> set[str]:
    return {
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    }


def weighted_http_routes(
    virtual_service: Mapping[str, Any],
    backends: Backends,
    weight: int,
    route_names: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``spec.http`` with stable/canary destination weights set to 100 - weight / weight.

    Raises :class:`~kubeloop.traffic.base.RouterError` when no selected route has both.
    """
    http = copy.deepcopy(list((virtual_service.get("spec") or {}).get("http") or []))
    stable_hosts = _hosts(backends.stable_service, backends.namespace)
    canary_hosts = _hosts(backends.canary_service, backends.namespace)
    wanted = set(route_names)
    found = False
    for route in http:
        if wanted and route.get("name") not in wanted:
            continue
        destinations = route.get("route") or []
        stable = [
            d for d in destinations if (d.get("destination") or {}).get("host") in stable_hosts
        ]
        canary = [
            d for d in destinations if (d.get("destination") or {}).get("host") in canary_hosts
        ]
        if not stable or not canary:
            continue
        found = True
        for destination in stable:
            destination["weight"] = 100 - weight
        for destination in canary:
            destination["weight"] = weight
    if not found:
        name = (virtual_service.get("metadata") or {}).get("name", "?")
        which = f"routes {sorted(wanted)}" if wanted else "any HTTP route"
        raise RouterError(
            f"VirtualService {name!r}: {which} must have destinations with host "
            f"{backends.stable_service!r} and {backends.canary_service!r}; add both to the "
            "route that should carry the canary (spec.rollout.trafficRouting.istio)"
        )
    return http


class IstioRouter:
    """Weights on a named VirtualService's HTTP route destinations."""

    name = "istio"

    def __init__(self, virtual_service: str, routes: Sequence[str] = ()) -> None:
        self.virtual_service = virtual_service
        self.routes = tuple(routes)

    @property
    def object_kind(self) -> str | None:
        return KIND

    @property
    def object_name(self) -> str | None:
        return self.virtual_service

    def split(
        self, total: int, *, applied_weight: int, target_weight: int, shadow_percent: int = 0
    ) -> ReplicaSplit:
        return mesh_split(
            total,
            applied_weight=applied_weight,
            target_weight=target_weight,
            shadow_percent=shadow_percent,
        )

    def weight_patch(
        self, current: Mapping[str, Any] | None, backends: Backends, weight: int
    ) -> WeightPatch:
        if current is None:
            return WeightPatch(
                KIND,
                self.virtual_service,
                error=f"VirtualService {self.virtual_service!r} not found in namespace "
                f"{backends.namespace!r}: create it or fix "
                "spec.rollout.trafficRouting.istio.virtualService",
            )
        try:
            http = weighted_http_routes(current, backends, weight, self.routes)
        except RouterError as error:
            return WeightPatch(KIND, self.virtual_service, error=str(error))
        if http == list((current.get("spec") or {}).get("http") or []):
            return WeightPatch(KIND, self.virtual_service)
        return WeightPatch(
            KIND,
            self.virtual_service,
            patch={
                "metadata": {"resourceVersion": current["metadata"].get("resourceVersion")},
                "spec": {"http": http},
            },
        )
