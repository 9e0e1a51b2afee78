"""What the operator's watches last said about each object: reads that cost no request.

kopf already watches every kind the controllers react to (runs, their Jobs and pods,
ModelDeployments and their Deployments) and hands each event's body to a handler. Before this
cache every reconcile read those objects again with GETs and LISTs: ~50 requests per
TrainingRun, most of them answers the operator had just been given. This is the informer
cache of controller-runtime and client-go, fed by kopf's watches instead of a second set.

Rules that keep it honest:

* **Coverage.** A kind is cached with a label that every object of ours carries (a run's Jobs
  and pods have ``kubeloop.io/trainingrun``); a LIST is answered from the cache only when its
  selector requires that label, so nothing the cache cannot hold is ever answered as absent.
* **A miss is asked of the API server.** :meth:`ObjectCache.get` says nothing about absence;
  :class:`~kubeloop.controllers.kube.Kube` GETs on a miss, so an object someone else made
  with our name (no label, not in the cache) is still seen before anything is written.
* **Our own writes are remembered** (what create, apply and patch answered), so the next
  reconcile does not read the state from before the write while the watch catches up.
* **Newest wins, deletions stick.** Two answers for one object are ordered by
  ``resourceVersion`` compared as numbers (client-go's mutation cache does the same: etcd's
  revision behind it only grows); a deleted object's version is kept as a tombstone so that a
  write answered before the deletion cannot bring it back.

Objects are stored as JSON bytes (orjson), so a caller can change what it read without
changing the cache, and 1,000 runs with their Jobs and pods stay a few MiB.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

JsonObject = dict[str, Any]
Key = tuple[str, str, str]
#: Deleted objects whose version is kept (a write answered before the deletion is ignored).
TOMBSTONES = 10_000


@dataclass(frozen=True)
class Coverage:
    """Which objects of a kind the watch feeding the cache sees: all, or those with ``label``."""

    label: str | None = None

    def holds(self, obj: Mapping[str, Any]) -> bool:
        return self.label is None or self.label in ((obj.get("metadata") or {}).get("labels") or {})

    def answers(self, labels: Mapping[str, str] | None) -> bool:
        """Whether a LIST with this selector can be answered from the cache."""
        return self.label is None or (labels is not None and self.label in labels)


def resource_version(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or -1)
    except (TypeError, ValueError):
        return -1  # not a number: the newest arrival wins


class ObjectCache:
    """Objects by (kind, namespace, name), for the kinds registered with :meth:`cover`."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._coverage: dict[str, Coverage] = {}
        self._objects: dict[Key, tuple[int, bytes, Mapping[str, str]]] = {}
        self._tombstones: OrderedDict[Key, int] = OrderedDict()
        # Keys the API server said do not exist (404), with the key's change count then; any
        # event or write for the key since makes the entry stale (see absent()).
        self._absent: dict[Key, int] = {}
        self._changes: dict[Key, int] = {}

    def cover(self, kind: str, label: str | None = None) -> None:
        self._coverage[kind] = Coverage(label)

    def covers(self, kind: str) -> bool:
        return kind in self._coverage

    # --- feeding ------------------------------------------------------------------------------

    def observe(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """A watch event (kopf's ``event``: type None is the initial listing)."""
        if event_type == "DELETED":
            self.forget(obj)
        else:
            self.remember(obj)

    def remember(self, obj: Mapping[str, Any]) -> None:
        """Keep ``obj`` unless the cache has a newer version or saw it deleted."""
        kind = str(obj.get("kind") or "")
        coverage = self._coverage.get(kind)
        if coverage is None:
            return
        key = _key(kind, obj)
        if key is None:
            return
        version = resource_version(obj)
        with self._guard:
            self._changed(key)
            if not coverage.holds(obj):
                # A label removed: no longer ours to answer for (a GET will tell).
                self._objects.pop(key, None)
                return
            if version >= 0 and version <= self._tombstones.get(key, -1):
                return
            held = self._objects.get(key)
            if held is not None and version >= 0 and version < held[0]:
                return
            metadata = dict(obj.get("metadata") or {})
            # Field managers are kilobytes per object and no reconcile reads them.
            metadata.pop("managedFields", None)
            labels = dict(metadata.get("labels") or {})
            self._objects[key] = (version, orjson.dumps({**obj, "metadata": metadata}), labels)
            self._tombstones.pop(key, None)

    def forget(self, obj: Mapping[str, Any]) -> None:
        kind = str(obj.get("kind") or "")
        key = _key(kind, obj)
        if key is None or kind not in self._coverage:
            return
        version = resource_version(obj)
        with self._guard:
            self._changed(key)
            held = self._objects.get(key)
            if held is not None and version >= 0 and held[0] > version:
                return  # a newer object of the same name (made again) is already here
            self._objects.pop(key, None)
            self._tombstones[key] = max(version, held[0] if held else -1)
            self._tombstones.move_to_end(key)
            while len(self._tombstones) > TOMBSTONES:
                self._tombstones.popitem(last=False)

    def _changed(self, key: Key) -> None:
        self._changes[key] = self._changes.get(key, 0) + 1
        self._absent.pop(key, None)

    def change_count(self, kind: str, namespace: str, name: str) -> int:
        """Taken before asking the API server for an object (see :meth:`mark_absent`)."""
        with self._guard:
            return self._changes.get((kind, namespace, name), 0)

    def mark_absent(self, kind: str, namespace: str, name: str, count: int) -> None:
        """The API server answered 404 for an object the cache did not hold. Kept only if no
        event or write for it arrived since ``count`` was taken (else that one is newer)."""
        key = (kind, namespace, name)
        if kind not in self._coverage:
            return
        with self._guard:
            if self._changes.get(key, 0) == count and key not in self._objects:
                self._absent[key] = count

    def absent(self, kind: str, namespace: str, name: str) -> bool:
        """Whether no object of ours with this name exists: the API server said 404 and the
        watch has said nothing of it since. An object without the covered label (someone
        else's, of the same name) is not seen here: a check before a write asks the server."""
        with self._guard:
            return (kind, namespace, name) in self._absent

    # --- reading ------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        """The object as last seen, or None: not seen (which does not mean it does not exist)."""
        with self._guard:
            held = self._objects.get((kind, namespace, name))
            if held is None:
                return None
            data = held[1]
        parsed: JsonObject = orjson.loads(data)
        return parsed

    def list(self, kind: str, namespace: str, labels: Mapping[str, str] | None) -> list[JsonObject] | None:
        """The objects matching ``labels`` in ``namespace``; None when the cache cannot answer."""
        coverage = self._coverage.get(kind)
        if coverage is None or not coverage.answers(labels):
            return None
        wanted = dict(labels or {})
        with self._guard:
            found = [
                data
                for (k, ns, _), (_, data, have) in self._objects.items()
                if k == kind and ns == namespace and all(have.get(lk) == lv for lk, lv in wanted.items())
            ]
        return [orjson.loads(data) for data in found]

    def __len__(self) -> int:
        with self._guard:
            return len(self._objects)


def _key(kind: str, obj: Mapping[str, Any]) -> Key | None:
    metadata = obj.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not namespace or not name:
        return None
    return (kind, str(namespace), str(name))
