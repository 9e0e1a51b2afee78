"""How storage URIs become what a runtime pod sees: volumes, mounts and rewritten URIs.

``pvc://<claim>/<path>`` is not a scheme fsspec knows; the claim is mounted into the pod and
the URI becomes a local path. ``file://`` roots are shared through ``models_pvc`` when the
operator is configured with one (otherwise they are node-local, which only suits one node).
Object-store URIs (``s3://``, ``gs://``, ``https://``) pass through untouched.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

PVC_MOUNT_ROOT = "/mnt/pvc"


@dataclass
class PodStorage:
    """Volumes and mounts a pod needs to reach a set of storage URIs."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)

    def _add_claim(self, claim: str, mount_path: str, read_only: bool) -> None:
        volume_name = f"pvc-{claim}"[:63]
        if not any(v["name"] == volume_name for v in self.volumes):
            self.volumes.append(
                {"name": volume_name, "persistentVolumeClaim": {"claimName": claim}}
            )
        # One volume per claim, one mount per (claim, path): the models claim named by a
        # pvc:// data URI is also mounted at the storage root (a retrain reading pvc:// data
        # from the models claim found no champion under the root).
        existing = next(
            (m for m in self.mounts if m["name"] == volume_name and m["mountPath"] == mount_path),
            None,
        )
        if existing is not None:
            # It stays writable if any user of it needs to write.
            existing["readOnly"] = existing["readOnly"] and read_only
            return
        self.mounts.append({"name": volume_name, "mountPath": mount_path, "readOnly": read_only})

    def resolve(
        self, uri: str, *, read_only: bool, models_pvc: str = "", models_root: str = ""
    ) -> str:
        """The URI as the pod should use it, adding what the pod must mount to reach it."""
        if uri.startswith("pvc://"):
            claim, _, path = uri.removeprefix("pvc://").partition("/")
            mount_path = f"{PVC_MOUNT_ROOT}/{claim}"
            self._add_claim(claim, mount_path, read_only)
            return f"{mount_path}/{path}" if path else mount_path
        root = _local_path(models_root)
        if models_pvc and root and _is_at_or_below(_local_path(uri), root):
            self._add_claim(models_pvc, root, read_only)
        return uri

    def data_roots(self, models_root: str = "") -> list[str]:
        """Where the pod may read local data: every mounted claim and the storage root.

        The runtime gets them as ``KUBELOOP_DATA_ROOTS`` (:mod:`kubeloop.trust.data_paths`);
        ``/`` and paths with ``:`` are never data roots.
        """
        candidates = [str(mount["mountPath"]) for mount in self.mounts]
        candidates.append(_local_path(models_root))
        roots: list[str] = []
        for root in candidates:
            normal = posixpath.normpath(root) if root.startswith("/") else ""
            if normal and normal != "/" and ":" not in normal and normal not in roots:
                roots.append(normal)
        return roots


def _local_path(uri: str) -> str:
    """The normalised local path of a ``file://`` URI or plain path; '' for anything else."""
    if "://" in uri and not uri.startswith("file://"):
        return ""
    path = uri.removeprefix("file://")
    return posixpath.normpath(path) if path.startswith("/") else ""


def _is_at_or_below(path: str, root: str) -> bool:
    # The root itself counts: a run without output.storageUri writes to the root's own
    # <model>/<run> directory, so its pod needs the volume mounted at the root ("/a/b" and
    # "/a/b/" are the same root).
    return bool(path) and (path == root or path.startswith(root.rstrip("/") + "/"))
