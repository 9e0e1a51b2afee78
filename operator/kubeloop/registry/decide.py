"""Pure decisions about the MLflow registry: no I/O, no kopf, no kubernetes.

* :func:`resolve_version` - what a ModelDeployment's ``spec.model.registry`` source serves,
  given the model version MLflow returned (or why it cannot be served);
* :func:`alias_moves` - which aliases (``champion``, ``challenger``) to set or delete so the
  registry says what the ModelDeployment serves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeloop.registry import tags
from kubeloop.trust.urls import registry_model_uri_problem

REGISTRY_UNAVAILABLE = "RegistryUnavailable"
"""Condition reason: MLflow cannot be reached; the rollout waits and nothing changes."""
REGISTRY_VERSION_NOT_FOUND = "RegistryVersionNotFound"
"""Condition reason: the alias or version named does not exist (yet)."""
REGISTRY_VERSION_REFUSED = "RegistryVersionRefused"
"""Condition reason: the version exists but Kubeloop cannot serve it (no sha256 tag, bad URI)."""
TRACKING_FAILED = "TrackingFailed"
"""Condition type/reason on a TrainingRun: MLflow logging or registration failed."""

_SHA256 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Resolution:
    """What a registry source resolved to: a model (uri, sha256, version) or a problem.

    ``waiting`` problems (the registry is down, the alias not set yet) keep what is served and
    look again; the others need a person (condition reason and message say what to fix)."""

    uri: str | None = None
    sha256: str | None = None
    version: str | None = None
    reason: str | None = None
    message: str | None = None
    waiting: bool = False

    @property
    def resolved(self) -> bool:
        return self.reason is None


def describe_source(source: Mapping[str, Any]) -> str:
    """``name@alias`` or ``name/version``, as the user wrote spec.model.registry."""
    name = str(source.get("name", ""))
    if source.get("alias"):
        return f"{name}@{source['alias']}"
    return f"{name}/{source.get('version')}"


def unavailable(source: Mapping[str, Any], error: str) -> Resolution:
    return Resolution(
        reason=REGISTRY_UNAVAILABLE,
        message=(
            f"cannot resolve spec.model.registry {describe_source(source)}: {error}; the "
            "rollout waits (what is served stays) and resumes when MLflow answers"
        ),
        waiting=True,
    )


def resolve_version(source: Mapping[str, Any], version: Mapping[str, Any] | None) -> Resolution:
    """The model a registry source serves, from the model version MLflow returned (None: no
    such alias or version)."""
    where = f"spec.model.registry {describe_source(source)}"
    if version is None:
        what = (
            f"alias {source['alias']!r} is not set on registered model {source.get('name')!r}"
            if source.get("alias")
            else f"registered model {source.get('name')!r} has no version {source.get('version')}"
        )
        return Resolution(
            reason=REGISTRY_VERSION_NOT_FOUND,
            message=f"{where}: {what}; set it in MLflow or point spec.model elsewhere",
            waiting=True,
        )
    number = str(version.get("version", ""))
    version_tags = {str(t.get("key")): str(t.get("value", "")) for t in version.get("tags") or []}
    sha256 = version_tags.get(tags.SHA256, "").strip()
    if not sha256:
        return Resolution(
            reason=REGISTRY_VERSION_REFUSED,
            message=(
                f"{where} is version {number}, which has no {tags.SHA256} tag: Kubeloop serves "
                "only models whose checksum it recorded (versions registered by a TrainingRun); "
                f"register the model with a TrainingRun, or tag the version {tags.SHA256}"
            ),
            version=number,
        )
    if not _SHA256.match(sha256):
        return Resolution(
            reason=REGISTRY_VERSION_REFUSED,
            message=(
                f"{where} is version {number}, whose {tags.SHA256} tag is not a SHA-256 digest "
                "(64 lowercase hexadecimal digits)"
            ),
            version=number,
        )
    uri = version_tags.get(tags.MODEL_URI) or str(version.get("source") or "")
    problem = registry_model_uri_problem(uri)
    if problem is not None:
        return Resolution(
            reason=REGISTRY_VERSION_REFUSED,
            message=f"{where} is version {number}, whose model URI {problem}",
            version=number,
        )
    return Resolution(uri=uri, sha256=sha256, version=number)


@dataclass(frozen=True)
class AliasMove:
    """Set ``alias`` to ``version`` (or delete it when ``version`` is None)."""

    alias: str
    version: str | None


@dataclass(frozen=True)
class AliasPlan:
    moves: list[AliasMove] = field(default_factory=list)
    record: dict[str, str] = field(default_factory=dict)
    """What to remember in status.registry once the moves are done."""


def alias_moves(
    model_name: str | None,
    recorded: Mapping[str, Any] | None,
    stable_version: str | None,
    canary_version: str | None,
) -> AliasPlan:
    """The alias moves that make the registry match the deployment: ``champion`` on the stable
    version, ``challenger`` on the canary's (deleted when no canary runs, after a promotion or
    an abort). Only what differs from ``recorded`` (what this deployment set last) moves, so a
    settled deployment makes no calls; a version that is not registered moves nothing."""
    if not model_name:
        return AliasPlan()
    before = dict(recorded or {})
    if before.get("model") != model_name:
        before = {}
    record: dict[str, str] = {"model": model_name}
    moves: list[AliasMove] = []
    champion = stable_version or before.get(tags.CHAMPION)
    if champion:
        record[tags.CHAMPION] = str(champion)
        if champion != before.get(tags.CHAMPION):
            moves.append(AliasMove(tags.CHAMPION, str(champion)))
    if canary_version and canary_version != stable_version:
        record[tags.CHALLENGER] = canary_version
        if canary_version != before.get(tags.CHALLENGER):
            moves.append(AliasMove(tags.CHALLENGER, canary_version))
    elif before.get(tags.CHALLENGER):
        moves.append(AliasMove(tags.CHALLENGER, None))
    return AliasPlan(moves, record)
