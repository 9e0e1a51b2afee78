"""Reconciles asked for later, all waiting on one thread.

A ModelDeployment asks to be looked at again when its analysis or pause is due, or shortly after
a refused status write. One ``threading.Timer`` per object was one parked thread (and its stack)
per object: 300 rollouts, 300 threads. Here one thread keeps the due times in a heap and hands a
due key to a small pool, so many objects cost a dict entry each.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class WakeUps:
    """One pending wake-up per key; asking again keeps the earlier of the two due times.

    Earlier wins because a wake-up only asks "look again": firing early costs one reconcile,
    firing late misses a deadline (an analysis interval, a retry after a conflict).
    """

    def __init__(
        self,
        fire: Callable[[Hashable], None],
        workers: int = 4,
        clock: Callable[[], float] = time.monotonic,
        name: str = "wakeups",
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._due: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{name}-fire")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def at_most_in(self, key: Hashable, seconds: float) -> None:
        """Fire ``key`` within ``seconds`` (sooner if it was already due sooner)."""
        due = self._clock() + max(0.0, seconds)
        with self._cond:
            if self._stopped:
                return
            pending = self._due.get(key)
            if pending is not None and pending <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._order), key))
            self._cond.notify()  # the new entry may be the next one due

    def cancel(self, key: Hashable) -> None:
        with self._cond:
            self._due.pop(key, None)  # its heap entry is skipped when it comes up

    def pending(self) -> dict[Hashable, float]:
        """Seconds until each pending key fires."""
        now = self._clock()
        with self._cond:
            return {key: due - now for key, due in self._due.items()}

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._due.clear()
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                key = self._next_due()
                if key is None:
                    return
            self._pool.submit(self._fire_logged, key)

    def _next_due(self) -> Hashable | None:
        """Wait (holding the condition) for the next live due key; None once stopped."""
        while not self._stopped:
            if not self._heap:
                self._cond.wait()
                continue
            due, _, key = self._heap[0]
            if self._due.get(key) != due:
                heapq.heappop(self._heap)  # cancelled, or replaced by an earlier wake-up
                continue
            wait = due - self._clock()
            if wait > 0:
                self._cond.wait(wait)
                continue
            heapq.heappop(self._heap)
            del self._due[key]
            return key
        return None

    def _fire_logged(self, key: Hashable) -> None:
        if self._stopped:  # came due just before stop(): the owner no longer wants it
            return
        try:
            self._fire(key)
        except Exception:
            log.exception("the wake-up of %s failed", key)
