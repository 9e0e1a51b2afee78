"""The training Job of a TrainingRun: one pod (or one Indexed pod per sweep trial) running ``kubeloop train``."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kubeloop.resources.meta import child_name, labels_for, owner_reference
from kubeloop.resources.storage import PodStorage
from kubeloop.trust.data_paths import ENV_DATA_ROOTS, encode_roots
from kubeloop.trust.pod_env import pinned_env

TRAINER_CONTAINER = "trainer"
TERMINATION_LOG = "/dev/termination-log"
TRAINING_COMPONENT = "training"
SCRATCH_DIR = "/tmp"
RUNTIME_UID = 10001

# Exit codes of `kubeloop train` (kubeloop.training.result, which this builder does not import;
# a unit test holds the two together). 2, 3 and 4 are final: the same spec on the same data
# gives the same answer, so the Job fails on the first such pod instead of retrying it
# backoffLimit times. 5 (data or storage out of reach) and crashes are retried.
EXIT_DATA_VALIDATION = 2  # a validation rule failed: the data says no
EXIT_GATE = 3  # the model missed its gate: a retrain on the same data misses it again
EXIT_TRAINING = 4  # spec invalid or refused by policy, the fit raised, the champion is unusable
EXIT_UNAVAILABLE = 5  # data, storage or the champion's storage could not be reached: retried
FINAL_EXIT_CODES = (EXIT_DATA_VALIDATION, EXIT_GATE, EXIT_TRAINING)


@dataclass(frozen=True)
class TrainerSettings:
    """What the operator's configuration contributes to every training Job."""

    image: str
    image_pull_policy: str
    default_storage_uri: str
    allowed_estimator_prefixes: tuple[str, ...]
    job_ttl_seconds: int
    models_pvc: str = ""
    pod_labels: tuple[tuple[str, str], ...] = ()
    allowed_images: tuple[str, ...] = ()
    """Images besides ``image`` a spec may ask for (kubeloop.trust.images)."""


@dataclass(frozen=True)
class Champion:
    """The model a challenger must beat, as the trainer needs it."""

    uri: str
    sha256: str
    source: str  # human-readable: where it was found (ModelDeployment or TrainingRun)


def job_name(run_name: str) -> str:
    return child_name(run_name, "train")


