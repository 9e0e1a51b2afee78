"""The Job of a dataset drift check: ``kubeloop drift`` on a dataset against the model's profile.

Besides its result (the termination message the operator reads), the check writes a
self-contained HTML report (``kubeloop drift --html``) beside the profile it checked against:
``<directory of profile.json>/drift/<policy>/<due epoch>/report.html``, on the same storage and
with the same credentials that read the profile. The Job's annotation
``kubeloop.io/drift-report`` holds that URI. On a mounted claim the profile stays read-only;
only the report's own directory is mounted writable (a ``subPath`` of the same claim), so a
check can never alter a model.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import orjson

from kubeloop.resources.meta import child_name, labels_for, owner_reference
from kubeloop.resources.storage import PodStorage
from kubeloop.resources.trainingjob import (
    SCRATCH_DIR,
    TERMINATION_LOG,
    TrainerSettings,
    credentials_env_from,
    data_roots_env,
    runtime_container,
    runtime_pod_spec,
    scratch_volume,
)
from kubeloop.trust.run_directory import DRIFT_REPORT_FILE, drift_report_path

CHECK_CONTAINER = "drift"
REPORT_ANNOTATION = "kubeloop.io/drift-report"
REPORT_FILE = DRIFT_REPORT_FILE  # the cleanup of a TrainingRun knows it (kubeloop.trust.run_directory)


def drift_job_name(policy_name: str, due_epoch: int) -> str:
    """One name per due check, so a repeat after a crash finds the same Job."""
    return child_name(policy_name, f"check-{due_epoch}")


def drift_report_uri(profile_uri: str, policy_name: str, due_epoch: int) -> str:
    """Where the check due at ``due_epoch`` writes its HTML report: beside the profile."""
    return drift_report_path(profile_uri.rstrip("/").rpartition("/")[0], policy_name, due_epoch)


def _writable_report_mount(storage: PodStorage, pod_report_path: str) -> dict[str, Any] | None:
    """A writable mount of only the report's directory, when it lies on a mounted claim."""
    if "://" in pod_report_path:
        return None  # object storage: written through the API with the pod's credentials
    directory = posixpath.dirname(pod_report_path)
    for mount in sorted(storage.mounts, key=lambda m: len(str(m["mountPath"])), reverse=True):
        root = str(mount["mountPath"]).rstrip("/")
        if directory.startswith(root + "/"):
            return {
                "name": mount["name"],
                "mountPath": directory,
                "subPath": directory.removeprefix(root + "/"),
                "readOnly": False,
            }
    return None


def build_drift_job(
    policy: Mapping[str, Any],
    due_epoch: int,
    profile_uri: str,
    config_json: Mapping[str, Any],
    settings: TrainerSettings,
) -> dict[str, Any]:
    meta = policy["metadata"]
    dataset = policy["spec"]["source"]["dataset"]
    storage = PodStorage()

    def resolve(uri: str) -> str:
        return storage.resolve(
            uri,
            read_only=True,
            models_pvc=settings.models_pvc,
            models_root=settings.default_storage_uri,
        )

    data_uri, pod_profile_uri = resolve(dataset["uri"]), resolve(profile_uri)
    report_uri = drift_report_uri(profile_uri, meta["name"], due_epoch)
    pod_report = resolve(report_uri)
    args = [
        "drift",
        "--data",
        data_uri,
        "--profile",
        pod_profile_uri,
        "--config",
        orjson.dumps(config_json).decode(),
        "--termination-log",
        TERMINATION_LOG,
        "--html",
        pod_report.removeprefix("file://"),
        "--title",
        f"DriftPolicy {meta['namespace']}/{meta['name']}: dataset check",
    ]
    if dataset.get("format"):
        args += ["--format", dataset["format"]]
    if policy["spec"].get("features"):
        args += ["--features", ",".join(policy["spec"]["features"])]
    scratch, scratch_mount = scratch_volume()
    report_mount = _writable_report_mount(storage, pod_report.removeprefix("file://"))
    mounts = [scratch_mount, *storage.mounts, *([report_mount] if report_mount else [])]
    container = runtime_container(
        CHECK_CONTAINER,
        args,
        settings,
        mounts,
        env=[{"name": "HOME", "value": SCRATCH_DIR}, data_roots_env(storage, settings)],
        env_from=credentials_env_from(dataset),
    )
    labels = labels_for("driftpolicy", meta["name"], "drift-check")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": drift_job_name(meta["name"], due_epoch),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {REPORT_ANNOTATION: report_uri},
            "ownerReferences": [owner_reference(policy)],
        },
        "spec": {
            "backoffLimit": 1,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": {**dict(settings.pod_labels), **labels}},
                "spec": runtime_pod_spec({}, container, [scratch, *storage.volumes]),
            },
        },
    }
