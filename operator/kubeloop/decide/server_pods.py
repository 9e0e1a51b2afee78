"""Why a track's server pods are not ready, from their container statuses. Pure: no I/O.

``kubeloop serve`` refuses some models for good and exits with a fixed code (its --help:
3 sha256 mismatch, 4 model unusable), writing a short reason to its termination message. The
kubelet keeps both in the pod's status (``state.terminated``, or ``lastState.terminated`` once
the container is restarted), so the operator learns why without reading logs or storage.

The controller reads a track's pods only while that track's replicas are not ready (and have
not been for :data:`POD_CHECK_AFTER`), so the healthy path costs no request.

The exit code is mapped through :data:`SERVER_EXITS` (the reason and the summary are ours); the
termination message comes from a pod and is treated as untrusted: control characters are
blanked, its length is bounded, and it goes into a condition's message only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kubeloop.api.conditions import Reason
from kubeloop.resources.serving import SERVER_CONTAINER, SHA_ANNOTATION

#: How long a track's replicas must have been not ready before its pods are read: pods that
#: are only starting (scheduled, pulling, loading the model) become ready in that time, so a
#: new ModelDeployment costs no read of its pods.
POD_CHECK_AFTER = timedelta(seconds=30)
#: Most characters of a server's termination message quoted in a condition message.
MAX_SERVER_WORDS = 512

# `kubeloop serve`'s exit codes (kubeloop.serving.model; a unit test checks they agree).
EXIT_CHECKSUM_MISMATCH = 3
EXIT_MODEL_UNUSABLE = 4

SERVER_EXITS: Mapping[int, tuple[str, str]] = {
    EXIT_CHECKSUM_MISMATCH: (
        Reason.CHECKSUM_MISMATCH,
        "the model file's sha256 is not the pinned one, the server refuses to load it",
    ),
    EXIT_MODEL_UNUSABLE: (
        Reason.MODEL_UNUSABLE,
        "the server cannot use the model file (missing, unreadable, or holding types it does "
        "not trust)",
    ),
}
"""Exit code of the server container -> (condition reason, what it means, in our words)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True)
class ServerRefusal:
    """A server pod that exited with one of :data:`SERVER_EXITS`' codes."""

    reason: str
    pod: str
    exit_code: int
    summary: str
    """Ours, from the table: safe anywhere (Events, lastFailure, the phase message)."""
    server_said: str
    """The termination message, cleaned and bounded: for a condition's message only."""
    others: int = 0
    """How many more pods of the track exited the same way."""

    def short(self) -> str:
        """Pod, exit code and our summary (nothing the pod wrote)."""
        more = f" (and {self.others} more pod(s))" if self.others else ""
        return f"pod {self.pod}{more} exited {self.exit_code}: {self.summary}"

    def detail(self) -> str:
        """:meth:`short` and what the server said, for a condition's message."""
        said = f"; the server said: {self.server_said}" if self.server_said else ""
        return self.short() + said


def server_words(text: Any) -> str:
    """A termination message made fit to quote: one line, no control characters, bounded."""
    if not isinstance(text, str):
        return ""
    line = " ".join(_CONTROL.sub(" ", text).split())
    if len(line) > MAX_SERVER_WORDS:
        line = line[: MAX_SERVER_WORDS - 1].rstrip() + "…"
    return line


def _terminations(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """The server container's latest termination first: the current state, then the last."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if not isinstance(status, Mapping) or status.get("name") != SERVER_CONTAINER:
            continue
        for key in ("state", "lastState"):
            terminated = (status.get(key) or {}).get("terminated")
            if isinstance(terminated, Mapping):
                yield terminated
                break


def server_refusal(pods: Iterable[Mapping[str, Any]], sha256: str) -> ServerRefusal | None:
    """The first (by name) pod serving ``sha256`` whose server exited with a known refusal,
    or None. Pods of another model (an old ReplicaSet's) do not speak for this one."""
    found: list[ServerRefusal] = []
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name") or "")):
        meta = pod.get("metadata") or {}
        if (meta.get("annotations") or {}).get(SHA_ANNOTATION) != sha256:
            continue
        for terminated in _terminations(pod):
            code = terminated.get("exitCode")
            if isinstance(code, int) and not isinstance(code, bool) and code in SERVER_EXITS:
                reason, summary = SERVER_EXITS[code]
                found.append(
                    ServerRefusal(reason, str(meta.get("name") or "?"), code, summary,
                                  server_words(terminated.get("message")))
                )
    if not found:
        return None
    first = found[0]
    return ServerRefusal(first.reason, first.pod, first.exit_code, first.summary,
                         first.server_said, others=len(found) - 1)
