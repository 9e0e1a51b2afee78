"""Where the operator itself may reach out to, and what of an answer it may repeat (issue 13).

The operator runs with its own network position, service account and file system, so a URL
taken from a namespace user's spec must not be able to point it anywhere else (a cloud
metadata endpoint, an internal service, its own files). Three rules, one module:

* **Prometheus endpoints come from the operator's configuration.** A spec's ``prometheusUrl``
  must equal (after dropping a trailing slash) the operator's default Prometheus or one of its
  allowed URLs, or be empty (the default). Userinfo, a query string or a fragment is refused
  outright: a ``#`` would cut off the ``/api/v1/query`` the client appends. A refused URL is
  never requested (:class:`PrometheusUrlPolicy`).
* **No answer is copied.** What a remote endpoint said reaches status, Events and logs only as
  a fixed summary: the HTTP status, an error type, and at most a short ``error`` field of a
  well-formed Prometheus error document, with control characters removed
  (:func:`prometheus_error_summary`, :func:`error_summary`, :func:`clean_text`).
* **The operator reads only under the storage root.** A profile or model URI the operator
  opens itself must lie under its configured ``default_storage_uri``, or under the run's
  ``output.storageUri`` when that is an object store (``s3://``, ``gs://``); never ``http(s)://``
  or a local path elsewhere (:func:`operator_read_problem`).

Pure: no I/O, no kopf, no kubernetes.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from kubeloop.api.conditions import Reason

PROMETHEUS_URL_NOT_ALLOWED = Reason.PROMETHEUS_URL_NOT_ALLOWED
"""Condition/Event reason: a spec names a Prometheus the operator is not configured to query."""
STORAGE_URI_NOT_ALLOWED = Reason.STORAGE_URI_NOT_ALLOWED
"""Condition/Event reason: a profile or model URI the operator would read lies outside its
storage roots."""

MAX_ERROR_TEXT = 200
"""Most characters of a Prometheus ``error`` field repeated in a message."""
ALLOWED_URLS_SETTING = "the chart value rollout.allowedPrometheusUrls (KUBELOOP_ALLOWED_PROMETHEUS_URLS)"
_ERROR_TYPE = re.compile(r"^[a-z_]{1,32}$")
_PROMETHEUS_SCHEMES = ("http", "https")
OBJECT_STORE_SCHEMES = ("s3", "gs")
"""Schemes of a run's own output root that the operator may read under (object stores)."""
OPERATOR_READ_SCHEMES = ("file", *OBJECT_STORE_SCHEMES)


