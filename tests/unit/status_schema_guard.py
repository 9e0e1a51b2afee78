"""Every status a decide() function returns in the unit tests must fit its CRD's status schema.

The API server prunes fields a structural schema does not declare, silently: a status field the
decision writes but the schema lacks is lost on every write (and, since the next decision
differs from what was stored, possibly rewritten on every reconcile). DriftPolicy's
``status.lastRetrain.message`` was such a field: written by every retrain, never stored. The CRDs
are generated from the pydantic models, so validating against the status model is validating
against what the API server keeps.

Installed by ``tests/unit/conftest.py`` before any test module imports ``decide``: each call is
checked and a status with an undeclared or ill-typed field fails the test that produced it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

import kubeloop.decide.driftpolicy
import kubeloop.decide.modeldeployment
import kubeloop.decide.trainingrun
from kubeloop.api.driftpolicy import DriftPolicyStatus
from kubeloop.api.modeldeployment import ModelDeploymentStatus
from kubeloop.api.trainingrun import TrainingRunStatus

GUARDED: tuple[tuple[ModuleType, type[BaseModel]], ...] = (
    (kubeloop.decide.driftpolicy, DriftPolicyStatus),
    (kubeloop.decide.modeldeployment, ModelDeploymentStatus),
    (kubeloop.decide.trainingrun, TrainingRunStatus),
)


def status_problems(model: type[BaseModel], status: dict[str, Any]) -> list[str]:
    """``path: problem`` for each field of ``status`` the schema would not keep as written."""
    try:
        model.model_validate(status)
    except ValidationError as error:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    return []


def checked(decide: Callable[..., Any], model: type[BaseModel]) -> Callable[..., Any]:
    @functools.wraps(decide)
    def decide_and_check(*args: Any, **kwargs: Any) -> Any:
        decision = decide(*args, **kwargs)
        status = getattr(decision, "status", None)
        if isinstance(status, dict):
            problems = status_problems(model, status)
            assert not problems, (
                f"{decide.__module__}.decide wrote a status the API server would not keep "
                f"({model.__name__}): {'; '.join(problems)}"
            )
        return decision

    decide_and_check.__wrapped_by_status_guard__ = True  # type: ignore[attr-defined]
    return decide_and_check


def install() -> None:
    for module, model in GUARDED:
        if not getattr(module.decide, "__wrapped_by_status_guard__", False):
            module.decide = checked(module.decide, model)  # type: ignore[attr-defined]
