"""The chart's optional NetworkPolicy for the model servers (issue 14), rendered by real helm.

Given servingNetworkPolicy values, when the chart is templated, then each namespace with model
servers gets one policy selecting the operator's serving pods, the `metrics` port is open only
to metricsFrom, and the inference ports to inferenceFrom (or anyone); off by default.
"""

from __future__ import annotations

from pathlib import Path

from test_chart_support import by_kind, helm, render, template_args

from kubeloop.resources.meta import MANAGED_BY
from kubeloop.resources.serving import COMPONENT, GRPC_PORT_NAME, METRICS_PORT_NAME, PORT_NAME

PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_off_by_default(tmp_path: Path) -> None:
    assert by_kind(render(tmp_path), "NetworkPolicy") == []


def test_the_metrics_port_is_open_to_metrics_from_alone(tmp_path: Path) -> None:
    values = {
        "watchNamespaces": ["team-a", "team-b"],
        "servingNetworkPolicy": {"enabled": True, "metricsFrom": [PROMETHEUS]},
    }
    policies = by_kind(render(tmp_path, values), "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    for policy in policies:
        spec = policy["spec"]
        # The labels the operator's pod builder puts on every server pod.
        assert spec["podSelector"]["matchLabels"] == {
            **MANAGED_BY,
            "app.kubernetes.io/component": COMPONENT,
        }
        inference, metrics = spec["ingress"]
        assert inference == {"ports": [{"port": PORT_NAME}, {"port": GRPC_PORT_NAME}]}
        assert metrics == {"ports": [{"port": METRICS_PORT_NAME}], "from": [PROMETHEUS]}


def test_metrics_from_is_required(tmp_path: Path) -> None:
    values = {"servingNetworkPolicy": {"enabled": True}}
    failed = helm(*template_args(values, values_file=tmp_path / "v.json"), check=False)
    assert failed.returncode != 0 and "servingNetworkPolicy.metricsFrom" in failed.stderr
