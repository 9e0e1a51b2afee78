"""Patches that change which model a ModelDeployment serves. Pure: no I/O.

``spec.model`` names exactly one source - ``trainingRunRef``, ``storageUri`` (with
``sha256``) or ``registry`` - and the CRD refuses an object with two. A JSON merge patch keeps
every field it does not mention, so a patch that sets one source must delete (``null``) the
others: :func:`model_source_patch` is the only place that knows the list. Its users: undo
(``kubectl kubeloop undo`` and the dashboard's Undo button, :func:`undo_patch`) and a
DriftPolicy's autoPromote (:func:`kubeloop.decide.driftpolicy.promotion_patch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The fields of spec.model that name the model; a patch setting one deletes the others.
SOURCE_FIELDS = ("trainingRunRef", "storageUri", "sha256", "registry")


def model_source_patch(source: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that makes ``source`` (some of :data:`SOURCE_FIELDS`) the model of a
    ModelDeployment: the other source fields are deleted, the rest of spec.model (credentials)
    stays. A ``registry`` source replaces the old one whole (an alias and a version exclude each
    other)."""
    unknown = set(source) - set(SOURCE_FIELDS)
    if unknown:
        raise ValueError(f"not a model source field: {', '.join(sorted(unknown))}")
    model: dict[str, Any] = {field: None for field in SOURCE_FIELDS}
    model.update(source)
    registry = source.get("registry")
    if registry is not None:
        model["registry"] = {"alias": None, "version": None, **registry}
    return {"spec": {"model": model}}


@dataclass(frozen=True)
class Undo:
    """What undo sends, and the previous model in words."""

    patch: dict[str, Any]
    what: str


def undo_patch(md: Mapping[str, Any]) -> Undo | None:
    """The patch that points a ModelDeployment back at ``status.previous`` (None: there is no
    previous model to go back to).

    A model that came from the MLflow registry goes back as ``registry {name, version}`` - the
    version it was, pinned: the alias it was served by may have moved on since (it usually
    names the model being undone); set the alias again to follow it. Otherwise the TrainingRun
    that produced it, else its URI and sha256 (an older status.previous, written before it kept
    registry versions, is undone that way too, and the deployment leaves the registry)."""
    previous = (md.get("status") or {}).get("previous") or {}
    registry = previous.get("registry") or {}
    if registry.get("name") and registry.get("version"):
        pinned = {"name": str(registry["name"]), "version": int(registry["version"])}
        return Undo(
            model_source_patch({"registry": pinned}),
            f"MLflow registry {pinned['name']} version {pinned['version']}",
        )
    if previous.get("trainingRun"):
        return Undo(
            model_source_patch({"trainingRunRef": {"name": previous["trainingRun"]}}),
            f"TrainingRun {previous['trainingRun']}",
        )
    if previous.get("uri") and previous.get("sha256"):
        return Undo(
            model_source_patch({"storageUri": previous["uri"], "sha256": previous["sha256"]}),
            f"{previous['uri']} (sha256 {previous['sha256'][:12]})",
        )
    return None


def describe_previous(previous: Mapping[str, Any] | None) -> str:
    """status.previous in a few words, for status views: the registry version, else the
    TrainingRun, else the start of the sha256 ('' when there is none)."""
    previous = previous or {}
    registry = previous.get("registry") or {}
    if registry.get("name") and registry.get("version"):
        return f"{registry['name']} version {registry['version']}"
    return str(previous.get("trainingRun") or (previous.get("sha256") or "")[:12])
