"""Tag keys and aliases Kubeloop writes to MLflow (runs and model versions). Pure constants."""

from __future__ import annotations

SHA256 = "kubeloop.sha256"
"""SHA-256 of model.skops: the one tag a registry source needs (the server verifies it)."""
MODEL_URI = "kubeloop.uri"
"""Where model.skops is stored (the run's storage): what a registry source serves."""
NAMESPACE = "kubeloop.namespace"
TRAINING_RUN = "kubeloop.trainingRun"
RUN_UID = "kubeloop.uid"
"""The TrainingRun's metadata.uid: finds the MLflow run again after a restart (idempotence)."""
MODEL_NAME = "kubeloop.model"
DATA_FINGERPRINT = "kubeloop.dataFingerprint"
IMAGE = "kubeloop.image"
TRIAL = "kubeloop.trial"
PROFILE_URI = "kubeloop.profileUri"
REPORT_URI = "kubeloop.reportUri"
PARENT_RUN_ID = "mlflow.parentRunId"
"""MLflow's own tag that makes a run nested under another (a sweep trial under its run)."""
RUN_NAME = "mlflow.runName"

CHAMPION = "champion"
"""Alias of the version a ModelDeployment serves as stable."""
CHALLENGER = "challenger"
"""Alias of the version a ModelDeployment's canary serves while a rollout is under way."""

CHAMPION_METRIC_PREFIX = "champion."
"""Metric key prefix of the champion's metrics on the same holdout (compareTo: champion)."""
