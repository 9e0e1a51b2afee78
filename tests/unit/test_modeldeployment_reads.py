"""A reconcile's reads: what the watches' cache answers never waits in the request pool.

Behind a burst of new ModelDeployments' writes (each waiting seconds for its Services on a busy
API server) the pool queued for seconds, and a reconcile that needed no request at all - a
Deployment became available, everything else was in the cache - waited there with them. The
API server here is a closed port: a read that reaches it really fails.
"""

from __future__ import annotations

import pytest
from test_modeldeployment_retry import _unreachable_kube

from kubeloop.config import OperatorConfig
from kubeloop.controllers.cache import ObjectCache
from kubeloop.controllers.modeldeployment import ModelDeploymentController
from kubeloop.resources.serving import OWNER_LABEL


def _controller() -> ModelDeploymentController:
    kube = _unreachable_kube()
    kube.cache = ObjectCache()
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        kube.cache.cover(kind, OWNER_LABEL)
    return ModelDeploymentController(kube, OperatorConfig())


def _deployment(name: str) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"namespace": "team", "name": name, "resourceVersion": "5", "labels": {OWNER_LABEL: "m"}},
    }


def test_cache_answers_need_neither_the_pool_nor_the_server() -> None:
    controller = _controller()
    try:
        assert controller.kube.cache is not None
        controller.kube.cache.remember(_deployment("m-stable"))
        controller.kube.cache.mark_absent("Deployment", "team", "m-canary", 0)
        controller._requests.shutdown()  # any submit would raise now
        stable, canary = controller.read_all(
            "team", [("Deployment", "m-stable"), ("Deployment", "m-canary")], ours=True
        )
        assert stable is not None and stable["metadata"]["name"] == "m-stable"
        assert canary is None
    finally:
        controller.stop()


def test_a_read_the_cache_cannot_answer_goes_to_the_server() -> None:
    controller = _controller()
    try:
        # The 404 was remembered for a child of ours; a check before a write (ours=False)
        # must still ask the server: someone else's object of that name is not in the watch.
        assert controller.kube.cache is not None
        controller.kube.cache.mark_absent("Deployment", "team", "m-canary", 0)
        with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for a refused connection
            controller.read_all("team", [("Deployment", "m-canary")])
    finally:
        controller.stop()
