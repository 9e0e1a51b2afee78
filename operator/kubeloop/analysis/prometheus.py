"""The ``prometheus`` provider: an instant PromQL query over Prometheus' HTTP API.

``{{namespace}}``, ``{{name}}`` and ``{{track}}`` in the query are filled in (track is
``canary``: analysis judges the canary). The query must return one number: a scalar, or a
vector of exactly one series (aggregate with ``sum(...)`` otherwise).
"""

from __future__ import annotations

import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kubeloop.analysis.base import CANARY, AnalysisTarget, Measurement
from kubeloop.trust.urls import (
    PrometheusUrlPolicy,
    UrlNotAllowed,
    error_summary,
    prometheus_error_summary,
)

TEMPLATE_VARIABLES = ("namespace", "name", "track")


class PrometheusError(RuntimeError):
    """Prometheus could not answer the query. The message is a fixed summary (HTTP status,
    error type, a capped Prometheus ``error`` field): never the body of the answer."""

VALUE_TYPES = ("scalar", "vector", "matrix", "string")


@dataclass(frozen=True)
class Series:
    """One series of an instant vector: its labels and value."""

    labels: dict[str, str]
    value: float


def render_query(template: str, namespace: str, name: str, track: str = CANARY) -> str:
    """The query with ``{{namespace}}``, ``{{name}}`` and ``{{track}}`` filled in.

    Spaces inside the braces are allowed (``{{ name }}``); any other ``{{...}}`` is refused so
    a typo cannot silently become part of the PromQL.
    """
    values = {"namespace": namespace, "name": name, "track": track}
    out: list[str] = []
    rest = template
    while True:
        start = rest.find("{{")
        if start < 0:
            out.append(rest)
            break
        end = rest.find("}}", start)
        if end < 0:
            raise ValueError(f"query has an unclosed '{{{{' at {rest[start : start + 20]!r}")
        variable = rest[start + 2 : end].strip()
        if variable not in values:
            raise ValueError(
                f"query uses unknown variable {{{{{variable}}}}}: only "
                f"{', '.join('{{' + v + '}}' for v in TEMPLATE_VARIABLES)} are filled in"
            )
        out.append(rest[:start])
        out.append(values[variable])
        rest = rest[end + 2 :]
    return "".join(out)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is: an allowed Prometheus does not send the
    operator elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())
MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""Most bytes of one answer read (a larger one is cut, and then fails to parse)."""


class PrometheusClient:
    """Instant queries against one Prometheus (blocking; the controller runs them in a thread).

    The base URL must have passed :class:`~kubeloop.trust.urls.PrometheusUrlPolicy`."""

    def __init__(self, base_url: str, timeout_seconds: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout_seconds

    def query(self, promql: str) -> tuple[str, Any]:
        """``(resultType, result)`` of an instant query; raises :class:`PrometheusError`."""
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with _OPENER.open(url, timeout=self.timeout) as response:
                status = int(response.status)
                body = response.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as error:
            # Prometheus answers a bad query with 400 and a JSON error explaining it: only its
            # error type and a capped, cleaned error field are repeated.
            body = error.read(MAX_ANSWER_BYTES)
            raise PrometheusError(
                f"Prometheus at {self.base_url}: {prometheus_error_summary(error.code, body)}"
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise PrometheusError(
                f"cannot reach Prometheus at {self.base_url}: {error_summary(error)}"
            ) from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise PrometheusError(
                f"Prometheus at {self.base_url}: HTTP {status}, not Prometheus JSON (body not shown)"
            ) from None
        if not isinstance(document, dict) or document.get("status") != "success":
            raise PrometheusError(f"Prometheus at {self.base_url}: {prometheus_error_summary(status, body)}")
        data = document.get("data")
        if not isinstance(data, dict) or data.get("resultType") not in VALUE_TYPES:
            raise PrometheusError(
                f"Prometheus at {self.base_url}: HTTP {status}, not an instant-query result (body not shown)"
            )
        return str(data["resultType"]), data.get("result")

    def vector(self, promql: str) -> list[Series]:
        """The series of an instant-vector query (a scalar becomes one series without labels)."""
        kind, result = self.query(promql)
        try:
            if kind == "scalar":
                return [Series({}, float(result[1]))]
            if kind != "vector":
                raise PrometheusError(f"query returned a {kind}, not an instant vector or scalar")
            return [
                Series({str(k): str(v) for k, v in (item.get("metric") or {}).items()}, float(item["value"][1]))
                for item in result
            ]
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            raise PrometheusError(
                f"Prometheus at {self.base_url}: malformed {kind} result (body not shown)"
            ) from None

    def scalar(self, promql: str) -> float | None:
        """The one number a query returns; None when it returns no series or NaN."""
        series = self.vector(promql)
        if not series:
            return None
        if len(series) > 1:
            # The series' labels come from the answer: not repeated.
            raise PrometheusError(
                f"query returned {len(series)} series, expected one number: aggregate it, e.g. sum(...)"
            )
        value = series[0].value
        return None if math.isnan(value) else value


def url_policy(default_url: str | None, policy: PrometheusUrlPolicy | None) -> PrometheusUrlPolicy:
    """The given policy, or one allowing only ``default_url`` (tests and simple setups)."""
    return policy if policy is not None else PrometheusUrlPolicy.from_settings(default_url or "", ())


def metric_url(metric: Mapping[str, Any], policy: PrometheusUrlPolicy) -> str | None:
    """The Prometheus to query for an analysis metric: its ``prometheusUrl`` if the operator
    allows it, else the default; raises :class:`UrlNotAllowed` (nothing is requested)."""
    url = metric.get("prometheusUrl")
    return policy.resolve(
        str(url) if url else None, f"prometheusUrl of analysis metric {str(metric.get('name'))!r}"
    )


def refused(name: str, error: UrlNotAllowed) -> Measurement:
    """The measurement of a metric the operator refused to measure."""
    return Measurement(name, None, error.message, refusal=error.reason)


class PrometheusProvider:
    """Measures metrics whose ``query`` is PromQL, only against allowed Prometheus URLs."""

    def __init__(
        self,
        default_url: str | None = None,
        timeout_seconds: float = 10.0,
        policy: PrometheusUrlPolicy | None = None,
    ) -> None:
        self.policy = url_policy(default_url, policy)
        self.default_url = self.policy.default
        self.timeout = timeout_seconds

    def client_for(self, metric: Mapping[str, Any]) -> PrometheusClient | None:
        url = metric_url(metric, self.policy)
        return PrometheusClient(url, self.timeout) if url else None

    def measure(self, metric: Mapping[str, Any], target: AnalysisTarget) -> Measurement:
        name = str(metric["name"])
        try:
            client = self.client_for(metric)
        except UrlNotAllowed as error:
            return refused(name, error)
        if client is None:
            return Measurement(
                name,
                None,
                "no Prometheus URL: set prometheusUrl on the metric or the operator setting "
                "KUBELOOP_PROMETHEUS_URL",
            )
        try:
            query = render_query(str(metric.get("query") or ""), target.namespace, target.name)
            value = client.scalar(query)
        except (PrometheusError, ValueError) as error:
            return Measurement(name, None, f"query failed: {error}")
        if value is None:
            return Measurement(name, None, f"no data: the query returned nothing ({query})")
        return Measurement(name, value)
