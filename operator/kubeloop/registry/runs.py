"""The operator's side of MLflow tracking for a TrainingRun (issue 17).

Before the training Job: find or create the run's MLflow run (found again by the TrainingRun's
uid, so a restart never makes a second one) and tell the trainer where to log. When the run
ends: put the final numbers on the MLflow run (a sweep's best trial), end it, and register a
Succeeded model as a version of ``spec.model.name`` tagged with its sha256 and URI.

Blocking REST calls with short timeouts; the controller calls these from its worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeloop.registry import tags
from kubeloop.registry.client import Credentials, MlflowClient


@dataclass(frozen=True)
class TrackingSettings:
    """What the operator's configuration says about MLflow."""

    tracking_uri: str = ""
    track_by_default: bool = True
    experiment_prefix: str = "kubeloop"
    credentials: Credentials = field(default_factory=Credentials)
    timeout_seconds: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.tracking_uri)

    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri, self.credentials, self.timeout_seconds)


def tracked(run: Mapping[str, Any], settings: TrackingSettings) -> bool:
    """Whether this TrainingRun is tracked: the operator has MLflow, and the run's
    ``spec.tracking.enabled`` (default: the operator's ``track_by_default``) says yes."""
    if not settings.enabled:
        return False
    enabled = ((run.get("spec") or {}).get("tracking") or {}).get("enabled")
    return settings.track_by_default if enabled is None else bool(enabled)


def experiment_name(run: Mapping[str, Any], settings: TrackingSettings) -> str:
    spec = run["spec"]
    chosen = (spec.get("tracking") or {}).get("experimentName")
    if chosen:
        return str(chosen)
    prefix = settings.experiment_prefix.strip("/")
    parts = [prefix] if prefix else []
    return "/".join([*parts, run["metadata"]["namespace"], spec["model"]["name"]])


def run_tags(run: Mapping[str, Any], image: str) -> dict[str, str]:
    meta, spec = run["metadata"], run["spec"]
    return {
        tags.RUN_NAME: meta["name"],
        tags.NAMESPACE: meta["namespace"],
        tags.TRAINING_RUN: meta["name"],
        tags.RUN_UID: str(meta.get("uid", "")),
        tags.MODEL_NAME: spec["model"]["name"],
        tags.IMAGE: spec.get("image") or image,
        "kubeloop.estimator": str(spec["model"].get("estimator", "")),
        "kubeloop.dataSource": str((spec.get("data") or {}).get("source", "")),
    }


def ensure_run(run: Mapping[str, Any], settings: TrackingSettings, image: str) -> dict[str, str]:
    """``{experimentId, runId}`` of the TrainingRun's MLflow run, created when missing.
    Raises :class:`~kubeloop.registry.client.RegistryError`."""
    client = settings.client()
    experiment_id = client.experiment_id(experiment_name(run, settings))
    uid = str(run["metadata"].get("uid", ""))
    found = client.find_run(experiment_id, tags.RUN_UID, uid) if uid else None
    if found is not None:
        run_id = str(found["info"]["run_id"])
    else:
        run_id = client.create_run(experiment_id, run["metadata"]["name"], run_tags(run, image))
    return {"experimentId": experiment_id, "runId": run_id}


def final_fields(status: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics, params and tags the operator puts on the run when it ends (pure): the model's
    (for a sweep, the best trial's) metrics, champion metrics and checksum."""
    model = status.get("model") or {}
    metrics = {str(k): float(v) for k, v in (model.get("metrics") or {}).items()}
    for key, value in (model.get("championMetrics") or {}).items():
        metrics[tags.CHAMPION_METRIC_PREFIX + str(key)] = float(value)
    run_tags_: dict[str, str] = {"kubeloop.phase": str(status.get("phase") or "")}
    for key, value in (
        (tags.SHA256, model.get("sha256")),
        (tags.MODEL_URI, model.get("uri")),
        (tags.DATA_FINGERPRINT, model.get("dataFingerprint")),
        (tags.PROFILE_URI, model.get("profileUri")),
        (tags.REPORT_URI, model.get("reportUri")),
    ):
        if value:
            run_tags_[key] = str(value)
    params: dict[str, str] = {}
    best = status.get("bestTrial")
    if best is not None:
        run_tags_["kubeloop.bestTrial"] = str(best)
        for trial in status.get("trials") or []:
            if trial.get("index") == best:
                params = {str(k): _param(v) for k, v in (trial.get("params") or {}).items()}
    return {"metrics": metrics, "params": params, "tags": run_tags_}


def finish_run(run: Mapping[str, Any], settings: TrackingSettings) -> dict[str, Any]:
    """End the MLflow run and register a Succeeded model; returns the new status.mlflow.
    Idempotent (a version is found again by run id). Raises RegistryError."""
    status = run.get("status") or {}
    mlflow = dict(status.get("mlflow") or {})
    run_id = str(mlflow["runId"])
    client = settings.client()
    fields = final_fields(status)
    client.log_batch(run_id, fields["metrics"], fields["params"], fields["tags"])
    succeeded = status.get("phase") == "Succeeded"
    model = status.get("model") or {}
    if succeeded and model.get("sha256") and model.get("uri"):
        name = str(run["spec"]["model"]["name"])
        client.ensure_registered_model(name)
        version = client.version_of_run(name, run_id)
        if version is None:
            version = client.create_version(
                name,
                version_source(str(model["uri"]), run_id),
                run_id,
                {
                    tags.SHA256: str(model["sha256"]),
                    tags.MODEL_URI: str(model["uri"]),
                    tags.NAMESPACE: run["metadata"]["namespace"],
                    tags.TRAINING_RUN: run["metadata"]["name"],
                },
            )
        mlflow.update(registeredModel=name, modelVersion=str(version["version"]))
    client.end_run(run_id, "FINISHED" if succeeded else "FAILED")
    mlflow["finished"] = True
    return mlflow


def version_source(uri: str, run_id: str) -> str:
    """The model version's ``source``: the object-store URI itself, or for a file in the
    run's local storage (which MLflow refuses as a source) the copy in the run's artifacts.
    What a ModelDeployment serves is always the ``kubeloop.uri`` tag."""
    if uri.split("://", 1)[0] in ("s3", "gs", "https", "http"):
        return uri
    return f"runs:/{run_id}/model.skops"


def _param(value: Any) -> str:
    import orjson

    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
