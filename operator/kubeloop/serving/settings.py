"""Settings of ``kubeloop serve``: one pydantic-settings model, env prefix ``KUBELOOP_SERVE_``.

The command line overrides the environment; worker processes receive the parent's final
settings through the same environment variables, so there is exactly one way in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kubeloop.api.batching import (
    DEFAULT_MAX_BATCH_LATENCY_MS,
    DEFAULT_MAX_BATCH_SIZE,
    MAX_BATCH_LATENCY_MS,
)

ENV_PREFIX = "KUBELOOP_SERVE_"
MIB = 1024 * 1024


def _default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class _UpperCaseEnvironment(EnvSettingsSource):
    """Only upper-case names count: a credentials Secret key such as
    ``kubeloop_serve_insecure_skip_verify`` would otherwise reach a setting past the upper-case
    pins the pod builders set over the Secret (:mod:`kubeloop.trust.pod_env`)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in os.environ.items() if name == name.upper()}


class ServeSettings(BaseSettings):
    """Everything the model server needs to know, read once at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _UpperCaseEnvironment(settings_cls)

    model_uri: str = Field(
        description="Directory holding model.skops, or the model.skops file itself "
        "(plain path, file://, s3://, any fsspec URI)."
    )
    sha256: str | None = Field(
        default=None, description="Expected sha256 of model.skops; required unless insecure."
    )
    insecure_skip_verify: bool = False
    model_name: str = "model"
    profile_uri: str | None = Field(
        default=None, description="Reference profile; default: profile.json next to the model."
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol's gRPC service (ModelDeployment pods: "
        "8081); 0: no gRPC.",
    )
    workers: int = Field(default_factory=_default_workers, ge=1, le=256)
    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=65536)
    max_batch_latency_ms: float = Field(
        default=float(DEFAULT_MAX_BATCH_LATENCY_MS), ge=0.0, le=float(MAX_BATCH_LATENCY_MS)
    )
    track: Literal["stable", "canary"] = "stable"
    shadow_url: str | None = None
    shadow_percent: float = Field(default=0.0, ge=0.0, le=100.0)
    shadow_queue_size: int = Field(default=1024, ge=1)
    shadow_concurrency: int = Field(default=8, ge=1, le=1024)
    shadow_timeout_seconds: float = Field(default=5.0, gt=0.0)
    shadow_tolerance: float = Field(
        default=1e-9, ge=0.0, description="Relative tolerance for regression agreement."
    )
    feedback_capacity: int = Field(
        default=100_000, ge=0, description="Recent predictions kept for /feedback (per worker)."
    )
    feedback_max_bytes: int = Field(
        default=64 * MIB,
        ge=0,
        description="Byte budget of the predictions kept for /feedback (per worker); the "
        "oldest are forgotten first.",
    )
    feedback_max_age_seconds: float = Field(
        default=3600.0, gt=0.0, description="Predictions older than this take no label."
    )
    max_body_bytes: int = Field(
        default=16 * MIB, ge=1, description="Largest request body; larger ones get 413."
    )
    max_buffered_body_bytes: int = Field(
        default=64 * MIB,
        ge=1,
        description="Request bodies one worker holds at once; beyond it requests get 503.",
    )
    max_request_rows: int = Field(
        default=100_000, ge=1, description="Most rows in one request; more get 413."
    )
    max_concurrent_requests: int = Field(
        default=256,
        ge=1,
        description="Prediction and feedback requests one worker handles at once; beyond it "
        "requests get 503 with Retry-After.",
    )
    max_queued_rows: int = Field(
        default=200_000,
        ge=1,
        description="Rows waiting for the model in one worker; beyond it requests get 503.",
    )
    retry_after_seconds: int = Field(
        default=1, ge=0, description="The Retry-After of a 503 for an overloaded worker."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0.0,
        description="From connection (or first byte of a request) to the end of its headers; "
        "slower clients are cut (408).",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0.0,
        description="From the end of the headers to the end of the body; slower clients are "
        "cut (408).",
    )
    keep_alive_timeout_seconds: float = Field(
        default=30.0, gt=0.0, description="An idle keep-alive connection is closed after this."
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest request line and headers; more get 431."
    )
    auth_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required on /predict, /v2/models/*/infer and /feedback "
        "(environment only: KUBELOOP_SERVE_AUTH_TOKEN, from a Secret). Empty: no auth.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve /metrics on this port only (not on --port), so a NetworkPolicy "
        "can open it to Prometheus alone. Unset or 0: /metrics on --port.",
    )
    metrics_flush_seconds: float = Field(
        default=1.0, gt=0.0, description="How often drift counts reach the shared metric files."
    )
    shutdown_delay_seconds: float = Field(
        default=0.0,
        ge=0.0,
        description="After SIGTERM: seconds of 503 readiness while still serving, so load "
        "balancers stop sending before the listener closes.",
    )
    drain_timeout_seconds: float = Field(default=30.0, gt=0.0)
    fast_paths: bool = Field(
        default=True,
        description="Call forests and linear classifiers directly (self-checked at load).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        # The trainer's model.sha256 is a sha256sum line ("<hex>  model.skops"), so
        # `--sha256 "$(cat model.sha256)"` works as written; the digest is its first word.
        words = value.split()
        digest = (words[0] if words else "").lower().removeprefix("sha256:")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(
                "sha256 must be 64 hexadecimal characters, alone or as the line of the "
                "trainer's model.sha256 ('<hex>  model.skops')"
            )
        return digest

    @field_validator("auth_token")
    @classmethod
    def _empty_token_is_no_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())

    @field_validator("metrics_port")
    @classmethod
    def _zero_metrics_port_is_unset(cls, value: int | None) -> int | None:
        return value or None

    @model_validator(mode="after")
    def _verification_is_explicit(self) -> ServeSettings:
        if self.sha256 is None and not self.insecure_skip_verify:
            raise ValueError(
                "sha256: the model's expected sha256 is required "
                "(--sha256 / KUBELOOP_SERVE_SHA256); pass --insecure-skip-verify to serve "
                "an unverified model"
            )
        if self.shadow_percent > 0 and not self.shadow_url:
            raise ValueError("shadow_percent is set but shadow_url is empty: give --shadow-url")
        if self.grpc_port and self.grpc_port in (self.port, self.metrics_port):
            raise ValueError(
                "grpc_port is the same as port or metrics_port: give --grpc-port another port "
                "(0: no gRPC)"
            )
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(
                "metrics_port is the same as port: give --metrics-port another port, or leave "
                "it unset to serve /metrics on --port"
            )
        return self

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, to hand to worker processes."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[ENV_PREFIX + name.upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        return env
