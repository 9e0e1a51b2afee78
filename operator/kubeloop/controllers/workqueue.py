"""One reconcile per object at a time, and at most one more waiting: controller-runtime's
work-queue de-duplication for kopf's event handlers.

kopf calls a handler for every watch event of a run, its Job and its pods. A reconcile reads
everything fresh when it starts, so while one reconcile of an object runs, one waiting behind it
covers every further event: the waiting one has not read yet. Further callers return at once
instead of holding one of the operator's few handler threads only to repeat the same reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: bool = False
    users: int = 0


class CoalescingLocks:
    """``with locks.turn(key) as mine:`` - ``mine`` is False when a waiting turn covers this one."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[tuple[str, ...], _Slot] = {}

    @contextmanager
    def turn(self, *key: str) -> Iterator[bool]:
        with self._guard:
            slot = self._slots.setdefault(key, _Slot())
            if slot.waiting:
                covered = True
            else:
                covered = False
                slot.waiting = True
                slot.users += 1
        if covered:
            yield False
            return
        try:
            with slot.lock:
                with self._guard:
                    slot.waiting = False
                yield True
        finally:
            with self._guard:
                slot.users -= 1
                if slot.users == 0 and not slot.waiting:
                    del self._slots[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._slots)
