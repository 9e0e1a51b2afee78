"""Replica arithmetic of the routers: every weight 0..100 for every replica count 1..10."""

from __future__ import annotations

import math

import pytest

from kubeloop.traffic.base import ReplicaSplit
from kubeloop.traffic.replicas import (
    canary_replicas,
    mesh_split,
    rollout_split,
    shadow_replicas,
    stable_replicas,
)

TOTALS = range(1, 11)
WEIGHTS = range(0, 101)


@pytest.mark.parametrize("total", TOTALS)
@pytest.mark.parametrize("weight", WEIGHTS)
def test_replica_split_invariants(total: int, weight: int) -> None:
    split = rollout_split(total, applied_weight=weight, target_weight=weight)
    # Nobody loses capacity while rolling: together the tracks have at least `total` pods.
    assert split.stable + split.canary >= total
    # The canary never outgrows the deployment, and gets exactly its rounded-up share.
    assert split.canary <= total
    assert split.canary == (0 if weight == 0 else math.ceil(total * weight / 100))
    if weight == 0:
        assert split == ReplicaSplit(stable=total, canary=0)
    if weight > 0:
        assert split.canary >= 1  # a weight that is set is served by someone
    # Stable keeps a pod during the whole rollout, even at 100 % (instant abort).
    assert split.stable >= 1
    if weight < 100:
        assert split.stable == max(1, total - split.canary)
    # At most one pod more than asked for, and only when the rounding forces it.
    assert split.stable + split.canary <= total + 1


@pytest.mark.parametrize(
    ("weight", "stable", "canary"),
    [(0, 1, 0), (1, 1, 1), (20, 1, 1), (50, 1, 1), (99, 1, 1), (100, 1, 1)],
)
def test_one_replica(weight: int, stable: int, canary: int) -> None:
    assert rollout_split(1, applied_weight=weight, target_weight=weight) == ReplicaSplit(stable, canary)


@pytest.mark.parametrize(
    ("weight", "stable", "canary"),
    [(0, 2, 0), (1, 1, 1), (20, 1, 1), (50, 1, 1), (51, 1, 2), (99, 1, 2), (100, 1, 2)],
)
def test_two_replicas(weight: int, stable: int, canary: int) -> None:
    assert rollout_split(2, applied_weight=weight, target_weight=weight) == ReplicaSplit(stable, canary)


@pytest.mark.parametrize("total", TOTALS)
@pytest.mark.parametrize(("applied", "target"), [(0, 20), (20, 50), (50, 100), (0, 100)])
def test_raising_a_weight_never_shrinks_stable_before_the_canary_is_sized(
    total: int, applied: int, target: int
) -> None:
    moving = rollout_split(total, applied_weight=applied, target_weight=target)
    before = rollout_split(total, applied_weight=applied, target_weight=applied)
    after = rollout_split(total, applied_weight=target, target_weight=target)
    assert moving.stable == before.stable
    assert moving.canary == after.canary
    assert moving.stable + moving.canary >= total


@pytest.mark.parametrize("total", TOTALS)
@pytest.mark.parametrize("percent", [1, 10, 50, 100])
def test_shadow_runs_canary_pods_without_taking_stable_pods(total: int, percent: int) -> None:
    split = rollout_split(total, applied_weight=0, target_weight=0, shadow_percent=percent)
    assert split.stable == total
    assert split.canary == max(1, math.ceil(total * percent / 100))


@pytest.mark.parametrize("total", TOTALS)
@pytest.mark.parametrize("weight", WEIGHTS)
def test_mesh_routers_keep_stable_at_full_size(total: int, weight: int) -> None:
    split = mesh_split(total, applied_weight=weight, target_weight=weight)
    assert split.stable == total
    assert split.canary == canary_replicas(total, weight)


def test_zero_replicas_runs_nothing() -> None:
    assert rollout_split(0, applied_weight=50, target_weight=50, shadow_percent=10) == ReplicaSplit(0, 0)
    assert stable_replicas(0, 0) == 0
    assert shadow_replicas(0, 50) == 0


@pytest.mark.parametrize(("total", "weight"), [(-1, 10), (3, -1), (3, 101)])
def test_bad_input_is_refused_with_the_rule(total: int, weight: int) -> None:
    with pytest.raises(ValueError, match=r"replicas must be|percentage from 0 to 100"):
        canary_replicas(total, weight)
