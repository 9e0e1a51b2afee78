"""A small blocking client of MLflow's REST API (tracking and model registry).

The operator talks to MLflow over plain HTTP (``/api/2.0/mlflow/...``) so its image needs no
MLflow package and no MLflow import happens in the operator process. Every call has a short
timeout; the controllers run in worker threads, never on kopf's event loop.

Errors are split the way a reconcile must treat them:

* :class:`RegistryUnavailable` - the server cannot be reached, timed out or answered 5xx: wait
  and try again later, change nothing;
* :class:`RegistryRequestError` - MLflow answered 4xx (``error_code`` such as
  ``RESOURCE_DOES_NOT_EXIST``): a fact about the request, not about the server's health.

Messages repeat only fixed summaries (:func:`kubeloop.trust.urls.error_summary`) and MLflow's
``error_code``, never an answer's body.
"""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kubeloop.trust.urls import clean_text, error_summary

API = "/api/2.0/mlflow"
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_ERROR_CODE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")


class RegistryError(RuntimeError):
    """Any failure of an MLflow call; the message is safe for a condition."""


class RegistryUnavailable(RegistryError):
    """MLflow could not be reached or failed (connection, timeout, HTTP 5xx)."""


class RegistryRequestError(RegistryError):
    """MLflow refused the request (HTTP 4xx) with ``error_code``."""

    def __init__(self, message: str, error_code: str, status: int) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


@dataclass(frozen=True)
class Credentials:
    """How the operator authenticates to MLflow: a bearer token, or a user and password."""

    token: str = ""
    username: str = ""
    password: str = ""

    def header(self) -> str | None:
        if self.token:
            return f"Bearer {self.token}"
        if self.username:
            pair = f"{self.username}:{self.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return None


