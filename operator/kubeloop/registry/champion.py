"""The registry's champion, as a retrain is judged against it (issue 17).

A TrainingRun with ``compareTo: champion`` whose ``championRef`` is a ModelDeployment serving
from ``spec.model.registry`` is judged against the version the registry's ``champion`` alias
names (what the team calls champion in MLflow), resolved by :func:`kubeloop.registry.decide.
resolve_version` like any registry source: its URI **and** sha256 tag. A DriftPolicy asks the
same question before it creates a retrain, so an unreachable MLflow makes the retrain wait
instead of creating a run that cannot be judged.

One blocking REST call with the client's short timeout; controllers call it from their workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeloop.registry import decide, tags
from kubeloop.registry.client import MlflowClient, RegistryError


def champion_source(deployment: Mapping[str, Any] | None) -> dict[str, str] | None:
    """``{name, alias: champion}`` for a ModelDeployment serving from the registry, else None.
    Pure."""
    if deployment is None:
        return None
    registry = ((deployment.get("spec") or {}).get("model") or {}).get("registry") or {}
    if not registry.get("name"):
        return None
    return {"name": str(registry["name"]), "alias": tags.CHAMPION}


def resolve_champion(client: MlflowClient, source: Mapping[str, Any]) -> decide.Resolution:
    """The version the ``champion`` alias names now, or why it cannot be used
    (``REGISTRY_UNAVAILABLE`` when MLflow does not answer)."""
    try:
        version = client.version_by_alias(str(source["name"]), str(source["alias"]))
    except RegistryError as error:
        return decide.Resolution(
            reason=decide.REGISTRY_UNAVAILABLE,
            message=(
                f"cannot read the champion of registered model {source['name']!r} "
                f"({decide.describe_source(source)}) from MLflow: {error}; the retrain waits "
                "and is created when MLflow answers"
            ),
            waiting=True,
        )
    return decide.resolve_version(source, version)


def champion_label(source: Mapping[str, Any], resolution: decide.Resolution) -> str:
    """Where the champion came from, as status.champion.source says it."""
    return f"MLflow {decide.describe_source(source)} (version {resolution.version})"
