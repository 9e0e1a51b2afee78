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

TEMPLATE_VARIABLES = ("namespace", "name", "track")


class PrometheusError(RuntimeError):
    """Prometheus could not answer the query; the message says what it said."""


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


class PrometheusClient:
    """Instant queries against one Prometheus (blocking; the controller runs them in a thread)."""

    def __init__(self, base_url: str, timeout_seconds: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout_seconds

    def query(self, promql: str) -> tuple[str, Any]:
        """``(resultType, result)`` of an instant query; raises :class:`PrometheusError`."""
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            # Prometheus answers a bad query with 400 and a JSON error explaining it.
            body = error.read()
            raise PrometheusError(_error_text(body) or f"HTTP {error.code} from {url}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise PrometheusError(f"cannot reach Prometheus at {self.base_url}: {error}") from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise PrometheusError(f"{self.base_url} did not answer with Prometheus JSON") from None
        if document.get("status") != "success":
            raise PrometheusError(document.get("error") or "query failed")
        data = document.get("data") or {}
        return str(data.get("resultType")), data.get("result")

    def vector(self, promql: str) -> list[Series]:
        """The series of an instant-vector query (a scalar becomes one series without labels)."""
        kind, result = self.query(promql)
        if kind == "scalar":
            return [Series({}, float(result[1]))]
        if kind != "vector":
            raise PrometheusError(f"query returned a {kind}, not an instant vector or scalar")
        return [Series(dict(item.get("metric") or {}), float(item["value"][1])) for item in result]

    def scalar(self, promql: str) -> float | None:
        """The one number a query returns; None when it returns no series or NaN."""
        series = self.vector(promql)
        if not series:
            return None
        if len(series) > 1:
            raise PrometheusError(
                f"query returned {len(series)} series, expected one number: aggregate it, e.g. "
                f"sum(...) ({', '.join(str(s.labels) for s in series[:3])})"
            )
        value = series[0].value
        return None if math.isnan(value) else value


def _error_text(body: bytes) -> str:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")[:500]
    return f"{document.get('errorType', 'error')}: {document.get('error', '')}"


class PrometheusProvider:
    """Measures metrics whose ``query`` is PromQL."""

    def __init__(self, default_url: str | None, timeout_seconds: float = 10.0) -> None:
        self.default_url = default_url
        self.timeout = timeout_seconds

    def client_for(self, metric: Mapping[str, Any]) -> PrometheusClient | None:
        url = metric.get("prometheusUrl") or self.default_url
        return PrometheusClient(url, self.timeout) if url else None

    def measure(self, metric: Mapping[str, Any], target: AnalysisTarget) -> Measurement:
        name = str(metric["name"])
        client = self.client_for(metric)
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
