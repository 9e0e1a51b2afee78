"""Resyncs from the operator's own lane instead of kopf timers (kubeloop.controllers.resync), and
which replica works (kubeloop.controllers.peering).

Table tests of the pure parts: how soon each kind's object is looked at again with no event, the
replicas' priorities, kopf's pause rule over a peering object's status. The lane itself with
real threads and short intervals: a resync re-arms from what the kind answers, stops on None,
retries after a failure, and on a standby acts on nothing. The wiring (no kopf timer, hence no
kopf finalizer, on the real API server) is in tests/integration/test_operator_resync.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_wakeups import _until

from kubeloop.config import OperatorConfig
from kubeloop.controllers import resync as resync_module
from kubeloop.controllers.modeldeployment import ResyncIntervals, resync_after
from kubeloop.controllers.peering import always_active, outranked_by, peering_priority
from kubeloop.controllers.resync import Resyncs
from kubeloop.controllers.trainingrun import run_resync_after

EVERY = ResyncIntervals(rollout_tick=5, resync=30, settled=1800, registry_poll=60)
CANARY = {"sha256": "b" * 64}


@pytest.mark.parametrize(
    ("status", "spec", "seconds"),
    [
        ({}, {}, 30),  # new: its creation event reconciled it; the resync is the safety net
        ({"phase": "Progressing"}, {}, 30),  # a first rollout: its Deployment's events drive it
        ({"phase": "Progressing", "canary": CANARY}, {}, 5),  # a canary in flight ticks
        ({"phase": "Paused", "canary": CANARY}, {}, 5),
        ({"phase": "Degraded", "canary": CANARY, "aborted": True}, {}, 30),  # aborted: no tick
        ({"phase": "Healthy"}, {}, 1800),  # settled: events of it and its children suffice
        ({"phase": "Healthy"}, {"model": {"registry": {"name": "churn"}}}, 60),  # MLflow sends no events
        ({"phase": "Progressing", "canary": CANARY}, {"model": {"registry": {"name": "churn"}}}, 5),
    ],
)
def test_a_modeldeployment_is_looked_at_again_as_soon_as_its_state_needs(
    status: dict[str, Any], spec: dict[str, Any], seconds: float
) -> None:
    assert resync_after(status, spec, EVERY) == seconds


def test_the_intervals_are_the_operators_settings() -> None:
    config = OperatorConfig(
        rollout_tick_seconds=2, resync_seconds=20, settled_resync_seconds=600, mlflow_registry_poll_seconds=45
    )
    assert ResyncIntervals.from_config(config) == ResyncIntervals(2, 20, 600, 45)


@pytest.mark.parametrize(
    ("status", "seconds"),
    [
        ({}, 30),
        ({"phase": "Pending"}, 30),
        ({"phase": "Training"}, 30),
        ({"phase": "Succeeded"}, None),  # finished: nothing left to look at
        ({"phase": "Failed"}, None),
        ({"phase": "Succeeded", "mlflow": {"runId": "r1", "finished": True}}, None),
        # MLflow was down when it finished: looked at until its MLflow run is ended
        ({"phase": "Succeeded", "mlflow": {"runId": "r1"}}, 30),
        ({"phase": "Failed", "mlflow": {"runId": "r1", "finished": False}}, 30),
    ],
)
def test_a_run_is_resynced_while_something_is_left_to_do(status: dict[str, Any], seconds: float | None) -> None:
    assert run_resync_after(status, 30) == seconds


# --- the lane ------------------------------------------------------------------------------


class Kind:
    """A kind's resync: records each call, answers the next interval from a script."""

    def __init__(self, answers: list[float | None] | None = None, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.answers = list(answers or [])
        self.fail = fail
        self.start = time.monotonic()
        self.guard = threading.Lock()

    def __call__(self, namespace: str, name: str) -> float | None:
        with self.guard:
            self.calls.append((namespace, name, time.monotonic() - self.start))
        if self.fail:
            raise RuntimeError("the API server said no")
        return self.answers.pop(0) if self.answers else None


@contextlib.contextmanager
def running(kind: Kind, active: Callable[[], bool] = always_active) -> Iterator[Resyncs]:
    """A lane for the test's kind, stopped when the test ends (pass or fail)."""
    resyncs = Resyncs(kind, "TestKind", active=active)
    try:
        yield resyncs
    finally:
        resyncs.stop()


def test_a_resync_rearms_from_what_the_kind_answers_and_stops_on_none() -> None:
    kind = Kind(answers=[0.05, 0.05, None])
    with running(kind) as resyncs:
        resyncs.arm("team", "churn", 0.05)
        _until(lambda: len(kind.calls) == 3)
        time.sleep(0.2)
        assert [call[:2] for call in kind.calls] == [("team", "churn")] * 3
        assert resyncs.pending() == {}  # None: no more resyncs


def test_an_event_does_not_postpone_a_pending_resync() -> None:
    # A kopf timer's interval does not move with events either: an object changing every
    # second must still be resynced.
    kind = Kind()
    with running(kind) as resyncs:
        resyncs.arm("team", "churn", 0.1)
        resyncs.arm("team", "churn", 30)
        _until(lambda: kind.calls)
        assert len(kind.calls) == 1 and kind.calls[0][2] < 1.0


def test_none_and_forget_drop_the_pending_resync() -> None:
    kind = Kind()
    with running(kind) as resyncs:
        resyncs.arm("team", "a", 0.1)
        resyncs.arm("team", "b", 0.1)
        resyncs.arm("team", "a", None)  # e.g. the run finished
        resyncs.forget("team", "b")  # e.g. deleted
        time.sleep(0.3)
        assert kind.calls == []


def test_a_failed_resync_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resync_module, "FAILED_RETRY_SECONDS", 0.05)
    kind = Kind(fail=True)
    with running(kind) as resyncs:
        resyncs.arm("team", "churn", 0.01)
        _until(lambda: len(kind.calls) >= 3)
        assert len(kind.calls) >= 3


