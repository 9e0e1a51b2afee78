"""Scale smoke test: 300 TrainingRuns applied at once to one operator all end correctly.

Given kwok nodes of the test's own (tainted, so the 300 trainer pods fit and nobody else's pods
land there) and a watch started before the load, when 300 runs are applied at once, then every
run Succeeded with the real trainer's result, and for every run exactly one Job and one trainer
pod were ever created (ADDED events and uids, so a deleted-and-recreated Job counts twice).
Latencies are printed, not bounded: the bounds are the benchmark's (hack/bench/operator), on a
machine whose load is stated.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, wait_for
from kubernetes import client
from operatorload import (
    GROUP,
    VERSION,
    FakeNodes,
    Recorder,
    WatchKubelet,
    apply_all,
    percentile,
    trainer_message,
    trainingrun_body,
)

pytestmark = pytest.mark.slow

RUNS = 300
MANUAL_KUBELET = {"kubeloop.io/test-kubelet": "manual"}



@pytest.fixture
def operator(kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        # The chart's resync, not the other tests' 2 s: 300 runs resynced every 2 s is a load
        # of the test's making.
        env={"KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET), "KUBELOOP_RUNTIME_IMAGE": "kubeloop:test",
             "KUBELOOP_RESYNC_SECONDS": "30"},
    )
    process.start()
    yield process
    process.stop()
    print(process.log_tail(20))


def test_three_hundred_runs_at_once_all_succeed_with_one_job_and_one_pod_each(
    kube_api: Any, namespace: str, operator: OperatorProcess
) -> None:
    message = trainer_message()
    expected = json.loads(message)
    names = [f"load-{i:03d}" for i in range(RUNS)]
    with FakeNodes(kube_api, f"scale-{namespace}"[:50], RUNS // 100 + 1) as nodes:
        recorder = Recorder(kube_api, namespace)
        kubelet = WatchKubelet(kube_api, namespace, message)
        recorder.listeners.append(kubelet)
        recorder.start()
        try:
            sent = apply_all(kube_api, namespace, "trainingruns", [trainingrun_body(n, nodes.placement) for n in names])
            wait_for(lambda: sum(recorder.timeline.run_phase.get(n) in ("Succeeded", "Failed") for n in names) == RUNS,
                     600, interval=1, what=f"{RUNS} runs finished (operator log:\n{operator.log_tail(20)})")
        finally:
            recorder.stop()
            kubelet.close()

    t = recorder.timeline
    failed = {n: t.run_phase.get(n) for n in names if t.run_phase.get(n) != "Succeeded"}
    assert not failed, failed
    jobs = {n: (t.job_adds[n], len(t.job_uids[n])) for n in names if t.job_adds[n] != 1 or len(t.job_uids[n]) != 1}
    assert not jobs, f"runs with other than one Job ever created: {jobs}"
    pods = {n: len(t.pod_uids[n]) for n in names if len(t.pod_uids[n]) != 1}
    assert not pods, f"runs with other than one trainer pod ever created: {pods}"
    # Every run carries the trainer's own result, not just a phase.
    custom = client.CustomObjectsApi(kube_api)
    runs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns")["items"]
    assert len(runs) == RUNS
    for run in runs:
        assert run["status"]["model"]["sha256"] == expected["sha256"], run["metadata"]["name"]

    to_job = [t.job_added[n] - sent[n] for n in names]
    to_pod = [t.first_pod[n] - t.job_added[n] for n in names]
    print("OPERATOR-SCALE", json.dumps({
        "runs": RUNS,
        "apply_to_job_p50_s": round(statistics.median(to_job), 2), "apply_to_job_p99_s": round(percentile(to_job, 99), 2),
        "job_controller_job_to_pod_p99_s": round(percentile(to_pod, 99), 2),
    }))
