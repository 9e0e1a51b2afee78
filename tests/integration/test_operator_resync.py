"""Resyncs without kopf timers, on the real API server (kubeloop.controllers.resync).

Given ``kubeloop operator`` processes with a 2 s resync:

* no TrainingRun, ModelDeployment or DriftPolicy gets kopf's finalizer, and one an earlier
  version left it on loses it; with the operator stopped, all of them are deleted at once (they
  stayed Terminating before);
* a run in flight that nothing happens to is still reconciled every resync
  (``kubeloop_resyncs_total`` over real HTTP from the operator's /metrics);
* with two replicas of one peering, a replica that worked and is outranked again (the older
  replica frozen with SIGSTOP until its keep-alive expired, the younger took over, then the
  older resumed) resyncs nothing more: its counter stays flat while the working one's grows.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterfixture import MANUAL_KUBELET_LABEL
from harness import OperatorProcess, wait_for
from kubernetes import client
from operatorload import (
    GROUP,
    VERSION,
    install_peering,
    modeldeployment_body,
    peering_status,
    trainingrun_body,
)

pytestmark = pytest.mark.slow

KOPF_FINALIZER = "kubeloop.io/finalizer"
#: kwok leaves pods with this label Running (clusterfixture): the runs stay in flight, and
#: nothing happens to them.
IN_FLIGHT = {"KUBELOOP_POD_LABELS": json.dumps({MANUAL_KUBELET_LABEL[0]: MANUAL_KUBELET_LABEL[1]})}
PLURALS = {"TrainingRun": "trainingruns", "ModelDeployment": "modeldeployments", "DriftPolicy": "driftpolicies"}
#: kopf's peering lifetime in the operator (kubeloop.controllers.main) and slack for CI.
TAKEOVER_BOUND_S = 40.0


def peering_moves(process: OperatorProcess) -> list[str]:
    """kopf's pause and resume lines in a replica's log, oldest first."""
    text = process.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "Pausing operations" in line or "Resuming operations" in line]


_last_moves: dict[int, tuple[int, float]] = {}


def paused_for(process: OperatorProcess, seconds: float) -> bool:
    """Whether kopf paused the replica and has not resumed it for ``seconds`` (checked by polling)."""
    moves = peering_moves(process)
    if not moves or "Pausing operations" not in moves[-1]:
        return False
    seen = _last_moves.get(id(process))
    if seen is None or seen[0] != len(moves):
        _last_moves[id(process)] = (len(moves), time.monotonic())
        return False
    return time.monotonic() - seen[1] >= seconds


def policy_body(name: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": target},
            "source": {"dataset": {"uri": "file:///nonexistent/current.csv"}},
            "interval": "1h",
            "retrain": {"fromTrainingRun": {"name": "run"}},
        },
    }


def finalizers(custom: Any, namespace: str, kind: str, name: str) -> list[str]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)
    return list(obj["metadata"].get("finalizers") or [])


@pytest.fixture
def operators(kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None) -> Iterator[list[OperatorProcess]]:
    started: list[OperatorProcess] = []
    yield started
    for process in started:
        if process.process is not None and process.process.poll() is None:
            os.kill(process.process.pid, signal.SIGCONT)
        process.stop()
        print(f"--- {process.log_path.name}\n{process.log_tail(20)}")


def test_no_kopf_finalizer_and_a_run_in_flight_is_still_resynced(
    kube_api: Any, kubeconfig_path: str, namespace: str, operators: list[OperatorProcess], tmp_path: Path
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    # Given a run an earlier version left kopf's finalizer on, and one of each kind made now
    legacy = trainingrun_body("legacy")
    legacy["metadata"]["finalizers"] = [KOPF_FINALIZER]
    bodies = {
        ("TrainingRun", "legacy"): legacy,
        ("TrainingRun", "run"): trainingrun_body("run"),
        ("ModelDeployment", "serve"): modeldeployment_body("serve", "a" * 64),
        ("DriftPolicy", "watch"): policy_body("watch", "serve"),
    }
    for (kind, _), body in bodies.items():
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], body)
    process = OperatorProcess(kubeconfig_path, namespace, tmp_path / "operator.log", env=IN_FLIGHT)
    operators.append(process)
    process.start()

    # When the operator has handled them all
    for kind, name in bodies:
        wait_for(
            lambda k=kind, n=name: custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURALS[k], n
            ).get("status"),
            60, what=f"the operator's status on {kind} {name}",
        )
    # Then none carries kopf's finalizer (the earlier version's is removed)
    wait_for(lambda: KOPF_FINALIZER not in finalizers(custom, namespace, "TrainingRun", "legacy"),
             30, what="kopf's finalizer of an earlier version removed")
    time.sleep(3)  # a resync or two later: still none
    for kind, name in bodies:
        assert KOPF_FINALIZER not in finalizers(custom, namespace, kind, name), (kind, name)

    # And the runs in flight (their trainers run on and on: nothing happens to them) are
    # reconciled with no event every 2 s
    for name in ("legacy", "run"):
        phase = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", name)["status"]["phase"]
        assert phase not in ("Succeeded", "Failed"), (name, phase)
    before = process.metric("kubeloop_resyncs_total", kind="TrainingRun")
    time.sleep(5)
    after = process.metric("kubeloop_resyncs_total", kind="TrainingRun")
    assert after - before >= 2 * 1.5, f"2 runs, 5 s, a 2 s resync: {after - before} resyncs"
    assert process.metric("kubeloop_resyncs_total", kind="DriftPolicy") >= 1
    assert process.metric("kubeloop_resyncs_total", kind="ModelDeployment") >= 1

    # When the operator is stopped and every object deleted
    process.stop()
    for kind, name in bodies:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)

    # Then they are gone: nothing waited for an operator to release them
    def gone() -> bool:
        return all(
            not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
            for plural in PLURALS.values()
        )

    wait_for(gone, 15, what="every object deleted with no operator running")


def test_an_outranked_replica_resyncs_nothing(
    kube_api: Any, kubectl: Any, kubeconfig_path: str, namespace: str, operators: list[OperatorProcess],
    tmp_path: Path,
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    peering = install_peering(kubectl, namespace, tmp_path)
    env = {"KUBELOOP_PEERING": peering, **IN_FLIGHT}
    older = OperatorProcess(kubeconfig_path, namespace, tmp_path / "older.log", env={**env, "POD_ID": "older"})
    younger = OperatorProcess(kubeconfig_path, namespace, tmp_path / "younger.log", env={**env, "POD_ID": "younger"})
    operators += [older, younger]
    # Given the older replica working and the younger one standing by
    older.start()
    wait_for(lambda: "older" in peering_status(kube_api, namespace, peering), 60, what="the older replica's keep-alive")
    younger.start()
    wait_for(lambda: "younger" in peering_status(kube_api, namespace, peering), 60, what="the younger replica's keep-alive")
    status = peering_status(kube_api, namespace, peering)
    assert int(status["older"]["priority"]) > int(status["younger"]["priority"]), status
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", trainingrun_body("run"))
    wait_for(lambda: older.metric("kubeloop_resyncs_total", kind="TrainingRun") >= 2, 30, what="the older replica resyncing the run")
    assert younger.metric("kubeloop_resyncs_total", kind="TrainingRun") == 0

    # When the older one freezes until its keep-alive expires, the younger takes over
    assert older.process is not None
    os.kill(older.process.pid, signal.SIGSTOP)
    wait_for(lambda: younger.metric("kubeloop_resyncs_total", kind="TrainingRun") >= 2, TAKEOVER_BOUND_S, what="the younger replica taking over")

    # And the older one comes back: it outranks the younger again. kopf flaps for a moment
    # (the older replica, thawed, first cleans its own expired entry out of the peering
    # object, and the younger resumes until the older's next keep-alive): wait until kopf has
    # kept the younger paused for a few seconds.
    os.kill(older.process.pid, signal.SIGCONT)
    wait_for(lambda: paused_for(younger, 5.0), 60, interval=1.0, what="kopf keeping the younger replica paused")

    # Then the outranked replica resyncs nothing, while the working one goes on
    younger_before = younger.metric("kubeloop_resyncs_total", kind="TrainingRun")
    older_before = older.metric("kubeloop_resyncs_total", kind="TrainingRun")
    time.sleep(8)
    assert younger.metric("kubeloop_resyncs_total", kind="TrainingRun") == younger_before, "a standby replica resynced"
    assert older.metric("kubeloop_resyncs_total", kind="TrainingRun") - older_before >= 2
