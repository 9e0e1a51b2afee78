"""The watches' cache (kubeloop.controllers.cache): newest wins, deletions stick, coverage is
never answered beyond what the watch sees. The wiring on the real API server is in
tests/integration/test_operator_cache.py."""

from __future__ import annotations

from typing import Any

import pytest

from kubeloop.controllers.cache import ObjectCache


def obj(kind: str, name: str, rv: int | str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name, "resourceVersion": str(rv)}
    if labels is not None:
        meta["labels"] = labels
    return {"kind": kind, "metadata": meta, **extra}


@pytest.fixture
def cache() -> ObjectCache:
    c = ObjectCache()
    c.cover("TrainingRun")
    c.cover("Pod", "kubeloop.io/trainingrun")
    return c


def test_newest_version_wins_whatever_the_order(cache: ObjectCache) -> None:
    cache.observe("MODIFIED", obj("TrainingRun", "a", 7, status={"phase": "Training"}))
    cache.remember(obj("TrainingRun", "a", 5, status={}))  # an older answer arriving late
    assert cache.get("TrainingRun", "ns", "a")["status"] == {"phase": "Training"}
    cache.remember(obj("TrainingRun", "a", 9, status={"phase": "Succeeded"}))  # our own write
    cache.observe("MODIFIED", obj("TrainingRun", "a", 8, status={"phase": "Training"}))  # watch catching up
    assert cache.get("TrainingRun", "ns", "a")["status"] == {"phase": "Succeeded"}


def test_a_deleted_object_is_not_brought_back_by_an_older_write(cache: ObjectCache) -> None:
    cache.observe(None, obj("TrainingRun", "a", 3))
    cache.observe("DELETED", obj("TrainingRun", "a", 4))
    cache.remember(obj("TrainingRun", "a", 3))  # a write answered before the deletion
    assert cache.get("TrainingRun", "ns", "a") is None
    cache.observe("ADDED", obj("TrainingRun", "a", 10))  # made again under the same name
    assert cache.get("TrainingRun", "ns", "a")["metadata"]["resourceVersion"] == "10"


def test_a_late_deletion_of_an_older_object_keeps_the_newer_one(cache: ObjectCache) -> None:
    cache.observe("ADDED", obj("TrainingRun", "a", 10))
    cache.observe("DELETED", obj("TrainingRun", "a", 4))
    assert cache.get("TrainingRun", "ns", "a") is not None


def test_lists_are_answered_only_when_the_selector_needs_the_covered_label(cache: ObjectCache) -> None:
    cache.observe(None, obj("Pod", "p1", 1, {"kubeloop.io/trainingrun": "a"}))
    cache.observe(None, obj("Pod", "p2", 2, {"kubeloop.io/trainingrun": "b"}))
    cache.observe(None, obj("Pod", "p3", 3, {"app": "x"}))  # not what the watch would hand over
    assert [p["metadata"]["name"] for p in cache.list("Pod", "ns", {"kubeloop.io/trainingrun": "a"})] == ["p1"]
    assert cache.list("Pod", "ns", {"app": "x"}) is None  # the server answers this one
    assert cache.list("Pod", "ns", None) is None
    assert cache.list("Job", "ns", {"kubeloop.io/trainingrun": "a"}) is None  # kind not covered
    assert cache.list("Pod", "other", {"kubeloop.io/trainingrun": "a"}) == []


def test_an_object_that_loses_the_label_is_dropped(cache: ObjectCache) -> None:
    cache.observe(None, obj("Pod", "p1", 1, {"kubeloop.io/trainingrun": "a"}))
    cache.observe("MODIFIED", obj("Pod", "p1", 2, {}))
    assert cache.get("Pod", "ns", "p1") is None


def test_readers_get_copies_and_managed_fields_are_not_kept(cache: ObjectCache) -> None:
    run = obj("TrainingRun", "a", 1, spec={"x": 1})
    run["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    cache.observe(None, run)
    first = cache.get("TrainingRun", "ns", "a")
    assert first is not None and "managedFields" not in first["metadata"]
    first["spec"]["x"] = 2
    assert cache.get("TrainingRun", "ns", "a")["spec"] == {"x": 1}


def test_kinds_not_covered_are_not_held(cache: ObjectCache) -> None:
    cache.remember(obj("Service", "s", 1))
    assert cache.get("Service", "ns", "s") is None and len(cache) == 0


def test_non_numeric_versions_take_the_newest_arrival(cache: ObjectCache) -> None:
    cache.remember(obj("TrainingRun", "a", "abc", spec={"v": 1}))
    cache.remember(obj("TrainingRun", "a", "abd", spec={"v": 2}))
    assert cache.get("TrainingRun", "ns", "a")["spec"] == {"v": 2}


def test_a_404_stands_until_the_watch_or_a_write_says_otherwise(cache: ObjectCache) -> None:
    count = cache.change_count("Pod", "ns", "p")
    cache.mark_absent("Pod", "ns", "p", count)
    assert cache.absent("Pod", "ns", "p")
    cache.observe("ADDED", obj("Pod", "p", 5, {"kubeloop.io/trainingrun": "a"}))
    assert not cache.absent("Pod", "ns", "p")


def test_a_404_answered_before_an_event_that_arrived_meanwhile_is_not_kept(cache: ObjectCache) -> None:
    count = cache.change_count("Pod", "ns", "p")  # taken before the GET
    cache.observe("ADDED", obj("Pod", "p", 5, {"kubeloop.io/trainingrun": "a"}))  # while the GET ran
    cache.observe("DELETED", obj("Pod", "p", 6, {"kubeloop.io/trainingrun": "a"}))
    cache.mark_absent("Pod", "ns", "p", count)  # the 404 is older than what the watch said
    assert not cache.absent("Pod", "ns", "p")
