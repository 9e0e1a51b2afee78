"""Periodic reconciles (the level-based safety net) from the operator's own lane, not kopf timers.

kopf puts its finalizer on every object a timer watches (``kopf.timer`` always requires one):
two more writes per object, ~1,000 finalizer patches at once (each on a TLS connection of its
own, most of the operator's peak memory) when 1,000 TrainingRuns are applied together, and
objects that cannot be deleted while no operator runs. Here a kind's resyncs wait on one
:class:`~kubeloop.controllers.wakeups.WakeUps` lane instead: a dict entry per object.

Each event of an object arms its resync (the earlier due time wins, as a kopf timer's interval
does not move with events); a firing reconciles, and the kind's ``resync`` says when to look
again from what it sees then (``None``: no more resyncs, e.g. a finished run).

Peering: a standby replica must not act. kopf pauses its own handling (watches, timers) while a
peer of higher priority is alive; ``active`` is the operator's view of the same rule
(:class:`kubeloop.controllers.peering.PeeringView`). A resync that comes due on a standby is
dropped: when kopf resumes a replica it lists every object again, and those events re-arm it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import cast

from kubeloop.controllers import metrics
from kubeloop.controllers.peering import always_active
from kubeloop.controllers.wakeups import WakeUps

log = logging.getLogger(__name__)

#: Seconds before a resync that raised is tried again.
FAILED_RETRY_SECONDS = 30.0


class Resyncs:
    """One pending resync per object of a kind, fired on a small pool of the kind's own."""

    def __init__(
        self,
        resync: Callable[[str, str], float | None],
        kind: str,
        workers: int = 2,
        active: Callable[[], bool] = always_active,
    ) -> None:
        self._resync = resync
        self.kind = kind
        self.active = active
        self._lane = WakeUps(self._fired, workers=workers, name=f"{kind.lower()}-resyncs")

    def arm(self, namespace: str, name: str, seconds: float | None) -> None:
        """Resync within ``seconds`` (an earlier pending one stays); ``None`` stops its resyncs."""
        if seconds is None:
            self._lane.cancel((namespace, name))
        else:
            self._lane.at_most_in((namespace, name), seconds)

    def forget(self, namespace: str, name: str) -> None:
        self._lane.cancel((namespace, name))

    def pending(self) -> dict[Hashable, float]:
        """Seconds until each object's resync (for tests and debugging)."""
        return self._lane.pending()

    def stop(self) -> None:
        self._lane.stop()

    def _fired(self, key: Hashable) -> None:
        namespace, name = cast(tuple[str, str], key)
        if not self.active():
            return
        metrics.RESYNCS.labels(self.kind).inc()
        try:
            seconds = self._resync(namespace, name)
        except Exception:
            # A failed resync is still a resync: the object keeps its safety net.
            log.exception("the resync of %s/%s failed", namespace, name)
            self._lane.at_most_in(key, FAILED_RETRY_SECONDS)
            return
        self.arm(namespace, name, seconds)
