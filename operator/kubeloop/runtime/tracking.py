"""MLflow tracking from inside the training pod (issue 17): the trainer does the logging.

The operator creates the TrainingRun's MLflow run before the Job (so its id is in status at
once and a retried pod logs to the same run) and passes it here:

=================================  ===========================================================
``KUBELOOP_MLFLOW_TRACKING_URI``   the tracking server (operator configuration only)
``KUBELOOP_MLFLOW_RUN_ID``         the TrainingRun's MLflow run
``KUBELOOP_MLFLOW_EXPERIMENT_ID``  its experiment (a sweep trial's nested run goes there too)
``MLFLOW_TRACKING_TOKEN`` ...      credentials, from ``spec.tracking.credentials.secretRef``
=================================  ===========================================================

A run without a sweep logs into that run: params, metrics, champion metrics
(``champion.<metric>``), tags (sha256, data fingerprint, URIs) and artifacts (report.json,
profile.json, model.skops). A sweep trial logs the same into a nested run of its own
(``mlflow.parentRunId``); the operator puts the best trial's numbers on the parent.

Tracking never changes a run's outcome: any failure is caught and returned as a one-line
``tracking_error`` in the result, which the operator shows as the ``TrackingFailed``
condition. ``mlflow`` (mlflow-skinny) is imported only when tracking is on.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kubeloop.registry import tags

log = logging.getLogger("kubeloop.train.tracking")

ENV_TRACKING_URI = "KUBELOOP_MLFLOW_TRACKING_URI"
ENV_RUN_ID = "KUBELOOP_MLFLOW_RUN_ID"
ENV_EXPERIMENT_ID = "KUBELOOP_MLFLOW_EXPERIMENT_ID"
MAX_COPIED_MODEL_BYTES = 64 * 1024 * 1024
"""model.skops up to this size is copied into the MLflow run; a larger one only linked."""


@dataclass(frozen=True)
class TrackingTarget:
    tracking_uri: str
    run_id: str
    experiment_id: str


def target_from_env(env: Mapping[str, str]) -> TrackingTarget | None:
    """Where to log, or None when the operator did not turn tracking on for this run."""
    uri, run_id = env.get(ENV_TRACKING_URI, "").strip(), env.get(ENV_RUN_ID, "").strip()
    if not uri or not run_id:
        return None
    return TrackingTarget(uri, run_id, env.get(ENV_EXPERIMENT_ID, "").strip())


def run_fields(result: Any, report: Mapping[str, Any] | None) -> dict[str, Any]:
    """Params, metrics and tags of one result, in MLflow's terms (pure)."""
    params = {str(k): _param(v) for k, v in (result.params or {}).items()}
    metrics = {str(k): float(v) for k, v in (result.metrics or {}).items()}
    for key, value in (result.champion_metrics or {}).items():
        metrics[tags.CHAMPION_METRIC_PREFIX + str(key)] = float(value)
    run_tags: dict[str, str] = {"kubeloop.status": str(result.status)}
    for key, value in (
        (tags.SHA256, result.sha256),
        (tags.MODEL_URI, result.uri),
        (tags.DATA_FINGERPRINT, result.data_fingerprint),
        (tags.PROFILE_URI, result.profile_uri),
        (tags.REPORT_URI, result.report_uri),
    ):
        if value:
            run_tags[key] = str(value)
    if result.trial is not None:
        run_tags[tags.TRIAL] = str(result.trial)
    if report and (report.get("model") or {}).get("estimator"):
        params.setdefault("estimator", str(report["model"]["estimator"]))
    return {"params": params, "metrics": metrics, "tags": run_tags}


def log_result(
    target: TrackingTarget,
    result: Any,
    report: Mapping[str, Any] | None,
    run_name: str,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[str | None, str | None]:
    """Log ``result`` to MLflow; returns ``(mlflow_run_id, tracking_error)``, never raises."""
    # A tracking server that is down costs seconds, not the minutes of MLflow's default retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    run_id: str | None = None
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=target.tracking_uri)
        run_id = target.run_id
        nested = result.trial is not None
        if nested:
            experiment_id = target.experiment_id or client.get_run(run_id).info.experiment_id
            child = client.create_run(
                experiment_id,
                run_name=f"{run_name}-trial-{result.trial}",
                tags={tags.PARENT_RUN_ID: target.run_id, tags.TRIAL: str(result.trial)},
            )
            run_id = child.info.run_id
        fields = run_fields(result, report)
        import time

        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in fields["metrics"].items()],
            params=[Param(k, v) for k, v in fields["params"].items()],
            tags=[RunTag(k, v) for k, v in fields["tags"].items()],
        )
        _log_artifacts(client, run_id, result, report, storage_options or {})
        if nested:
            client.set_terminated(run_id, "FINISHED" if result.status == "Succeeded" else "FAILED")
        return run_id, None
    except Exception as error:  # tracking never fails a run
        log.warning("MLflow tracking failed: %s", _summary(error))
        return run_id, f"logging to MLflow at {target.tracking_uri} failed: {_summary(error)}"


def _log_artifacts(
    client: Any,
    run_id: str,
    result: Any,
    report: Mapping[str, Any] | None,
    storage_options: Mapping[str, Any],
) -> None:
    from kubeloop.training import artifacts

    with tempfile.TemporaryDirectory(prefix="kubeloop-mlflow-") as directory:
        if report is not None:
            path = os.path.join(directory, artifacts.REPORT_FILE)
            with open(path, "wb") as handle:
                handle.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
            client.log_artifact(run_id, path)
        for uri, limit in ((result.profile_uri, None), (result.uri, MAX_COPIED_MODEL_BYTES)):
            if not uri:
                continue
            payload = artifacts.read_bytes(uri, storage_options)
            if limit is not None and len(payload) > limit:
                continue  # linked by the kubeloop.uri tag only
            path = os.path.join(directory, uri.rstrip("/").rsplit("/", 1)[-1])
            with open(path, "wb") as handle:
                handle.write(payload)
            client.log_artifact(run_id, path)


def _param(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _summary(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__