def test_a_standby_resyncs_nothing_and_forgets_what_came_due() -> None:
    # kopf lists every object again when it resumes a paused replica: those events re-arm.
    kind = Kind(answers=[0.05] * 10)
    standby = threading.Event()
    with running(kind, active=lambda: not standby.is_set()) as resyncs:
        standby.set()
        resyncs.arm("team", "churn", 0.01)
        time.sleep(0.3)
        assert kind.calls == []
        assert resyncs.pending() == {}
        standby.clear()
        resyncs.arm("team", "churn", 0.01)
        _until(lambda: kind.calls)
        assert kind.calls


# --- which replica works ---------------------------------------------------------------------


def test_an_older_replica_outranks_a_younger_one() -> None:
    started = 1_796_000_000_000  # ms since the epoch (late 2026)
    old = peering_priority(started, tie_break=1023)
    young = peering_priority(started + 1, tie_break=0)
    assert old > young > 0
    # The random part separates two replicas of one Deployment started in the same millisecond.
    assert peering_priority(started, 1) != peering_priority(started, 2)
    assert peering_priority(started) < 2**53  # exact in every JSON reader
    assert peering_priority() < old  # now is later than 2026-12


NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _peer(priority: int, seen_ago: float | None, lifetime: int = 12) -> dict[str, Any]:
    peer: dict[str, Any] = {"priority": priority, "lifetime": lifetime}
    if seen_ago is not None:
        peer["lastseen"] = (NOW - timedelta(seconds=seen_ago)).isoformat()
    return peer


@pytest.mark.parametrize(
    ("status", "outranking"),
    [
        ({}, []),
        ({"me": _peer(100, 1)}, []),  # ourselves
        ({"me": _peer(100, 1), "old": _peer(200, 3)}, ["old"]),  # a live, older replica works
        ({"me": _peer(100, 1), "old": _peer(200, 13)}, []),  # dead: its keep-alive expired
        ({"me": _peer(100, 1), "young": _peer(50, 1)}, []),  # we outrank it
        ({"me": _peer(100, 1), "new": _peer(200, None)}, ["new"]),  # no lastseen yet: alive (kopf)
        ({"me": _peer(100, 1), "a": _peer(300, 1), "b": _peer(200, 1)}, ["a", "b"]),
        ({"junk": "not a peer", "me": _peer(100, 1)}, []),
        ({"me": _peer(100, 1), "zulu": {"priority": 200, "lifetime": 12, "lastseen": "2026-12-07T11:59:58Z"}}, ["zulu"]),
    ],
)
def test_a_replica_stands_by_while_a_live_peer_outranks_it(status: dict[str, Any], outranking: list[str]) -> None:
    assert outranked_by(status, 100, NOW) == outranking
