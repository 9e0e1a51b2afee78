"""One thread for every pending wake-up (kubeloop.controllers.wakeups.WakeUps): a key fires once
at its due time, asking again keeps the earlier time, a cancelled or stopped key never fires,
and many objects add no thread each (the ModelDeployment controller's analysis and retry timers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from kubeloop.controllers.wakeups import WakeUps


class Fired:
    def __init__(self) -> None:
        self.at: dict[Hashable, list[float]] = {}
        self.guard = threading.Lock()
        self.start = time.monotonic()

    def __call__(self, key: Hashable) -> None:
        with self.guard:
            self.at.setdefault(key, []).append(time.monotonic() - self.start)


def _until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_each_key_fires_once_in_due_order() -> None:
    fired = Fired()
    wakeups = WakeUps(fired)
    wakeups.at_most_in("late", 0.3)
    wakeups.at_most_in("soon", 0.05)
    _until(lambda: len(fired.at) == 2)
    time.sleep(0.2)
    wakeups.stop()
    assert {key: len(times) for key, times in fired.at.items()} == {"soon": 1, "late": 1}
    assert 0.04 <= fired.at["soon"][0] < fired.at["late"][0]
    assert fired.at["late"][0] >= 0.29


def test_asking_again_keeps_the_earlier_time() -> None:
    fired = Fired()
    wakeups = WakeUps(fired)
    wakeups.at_most_in("md", 0.1)
    wakeups.at_most_in("md", 30)  # a later request does not push the due time back
    assert 0 < wakeups.pending()["md"] <= 0.1
    _until(lambda: "md" in fired.at)
    assert len(fired.at["md"]) == 1 and fired.at["md"][0] < 1.0
    wakeups.at_most_in("other", 30)
    wakeups.at_most_in("other", 0.05)  # an earlier one brings it forward
    _until(lambda: "other" in fired.at)
    wakeups.stop()
    assert fired.at["other"][0] - fired.at["md"][0] < 1.0


def test_a_cancelled_or_stopped_key_never_fires() -> None:
    fired = Fired()
    wakeups = WakeUps(fired)
    wakeups.at_most_in("gone", 0.05)
    wakeups.cancel("gone")
    wakeups.at_most_in("after-stop", 0.05)
    wakeups.stop()
    wakeups.at_most_in("late", 0.01)
    time.sleep(0.2)
    assert fired.at == {}


def test_a_failing_reconcile_is_logged_and_the_next_key_still_fires() -> None:
    seen: list[Hashable] = []

    def fire(key: Hashable) -> None:
        seen.append(key)
        if key == "bad":
            raise RuntimeError("the API server refused")

    wakeups = WakeUps(fire, workers=1)
    wakeups.at_most_in("bad", 0.01)
    wakeups.at_most_in("good", 0.05)
    _until(lambda: len(seen) == 2)
    wakeups.stop()
    assert seen == ["bad", "good"]


def test_three_hundred_objects_wait_on_one_thread() -> None:
    fired = Fired()
    before = set(threading.enumerate())
    wakeups = WakeUps(fired, workers=4, name="three-hundred")

    def started() -> list[str]:
        return sorted(t.name for t in set(threading.enumerate()) - before)

    for i in range(300):
        wakeups.at_most_in(f"md-{i}", 0.2 + (i % 7) * 0.01)
    assert started() == ["three-hundred"]  # the one waiter; fire threads start on demand
    _until(lambda: len(fired.at) == 300)
    assert len(started()) <= 1 + 4, started()
    wakeups.stop()
    assert all(len(times) == 1 for times in fired.at.values()) and len(fired.at) == 300
