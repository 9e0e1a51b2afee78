"""kubeloop_api_requests_total's labels: the verb and resource of each request the operator's
client sends (kubeloop.controllers.kube.request_labels), never a namespace or a name."""

from __future__ import annotations

import pytest

from kubeloop.controllers.kube import KINDS, request_labels

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


@pytest.mark.parametrize(
    ("method", "path", "content_type", "expected"),
    [
        ("GET", "/apis/apps/v1/namespaces/team-a/deployments/serve-stable", "application/json", ("get", "deployments")),
        ("GET", "/apis/apps/v1/namespaces/team-a/deployments", "application/json", ("list", "deployments")),
        ("GET", "/apis/apps/v1/deployments", "application/json", ("list", "deployments")),
        ("PATCH", "/api/v1/namespaces/team-a/services/serve", APPLY, ("apply", "services")),
        ("PATCH", "/apis/apps/v1/namespaces/team-a/deployments/serve-canary", MERGE, ("patch", "deployments")),
        ("PATCH", "/apis/kubeloop.io/v1alpha1/namespaces/a/modeldeployments/serve/status", MERGE,
         ("patch", "modeldeployments/status")),
        ("POST", "/api/v1/namespaces/team-a/events", "application/json", ("create", "events")),
        ("PUT", "/apis/batch/v1/namespaces/a/jobs/j", "application/json", ("update", "jobs")),
        ("DELETE", "/apis/policy/v1/namespaces/a/poddisruptionbudgets/p", "application/json",
         ("delete", "poddisruptionbudgets")),
        ("DELETE", "/api/v1/namespaces/a/pods", "application/json", ("deletecollection", "pods")),
        # A pod's /metrics through the API server's proxy: the port and path stay out.
        ("GET", "/api/v1/namespaces/a/pods/serve-7d9f:8080/proxy/metrics", "*/*", ("get", "pods/proxy")),
        ("GET", "/api/v1/namespaces/a/pods/trainer-x/log", "*/*", ("get", "pods/log")),
        # Cluster-scoped objects and the namespace itself.
        ("GET", "/apis/kopf.dev/v1/clusterkopfpeerings/kubeloop", "application/json", ("get", "clusterkopfpeerings")),
        ("GET", "/api/v1/namespaces/team-a", "application/json", ("get", "namespaces")),
        ("GET", "/api/v1/namespaces", "application/json", ("list", "namespaces")),
        # Paths that name no resource, and a query string.
        ("GET", "/version", "application/json", ("get", "-")),
        ("GET", "/apis/apps/v1/namespaces/a/deployments?labelSelector=x%3Dy", "application/json",
         ("list", "deployments")),
    ],
)
def test_request_labels(method: str, path: str, content_type: str, expected: tuple[str, str]) -> None:
    assert request_labels(method, path, content_type) == expected


def test_every_kind_the_operator_touches_is_labelled_by_its_plural() -> None:
    for kind in KINDS.values():
        assert request_labels("GET", kind.path("ns", "name"))[1] == kind.plural
        assert request_labels("PATCH", kind.path("ns", "name", "status"), MERGE) == ("patch", f"{kind.plural}/status")
