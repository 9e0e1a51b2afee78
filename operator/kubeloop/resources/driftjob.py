"""The Job of a dataset drift check: ``kubeloop drift`` on a dataset against the model's profile."""

from __future__ import annotations

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

CHECK_CONTAINER = "drift"


def drift_job_name(policy_name: str, due_epoch: int) -> str:
    """One name per due check, so a repeat after a crash finds the same Job."""
    return child_name(policy_name, f"check-{due_epoch}")


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
            uri, read_only=True, models_pvc=settings.models_pvc, models_root=settings.default_storage_uri
        )

    args = [
        "drift",
        "--data", resolve(dataset["uri"]),
        "--profile", resolve(profile_uri),
        "--config", orjson.dumps(config_json).decode(),
        "--termination-log", TERMINATION_LOG,
    ]
    if dataset.get("format"):
        args += ["--format", dataset["format"]]
    if policy["spec"].get("features"):
        args += ["--features", ",".join(policy["spec"]["features"])]
    scratch, scratch_mount = scratch_volume()
    container = runtime_container(
        CHECK_CONTAINER, args, settings, [scratch_mount, *storage.mounts],
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
