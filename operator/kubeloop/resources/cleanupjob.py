"""The cleanup Job of a deleted TrainingRun (``cleanupPolicy: Delete``): ``kubeloop artifacts delete``.

Built like the training Job (:mod:`kubeloop.resources.trainingjob`): the same image setting,
the restricted pod security, the run's placement, its storage mounted writable the way the
trainer had it and its credentials Secret. It carries the run's label, so the controller's Job
and pod events map back to the run, but no owner reference: the run is being deleted, and the
garbage collector would race the Job it waits for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeloop.resources.meta import child_name, labels_for
from kubeloop.resources.storage import PodStorage
from kubeloop.resources.trainingjob import (
    TERMINATION_LOG,
    TrainerSettings,
    credentials_env_from,
    output_root_uri,
    run_directory_uri,
    runtime_container,
    runtime_pod_spec,
    scratch_volume,
)

CLEANUP_CONTAINER = "cleanup"
CLEANUP_COMPONENT = "artifact-cleanup"
CLEANUP_TTL_SECONDS = 300
# `kubeloop artifacts delete` exit code for "not a run directory": no retry can change it.
EXIT_REFUSED = 2


def cleanup_job_name(run_name: str) -> str:
    return child_name(run_name, "cleanup")


def build_cleanup_job(run: Mapping[str, Any], settings: TrainerSettings) -> dict[str, Any]:
    """The Job that deletes ``<storageUri>/<model>/<run>/`` (wire form in, wire form out)."""
    meta = run["metadata"]
    spec: Mapping[str, Any] = run["spec"]
    storage = PodStorage()
    directory = storage.resolve(
        run_directory_uri(run, settings), read_only=False,
        models_pvc=settings.models_pvc, models_root=settings.default_storage_uri,
    )
    # The root too, so the command deletes exactly <root>/<model>/<run> and nothing a '..' reaches.
    root = storage.resolve(
        output_root_uri(spec, settings), read_only=False,
        models_pvc=settings.models_pvc, models_root=settings.default_storage_uri,
    )
    scratch, scratch_mount = scratch_volume()
    container = runtime_container(
        CLEANUP_CONTAINER,
        ["artifacts", "delete", directory, "--storage-root", root, "--termination-log", TERMINATION_LOG],
        settings,
        [scratch_mount, *storage.mounts],
        env_from=credentials_env_from(spec),
        resources={"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    )
    labels = labels_for("trainingrun", meta["name"], CLEANUP_COMPONENT, model=spec["model"]["name"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": cleanup_job_name(meta["name"]), "namespace": meta["namespace"], "labels": labels},
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": CLEANUP_TTL_SECONDS,
            "template": {
                "metadata": {"labels": {**dict(settings.pod_labels), **labels}},
                "spec": runtime_pod_spec(spec, container, [scratch, *storage.volumes]),
            },
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CLEANUP_CONTAINER, "operator": "In", "values": [EXIT_REFUSED],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
        },
    }
