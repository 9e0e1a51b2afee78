"""Which existing objects the operator may change (issue 13, "Ownership").

Children have deterministic names (``<name>``, ``<name>-stable``, ``<name>-train``...), so a
namespace user can name a ModelDeployment or TrainingRun after an object that is not theirs to
hand over: a Service of another app, a Deployment, an autoscaler, a Job. Server-side apply with
``force`` would take such an object over (re-point a Service at model pods) and the owner
reference it adds would get it garbage-collected with the ModelDeployment.

The rule: the operator creates an object that does not exist, and changes, scales or deletes
an existing one only when it carries the owner's mark:

* a **controller owner reference** to the owner (same kind and uid) - what every child the
  operator creates carries (Services, Deployments, autoscalers, Jobs). The uid exists only once
  the owner does, so nobody can prepare an object that passes for a future owner's child;
* only for children the operator does not give owner references (``Owner.by_reference`` is
  False; none today), and only when there is no controller reference at all: the
  ``kubeloop.io/<kind>`` label naming the owner together with
  ``app.kubernetes.io/managed-by: kubeloop``. Labels can be written by whoever creates the
  object, so they never stand in for a reference where references are used.

Anything else - a controller reference to another object (or to an earlier owner of the same
name, whose garbage collection is still pending), or no mark - is a conflict: the object is
left exactly as it is and the owner reports ``ResourceConflict`` naming the object's kind and
name. Pure: no I/O, no kopf, no kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeloop.api.conditions import Reason

RESOURCE_CONFLICT = Reason.RESOURCE_CONFLICT
"""Condition/Event reason: an object with a child's name exists and is not the owner's."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kubeloop"


@dataclass(frozen=True)
class Owner:
    """The object whose children are checked: kind, name, uid and its ``kubeloop.io/*`` label."""

    kind: str
    name: str
    uid: str
    label: str  # e.g. "kubeloop.io/modeldeployment"
    by_reference: bool = True
    """Whether the operator marks this owner's children with an owner reference (then only
    the reference counts); False: the labels mark them."""

    @classmethod
    def of(cls, obj: Mapping[str, Any], label: str, by_reference: bool = True) -> Owner:
        meta = obj["metadata"]
        return cls(str(obj["kind"]), str(meta["name"]), str(meta.get("uid") or ""), label, by_reference)


def _controller_reference(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller"):
            found: Mapping[str, Any] = reference
            return found
    return None


def owned_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    """Whether ``obj`` carries ``owner``'s mark (see the module docstring)."""
    controller = _controller_reference(obj)
    if controller is not None:
        return bool(owner.uid) and controller.get("uid") == owner.uid and controller.get("kind") == owner.kind
    if owner.by_reference:
        return False
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(owner.label) == owner.name and labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def conflict(kind: str, name: str, existing: Mapping[str, Any] | None, owner: Owner) -> str | None:
    """None when the operator may create or change ``kind``/``name`` for ``owner``, else the
    message of the ``ResourceConflict`` (the object is then never modified, scaled or deleted)."""
    if existing is None or owned_by(existing, owner):
        return None
    controller = _controller_reference(existing)
    if controller is None:
        whose = f"it is not managed by {owner.kind} {owner.name} (it has no controller owner reference to it)"
    elif controller.get("kind") == owner.kind and controller.get("name") == owner.name:
        whose = f"it belongs to an earlier {owner.kind} named {owner.name} (uid {controller.get('uid')})"
    else:
        whose = f"it is controlled by {controller.get('kind')} {controller.get('name')}"
    return (
        f"{kind} {name} already exists and {whose}; the operator leaves it unchanged: "
        f"rename or remove that {kind}, or give this {owner.kind} another name"
    )


def conflicts(
    targets: Mapping[tuple[str, str], Mapping[str, Any] | None], owner: Owner
) -> list[str]:
    """The conflict messages of every ``(kind, name) -> existing object`` target, in order."""
    found = [conflict(kind, name, existing, owner) for (kind, name), existing in targets.items()]
    return [message for message in found if message is not None]


__all__ = ["MANAGED_BY_LABEL", "RESOURCE_CONFLICT", "Owner", "conflict", "conflicts", "owned_by"]
