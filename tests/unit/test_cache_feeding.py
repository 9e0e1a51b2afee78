"""Every watch handler on a kind the operator's cache holds puts its event into the cache before
it reconciles. kopf calls the handlers of one event one after another in registration order,
and a handler that reconciled from the cache before the event was in it read the old object:
a deleted ModelDeployment kept a deleted run's artifacts waiting (integration test
test_delete_policy_waits_for_the_deployment_then_deletes_the_artifacts found it)."""

from __future__ import annotations

import inspect

from kubeloop.config import OperatorConfig
from kubeloop.controllers import main
from kubeloop.controllers.kube import KINDS, Kube


def test_every_handler_on_a_cached_kind_feeds_the_cache_first() -> None:
    cache = main.watched_objects()
    covered = {(KINDS[kind].group, KINDS[kind].plural) for kind in KINDS if cache.covers(kind)}
    kube = Kube(api_client=None)  # type: ignore[arg-type]  # no request is made
    registry = main.build_registry(kube, OperatorConfig(metrics_port=0))
    checked = []
    for handler in registry._watching.get_all_handlers():
        selector = handler.selector
        plural = selector.plural or selector.any_name if selector is not None else None
        if selector is None or (selector.group or "", plural) not in covered:
            continue
        source = inspect.getsource(handler.fn)
        feeding = "kube.observe(event)"
        if "feed(event)" in source:
            # The ModelDeployment controller's child handlers go through its feed() helper.
            helpers = {c.cell_contents.__name__: c.cell_contents for c in handler.fn.__closure__ or ()
                       if inspect.isfunction(c.cell_contents)}
            assert feeding in inspect.getsource(helpers["feed"]), "feed() does not feed the cache"
            feeding = "feed(event)"
        assert feeding in source, f"{handler.id} does not feed the cache"
        assert source.index(feeding) < source.find(".reconcile") or ".reconcile" not in source, (
            f"{handler.id} reconciles before it feeds the cache"
        )
        checked.append(handler.id)
    # runs (new and seen), Jobs, pods, ModelDeployments (two controllers), Deployments, Services,
    # autoscalers, disruption budgets, and the runs the ModelDeployment and DriftPolicy controllers follow.
    assert len(checked) >= 12, checked
