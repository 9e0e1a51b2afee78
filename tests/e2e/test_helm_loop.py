"""The whole loop as a user runs it, on the real node, with the operator installed by Helm.

Same driver as ``make demo`` (hack/realnode/helmloop.py, one implementation): ``helm install``
of charts/kubeloop (operator pod under the chart's ServiceAccount, image built by
hack/realnode, pullPolicy Never; no operator on the host), a hostPath PersistentVolume bound to
the chart's models claim, a real Prometheus on the host that finds the model servers through
``kubernetes_sd_configs``, the quickstart files applied byte for byte, traffic from a pod.

LOUD NOTE: after the quickstart is applied as written, a clearly-labelled SECOND STEP patches
its production cadences (shadow 2m, pause 5m, analysis every 1m, drift every 5m over 1h) down
to seconds, points the DriftPolicy's live source at the Prometheus and its retrain at newer
data; the quickstart's indefinite pause is ended with kubeloop.io/promote as the person would.
Without that step the loop takes over 10 minutes of waiting.

Asserted: trained -> serving -> drift detected (Prometheus path) -> retrain TrainingRun ->
beats the champion on both recorded metrics -> canary steps with analysis -> promoted (stable
sha changed); then a shuffled-label model aborted by analysis within one analysis interval of
the canary's first request, stable unchanged, Degraded naming the failing metric.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from realnode import TIMINGS, RealNode

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack" / "realnode"))

import helmloop  # noqa: E402


@pytest.fixture(scope="module")
def loop_result(real_node: RealNode) -> Any:
    namespace = f"e2e-helm-{uuid.uuid4().hex[:6]}"
    kube = helmloop.Kube(real_node.kubectl_path, real_node.kubeconfig)
    state = real_node.state_dir.parent / "helm-loop" / namespace
    state.mkdir(parents=True, exist_ok=True)
    loop = helmloop.Loop(kube, namespace, f"kl-{namespace}", helmloop.free_port(), helmloop.tool("helm"), state)
    started = time.monotonic()
    try:
        result = loop.run()
        TIMINGS["helm loop (install -> promoted -> bad model aborted)"] = time.monotonic() - started
        for at, event, _ in result.timeline.events:
            TIMINGS[f"helm loop +{event}"] = at
        yield result
    finally:
        loop.teardown()


def test_operator_runs_from_the_chart(loop_result: Any) -> None:
    facts = loop_result.facts
    assert facts["operator_pod"], "no operator pod from the chart"
    assert facts["operator_service_account"].startswith("kl-e2e-helm-")
    assert facts["operator_image"] == "localhost/kubeloop/kubeloop:dev"
    assert facts["claim_phase"] == "Bound" and facts["claim_volume"].startswith("kubeloop-models-e2e-helm-")
    assert facts["quickstart_applied"] == [
        "examples/quickstart/trainingrun.yaml", "examples/quickstart/modeldeployment.yaml",
        "examples/quickstart/driftpolicy.yaml",
    ]


def test_helm_test_passes_after_install(loop_result: Any) -> None:
    # `helm test --logs` ran the chart's test Pod (operator image, its own ServiceAccount) right
    # after `helm install`; helm exits non-zero, and the loop stops, when it fails.
    output = loop_result.facts["helm_test"]
    assert re.search(r"^Phase:\s+Succeeded$", output, flags=re.MULTILINE), output
    for check in ("ok: trainingruns.kubeloop.io is served", "ok: modeldeployments.kubeloop.io is served",
                  "ok: driftpolicies.kubeloop.io is served", "/healthz", "ok: the metrics Service answers",
                  '{"passed": true, "problems": 0}'):
        assert check in output, f"{check!r} not in the test Pod's log:\n{output}"


def test_prometheus_found_the_servers_itself(loop_result: Any) -> None:
    facts = loop_result.facts
    # Kubernetes SD: the targets carry the discovered pod names (no static target exists).
    assert facts["prometheus_discovered"] and all(n.startswith("breast-cancer-") for n in facts["prometheus_discovered"])


def test_drift_retrain_beats_champion_and_is_promoted(loop_result: Any) -> None:
    facts = loop_result.facts
    events = [e for _, e, _ in loop_result.timeline.events]
    order = ["trained", "serving", "normal traffic checked", "drift detected", "retrain created",
             "beat the champion", "canary started", "promoted"]
    assert [e for e in events if e in order] == order
    assert facts["normal_check"]["samples"] >= 200
    assert facts["drift"]["share"] >= 0.3 and facts["drift"]["features"]
    assert facts["drift_condition"].get("status") == "True"
    assert facts["retrain_phase"] == "Succeeded"
    mine, champion = facts["retrain_metrics"], facts["champion_metrics"]
    assert {"roc_auc", "accuracy"} <= set(mine) and {"roc_auc", "accuracy"} <= set(champion), (mine, champion)
    assert mine["roc_auc"] > champion["roc_auc"] and mine["accuracy"] > champion["accuracy"], (mine, champion)
    steps = [s["step"] for s in facts["canary_steps"]]
    assert len(steps) >= 4, facts["canary_steps"]
    assert any(r.get("name") == "shadow-agreement" for r in facts["analysis_runs"] or []), facts["analysis_runs"]
    assert facts["promoted_sha"] == facts["retrain_sha"] != facts["first_sha"]


ROUND_LATENCY_SECONDS = 2.0


def test_bad_model_aborted_within_one_interval(loop_result: Any) -> None:
    abort = loop_result.facts["abort"]
    assert abort["stable_sha"] == abort["good_stable_sha"]
    assert abort["degraded"] and abort["degraded"].get("status") == "True"
    failing = {r["name"] for r in abort["failing_runs"]}
    assert failing and any(name in abort["degraded"].get("message", "") for name in failing), abort
    assert abort["first_request_at"] is not None, "the bad canary never answered a request"
    # Background rounds run at a fixed cadence (every interval from the canary's readiness), so
    # the verdict comes at the first round boundary after the canary's first request: at most one
    # interval later, plus the round's own latency (Prometheus queries, the status write) and
    # this driver's 0.5 s polling of both ends. ROUND_LATENCY_SECONDS is that allowance and
    # nothing else; it does NOT prove an abort faster than the next round boundary.
    limit = helmloop.ANALYSIS_INTERVAL_SECONDS + ROUND_LATENCY_SECONDS
    assert abort["seconds_after_first_request"] <= limit, abort


def test_status_shows_both_models_lineage(loop_result: Any) -> None:
    out = loop_result.facts["status_output"]
    assert loop_result.facts["retrain"] in out and helmloop.BAD_RUN in out, out