def sweep_combinations(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every parameter combination, in the order the trainer's JOB_COMPLETION_INDEX uses."""
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def restricted_container_security() -> dict[str, Any]:
    """A container security context that passes the `restricted` Pod Security level."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """A writable /tmp on an otherwise read-only root filesystem."""
    return (
        {"name": "scratch", "emptyDir": {"sizeLimit": "2Gi"}},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    )


def output_root_uri(spec: Mapping[str, Any], settings: TrainerSettings) -> str:
    """The run's output root as the user wrote it: spec.output.storageUri, else the default."""
    return str((spec.get("output") or {}).get("storageUri") or settings.default_storage_uri)


def run_directory_uri(run: Mapping[str, Any], settings: TrainerSettings) -> str:
    """``<storageUri>/<model>/<run>``: where `kubeloop train` writes this run ("" without storage)."""
    root = output_root_uri(run["spec"], settings)
    if not root:
        return ""
    return f"{root.rstrip('/')}/{run['spec']['model']['name']}/{run['metadata']['name']}"


def credentials_env_from(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's storage credentials Secret as the container's environment."""
    secret = ((spec.get("credentials") or {}).get("secretRef") or {}).get("name")
    # Credentials travel by reference only; their values never enter the spec or status.
    return [{"secretRef": {"name": secret}}] if secret else []


def data_roots_env(storage: PodStorage, settings: TrainerSettings) -> dict[str, Any]:
    """``KUBELOOP_DATA_ROOTS``: the only places the runtime may read local data from, the
    volumes this pod mounts and the storage root (:mod:`kubeloop.trust.data_paths`). Set in
    ``env``, which Kubernetes lets win over a credentials Secret's key of the same name."""
    return {"name": ENV_DATA_ROOTS, "value": encode_roots(storage.data_roots(settings.default_storage_uri))}


def runtime_container(
    name: str,
    args: list[str],
    settings: TrainerSettings,
    mounts: list[dict[str, Any]],
    *,
    image: str | None = None,
    env: list[dict[str, Any]] | None = None,
    env_from: list[dict[str, Any]] | None = None,
    resources: dict[str, Any] | None = None,
    indexed_job: bool = False,
) -> dict[str, Any]:
    """A ``kubeloop <command>`` container: restricted, its result in the termination message.

    With ``env_from`` (a credentials Secret), ``env`` also pins every variable the Secret may
    not set (:mod:`kubeloop.trust.pod_env`), since an ``env`` entry wins over its keys."""
    env = list(env) if env is not None else [{"name": "HOME", "value": SCRATCH_DIR}]
    container: dict[str, Any] = {
        "name": name,
        "image": image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kubeloop"],
        "args": args,
        "env": env,
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources is not None:
        container["resources"] = resources
    if env_from:
        container["envFrom"] = env_from
        env += pinned_env(env, indexed_job=indexed_job)
    return container


def runtime_pod_spec(
    spec: Mapping[str, Any], container: dict[str, Any], volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    """A run-to-completion pod under the restricted Pod Security level, placed like the run asks."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = spec["nodeSelector"]
    if spec.get("tolerations"):
        pod_spec["tolerations"] = spec["tolerations"]
    return pod_spec


def build_training_job(
    run: Mapping[str, Any], settings: TrainerSettings, champion: Champion | None = None
) -> dict[str, Any]:
    """The Job for a TrainingRun (wire form in, wire form out)."""
    name = run["metadata"]["name"]
    namespace = run["metadata"]["namespace"]
    spec: dict[str, Any] = dict(run["spec"])
    model_name = spec["model"]["name"]

    storage = PodStorage()
    data = dict(spec["data"])
    data["source"] = storage.resolve(data["source"], read_only=True, models_pvc=settings.models_pvc, models_root=settings.default_storage_uri)
    output_uri = output_root_uri(spec, settings)
    output_uri = storage.resolve(output_uri, read_only=False, models_pvc=settings.models_pvc, models_root=settings.default_storage_uri)
    trainer_spec = {**spec, "data": data, "output": {**(spec.get("output") or {}), "storageUri": output_uri}}

    args = [
        "train",
        "--run-name", name,
        "--termination-log", TERMINATION_LOG,
    ]
    if champion is not None:
        champion_uri = storage.resolve(champion.uri, read_only=True, models_pvc=settings.models_pvc, models_root=settings.default_storage_uri)
        args += ["--champion-uri", champion_uri, "--champion-sha256", champion.sha256]

    env = [
        {"name": "KUBELOOP_TRAININGRUN_SPEC", "value": orjson.dumps(trainer_spec).decode()},
        {"name": "KUBELOOP_ALLOWED_ESTIMATOR_PREFIXES", "value": ",".join(settings.allowed_estimator_prefixes)},
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "JOBLIB_TEMP_FOLDER", "value": SCRATCH_DIR},
        data_roots_env(storage, settings),
    ]
    scratch, scratch_mount = scratch_volume()
    container = runtime_container(
        TRAINER_CONTAINER, args, settings, [scratch_mount, *storage.mounts],
        image=spec.get("image"), env=env, env_from=credentials_env_from(spec),
        resources=spec.get("resources") or {}, indexed_job=bool(spec.get("sweep")),
    )

    pod_spec = runtime_pod_spec(spec, container, [scratch, *storage.volumes])

    labels = labels_for("trainingrun", name, TRAINING_COMPONENT, model=model_name)
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.get("backoffLimit", 2),
        "ttlSecondsAfterFinished": spec.get("ttlSecondsAfterFinished", settings.job_ttl_seconds),
        "template": {"metadata": {"labels": {**dict(settings.pod_labels), **labels}}, "spec": pod_spec},
        # A validation, gate or spec failure is final: retrying cannot change the answer.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailIndex" if spec.get("sweep") else "FailJob",
                    "onExitCodes": {
                        "containerName": TRAINER_CONTAINER,
                        "operator": "In",
                        "values": list(FINAL_EXIT_CODES),
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
    }
    if spec.get("activeDeadlineSeconds"):
        job_spec["activeDeadlineSeconds"] = spec["activeDeadlineSeconds"]
    sweep = spec.get("sweep")
    if sweep:
        trials = len(sweep_combinations(sweep["grid"]))
        max_trials = sweep.get("maxTrials")
        if max_trials:
            trials = min(trials, max_trials)
        job_spec.update(
            completionMode="Indexed",
            completions=trials,
            parallelism=min(sweep.get("parallelism", 1), trials),
            backoffLimitPerIndex=job_spec.pop("backoffLimit"),
        )

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(run)],
        },
        "spec": job_spec,
    }


MLFLOW_CREDENTIAL_KEYS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
"""The only keys of spec.tracking.credentials' Secret the trainer receives (docs/mlflow.md)."""


def tracking_env(
    spec: Mapping[str, Any], tracking_uri: str, run_id: str, experiment_id: str
) -> list[dict[str, Any]]:
    """The trainer's MLflow environment (:mod:`kubeloop.runtime.tracking`): where to log, and
    the credential keys of ``spec.tracking.credentials`` by ``secretKeyRef`` (optional keys,
    nothing else of the Secret). MLflow's own retries are cut so a down server costs seconds."""
    env: list[dict[str, Any]] = [
        {"name": "KUBELOOP_MLFLOW_TRACKING_URI", "value": tracking_uri},
        {"name": "KUBELOOP_MLFLOW_RUN_ID", "value": run_id},
        {"name": "KUBELOOP_MLFLOW_EXPERIMENT_ID", "value": experiment_id},
        {"name": "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "value": "2"},
        {"name": "MLFLOW_HTTP_REQUEST_TIMEOUT", "value": "10"},
    ]
    secret = (((spec.get("tracking") or {}).get("credentials") or {}).get("secretRef") or {}).get("name")
    if secret:
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key in MLFLOW_CREDENTIAL_KEYS
        ]
    return env


def with_tracking(job: Mapping[str, Any], env: list[dict[str, Any]]) -> dict[str, Any]:
    """``job`` with ``env`` added to the trainer container (entries of the same name replaced)."""
    built = orjson.loads(orjson.dumps(job))
    for container in built["spec"]["template"]["spec"]["containers"]:
        if container["name"] != TRAINER_CONTAINER:
            continue
        names = {entry["name"] for entry in env}
        container["env"] = [e for e in container.get("env") or [] if e["name"] not in names] + env
    return dict(built)
