"""The server's micro-batching defaults and bounds, shared by the API (``spec.server.batching``),
the pod builder and ``kubeloop serve``: leaving the field out and writing ``{}`` serve alike,
and the API accepts no value the server would refuse at start-up. Imports nothing, so the
trust policies that pin these values can use it too."""

from __future__ import annotations

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_LATENCY_MS = 2
#: The longest batch wait, in milliseconds, the server accepts.
MAX_BATCH_LATENCY_MS = 1000
