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
from kubeloop.resources.serving import OWNER_LABEL, TRACK_LABEL, server_port


def pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def scrape_round(
    kube: Kube, provider: ScrapeProvider, md: Mapping[str, Any], target: AnalysisTarget, track: str | None = None
) -> ScrapeRound:
    """Scrape the ready server pods of ``md`` (of one track, if given) and compare with the
    provider's previous round."""
    namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
    port = server_port(md)
    labels = {OWNER_LABEL: name, **({TRACK_LABEL: track} if track else {})}
    pods = [
        PodTarget(pod["metadata"]["name"], port, pod["metadata"]["labels"].get(TRACK_LABEL, ""))
        for pod in kube.list("Pod", namespace, labels=labels)
        if pod_ready(pod)
    ]

    def fetch(pod: str, pod_port: int) -> str:
        return kube.request_text("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}:{pod_port}/proxy/metrics")

    return provider.round(target, pods, fetch)
