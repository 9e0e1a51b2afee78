"""The default router: weight by replica ratio behind one Service, no mesh needed.

Both tracks carry the ModelDeployment's label, and the main Service selects them both while
the canary has a share of traffic, so kube-proxy spreads requests over pods: the canary's
share is its share of ready pods. The arithmetic lives here as pure functions so the table
tests can cover every weight and replica count.

The rules (``total`` is ``spec.replicas``):

* canary = ceil(total * weight / 100): a positive weight always gets at least one pod, and
  the canary never gets more than ``total``;
* stable = total - canary, but never 0 while the weight is below 100 (someone must answer the
  rest of the traffic), and never 0 during a rollout at all: at 100 % one stable pod stays
  warm so that an abort can send traffic back at once. Stable reaches 0 only when the rollout
  ends (promotion makes the stable Deployment serve the new model instead);
* while a weight is being raised, the canary is sized for the new (target) weight but the
  stable keeps the size of the weight still applied, so capacity never dips: the stable
  shrinks only once the canary's pods are ready and the weight has moved;
* shadow: the canary answers no one but receives ``shadow_percent`` % of requests mirrored,
  so it gets ceil(total * percent / 100) pods (at least one) and stable keeps all of its own.

With 1 replica a weight between 1 and 99 therefore runs 1 stable + 1 canary pod (an
effective 50 %); with 2 replicas, weights 1..50 run 1 + 1 and weights 51..99 run 1 + 2.
Weights are only as fine as the replica count allows; use gatewayAPI or istio for exact ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kubeloop.traffic.base import Backends, ReplicaSplit, WeightPatch


def canary_replicas(total: int, weight: int) -> int:
    """Canary pods for ``weight`` % of ``total``: ceil, at least one for any positive weight."""
    _check(total, weight)
    if weight == 0 or total == 0:
        return 0
    return min(total, math.ceil(total * weight / 100))


def stable_replicas(total: int, weight: int) -> int:
    """Stable pods while the canary has ``weight`` % during a rollout: the rest, at least one."""
    _check(total, weight)
    if total == 0:
        return 0
    return max(1, total - canary_replicas(total, weight))


def shadow_replicas(total: int, percent: int) -> int:
    """Canary pods for mirroring ``percent`` % of requests: enough for the share, at least one."""
    _check(total, percent)
    if total == 0:
        return 0
    return max(1, math.ceil(total * percent / 100))


def rollout_split(
    total: int, *, applied_weight: int, target_weight: int, shadow_percent: int = 0
) -> ReplicaSplit:
    """Pods per track at one moment of a rollout (see the module docstring for the rules)."""
    canary = canary_replicas(total, max(applied_weight, target_weight))
    if shadow_percent:
        canary = max(canary, shadow_replicas(total, shadow_percent))
    return ReplicaSplit(stable=stable_replicas(total, applied_weight), canary=canary)


def _check(total: int, percent: int) -> None:
    if total < 0:
        raise ValueError(f"replicas must be 0 or more, got {total}")
    if not 0 <= percent <= 100:
        raise ValueError(f"a weight is a percentage from 0 to 100, got {percent}")


class ReplicasRouter:
    """Weight by replica ratio: nothing to patch, the pod counts are the weights."""

    name = "replicas"

    @property
    def object_kind(self) -> str | None:
        return None

    @property
    def object_name(self) -> str | None:
        return None

    def split(
        self, total: int, *, applied_weight: int, target_weight: int, shadow_percent: int = 0
    ) -> ReplicaSplit:
        return rollout_split(
            total,
            applied_weight=applied_weight,
            target_weight=target_weight,
            shadow_percent=shadow_percent,
        )

    def weight_patch(
        self, current: Mapping[str, Any] | None, backends: Backends, weight: int
    ) -> WeightPatch | None:
        # The main Service's selector and the pod counts carry the weight (resources.serving).
        return None


def mesh_split(
    total: int, *, applied_weight: int, target_weight: int, shadow_percent: int = 0
) -> ReplicaSplit:
    """Pods per track when a gateway or mesh sets the weights: the stable keeps all of its
    pods for the whole rollout (an abort moves 100 % back onto warm pods), the canary is
    sized for its share as with the replicas router."""
    split = rollout_split(
        total,
        applied_weight=applied_weight,
        target_weight=target_weight,
        shadow_percent=shadow_percent,
    )
    return ReplicaSplit(stable=total, canary=split.canary)
