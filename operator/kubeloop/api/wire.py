"""Conversions between API models and the dicts the Kubernetes API sends and receives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from kubeloop.api.driftpolicy import DriftPolicy
from kubeloop.api.modeldeployment import ModelDeployment
from kubeloop.api.trainingrun import TrainingRun

Resource = TrainingRun | ModelDeployment | DriftPolicy

KINDS: dict[str, type[TrainingRun] | type[ModelDeployment] | type[DriftPolicy]] = {
    "TrainingRun": TrainingRun,
    "ModelDeployment": ModelDeployment,
    "DriftPolicy": DriftPolicy,
}


class InvalidResource(ValueError):
    """A resource that does not match its schema; the message names every offending field."""

    def __init__(self, kind: str, problems: list[str]) -> None:
        self.kind = kind
        self.problems = problems
        super().__init__(f"invalid {kind}: " + "; ".join(problems))


def to_wire(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a model as Kubernetes expects it: camelCase, no empty fields."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part.startswith("model-"):
            # pydantic names validator wrappers in locations; they are not fields.
            continue
        else:
            path += f".{part}" if path else part
    return path or "(root)"


def from_wire(kind: str, payload: Mapping[str, Any]) -> Resource:
    """Parse a resource dict (as read from the API server) into its model.

    Raises :class:`InvalidResource` whose message lists each problem as ``field.path: what is
    wrong``, ready for a condition message or an Event.
    """
    try:
        model = KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown kind {kind!r}: expected one of {', '.join(sorted(KINDS))}"
        ) from None
    try:
        return model.model_validate(dict(payload))
    except ValidationError as error:
        problems = [
            f"{_field_path(detail['loc'])}: {detail['msg'].removeprefix('Value error, ')}"
            for detail in error.errors()
        ]
        raise InvalidResource(kind, problems) from None
