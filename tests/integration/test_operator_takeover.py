"""Two operator replicas with the chart's kopf peering: the standby takes over from a killed one.

Given the chart's peering objects (``helm template``) and two ``kubeloop operator`` processes
with ``KUBELOOP_PEERING`` set as the chart sets it for ``replicaCount: 2``, while TrainingRuns
train and ModelDeployments roll out, when the active replica is SIGKILLed at random moments (a
seeded RNG, printed) and restarted, and finally both are killed and restarted together, then:

* after each kill a probe TrainingRun created at the moment of the kill gets its Job within a
  stated bound (the standby took over; the bound is the peering lifetime plus slack for a
  loaded CI machine);
* every run Succeeded with exactly one Job and one trainer pod ever created for it (counted by
  a watch started before the load: ADDED events and uids, so a delete-and-recreate counts too);
* every rollout finished on the new model, its ``currentStep`` never went back while it was in
  flight, and no Deployment was ever recreated (one uid per name).
"""

from __future__ import annotations

import json
import os
import random
import time
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
    install_peering,
    modeldeployment_body,
    peering_status,
    trainer_message,
    trainingrun_body,
)

pytestmark = pytest.mark.slow

# CI's size; the benchmark's (300 runs, 50 rollouts) through the same variables.
RUNS = int(os.environ.get("KUBELOOP_TAKEOVER_RUNS", "60"))
ROLLOUTS = int(os.environ.get("KUBELOOP_TAKEOVER_ROLLOUTS", "10"))
KILLS = int(os.environ.get("KUBELOOP_TAKEOVER_KILLS", "3"))
SHA_OLD, SHA_NEW = "a" * 64, "b" * 64
STEPS = [
    {"setWeight": 25}, {"pause": {"duration": "6s"}},
    {"setWeight": 50}, {"pause": {"duration": "6s"}},
    {"setWeight": 75}, {"pause": {"duration": "4s"}},
]
#: The stated takeover bound of this test: kopf's peering lifetime in the operator (12 s) plus
#: slack for a 2-core CI machine running other tests (the benchmark states the 15 s target).
TAKEOVER_BOUND_S = 30.0
MANUAL_KUBELET = {"kubeloop.io/test-kubelet": "manual"}



class Replicas:
    """Two operator processes of one peering, as the chart's Deployment runs them.

    Each (re)start gets a new peering identity (kopf's ``POD_ID``), as a restarted pod gets a
    new name: the killed process's keep-alive stays in the peering object until it expires,
    which is what a standby really waits for.
    """

    def __init__(self, kubeconfig: str, namespace: str, peering: str, logs: Path) -> None:
        self.kubeconfig, self.namespace, self.logs = kubeconfig, namespace, logs
        self.env = {
            "KUBELOOP_PEERING": peering,
            "KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET),
            "KUBELOOP_RUNTIME_IMAGE": "kubeloop:test",
            "KUBELOOP_ROLLOUT_TICK_SECONDS": "1",
        }
        self.processes: dict[str, OperatorProcess] = {}  # identity -> process
        self.starts = 0

    def start(self) -> str:
        self.starts += 1
        identity = f"replica-{self.starts}"
        process = OperatorProcess(self.kubeconfig, self.namespace, self.logs / f"{identity}.log",
                                  env={**self.env, "POD_ID": identity})
        process.start()
        self.processes[identity] = process
        return identity

    def kill(self, identity: str) -> None:
        self.processes.pop(identity).kill()

    def alive(self) -> set[str]:
        return set(self.processes)

    def stop_all(self) -> None:
        for identity, process in self.processes.items():
            process.stop()
            print(f"--- {identity} log tail\n{process.log_tail(15)}")


def active_replica(api: Any, namespace: str, peering: str, alive: set[str]) -> str | None:
    """The live replica with the highest priority in the peering object: the one kopf lets work."""
    status = peering_status(api, namespace, peering)
    seen = {name: info for name, info in status.items() if name in alive and info}
    if len(seen) < len(alive):
        return None
    return max(seen, key=lambda name: int(seen[name].get("priority", 0)))


