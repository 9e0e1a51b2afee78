"""Gateway API router: the canary's share is the weight of its backendRef in an HTTPRoute.

The HTTPRoute belongs to the user (it names the Gateway, hostnames and matches); the operator
touches nothing on it but the ``weight`` of the backendRefs that point at the
ModelDeployment's stable and canary Services, in every rule that references both. The patch
carries the route's resourceVersion, so an edit made by someone else in between makes the
write fail and the next reconcile retries on the fresh object instead of undoing that edit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kubeloop.traffic.base import Backends, ReplicaSplit, RouterError, WeightPatch
from kubeloop.traffic.replicas import mesh_split

KIND = "HTTPRoute"


def _points_at(ref: Mapping[str, Any], service: str, namespace: str) -> bool:
    return (
        ref.get("name") == service
        and ref.get("kind", "Service") == "Service"
        and ref.get("group", "") in ("", "core")
        and ref.get("namespace", namespace) == namespace
    )


def weighted_rules(
    route: Mapping[str, Any], backends: Backends, weight: int
) -> list[dict[str, Any]]:
    """The route's rules with the stable/canary backend weights set to 100 - weight / weight.

    Raises :class:`~kubeloop.traffic.base.RouterError` when no rule references both Services.
    """
    rules = copy.deepcopy(list((route.get("spec") or {}).get("rules") or []))
    found = False
    for rule in rules:
        refs = rule.get("backendRefs") or []
        stable = [r for r in refs if _points_at(r, backends.stable_service, backends.namespace)]
        canary = [r for r in refs if _points_at(r, backends.canary_service, backends.namespace)]
        if not stable or not canary:
            continue
        found = True
        for ref in stable:
            ref["weight"] = 100 - weight
        for ref in canary:
            ref["weight"] = weight
    if not found:
        name = (route.get("metadata") or {}).get("name", "?")
        raise RouterError(
            f"HTTPRoute {name!r} has no rule whose backendRefs name both Service "
            f"{backends.stable_service!r} and Service {backends.canary_service!r} "
            f"(port {backends.port}); add both to the rule that should carry the canary "
            "(spec.rollout.trafficRouting.gatewayAPI.httpRoute)"
        )
    return rules


class GatewayAPIRouter:
    """Weights on a named HTTPRoute's backendRefs."""

    name = "gatewayAPI"

    def __init__(self, http_route: str) -> None:
        self.http_route = http_route

    @property
    def object_kind(self) -> str | None:
        return KIND

    @property
    def object_name(self) -> str | None:
        return self.http_route

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
                self.http_route,
                error=f"HTTPRoute {self.http_route!r} not found in namespace "
                f"{backends.namespace!r}: create it with a rule whose backendRefs name Services "
                f"{backends.stable_service!r} and {backends.canary_service!r}, or fix "
                "spec.rollout.trafficRouting.gatewayAPI.httpRoute",
            )
        try:
            rules = weighted_rules(current, backends, weight)
        except RouterError as error:
            return WeightPatch(KIND, self.http_route, error=str(error))
        if rules == list((current.get("spec") or {}).get("rules") or []):
            return WeightPatch(KIND, self.http_route)
        return WeightPatch(
            KIND,
            self.http_route,
            patch={
                "metadata": {"resourceVersion": current["metadata"].get("resourceVersion")},
                "spec": {"rules": rules},
            },
        )
