"""CoalescingLocks: one reconcile per object at a time, one waiting, the rest covered."""

from __future__ import annotations

import threading
import time

from kubeloop.controllers.workqueue import CoalescingLocks


def test_a_call_while_one_waits_is_covered_and_the_waiting_one_runs_after_the_running_one() -> None:
    locks = CoalescingLocks()
    order: list[str] = []
    running = threading.Event()
    release = threading.Event()

    def first() -> None:
        with locks.turn("TrainingRun", "ns", "a") as mine:
            assert mine
            order.append("first")
            running.set()
            release.wait(5)

    def second() -> None:
        with locks.turn("TrainingRun", "ns", "a") as mine:
            order.append("second" if mine else "second covered")

    t1 = threading.Thread(target=first)
    t1.start()
    running.wait(5)
    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(0.1)  # second now waits for the lock
    with locks.turn("TrainingRun", "ns", "a") as mine:
        third_mine = mine  # covered: the waiting second has not read anything yet
    with locks.turn("TrainingRun", "ns", "b") as other:
        assert other  # another object is never covered
    release.set()
    t1.join(5)
    t2.join(5)
    assert not third_mine
    assert order == ["first", "second"]
    assert len(locks) == 0  # nothing is kept per object once its turns are over


def test_sequential_calls_each_get_their_turn() -> None:
    locks = CoalescingLocks()
    for _ in range(3):
        with locks.turn("ModelDeployment", "ns", "m") as mine:
            assert mine
    assert len(locks) == 0
