"""Scraping a ModelDeployment's server pods through the API server's pod proxy.

Shared by canary analysis (clusters without Prometheus) and live drift checks, so both read
the same pods the same way and need only ``pods/proxy`` RBAC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubeloop.analysis.base import AnalysisTarget
from kubeloop.analysis.scrape import PodTarget, ScrapeProvider, ScrapeRound
from kubeloop.controllers.kube import Kube
from kubeloop.resources.serving import OWNER_LABEL, TRACK_LABEL, metrics_port


def pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def ready_pods(kube: Kube, md: Mapping[str, Any], track: str | None = None) -> list[PodTarget]:
    """The ready server pods of ``md`` (of one track, if given)."""
    labels = {OWNER_LABEL: md["metadata"]["name"], **({TRACK_LABEL: track} if track else {})}
    port = metrics_port(md)
    return [
        PodTarget(pod["metadata"]["name"], port, pod["metadata"]["labels"].get(TRACK_LABEL, ""))
        for pod in kube.list("Pod", md["metadata"]["namespace"], labels=labels)
        if pod_ready(pod)
    ]


def proxy_get(kube: Kube, md: Mapping[str, Any], pod: str, path: str, limit: int | None = None) -> str:
    """GET ``path`` (/metrics or /profile) of one of ``md``'s server pods through the API
    server's pod proxy, on the port that serves them (spec.server.metricsPort, else port)."""
    namespace = md["metadata"]["namespace"]
    return kube.request_text(
        "GET", f"/api/v1/namespaces/{namespace}/pods/{pod}:{metrics_port(md)}/proxy{path}", limit=limit
    )


def scrape_round(
    kube: Kube, provider: ScrapeProvider, md: Mapping[str, Any], target: AnalysisTarget, track: str | None = None
) -> ScrapeRound:
    """Scrape the ready server pods of ``md`` (of one track, if given) and compare with the
    provider's previous round."""
    return provider.round(target, ready_pods(kube, md, track), lambda pod, _port: proxy_get(kube, md, pod, "/metrics"))
