"""Events written in the background (kubeloop.controllers.kube.EventWriter): one object's Events
keep their order, a failed write is counted and the worker goes on. The operator's Events on the
real API server are checked by the integration tests (test_trainingrun_controller, ...)."""

from __future__ import annotations

import threading
import time

from kubeloop.controllers import metrics
from kubeloop.controllers.kube import EventWriter


def test_events_of_one_object_keep_their_order_across_workers() -> None:
    writer = EventWriter(workers=4)
    written: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    guard = threading.Lock()

    def write(key: str, n: int) -> None:
        time.sleep(0.001 * (n % 3))  # uneven write times
        with guard:
            written[key].append(n)

    for n in range(50):
        for key in written:
            writer.submit(key, lambda key=key, n=n: write(key, n))
    writer.flush()
    assert all(order == list(range(50)) for order in written.values())


def test_a_failed_write_is_counted_and_later_events_are_written() -> None:
    writer = EventWriter(workers=1)
    before = metrics.EVENT_WRITE_FAILURES._value.get()
    done: list[str] = []

    def fail() -> None:
        raise RuntimeError("the API server refused")

    writer.submit("x", fail)
    writer.submit("x", lambda: done.append("next"))
    writer.flush()
    assert done == ["next"]
    assert metrics.EVENT_WRITE_FAILURES._value.get() == before + 1
