"""A ModelDeployment reconcile that fails is tried again by its own wake-up: kopf never retries
an event handler, and a first rollout no longer ticks every few seconds (only canaries do), so
without it a failed reconcile would wait for the next resync. The API server here is a closed
port: every request really fails."""

from __future__ import annotations

import socket

import pytest
from kubernetes import client as k8s_client

from kubeloop.config import OperatorConfig
from kubeloop.controllers.kube import Kube
from kubeloop.controllers.modeldeployment import ModelDeploymentController


def _unreachable_kube() -> Kube:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = 0
    return Kube(k8s_client.ApiClient(configuration))


def test_a_failed_reconcile_wakes_up_again_after_the_tick() -> None:
    controller = ModelDeploymentController(_unreachable_kube(), OperatorConfig(rollout_tick_seconds=7))
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for a refused connection
            controller.reconcile("team", "churn")
        pending = controller.wakeups.pending()
        assert list(pending) == [("team", "churn")]
        assert 6 < pending[("team", "churn")] <= 7
    finally:
        controller.stop()
