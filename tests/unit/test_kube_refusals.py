"""Which refused writes are final (kubeloop.controllers.kube.lasting_refusal): the rule the
ModelDeployment controller (a route's weights) and the DriftPolicy controller (a promotion)
share."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from kubeloop.controllers.kube import Conflict, NotFound, lasting_refusal


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFound("modeldeployments/churn: not found"), 404),
        (ApiException(status=422, reason="spec.model: set exactly one of ..."), 422),
        (ApiException(status=403, reason="forbidden"), 403),
        (ApiException(status=429, reason="throttled"), None),  # may pass later
        (ApiException(status=500, reason="etcd"), None),
        (ApiException(status=503, reason="unavailable"), None),
        (ApiException(reason="connection reset"), None),  # no answer at all
        (Conflict("changed"), None),
        (RuntimeError("other"), None),
    ],
)
def test_a_lasting_refusal_is_a_4xx_no_retry_changes(error: Exception, code: int | None) -> None:
    # One rule for the writes whose refusal is final (a route's weights, a DriftPolicy's
    # promotion): the rest is raised and retried.
    assert lasting_refusal(error) == code