class UrlNotAllowed(ValueError):
    """A URL or URI the operator refuses to use; ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- Prometheus endpoints ------------------------------------------------------------------


def normalise_prometheus_url(url: str) -> str:
    """``scheme://host[:port][/path]`` without a trailing slash; raises ValueError saying why
    a URL cannot be a Prometheus base URL (without repeating the URL)."""
    text = url.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError("is not a well-formed URL") from None
    if parts.scheme.lower() not in _PROMETHEUS_SCHEMES:
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host")
    if "@" in parts.netloc:
        raise ValueError("must not contain user information (user:password@)")
    if parts.query or "?" in text:
        raise ValueError("must not contain a query string (?...)")
    if parts.fragment or "#" in text:
        raise ValueError("must not contain a fragment (#...)")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise ValueError("must not contain spaces or control characters")
    path = parts.path.rstrip("/")
    if path and posixpath.normpath(path) != path:
        raise ValueError("must not contain '.', '..' or empty path segments")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def configured_prometheus_urls(default: str, allowed: Iterable[str]) -> tuple[str, ...]:
    """The operator's default Prometheus and allowed URLs, normalised, without repeats.

    Raises ValueError naming the setting when a configured value is not a base URL: the
    operator refuses to start with a policy it cannot apply.
    """
    urls: list[str] = []
    for setting, value in [("prometheus_url", default), *(("allowed_prometheus_urls", u) for u in allowed)]:
        if not value.strip():
            continue
        try:
            normalised = normalise_prometheus_url(value)
        except ValueError as error:
            raise ValueError(f"KUBELOOP_{setting.upper()}: {value!r} {error}") from None
        if normalised not in urls:
            urls.append(normalised)
    return tuple(urls)


@dataclass(frozen=True)
class PrometheusUrlPolicy:
    """Which Prometheus a spec may have the operator query.

    ``default`` is the operator's own Prometheus (None: none configured); ``allowed`` are all
    URLs a spec may name, the default included.
    """

    default: str | None
    allowed: tuple[str, ...]

    @classmethod
    def from_settings(cls, default: str, allowed: Iterable[str]) -> PrometheusUrlPolicy:
        urls = configured_prometheus_urls(default, allowed)
        normalised_default = normalise_prometheus_url(default) if default.strip() else None
        return cls(normalised_default, urls)

    def resolve(self, url: str | None, field: str) -> str | None:
        """The base URL to query for a spec's ``prometheusUrl`` (empty: the default, which may
        be None); raises :class:`UrlNotAllowed` for anything not configured."""
        if url is None or not url.strip():
            return self.default
        try:
            normalised = normalise_prometheus_url(url)
        except ValueError as error:
            raise UrlNotAllowed(PROMETHEUS_URL_NOT_ALLOWED, f"{field} {error}; {self._fix()}") from None
        if normalised not in self.allowed:
            raise UrlNotAllowed(
                PROMETHEUS_URL_NOT_ALLOWED,
                f"{field} is not one of the Prometheus endpoints the operator may query; {self._fix()}",
            )
        return normalised

    def _fix(self) -> str:
        if self.allowed:
            allowed = ", ".join(self.allowed)
            return (
                f"use one of: {allowed}, or leave it empty for the operator's default "
                f"({self.default or 'none'}); an administrator allows more with {ALLOWED_URLS_SETTING}"
            )
        return (
            "the operator allows no Prometheus: leave it empty, or have an administrator set "
            f"rollout.prometheusUrl or {ALLOWED_URLS_SETTING}"
        )


# --- what of an answer may be repeated -----------------------------------------------------


def clean_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` without control or format characters, whitespace collapsed, at most ``limit``
    characters (an ellipsis marks a cut)."""
    kept = "".join(" " if c.isspace() else c for c in text if c.isspace() or not unicodedata.category(c).startswith("C"))
    collapsed = " ".join(kept.split())
    return collapsed if len(collapsed) <= limit else collapsed[: max(0, limit - 1)] + "…"


def prometheus_error_summary(http_status: int | None, body: bytes) -> str:
    """A fixed summary of a failed Prometheus answer: the HTTP status, and only when ``body`` is
    a well-formed Prometheus error document (``{"status": "error", "errorType": ..., "error":
    ...}``) its error type and a capped, cleaned ``error``. Anything else in the body is never
    repeated."""
    head = f"HTTP {http_status}" if http_status is not None else "answer"
    document = _json_object(body) or {}
    error_type, error_text = document.get("errorType"), document.get("error")
    if (
        document.get("status") != "error"
        or not isinstance(error_type, str)
        or not isinstance(error_text, str)
        or not _ERROR_TYPE.match(error_type)
    ):
        return f"{head}, not a Prometheus error document (body not shown)"
    detail = clean_text(error_text)
    return f"{head}, Prometheus {error_type}: {detail}" if detail else f"{head}, Prometheus {error_type}"


def error_summary(error: BaseException) -> str:
    """What a failed request may say about itself: the error type, an HTTP status if it has
    one, and the operating system's fixed text for a socket error. Never the message, which
    may carry an answer's body."""
    name = type(error).__name__
    status = getattr(error, "status", None) or getattr(error, "code", None)
    if isinstance(status, int) and 100 <= status <= 599:
        return f"{name} (HTTP {status})"
    cause = getattr(error, "reason", None)
    if isinstance(cause, OSError):
        error = cause
        name = f"{name}: {type(cause).__name__}"
    if isinstance(error, TimeoutError):
        return f"{name} (timed out)"
    if isinstance(error, OSError) and isinstance(error.strerror, str):
        return f"{name} ({clean_text(error.strerror, 80)})"
    return name


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


# --- what the operator reads itself -------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    scheme: str
    bucket: str
    path: str


