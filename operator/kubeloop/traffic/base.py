"""The one small interface every traffic router implements, and the types it speaks in.

A router turns "the canary should get N % of live traffic" into two things: how many pods
each track needs (:meth:`TrafficRouter.split`) and, for routers that weight an object the
user owns (an HTTPRoute, a VirtualService), the patch that puts N % on it
(:meth:`TrafficRouter.weight_patch`). Routers are pure: they read the object the controller
fetched and return a patch; the controller does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ReplicaSplit:
    """Pods per track."""

    stable: int
    canary: int


@dataclass(frozen=True)
class Backends:
    """The Services a router points at (names in the ModelDeployment's namespace)."""

    namespace: str
    stable_service: str
    canary_service: str
    port: int


@dataclass(frozen=True)
class WeightPatch:
    """What a router wants changed on its object.

    ``patch`` is a JSON merge patch (None when the object already carries the weights);
    ``error`` explains, for people, why the weights cannot be set (object missing, no
    backend pointing at our Services) and how to fix it.
    """

    kind: str
    name: str
    patch: dict[str, Any] | None = None
    error: str | None = None


class RouterError(ValueError):
    """The router's object cannot carry the weights; the message names the object and the fix."""


class TrafficRouter(Protocol):
    """How weights reach requests."""

    name: str
    """The router's name as in ``spec.rollout.trafficRouting`` (replicas, gatewayAPI, istio)."""

    @property
    def object_kind(self) -> str | None:
        """Kind of the object whose weights this router sets; None when it sets none."""

    @property
    def object_name(self) -> str | None:
        """Name of that object."""

    def split(
        self, total: int, *, applied_weight: int, target_weight: int, shadow_percent: int = 0
    ) -> ReplicaSplit:
        """Pods per track while the canary gets ``applied_weight`` % and is being readied
        for ``target_weight`` % (with ``shadow_percent`` % of requests mirrored to it)."""

    def weight_patch(
        self, current: Mapping[str, Any] | None, backends: Backends, weight: int
    ) -> WeightPatch | None:
        """The patch that puts ``weight`` % on the canary on the router's object (None for a
        router without an object)."""
