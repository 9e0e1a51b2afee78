"""Names, labels and owner references shared by every child object the operator creates."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

LABEL_PREFIX = "kubeloop.io"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubeloop"}
MAX_NAME = 63  # a DNS-1123 label, so the name is also usable as a label value (job-name)


def child_name(owner: str, suffix: str, limit: int = MAX_NAME) -> str:
    """Deterministic child name: the same owner always gets the same child, even after a crash.

    Names that would be too long are cut and end with a short hash of the full name, so two
    long owners never collide.
    """
    full = f"{owner}-{suffix}" if suffix else owner
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-')}-{digest}-{suffix}"


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference, so deleting the owner garbage-collects the child."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels_for(kind_label: str, owner_name: str, component: str, **extra: str) -> dict[str, str]:
    """The ``kubeloop.io/*`` labels by which a child is found again from its owner."""
    labels = {
        **MANAGED_BY,
        "app.kubernetes.io/component": component,
        f"{LABEL_PREFIX}/{kind_label}": owner_name,
    }
    labels.update({f"{LABEL_PREFIX}/{key.replace('_', '-')}": value for key, value in extra.items()})
    return labels
