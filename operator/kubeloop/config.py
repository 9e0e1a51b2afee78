"""The operator's configuration: read once at start-up from ``KUBELOOP_*`` variables, then passed down."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubeloop.notifications.settings import NotificationSettings
from kubeloop.trust.images import check_allowed_entry


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class OperatorConfig(BaseSettings):
    """Settings of ``kubeloop operator`` (the Helm chart sets them as env variables)."""

    model_config = SettingsConfigDict(env_prefix="KUBELOOP_", extra="ignore", frozen=True)

    runtime_image: str = Field(
        "kubeloop:dev",
        description="Image that runs `kubeloop train`, `kubeloop serve` and `kubeloop drift`.",
    )
    image_pull_policy: str = Field("IfNotPresent", description="Pull policy for the runtime image.")
    allowed_images: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Further images a spec may ask for (comma-separated): exact references, registry "
            "paths ending in '/' or repositories ending in ':'; empty: only the runtime image."
        ),
    )
    default_storage_uri: str = Field(
        "file:///var/lib/kubeloop/models",
        description="Artifact root used when a TrainingRun sets no output.storageUri.",
    )
    models_pvc: str = Field(
        "",
        description="PersistentVolumeClaim mounted at the file:// storage root in runtime pods, if any.",
    )
    allowed_estimator_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sklearn.", "xgboost.", "lightgbm."],
        description=(
            "Module prefixes a TrainingRun's estimator import path must start with (of xgboost "
            "and lightgbm only XGBClassifier/XGBRegressor/LGBMClassifier/LGBMRegressor)."
        ),
    )
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch; empty means the whole cluster."
    )
    pod_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels on every runtime pod (JSON object), e.g. for cost allocation or policies.",
    )
    metrics_port: int = Field(8080, description="Port of the operator's /metrics endpoint (0 = off).")
    health_port: int = Field(8081, description="Port of the operator's liveness endpoint (0 = off).")
    job_ttl_seconds: int = Field(
        86400, description="ttlSecondsAfterFinished of training Jobs (the result is kept in status)."
    )
    resync_seconds: float = Field(
        30.0, description="Level-based safety net: every object is reconciled at least this often."
    )
    settled_resync_seconds: float = Field(
        1800.0,
        description=(
            "Resync of a Healthy ModelDeployment with no rollout: it and its Deployments are "
            "watched, so this only catches a hand-deleted Service or autoscaler."
        ),
    )
    prometheus_url: str = Field(
        "",
        description="Prometheus for canary analysis (builtin checks); empty: scrape pods directly.",
    )
    allowed_prometheus_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Further Prometheus base URLs a spec's prometheusUrl may name (comma-separated); "
            "with prometheus_url, the only ones the operator queries."
        ),
    )
    rollout_tick_seconds: float = Field(
        5.0, description="How often canary rollouts in progress are re-evaluated (pauses, analysis), and how "
        "soon a ModelDeployment reconcile that failed is tried again."
    )
    peering: str = Field("", description="kopf peering name for HA; empty disables peering.")
    notifications: NotificationSettings = Field(
        default_factory=NotificationSettings,
        description=(
            "Notification sinks, default subscriptions and delivery limits (JSON; the chart's "
            "notifications block); see docs/notifications.md."
        ),
    )
    mlflow_tracking_uri: str = Field(
        "",
        description=(
            "MLflow tracking and registry server (http(s)://host[:port][/path]); empty: no "
            "MLflow. With it, TrainingRuns are MLflow runs and Succeeded ones model versions."
        ),
    )
    mlflow_track_by_default: bool = Field(
        True,
        description="Whether a TrainingRun without spec.tracking.enabled is tracked in MLflow.",
    )
    mlflow_experiment_prefix: str = Field(
        "kubeloop",
        description="Experiment of a run without spec.tracking.experimentName: <prefix>/<namespace>/<model>.",
    )
    mlflow_tracking_token: str = Field(
        "", description="Bearer token the operator sends to MLflow (chart: from a Secret)."
    )
    mlflow_tracking_username: str = Field("", description="MLflow basic-auth user of the operator.")
    mlflow_tracking_password: str = Field("", description="MLflow basic-auth password of the operator.")
    mlflow_timeout_seconds: float = Field(5.0, description="Timeout of one MLflow request.")
    mlflow_registry_poll_seconds: float = Field(
        30.0,
        description="How often a ModelDeployment with spec.model.registry looks at MLflow again.",
    )

    # NoDecode hands comma-separated env strings to this validator untouched.
    @field_validator("allowed_prometheus_urls", mode="before")
    @classmethod
    def _csv_urls(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_url(cls, value: str) -> str:
        # One URL policy (kubeloop.trust.urls); a wrong value stops the operator at start-up.
        from kubeloop.trust.urls import normalise_mlflow_url

        return normalise_mlflow_url(value) if value.strip() else ""

    @field_validator("allowed_images", mode="before")
    @classmethod
    def _csv_images(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("allowed_images")
    @classmethod
    def _valid_images(cls, value: list[str]) -> list[str]:
        # A wrong entry stops the operator at start-up with the entry named, not at a spec.
        return [check_allowed_entry(entry) for entry in value]

    @field_validator("allowed_estimator_prefixes", "namespaces", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)