@pytest.fixture
def load(
    kube_api: Any, kubectl: Any, namespace: str, crds: None, tmp_path: Path
) -> Iterator[tuple[Recorder, str, dict[str, Any]]]:
    peering = install_peering(kubectl, namespace, tmp_path)
    message = trainer_message()
    with FakeNodes(kube_api, f"takeover-{namespace}"[:50], (RUNS + 3 * ROLLOUTS) // 100 + 2) as nodes:
        recorder = Recorder(kube_api, namespace)
        kubelet = WatchKubelet(kube_api, namespace, message)
        recorder.listeners.append(kubelet)
        recorder.start()
        try:
            yield recorder, peering, nodes.placement
        finally:
            recorder.stop()
            kubelet.close()


def test_standby_takes_over_from_a_killed_active_replica_without_losing_or_duplicating_work(
    kube_api: Any, kubeconfig_path: str, namespace: str, load: tuple[Recorder, str, dict[str, Any]], tmp_path: Path
) -> None:
    recorder, peering, placement = load
    custom = client.CustomObjectsApi(kube_api)
    seed = int(os.environ.get("KUBELOOP_TAKEOVER_SEED", "20261206"))
    rng = random.Random(seed)
    print(f"takeover seed {seed} (KUBELOOP_TAKEOVER_SEED repeats it)")
    replicas = Replicas(kubeconfig_path, namespace, peering, tmp_path)
    replicas.start()
    replicas.start()
    try:
        first = wait_for(lambda: active_replica(kube_api, namespace, peering, replicas.alive()), 60,
                         what="both replicas in the peering")
        print(f"active at start: {first}")

        # Given healthy ModelDeployments on the old model
        mds = [modeldeployment_body(f"md-{i:02d}", SHA_OLD, STEPS, placement) for i in range(ROLLOUTS)]
        for md in mds:
            md["spec"]["replicas"] = 2
        apply_all(kube_api, namespace, "modeldeployments", mds)
        wait_for(lambda: all("Healthy" in recorder.timeline.md_phase_at[m["metadata"]["name"]] for m in mds),
                 120 + 2 * ROLLOUTS, interval=0.5, what="ModelDeployments Healthy on the old model")

        # When the runs are applied and every model changes (rollouts start) ...
        names = [f"run-{i:03d}" for i in range(RUNS)]
        apply_all(kube_api, namespace, "trainingruns", [trainingrun_body(n, placement) for n in names])
        for md in mds:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "modeldeployments", md["metadata"]["name"],
                {"spec": {"model": {"storageUri": "s3://models/bbbb/model.skops", "sha256": SHA_NEW}}},
            )

        # ... and the active replica is SIGKILLed at random moments, then restarted
        takeovers: list[float] = []
        probes: list[str] = []
        for kill in range(KILLS + 1):
            time.sleep(rng.uniform(0.5, 5.0))
            both = kill == KILLS
            victim = wait_for(lambda: active_replica(kube_api, namespace, peering, replicas.alive()), 60,
                              what="both live replicas in the peering")
            killed = sorted(replicas.alive()) if both else [victim]
            for name in killed:
                replicas.kill(name)
            killed_at = time.time()
            probe = f"probe-{kill}"
            probes.append(probe)
            apply_all(kube_api, namespace, "trainingruns", [trainingrun_body(probe, placement)])
            print(f"kill {kill}: SIGKILL {', '.join(killed)} at {killed_at:.3f}")
            for _ in killed:
                replicas.start()  # as the Deployment would start a new pod
            job_at = wait_for(lambda probe=probe: recorder.timeline.job_added.get(probe), 90, interval=0.2,
                              what=f"the probe run's Job after kill {kill}")
            takeover = job_at - killed_at
            takeovers.append(takeover)
            print(f"kill {kill}: the probe run's Job {takeover:.2f} s after the kill")

        # Then every run and every rollout ends as it would have without the kills
        everything = names + probes
        wait_for(lambda: all(recorder.timeline.run_phase.get(n) == "Succeeded" for n in everything),
                 240 + RUNS, interval=1, what="every run Succeeded")

        def rolled_out() -> bool:
            for md in mds:
                status = recorder.timeline.md_status.get(md["metadata"]["name"]) or {}
                if status.get("phase") != "Healthy" or (status.get("stable") or {}).get("sha256") != SHA_NEW:
                    return False
            return True

        wait_for(rolled_out, 240 + 2 * ROLLOUTS, interval=1, what="every rollout finished on the new model")
    finally:
        replicas.stop_all()

    t = recorder.timeline
    print(f"takeovers (s): {[round(x, 2) for x in takeovers]}")
    assert max(takeovers) <= TAKEOVER_BOUND_S, takeovers
    duplicated = {n: (t.job_adds[n], sorted(t.job_names[n]), len(t.job_uids[n])) for n in everything
                  if t.job_adds[n] != 1 or len(t.job_uids[n]) != 1 or len(t.job_names[n]) != 1}
    assert not duplicated, f"runs with other than one Job ever created: {duplicated}"
    trained_twice = {n: len(t.pod_uids[n]) for n in everything if len(t.pod_uids[n]) != 1}
    assert not trained_twice, f"runs whose trainer pod was created more than once: {trained_twice}"
    went_back = {name: steps for name, steps in t.md_steps.items() if steps != sorted(steps)}
    assert not went_back, f"rollouts whose currentStep went back: {went_back}"
    recreated = {name: len(uids) for name, uids in t.deployment_uids.items() if len(uids) != 1}
    assert not recreated, f"Deployments created more than once: {recreated}"
    assert all(t.md_steps[m["metadata"]["name"]] for m in mds), "a rollout was never seen in flight"
