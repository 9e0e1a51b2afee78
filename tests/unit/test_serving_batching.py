"""spec.server.batching means what the server does: leaving it out and writing ``{}`` give the
server the same batching, every value the API accepts the server accepts too, and the
documented default is the server's.

Each case goes the way a spec goes: parsed and defaulted by the API models (what the API
server's structural defaults do), built into the stable Deployment, and its container's
command line parsed by ``kubeloop serve``'s own settings loader.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_serving_pod_options import MODEL, SETTINGS, modeldeployment

from kubeloop.api.batching import (
    DEFAULT_MAX_BATCH_LATENCY_MS,
    DEFAULT_MAX_BATCH_SIZE,
    MAX_BATCH_LATENCY_MS,
)
from kubeloop.api.wire import InvalidResource, from_wire, to_wire
from kubeloop.resources.serving import build_track_deployment
from kubeloop.runtime.serve import load_settings


def served_batching(server: dict[str, Any] | None, monkeypatch: pytest.MonkeyPatch) -> tuple[int, float]:
    for name in ("KUBELOOP_SERVE_MAX_BATCH_SIZE", "KUBELOOP_SERVE_MAX_BATCH_LATENCY_MS"):
        monkeypatch.delenv(name, raising=False)
    md = modeldeployment(server)
    defaulted = {**md, "spec": to_wire(from_wire("ModelDeployment", md))["spec"]}
    deployment = build_track_deployment(defaulted, "stable", MODEL, 1, SETTINGS)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = [*container.get("command", [])[1:], *container["args"]]
    assert args[0] == "serve", args
    settings = load_settings(args[1:])
    return settings.max_batch_size, settings.max_batch_latency_ms


DEFAULTS = (DEFAULT_MAX_BATCH_SIZE, float(DEFAULT_MAX_BATCH_LATENCY_MS))


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (None, DEFAULTS),
        ({}, DEFAULTS),
        ({"batching": {}}, DEFAULTS),
        ({"batching": {"maxBatchSize": 8}}, (8, float(DEFAULT_MAX_BATCH_LATENCY_MS))),
        ({"batching": {"maxLatencyMs": 20}}, (DEFAULT_MAX_BATCH_SIZE, 20.0)),
        ({"batching": {"maxBatchSize": 1}}, (1, float(DEFAULT_MAX_BATCH_LATENCY_MS))),
        # The API's bounds are values the server starts with.
        ({"batching": {"maxBatchSize": 4096, "maxLatencyMs": MAX_BATCH_LATENCY_MS}}, (4096, 1000.0)),
        ({"batching": {"maxLatencyMs": 0}}, (DEFAULT_MAX_BATCH_SIZE, 0.0)),
    ],
)
def test_the_server_batches_as_the_spec_says(
    server: dict[str, Any] | None, expected: tuple[int, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert served_batching(server, monkeypatch) == expected


def test_the_documented_default_is_the_servers() -> None:
    from kubeloop.api.modeldeployment import ServerSpec

    description = ServerSpec.model_fields["batching"].description or ""
    assert f"up to {DEFAULT_MAX_BATCH_SIZE} rows" in description
    assert f"at most {DEFAULT_MAX_BATCH_LATENCY_MS} ms" in description


def test_a_wait_the_server_would_refuse_is_refused_with_the_field_named() -> None:
    md = modeldeployment({"batching": {"maxLatencyMs": MAX_BATCH_LATENCY_MS + 1}})
    with pytest.raises(InvalidResource, match=r"spec\.server\.batching\.maxLatencyMs"):
        from_wire("ModelDeployment", md)