def _location(uri: str) -> _Location:
    """The parts of a storage URI the operator could read; ValueError says why not."""
    text = uri.strip()
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise ValueError("contains spaces or control characters")
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in OPERATOR_READ_SCHEMES:
        shown = f"{scheme}://" if scheme else "a plain path"
        raise ValueError(
            f"uses {shown}: the operator reads only "
            + ", ".join(f"{s}://" for s in OPERATOR_READ_SCHEMES)
            + " under its storage roots"
        )
    if "?" in text or "#" in text or "@" in parts.netloc:
        raise ValueError("must not contain user information, a query string or a fragment")
    if scheme == "file" and parts.netloc:
        raise ValueError("file:// URIs must name an absolute path (file:///...)")
    if scheme != "file" and not parts.netloc:
        raise ValueError(f"{scheme}:// URIs must name a bucket")
    path = parts.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    trimmed = path.rstrip("/") or "/"
    if posixpath.normpath(trimmed) != trimmed:
        raise ValueError("must not contain '.', '..' or empty path segments")
    return _Location(scheme, parts.netloc, trimmed)


def _under(location: _Location, root: _Location) -> bool:
    if (location.scheme, location.bucket) != (root.scheme, root.bucket):
        return False
    return root.path == "/" or location.path == root.path or location.path.startswith(root.path + "/")


def operator_read_problem(uri: str, storage_root: str, run_root: str | None = None) -> str | None:
    """Why the operator must not open ``uri`` itself (None: it may).

    ``storage_root`` is the operator's configured ``default_storage_uri``; ``run_root`` the
    ``output.storageUri`` of the TrainingRun the URI belongs to, which counts only when it is
    an object store (a namespace user must not make the operator read its own files or the
    network through it). The message never repeats the URI.
    """
    try:
        location = _location(uri)
    except ValueError as error:
        return str(error)
    roots: list[_Location] = []
    for index, root in enumerate((storage_root, run_root)):
        if not root:
            continue
        try:
            parsed = _location(root)
        except ValueError:
            continue
        if index == 1 and parsed.scheme not in OBJECT_STORE_SCHEMES:
            continue
        roots.append(parsed)
    if any(_under(location, root) for root in roots):
        return None
    return "lies outside the operator's storage roots (" + ", ".join(_root_text(r) for r in roots) + ")"


def _root_text(root: _Location) -> str:
    return f"{root.scheme}://{root.bucket}{root.path}"


def check_operator_read(uri: str, field: str, storage_root: str, run_root: str | None = None) -> str:
    """``uri`` when the operator may open it; raises :class:`UrlNotAllowed` naming ``field``."""
    problem = operator_read_problem(uri, storage_root, run_root)
    if problem is not None:
        raise UrlNotAllowed(
            STORAGE_URI_NOT_ALLOWED,
            f"{field} {problem}; the trainer writes profiles under the storage root, so re-run the "
            "TrainingRun or point the ModelDeployment at a model stored there",
        )
    return uri


# --- MLflow (issue 17) ---------------------------------------------------------------------

MLFLOW_SETTING = "the chart value mlflow.trackingUri (KUBELOOP_MLFLOW_TRACKING_URI)"


def normalise_mlflow_url(url: str) -> str:
    """The operator's MLflow tracking/registry base URL (from its configuration only, never a
    spec): the same shape rules as a Prometheus base URL; raises ValueError naming the setting."""
    try:
        return normalise_prometheus_url(url)
    except ValueError as error:
        raise ValueError(f"{MLFLOW_SETTING}: {url!r} {error}") from None


def registry_model_uri_problem(uri: str) -> str | None:
    """Why a model URI read from an MLflow model version may not be served, or None.

    The URI is handed to the model server like a spec's ``storageUri`` (the server reads it,
    not the operator), so it must be one: a supported storage scheme, no spaces or control
    characters. Whoever can write the registry cannot point a server at anything else."""
    from kubeloop.api.common import STORAGE_SCHEMES, uri_pattern

    if len(uri) > 2048:
        return "is longer than 2048 characters"
    if not re.match(uri_pattern(STORAGE_SCHEMES), uri) or any(ord(c) < 0x21 for c in uri):
        schemes = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
        return f"is not a storage URI a ModelDeployment may serve (it must start with {schemes})"
    return None


# --- where notifications go ---------------------------------------------------------------

NOTIFICATION_SCHEMES = ("http", "https")


def notification_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a notification sink (None: it can). Sink URLs come only from the
    operator's configuration (a namespace user names a sink, never a URL); the message never
    repeats the URL, which for an incoming webhook is the credential."""
    text = url.strip()
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        return "contains spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "is not a well-formed URL"
    if parts.scheme.lower() not in NOTIFICATION_SCHEMES:
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    if "@" in parts.netloc:
        return "must not contain user information (user:password@); put the token in the path or query"
    if parts.fragment or "#" in text:
        return "must not contain a fragment (#...)"
    return None
