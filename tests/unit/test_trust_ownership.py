"""The ownership policy (kubeloop.trust.ownership) as a table, and the TrainingRun decision
when the run's Job name is taken by a Job that is not the run's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubeloop.decide import trainingrun as tr_decide
from kubeloop.resources.trainingjob import TrainerSettings
from kubeloop.trust.ownership import Owner, conflict, conflicts, owned_by

OWNER = Owner("ModelDeployment", "churn", "uid-1", "kubeloop.io/modeldeployment")
MINE_LABELS = {"kubeloop.io/modeldeployment": "churn", "app.kubernetes.io/managed-by": "kubeloop"}


def ref(kind: str = "ModelDeployment", name: str = "churn", uid: str = "uid-1", controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": "kubeloop.io/v1alpha1", "kind": kind, "name": name, "uid": uid, "controller": controller}


def obj(refs: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "churn"}
    if refs is not None:
        meta["ownerReferences"] = refs
    if labels is not None:
        meta["labels"] = labels
    return {"metadata": meta}


TABLE = [
    # (existing object, owned?, words the conflict message must contain)
    (None, True, ""),
    (obj([ref()]), True, ""),
    (obj([ref()], labels={"app": "web"}), True, ""),
    (obj(), False, "no controller owner reference"),
    (obj(labels={"app": "web"}), False, "no controller owner reference"),
    # Where owner references are used, labels (writable by whoever creates the object) never count.
    (obj(labels=MINE_LABELS), False, "not managed by"),
    (obj([ref(uid="uid-0")]), False, "earlier ModelDeployment named churn"),
    (obj([ref(kind="Deployment", name="web", uid="uid-9")]), False, "controlled by Deployment web"),
    # A controller reference to someone else wins over our labels.
    (obj([ref(kind="Deployment", name="web", uid="uid-9")], labels=MINE_LABELS), False, "controlled by"),
    # A non-controller reference to us is not ownership.
    (obj([ref(controller=False)]), False, "not managed by"),
    (obj([ref(kind="TrainingRun", uid="uid-1")]), False, "controlled by TrainingRun churn"),
]


@pytest.mark.parametrize(("existing", "owned", "words"), TABLE)
def test_ownership_table(existing: dict[str, Any] | None, owned: bool, words: str) -> None:
    message = conflict("Service", "churn", existing, OWNER)
    assert (message is None) is owned
    if existing is not None:
        assert owned_by(existing, OWNER) is owned
    if message is not None:
        assert message.startswith("Service churn already exists and ")
        assert words in message
        assert "leaves it unchanged" in message


LABELLED = Owner("ModelDeployment", "churn", "uid-1", "kubeloop.io/modeldeployment", by_reference=False)


@pytest.mark.parametrize(("existing", "owned"), [
    (obj(labels=MINE_LABELS), True),
    (obj([ref()]), True),
    (obj(labels={"kubeloop.io/modeldeployment": "churn"}), False),  # the label alone
    (obj(labels={**MINE_LABELS, "kubeloop.io/modeldeployment": "other"}), False),
    (obj([ref(kind="Deployment", name="web", uid="uid-9")], labels=MINE_LABELS), False),
    (obj(), False),
])
def test_labels_mark_children_only_where_references_are_not_used(existing: dict[str, Any], owned: bool) -> None:
    assert (conflict("Service", "churn", existing, LABELLED) is None) is owned


def test_an_owner_without_uid_owns_nothing_by_reference() -> None:
    assert conflict("Service", "churn", obj([ref(uid="")]), Owner("ModelDeployment", "churn", "", "x")) is not None


def test_conflicts_lists_every_colliding_target_in_order() -> None:
    targets = {
        ("Service", "churn"): obj(),
        ("Deployment", "churn-stable"): obj([ref()]),
        ("HorizontalPodAutoscaler", "churn"): obj(labels={"app": "web"}),
        ("Service", "churn-canary"): None,
    }
    found = conflicts(targets, OWNER)
    assert [m.split(" already")[0] for m in found] == ["Service churn", "HorizontalPodAutoscaler churn"]


def test_trainingrun_with_a_foreign_job_waits_without_creating_or_adopting() -> None:
    settings = TrainerSettings(
        image="kubeloop:test", image_pull_policy="Never", default_storage_uri="file:///m",
        allowed_estimator_prefixes=("sklearn.",), job_ttl_seconds=60,
    )
    run = {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": "churn-1", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {"model": {"name": "churn", "estimator": "sklearn.linear_model.LogisticRegression",
                           "task": "classification"}, "data": {"source": "sklearn://breast_cancer"}},
    }
    message = "Job churn-1-train already exists and it is not managed by TrainingRun churn-1"
    now = datetime(2030, 1, 1, tzinfo=UTC)
    decision = tr_decide.decide(run, tr_decide.Observed(conflict=message), settings, now)
    assert decision.create_job is None
    assert decision.status["phase"] == "Pending"
    ready = next(c for c in decision.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "ResourceConflict", message)
    assert [e.reason for e in decision.events] == ["ResourceConflict"]
    again = tr_decide.decide({**run, "status": decision.status}, tr_decide.Observed(conflict=message), settings, now)
    assert again.events == [] and again.create_job is None
    # Once the foreign Job is gone, the run gets its own Job.
    freed = tr_decide.decide({**run, "status": decision.status}, tr_decide.Observed(), settings, now)
    assert freed.create_job is not None