class MlflowClient:
    """The REST calls Kubeloop makes. ``base_url`` must come from the operator's configuration
    (:func:`kubeloop.trust.urls.normalise_mlflow_url`), never from a spec."""

    def __init__(
        self, base_url: str, credentials: Credentials | None = None, timeout_seconds: float = 5.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials or Credentials()
        self.timeout = timeout_seconds

    # --- transport ----------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One request; GET sends ``body`` as the query string, others as JSON."""
        url = f"{self.base_url}{API}/{path}"
        data = None
        headers = {"Accept": "application/json"}
        if body is not None and method == "GET":
            url += "?" + urllib.parse.urlencode({k: v for k, v in body.items() if v is not None})
        elif body is not None:
            data = orjson.dumps(dict(body))
            headers["Content-Type"] = "application/json"
        auth = self.credentials.header()
        if auth:
            headers["Authorization"] = auth
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        where = f"MLflow at {self.base_url}"
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                payload = response.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as error:
            answer = error.read(MAX_ANSWER_BYTES)
            code = _error_code(answer)
            if error.code >= 500 or error.code in (408, 429):
                raise RegistryUnavailable(
                    f"{where} answered HTTP {error.code}{' ' + code if code else ''} to {path}"
                ) from None
            raise RegistryRequestError(
                f"{where} refused {path}: HTTP {error.code}{' ' + code if code else ''}",
                code,
                error.code,
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise RegistryUnavailable(f"cannot reach {where}: {error_summary(error)}") from None
        if not payload:
            return {}
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise RegistryUnavailable(
                f"{where}: not MLflow JSON from {path} (body not shown)"
            ) from None
        return document if isinstance(document, dict) else {}

    # --- tracking -----------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created if missing."""
        try:
            found = self.call("GET", "experiments/get-by-name", {"experiment_name": name})
            return str(found["experiment"]["experiment_id"])
        except RegistryRequestError as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])
        except RegistryRequestError as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":  # created meanwhile
                raise
            found = self.call("GET", "experiments/get-by-name", {"experiment_name": name})
            return str(found["experiment"]["experiment_id"])

    def find_run(self, experiment_id: str, tag: str, value: str) -> dict[str, Any] | None:
        """The newest run of the experiment with ``tags.<tag> = value``."""
        answer = self.call(
            "POST",
            "runs/search",
            {
                "experiment_ids": [experiment_id],
                "filter": f"tags.`{tag}` = '{_quote(value)}'",
                "max_results": 1,
                "order_by": ["attributes.start_time DESC"],
            },
        )
        runs = answer.get("runs") or []
        return dict(runs[0]) if runs else None

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
        answer = self.call(
            "POST",
            "runs/create",
            {
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": int(time.time() * 1000),
                "tags": [{"key": k, "value": v} for k, v in tags.items()],
            },
        )
        return str(answer["run"]["info"]["run_id"])

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", "runs/get", {"run_id": run_id})["run"])

    def log_batch(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        now = int(time.time() * 1000)
        self.call(
            "POST",
            "runs/log-batch",
            {
                "run_id": run_id,
                "metrics": [
                    {"key": k, "value": float(v), "timestamp": now, "step": 0}
                    for k, v in (metrics or {}).items()
                ],
                "params": [{"key": k, "value": str(v)[:6000]} for k, v in (params or {}).items()],
                "tags": [{"key": k, "value": str(v)} for k, v in (tags or {}).items()],
            },
        )

    def end_run(self, run_id: str, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED."""
        self.call(
            "POST",
            "runs/update",
            {"run_id": run_id, "status": status, "end_time": int(time.time() * 1000)},
        )

    # --- registry -----------------------------------------------------------------------------

    def ensure_registered_model(self, name: str) -> None:
        try:
            self.call("POST", "registered-models/create", {"name": name})
        except RegistryRequestError as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def search_versions(self, filter_text: str) -> list[dict[str, Any]]:
        answer = self.call(
            "GET", "model-versions/search", {"filter": filter_text, "max_results": 100}
        )
        return [dict(v) for v in answer.get("model_versions") or []]

    def version_of_run(self, name: str, run_id: str) -> dict[str, Any] | None:
        found = self.search_versions(f"name = '{_quote(name)}' and run_id = '{_quote(run_id)}'")
        return found[0] if found else None

    def versions_with_sha256(self, name: str, sha256: str) -> list[dict[str, Any]]:
        from kubeloop.registry.tags import SHA256

        return self.search_versions(
            f"name = '{_quote(name)}' and tags.`{SHA256}` = '{_quote(sha256)}'"
        )

    def create_version(
        self, name: str, source: str, run_id: str | None, tags: Mapping[str, str]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "source": source,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if run_id:
            body["run_id"] = run_id
        return dict(self.call("POST", "model-versions/create", body)["model_version"])

    def get_version(self, name: str, version: str) -> dict[str, Any] | None:
        try:
            answer = self.call("GET", "model-versions/get", {"name": name, "version": version})
        except RegistryRequestError as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return dict(answer["model_version"])

    def version_by_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        try:
            answer = self.call("GET", "registered-models/alias", {"name": name, "alias": alias})
        except RegistryRequestError as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return dict(answer["model_version"])

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call(
            "POST", "registered-models/alias", {"name": name, "alias": alias, "version": version}
        )

    def delete_alias(self, name: str, alias: str) -> None:
        try:
            self.call("DELETE", "registered-models/alias", {"name": name, "alias": alias})
        except RegistryRequestError as error:
            # MLflow answers INVALID_PARAMETER_VALUE for an alias that is not set: gone already.
            if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise


def version_tags(version: Mapping[str, Any]) -> dict[str, str]:
    """A model version's tags as a dict (the REST form is a list of key/value objects)."""
    return {str(t.get("key")): str(t.get("value", "")) for t in version.get("tags") or []}


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _error_code(body: bytes) -> str:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    code = document.get("error_code") if isinstance(document, dict) else None
    if isinstance(code, str) and 0 < len(code) <= 64 and set(code) <= _ERROR_CODE_CHARS:
        return clean_text(code, 64)
    return ""
