"""Which replica works: the priority each replica gets, and this replica's view of kopf's rule.

kopf pauses a replica's watches and handlers while another live peer in the peering object has
a priority at least as high as its own. The operator's own lanes (resyncs, a ModelDeployment's
wake-ups) are not kopf's, so they ask :meth:`PeeringView.active` before they act: the same rule,
read from the same peering objects.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from kubeloop.controllers.kube import KINDS, Kube, NotFound
from kubeloop.decide.common import parse_wire_time

log = logging.getLogger(__name__)

#: A priority's random part: two replicas started in the same millisecond still differ.
_TIE_BREAK = 1024
#: Milliseconds since the epoch stay below this until the year 2255 (priorities stay positive
#: and below 2**53, exact in every JSON reader).
_MILLIS_CEILING = 2**43

#: Seconds one read of the peering objects answers :meth:`PeeringView.active` for.
VIEW_MAX_AGE_SECONDS = 2.0


def peering_priority(now_ms: int | None = None, tie_break: int | None = None) -> int:
    """The oldest replica has the highest priority, so the working replica stays the working one.

    kopf pauses every replica that sees a live peer of higher (or equal) priority. With a random
    priority a restarted replica outranked the working one half the time, and the working one
    was paused mid-rollout for nothing; with the start time, a replica that (re)starts is a
    standby until the working one dies. The random part keeps two replicas of one Deployment,
    started together, from having the same priority (kopf would pause both).
    """
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    extra = random.SystemRandom().randrange(_TIE_BREAK) if tie_break is None else tie_break
    return (_MILLIS_CEILING - millis) * _TIE_BREAK + extra


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = parse_wire_time(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def outranked_by(status: Mapping[str, Any], own_priority: int, now: datetime) -> list[str]:
    """The live peers in a peering object's status that pause a replica of ``own_priority``.

    kopf's rule: a peer is alive until ``lastseen + lifetime``; a live peer with a priority
    higher than or equal to ours pauses us. The entry with our own priority is ourselves
    (priorities are unique per process: start time and a random part).
    """
    peers = []
    for identity, peer in status.items():
        if not isinstance(peer, Mapping):
            continue
        priority = int(peer.get("priority") or 0)
        if priority == own_priority:
            continue
        lastseen = _parse_time(peer.get("lastseen")) or now
        lifetime = timedelta(seconds=int(peer.get("lifetime") or 60))
        if lastseen + lifetime <= now:
            continue
        if priority > own_priority:
            peers.append(str(identity))
    return sorted(peers)


class PeeringView:
    """Whether this replica is the working one, read from the peering objects at most every
    :data:`VIEW_MAX_AGE_SECONDS` and only when asked (a standby, which acts on nothing, reads
    nothing)."""

    def __init__(
        self,
        kube: Kube,
        peering: str,
        priority: int,
        namespaces: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        max_age: float = VIEW_MAX_AGE_SECONDS,
    ) -> None:
        self.kube = kube
        self.peering = peering
        self.priority = priority
        self.namespaces = tuple(namespaces)
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._active = True

    def _paths(self) -> list[str]:
        if not self.namespaces:
            return [KINDS["ClusterKopfPeering"].path(None, self.peering)]
        return [KINDS["KopfPeering"].path(namespace, self.peering) for namespace in self.namespaces]

    def _read(self) -> bool:
        now = datetime.now(UTC)
        for path in self._paths():
            try:
                status = self.kube.request("GET", path).get("status") or {}
            except NotFound:
                continue
            above = outranked_by(status, self.priority, now)
            if above:
                log.debug("standby: %s outrank this replica in %s", above, path)
                return False
        return True

    def active(self) -> bool:
        with self._lock:
            now = self._clock()
            if self._read_at is not None and now - self._read_at < self._max_age:
                return self._active
            try:
                self._active = self._read()
            except Exception:
                # The API server unreachable: keep the last answer (kopf, whose keep-alives
                # fail too, keeps its state as well).
                log.warning("could not read the peering object %s; keeping the last view", self.peering)
            self._read_at = now
            return self._active


def always_active() -> bool:
    """No peering: the only replica always works."""
    return True
