"""When a child is as our last apply left it (the apply is skipped) and when it is not."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubeloop.controllers.modeldeployment import untouched_since

APPLIED: dict[str, Any] = {
    "metadata": {
        "name": "m-stable",
        "labels": {"app.kubernetes.io/managed-by": "kubeloop", "kubeloop.io/modeldeployment": "m"},
        "annotations": {"kubeloop.io/sha256": "a" * 64},
    },
}
ANSWER: dict[str, Any] = {
    "metadata": {
        "name": "m-stable",
        "uid": "u-1",
        "generation": 1,
        "resourceVersion": "10",
        "labels": dict(APPLIED["metadata"]["labels"]),
        "annotations": dict(APPLIED["metadata"]["annotations"]),
        "ownerReferences": [{"kind": "ModelDeployment", "name": "m", "uid": "md-1"}],
    },
    "status": {},
}


def changed(edit: Any) -> dict[str, Any]:
    obj = copy.deepcopy(ANSWER)
    edit(obj)
    return obj


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("the Deployment controller's revision annotation", lambda o: o["metadata"]["annotations"].update(
            {"deployment.kubernetes.io/revision": "1"})),
        ("another manager's label", lambda o: o["metadata"]["labels"].update({"team": "search"})),
        ("a status update (new resourceVersion, same generation)", lambda o: (
            o["metadata"].update(resourceVersion="11"), o["status"].update(readyReplicas=1))),
    ],
)
def test_what_others_add_leaves_the_child_untouched(what: str, edit: Any) -> None:
    assert untouched_since(changed(edit), APPLIED) == untouched_since(ANSWER, APPLIED), what


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("our annotation's value", lambda o: o["metadata"]["annotations"].update({"kubeloop.io/sha256": "b" * 64})),
        ("our label removed", lambda o: o["metadata"]["labels"].pop("kubeloop.io/modeldeployment")),
        ("a spec edit (new generation)", lambda o: o["metadata"].update(generation=2)),
        ("deleted and created again (new uid)", lambda o: o["metadata"].update(uid="u-2")),
        ("owner references", lambda o: o["metadata"].update(ownerReferences=[])),
    ],
)
def test_a_change_to_what_we_apply_is_seen(what: str, edit: Any) -> None:
    assert untouched_since(changed(edit), APPLIED) != untouched_since(ANSWER, APPLIED), what


def test_kinds_without_a_generation_are_compared_by_resource_version() -> None:
    service = copy.deepcopy(ANSWER)
    del service["metadata"]["generation"]
    edited = copy.deepcopy(service)
    edited["metadata"]["resourceVersion"] = "12"
    assert untouched_since(edited, APPLIED) != untouched_since(service, APPLIED)
