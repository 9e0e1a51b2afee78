"""The chart's ValidatingAdmissionPolicy (templates/admission-policy.yaml) as ``helm template``
renders it: on by default, off with ``admissionPolicy.enabled: false``, and checking every
place the API models name a Secret, a ``pvc://`` claim or a ServiceAccount the pods run as. The
list of places is derived from the pydantic models (every ``Credentials`` field, every URI type
that accepts ``pvc://``, every ``serviceAccountName``), so a new reference in the API fails here
until the policy checks it.

That the policy refuses and admits the right requests on a real API server is shown by
tests/security/test_admission_attacks.py.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from test_chart_support import by_kind, helm, one, render, template_args

from kubeloop.api.common import Credentials, Matches
from kubeloop.api.driftpolicy import DriftPolicySpec
from kubeloop.api.modeldeployment import ModelDeploymentSpec, ServerAuth
from kubeloop.api.trainingrun import TrainingRunSpec

KINDS = {"TrainingRun": TrainingRunSpec, "ModelDeployment": ModelDeploymentSpec, "DriftPolicy": DriftPolicySpec}
# Free-form fields merged over a TrainingRun spec (retrain.overrides): the run's references
# are also references there.
FREE_FORM_RUN_SPECS = ("spec.retrain.overrides",)


def _models(annotation: Any) -> Iterator[Any]:
    """The classes and Annotated metadata inside a field's type (Optional, Annotated, lists)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        yield from metadata
        yield from _models(base)
    elif origin in (typing.Union, types.UnionType, list, dict):
        for arg in typing.get_args(annotation):
            yield from _models(arg)
    else:
        yield annotation


def references(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str]]:
    """(field path as users write it, "Secret", "PersistentVolumeClaim" or "ServiceAccount") of
    every reference."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}"
        parts = [*field.metadata, *_models(field.annotation)]
        if (field.alias or name) == "serviceAccountName":
            yield path, "ServiceAccount"
            continue
        if Credentials in parts or ServerAuth in parts:
            yield f"{path}.secretRef", "Secret"
            continue
        if any(isinstance(p, Matches) and "pvc" in p.pattern for p in parts):
            yield path, "PersistentVolumeClaim"
            continue
        for part in parts:
            if isinstance(part, type) and issubclass(part, BaseModel):
                yield from references(part, path)


def expected_references() -> set[tuple[str, str]]:
    found = {ref for spec in KINDS.values() for ref in references(spec, "spec")}
    for free_form in FREE_FORM_RUN_SPECS:
        found |= {(free_form + path.removeprefix("spec"), kind) for path, kind in references(TrainingRunSpec, "spec")}
    return found


MESSAGE = re.compile(r"""^'(?P<field>[\w.]+): user "' \+ variables\.user \+ '" may not get (?P<kind>Secret|PersistentVolumeClaim|ServiceAccount) "'""")
RESOURCES = {"Secret": "secrets", "PersistentVolumeClaim": "persistentvolumeclaims", "ServiceAccount": "serviceaccounts"}


COPY = re.compile(r"""^'spec\.retrain\.fromTrainingRun: user "' \+ variables\.user \+ '" may not get every (?P<kind>Secret|PersistentVolumeClaim)\s""")


def checked_references(policy: dict[str, Any]) -> set[tuple[str, str]]:
    found = set()
    for validation in policy["spec"]["validations"]:
        copy = COPY.match(validation["messageExpression"])
        if copy:
            # Checked below: any name (no .name(...)), for a DriftPolicy copying a run.
            assert "variables.copiedRun == ''" in validation["expression"]
            assert ".name(" not in validation["expression"]
            found.add(("spec.retrain.fromTrainingRun", copy["kind"]))
            continue
        match = MESSAGE.match(validation["messageExpression"])
        assert match, validation["messageExpression"]
        resource = RESOURCES[match["kind"]]
        # One authorizer check per expression (each costs 350,000 of 1,000,000), for `get`.
        assert validation["expression"].count("authorizer.") == 1
        assert f".resource('{resource}')" in validation["expression"] and ".check('get')" in validation["expression"]
        found.add((match["field"], match["kind"]))
    return found


def test_the_policy_is_on_by_default_for_the_three_kinds(tmp_path: Path) -> None:
    docs = render(tmp_path)
    policy = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["kubeloop.io"] and sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    assert sorted(rule["resources"]) == ["driftpolicies", "modeldeployments", "trainingruns"]


def test_every_secret_and_claim_the_api_can_name_is_checked(tmp_path: Path) -> None:
    expected = expected_references()
    # The derivation finds what the issue lists (a sanity check on the walker itself).
    assert {
        ("spec.credentials.secretRef", "Secret"), ("spec.data.source", "PersistentVolumeClaim"),
        ("spec.model.storageUri", "PersistentVolumeClaim"), ("spec.source.dataset.uri", "PersistentVolumeClaim"),
        ("spec.retrain.template.spec.credentials.secretRef", "Secret"),
        ("spec.server.serviceAccountName", "ServiceAccount"),
    } <= expected
    assert len(expected) == 18  # + spec.tracking.credentials in a run, a template, overrides
    checked = checked_references(one(render(tmp_path), "ValidatingAdmissionPolicy"))
    # A DriftPolicy copying a TrainingRun (fromTrainingRun) names whatever that run names: its
    # author must be able to read every Secret and claim.
    copies = {("spec.retrain.fromTrainingRun", "Secret"), ("spec.retrain.fromTrainingRun", "PersistentVolumeClaim")}
    assert checked == expected | copies


def test_only_the_releases_own_service_account_is_exempt(tmp_path: Path) -> None:
    docs = render(tmp_path, {"serviceAccount": {"create": True, "name": "ml-operator"}}, namespace="ml-system")
    conditions = {c["name"]: c["expression"] for c in one(docs, "ValidatingAdmissionPolicy")["spec"]["matchConditions"]}
    assert conditions["not-the-operator"] == "request.userInfo.username != 'system:serviceaccount:ml-system:ml-operator'"
    assert "request.operation == 'CREATE'" in conditions["spec-is-new-or-changed"]


def test_the_value_switches_it_off(tmp_path: Path) -> None:
    docs = render(tmp_path, {"admissionPolicy": {"enabled": False}})
    assert not by_kind(docs, "ValidatingAdmissionPolicy")
    assert not by_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert by_kind(docs, "Deployment")  # the rest of the chart is still there


def test_with_watch_namespaces_it_binds_only_those(tmp_path: Path) -> None:
    docs = render(tmp_path, {"watchNamespaces": ["ml-a", "ml-b"]})
    selector = one(docs, "ValidatingAdmissionPolicyBinding")["spec"]["matchResources"]["namespaceSelector"]
    assert selector == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml-a", "ml-b"]}]
    }


@pytest.mark.parametrize("value", ["yes", 1])
def test_a_bad_value_is_refused_naming_it(tmp_path: Path, value: Any) -> None:
    proc = helm(*template_args({"admissionPolicy": {"enabled": value}}, values_file=tmp_path / "v.json"), check=False)
    assert proc.returncode != 0 and "admissionPolicy" in proc.stderr and "enabled" in proc.stderr, proc.stderr


@pytest.mark.parametrize("values", [{"admissionPolicy": {"enabled": None}}, {"admissionPolicy": None}])
def test_a_null_does_not_switch_it_off(tmp_path: Path, values: dict[str, Any]) -> None:
    # Helm reads null as "drop the default"; only an explicit false turns the policy off.
    assert by_kind(render(tmp_path, values), "ValidatingAdmissionPolicy")
