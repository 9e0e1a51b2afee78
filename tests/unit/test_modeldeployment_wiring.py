"""The ModelDeployment controller's kopf wiring, with kopf's own registry and index machinery.

Given the handlers ``register`` installs, when a TrainingRun event arrives with the indices
kopf hands every handler (keyed by each index handler's id, as kopf builds the kwargs), then
the ModelDeployments that serve that run are reconciled. The id used to default to the
function's ``__qualname__``, so the lookup raised KeyError on every event; kopf logs and
drops an event handler's error, and the integration tests' 2 s resync hid it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import kopf
from kopf._core.engines.indexing import OperatorIndexers

from kubeloop.config import OperatorConfig
from kubeloop.controllers import modeldeployment


class RecordingController:
    def __init__(self) -> None:
        self.reconciled: list[tuple[str, str]] = []
        self.observed: list[Any] = []
        # The watches' cache is fed by the handler before it reconciles.
        self.kube = SimpleNamespace(observe=self.observed.append)

    def reconcile(self, namespace: str, name: str) -> None:
        self.reconciled.append((namespace, name))


def test_a_run_event_reconciles_the_deployments_that_serve_it_through_the_index() -> None:
    registry = kopf.OperatorRegistry()
    controller = RecordingController()
    modeldeployment.register(registry, controller, OperatorConfig())  # type: ignore[arg-type]

    index_handlers = list(registry._indexing.get_all_handlers())
    assert len(index_handlers) == 1
    indexers = OperatorIndexers()
    indexers.ensure(index_handlers)
    # What the index handler returns for two deployments, stored as kopf stores it.
    for md, run in (("serve-a", "run-1"), ("serve-b", "run-2")):
        body = {"metadata": {"namespace": "team", "name": md, "uid": md},
                "spec": {"model": {"trainingRunRef": {"name": run}}}}  # fmt: skip
        result = index_handlers[0].fn(name=md, namespace="team", spec=body["spec"])
        indexers.replace(kopf.Body(body), {index_handlers[0].id: _outcome(result)})

    run_events = [
        h for h in registry._watching.get_all_handlers()
        if h.fn.__name__ == "on_trainingrun_event"
    ]  # fmt: skip
    assert len(run_events) == 1
    # kopf passes every index as a keyword named by its handler id.
    event = {"type": "MODIFIED", "object": {"kind": "TrainingRun", "metadata": {"name": "run-2"}}}
    run_events[0].fn(name="run-2", namespace="team", event=event, **dict(indexers.indices.items()))
    assert controller.reconciled == [("team", "serve-b")]
    assert controller.observed == [event]


def _outcome(result: Any) -> Any:
    from kopf._core.actions.execution import Outcome

    return Outcome(final=True, result=result)


def test_a_deployment_event_asks_the_wake_up_lane_and_needs_no_handler_thread() -> None:
    """A plain function handler runs on kopf's handler threads, where a Deployment's "available"
    queued behind new ModelDeployments' first reconciles (hack/bench/operator: ~30 s median
    between available and Healthy for 300 applied at once). The handler is a coroutine that
    feeds the cache and asks for a reconcile on the wake-up lane, which coalesces a burst."""
    import asyncio
    import inspect

    registry = kopf.OperatorRegistry()
    controller = RecordingController()
    woken: list[tuple[str, str, float]] = []
    controller.wake_up = lambda namespace, name, seconds: woken.append((namespace, name, seconds))  # type: ignore[attr-defined]
    modeldeployment.register(registry, controller, OperatorConfig())  # type: ignore[arg-type]
    handlers = [
        h for h in registry._watching.get_all_handlers()
        if h.fn.__name__ == "on_deployment_event"
    ]  # fmt: skip
    assert len(handlers) == 1
    assert inspect.iscoroutinefunction(handlers[0].fn)
    event = {"type": "MODIFIED", "object": {"kind": "Deployment", "metadata": {"name": "m-stable"}}}
    labels = {"kubeloop.io/modeldeployment": "m"}
    asyncio.run(handlers[0].fn(labels=labels, namespace="team", event=event))
    assert controller.observed == [event]
    assert controller.reconciled == []
    assert woken == [("team", "m", modeldeployment.DEPLOYMENT_EVENT_DELAY)]
