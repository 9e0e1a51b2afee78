"""TrainingRun controller on a real API server with kwok nodes.

Given the generated CRDs and a running ``kubeloop operator``, when a TrainingRun is applied,
then exactly one Job appears, its pod is scheduled by the real scheduler onto a kwok node,
and the run follows the pod to its end. The test plays the kubelet only where kwok cannot:
it writes the termination message that ``kubeloop train`` really produced on the same spec,
run locally here.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, events_once, play_kubelet_terminate, wait_for
from kubernetes import client

from kubeloop.resources.driftjob import drift_report_uri
from kubeloop.training.data import load_table

GROUP, VERSION, PLURAL = "kubeloop.io", "v1alpha1", "trainingruns"
# kwok leaves pods with this label alone, so the test can finish them like a kubelet would.
MANUAL_KUBELET = {"kubeloop.io/test-kubelet": "manual"}
# kwok's chaos stage fails pods with this label (exit code set in the container status).
CHAOS = {"pod-container-running-failed.stage.kwok.x-k8s.io": "true"}



@pytest.fixture
def operator(kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig_path,
        namespace,
        tmp_path / "operator.log",
        env={"KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET), "KUBELOOP_RUNTIME_IMAGE": "kubeloop:test"},
    )
    process.start()
    yield process
    process.stop()
    print(process.log_tail(30))


def trainingrun(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": "cancer", "estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}, "task": "classification"},
        "data": {"source": "sklearn://breast_cancer", "target": "target", "split": {"testFraction": 0.25, "seed": 7}},
        "evaluation": {"metric": "accuracy", "threshold": 0.8},
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name}, "spec": body}


def run_trainer_locally(run: dict[str, Any], out: Path, index: int | None = None) -> tuple[str, int]:
    """Really run `kubeloop train` on the run's spec; return its termination message and exit code."""
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / f"spec-{index}.json"
    spec_file.write_text(json.dumps(run["spec"]))
    message_file = out / f"message-{index}.json"
    env = {**os.environ}
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", "train", "--spec", str(spec_file), "--run-name", run["metadata"]["name"],
         "--storage-uri", f"file://{out}/models", "--termination-log", str(message_file)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    return message_file.read_text(), proc.returncode


def get_run(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)  # type: ignore[no-any-return]


def run_phase(custom: client.CustomObjectsApi, namespace: str, name: str) -> str | None:
    return (get_run(custom, namespace, name).get("status") or {}).get("phase")


def trainer_pods(core: client.CoreV1Api, namespace: str, run_name: str) -> list[dict[str, Any]]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"kubeloop.io/trainingrun={run_name}")
    return [core.api_client.sanitize_for_serialization(p) for p in pods.items]


def test_run_succeeds_with_metrics_in_columns(kube_api: Any, kubectl: Any, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    core, custom, batch = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api), client.BatchV1Api(kube_api)
    run = trainingrun("cancer-1")
    message, code = run_trainer_locally(run, tmp_path / "trainer")
    assert code == 0, message

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run)
    pod = wait_for(lambda: next(iter(trainer_pods(core, namespace, "cancer-1")), None), 60, what="trainer pod")
    # Scheduled by the real scheduler onto a kwok node.
    wait_for(lambda: core.read_namespaced_pod(pod["metadata"]["name"], namespace).spec.node_name, 30, what="pod scheduled")
    wait_for(lambda: run_phase(custom, namespace, "cancer-1") in {"Pending", "Training"}, 30, what="run pending")

    play_kubelet_terminate(core, namespace, pod, message, 0)
    wait_for(lambda: run_phase(custom, namespace, "cancer-1") == "Succeeded", 60, what="run Succeeded")

    jobs = batch.list_namespaced_job(namespace, label_selector="kubeloop.io/trainingrun=cancer-1").items
    assert len(jobs) == 1
    status = get_run(custom, namespace, "cancer-1")["status"]
    expected = json.loads(message)
    assert status["model"]["sha256"] == expected["sha256"]
    assert status["model"]["metrics"]["accuracy"] == pytest.approx(expected["metrics"]["accuracy"])
    assert status["model"]["dataFingerprint"] == expected["dataFingerprint"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    table = kubectl("get", "tr", "-n", namespace).stdout
    assert "cancer-1" in table and "Succeeded" in table and "accuracy=" in table

    # Events are written in the background: the Succeeded one may land after the status.
    def reasons() -> set[str] | None:
        out = kubectl("get", "events", "-n", namespace, "--field-selector=involvedObject.name=cancer-1", "-o", "json")
        found = {e["reason"] for e in json.loads(out.stdout)["items"]}
        return found if {"JobCreated", "Succeeded"} <= found else None

    assert {"JobCreated", "Succeeded"} <= wait_for(reasons, 30, 0.3, "JobCreated and Succeeded events")


def test_validation_failure_ends_the_run_with_its_reason(kube_api: Any, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    run = trainingrun("cancer-bad", validation={"minRows": 100000})
    message, code = run_trainer_locally(run, tmp_path / "trainer")
    assert code == 2, message
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run)
    pod = wait_for(lambda: next(iter(trainer_pods(core, namespace, "cancer-bad")), None), 60, what="trainer pod")
    play_kubelet_terminate(core, namespace, pod, message, code)
    wait_for(lambda: run_phase(custom, namespace, "cancer-bad") == "Failed", 60, what="run Failed")
    status = get_run(custom, namespace, "cancer-bad")["status"]
    assert status["lastFailure"]["reason"] == "DataValidationFailed"
    assert "rows" in status["message"]


def test_a_refused_data_source_fails_the_run_at_once_with_the_trainers_reason(
    kube_api: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    core, custom, batch = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api), client.BatchV1Api(kube_api)
    # Given a run whose data source is the machine's own files, which the real trainer refuses
    run = trainingrun("cancer-etc", backoffLimit=3, data={"source": "file:///etc/passwd", "format": "csv", "target": "target"})
    message, code = run_trainer_locally(run, tmp_path / "trainer")
    assert code == 4, message
    assert json.loads(message)["reason"] == "SpecInvalid"

    # When its pod ends with the trainer's exit code and termination message
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run)
    pod = wait_for(lambda: next(iter(trainer_pods(core, namespace, "cancer-etc")), None), 60, what="trainer pod")
    play_kubelet_terminate(core, namespace, pod, message, code)

    # Then the Job fails on that one pod (podFailurePolicy: no retry can help), and the run says why
    wait_for(lambda: run_phase(custom, namespace, "cancer-etc") == "Failed", 60, what="run Failed")
    status = get_run(custom, namespace, "cancer-etc")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], status["lastFailure"]["reason"]) == ("False", "SpecInvalid", "SpecInvalid")
    assert "spec.data.source" in ready["message"] and "(exit code 4)" in ready["message"]
    job = batch.list_namespaced_job(namespace, label_selector="kubeloop.io/trainingrun=cancer-etc").items[0]
    failed = next(c for c in job.status.conditions if c.type == "Failed" and c.status == "True")
    assert failed.reason == "PodFailurePolicy"
    time.sleep(2)  # a retry would have its pod by now
    assert len(trainer_pods(core, namespace, "cancer-etc")) == 1


def test_sweep_of_six_yields_six_trials_and_the_best(kube_api: Any, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    run = trainingrun("cancer-sweep", sweep={"grid": {"C": [0.001, 0.1, 10.0], "fit_intercept": [True, False]}, "parallelism": 6})
    messages = {i: run_trainer_locally(run, tmp_path / "trainer", index=i) for i in range(6)}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run)

    pods = wait_for(lambda: (p := trainer_pods(core, namespace, "cancer-sweep")) and len(p) == 6 and p, 90, what="6 trial pods")
    for pod in pods:
        index = int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        message, code = messages[index]
        play_kubelet_terminate(core, namespace, pod, message, code)
    wait_for(lambda: run_phase(custom, namespace, "cancer-sweep") in {"Succeeded", "Failed"}, 90, what="sweep finished")

    status = get_run(custom, namespace, "cancer-sweep")["status"]
    assert len(status["trials"]) == 6
    accuracies = {i: json.loads(m)["metrics"]["accuracy"] for i, (m, _) in messages.items()}
    best = max(accuracies, key=lambda i: (accuracies[i], -i))
    assert status["bestTrial"] == best
    assert status["model"]["metrics"]["accuracy"] == pytest.approx(accuracies[best])


def test_job_is_admitted_in_a_restricted_namespace(kube_api: Any, namespace: str, operator: OperatorProcess) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, trainingrun("cancer-restricted"))
    # The Job controller creates the pod only if Pod Security admission lets it in.
    wait_for(lambda: trainer_pods(core, namespace, "cancer-restricted"), 60, what="pod admitted under restricted")


@pytest.fixture
def chaos_operator(kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig_path, namespace, tmp_path / "operator.log", env={"KUBELOOP_POD_LABELS": json.dumps(CHAOS)})
    process.start()
    yield process
    process.stop()


def test_pod_failed_by_kwok_chaos_fails_the_run(kube_api: Any, namespace: str, chaos_operator: OperatorProcess) -> None:
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, trainingrun("cancer-chaos", backoffLimit=0))
    wait_for(lambda: run_phase(custom, namespace, "cancer-chaos") == "Failed", 90, what="run Failed")
    status = get_run(custom, namespace, "cancer-chaos")["status"]
    assert status["lastFailure"]["reason"] in {"BackoffLimitExceeded", "TrainerFailed"}
    assert "exit code" in status["message"]


# --- scale and crash safety ------------------------------------------------------------------


class Kubelet(threading.Thread):
    """Finishes every trainer pod it sees with a real trainer result, like a kubelet would."""

    def __init__(self, core: client.CoreV1Api, namespace: str, message: str) -> None:
        super().__init__(daemon=True)
        self.core, self.namespace, self.message = core, namespace, message
        self.stop = threading.Event()
        self.finished: set[str] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for pod in self.core.list_namespaced_pod(self.namespace, label_selector="kubeloop.io/trainingrun").items:
                    name = pod.metadata.name
                    if name in self.finished or not pod.spec.node_name:
                        continue
                    play_kubelet_terminate(self.core, self.namespace, self.core.api_client.sanitize_for_serialization(pod), self.message, 0)
                    self.finished.add(name)
            except client.ApiException:
                pass
            self.stop.wait(0.5)


def _jobs_per_run(batch: client.BatchV1Api, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in batch.list_namespaced_job(namespace).items:
        run = (job.metadata.labels or {}).get("kubeloop.io/trainingrun", "")
        counts[run] = counts.get(run, 0) + 1
    return counts


@pytest.mark.slow
def test_sigkill_at_random_moments_never_duplicates_a_job(kube_api: Any, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    core, custom, batch = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api), client.BatchV1Api(kube_api)
    message, code = run_trainer_locally(trainingrun("template"), tmp_path / "trainer")
    assert code == 0
    kubelet = Kubelet(core, namespace, message)
    kubelet.start()
    names = [f"crash-{i}" for i in range(30)]
    rng = random.Random(20261123)
    try:
        for name in names:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, trainingrun(name))
        for _ in range(5):
            time.sleep(rng.uniform(0.2, 2.0))
            operator.kill()
            assert max(_jobs_per_run(batch, namespace).values(), default=0) <= 1
            operator.start()
        wait_for(
            lambda: all(run_phase(custom, namespace, n) == "Succeeded" for n in names), 180, interval=1, what="all 30 runs Succeeded"
        )
    finally:
        kubelet.stop.set()
    counts = _jobs_per_run(batch, namespace)
    assert sorted(counts) == sorted(names)
    assert set(counts.values()) == {1}


@pytest.mark.slow
def test_hundred_runs_at_once(kube_api: Any, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    core, custom, batch = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api), client.BatchV1Api(kube_api)
    message, code = run_trainer_locally(trainingrun("template"), tmp_path / "trainer")
    assert code == 0
    kubelet = Kubelet(core, namespace, message)
    kubelet.start()
    names = [f"load-{i:03d}" for i in range(100)]
    applied: dict[str, float] = {}
    try:
        for name in names:
            applied[name] = time.time()
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, trainingrun(name))
        wait_for(lambda: all(run_phase(custom, namespace, n) == "Succeeded" for n in names), 300, interval=1, what="100 runs Succeeded")
    finally:
        kubelet.stop.set()
    operator._sample_rss()
    latencies = []
    for job in batch.list_namespaced_job(namespace).items:
        run = job.metadata.labels["kubeloop.io/trainingrun"]
        created: datetime = job.metadata.creation_timestamp
        latencies.append(max(0.0, created.timestamp() - applied[run]))
    assert len(latencies) == 100
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[98]
    report = {"runs": 100, "apply_to_job_p50_s": round(p50, 3), "apply_to_job_p99_s": round(p99, 3), "operator_peak_rss_mib": round(operator.peak_rss_kib / 1024, 1)}
    print("TRAININGRUN-SCALE", json.dumps(report))
    out = Path(os.environ.get("KUBELOOP_BENCH_OUT", "/tmp")) / "trainingrun-scale.json"
    out.write_text(json.dumps(report))


# --- cleanupPolicy: what happens to the artifacts when a run is deleted ----------------------

ARTIFACT_CLEANUP = "kubeloop.io/artifact-cleanup"


def events_of(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return list(core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items)


def events_with(core: client.CoreV1Api, namespace: str, name: str, reasons: set[str]) -> list[Any]:
    """``name``'s Events once those of ``reasons`` are all there."""
    return events_once(core, namespace, lambda found: reasons <= {e.reason for e in found},
                       f"{sorted(reasons)} events of {name}", name=name)


def run_gone(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    try:
        get_run(custom, namespace, name)
    except client.ApiException as exc:
        return exc.status == 404
    return False


def trained_run(core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, tmp_path: Path,
                name: str, policy: str) -> Path:
    """Given a run trained for real (the trainer run here, its pod finished by the test): its directory."""
    trainer_dir = tmp_path / "trainer"
    run = trainingrun(name, cleanupPolicy=policy, output={"storageUri": f"file://{trainer_dir}/models"})
    message, code = run_trainer_locally(run, trainer_dir)
    assert code == 0, message
    run_dir = trainer_dir / "models" / "cancer" / name
    assert (run_dir / "model.sha256").is_file() and (run_dir / "report.json").is_file()
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run)
    pod = wait_for(lambda: next(iter(trainer_pods(core, namespace, name)), None), 60, what="trainer pod")
    play_kubelet_terminate(core, namespace, pod, message, 0)
    wait_for(lambda: run_phase(custom, namespace, name) == "Succeeded", 60, what="run Succeeded")
    return run_dir


def dataset_drift_check(run_dir: Path, tmp_path: Path, policy: str, due_epoch: int) -> Path:
    """The real `kubeloop drift` of a dataset DriftPolicy, its page written where the drift Job
    puts it (beside the run's profile); returns the page."""
    data = tmp_path / "incoming" / "today.csv"
    if not data.exists():
        data.parent.mkdir(parents=True)
        load_table("sklearn://breast_cancer").frame.to_csv(data, index=False)
    page = Path(drift_report_uri(f"file://{run_dir}/profile.json", policy, due_epoch).removeprefix("file://"))
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", "drift", "--data", str(data), "--profile", str(run_dir / "profile.json"),
         "--html", str(page), "--termination-log", str(tmp_path / f"drift-{policy}-{due_epoch}.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert page.is_file()
    return page


def test_delete_policy_waits_for_the_deployment_then_deletes_the_artifacts(
    kube_api: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    core, custom, batch = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api), client.BatchV1Api(kube_api)
    # Given a Succeeded run with cleanupPolicy Delete, whose model a ModelDeployment serves
    # and a dataset DriftPolicy has checked twice (its reports live in the run's directory)
    run_dir = trained_run(core, custom, namespace, tmp_path, "cancer-del", "Delete")
    pages = [dataset_drift_check(run_dir, tmp_path, "cancer-drift", epoch) for epoch in (1764028800, 1764115200)]
    wait_for(lambda: ARTIFACT_CLEANUP in (get_run(custom, namespace, "cancer-del")["metadata"].get("finalizers") or []),
             30, what="our finalizer on the run")
    md = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "cancer-serve"},
          "spec": {"model": {"trainingRunRef": {"name": "cancer-del"}}}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", md)

    # When the run is deleted, then it stays while the deployment serves its model
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cancer-del")
    in_use = wait_for(lambda: next((e for e in events_of(core, namespace, "cancer-del") if e.reason == "ArtifactsInUse"), None),
                      30, what="ArtifactsInUse event")
    assert "md/cancer-serve" in in_use.message
    time.sleep(2)  # a few resyncs' worth: nothing may move while the model is in use
    assert get_run(custom, namespace, "cancer-del")["metadata"]["deletionTimestamp"]
    assert (run_dir / "model.skops").is_file()
    assert not batch.list_namespaced_job(namespace, label_selector="app.kubernetes.io/component=artifact-cleanup").items

    # When the deployment goes, then the cleanup Job appears; its pod really deletes the files
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "cancer-serve")
    pod = wait_for(
        lambda: next(iter(core.list_namespaced_pod(
            namespace, label_selector="kubeloop.io/trainingrun=cancer-del,app.kubernetes.io/component=artifact-cleanup").items), None),
        60, what="cleanup pod",
    )
    pod_body = core.api_client.sanitize_for_serialization(pod)
    container = pod_body["spec"]["containers"][0]
    assert container["command"] == ["kubeloop"] and container["securityContext"]["runAsNonRoot"] is True
    message_file = tmp_path / "cleanup-message.json"
    args = [str(message_file) if a == container["terminationMessagePath"] else a for a in container["args"]]
    proc = subprocess.run([sys.executable, "-m", "kubeloop.cli", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not run_dir.exists() and not any(page.exists() for page in pages)
    assert json.loads(message_file.read_text())["files"] == 4 + len(pages)
    play_kubelet_terminate(core, namespace, pod_body, message_file.read_text(), proc.returncode, container="cleanup")

    # Then the run is gone, and says what was deleted
    wait_for(lambda: run_gone(custom, namespace, "cancer-del"), 60, what="run deleted")
    cleanup_reasons = {"ArtifactsInUse", "CleanupStarted", "ArtifactsDeleted"}
    reasons = {e.reason for e in events_with(core, namespace, "cancer-del", cleanup_reasons)}
    assert {"ArtifactsInUse", "CleanupStarted", "ArtifactsDeleted"} <= reasons
    assert (tmp_path / "trainer" / "models" / "cancer").is_dir()  # only the run's own directory went


def test_a_run_deleted_while_training_stops_its_trainer_before_the_cleanup(
    kube_api: Any, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    core, custom, batch = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api), client.BatchV1Api(kube_api)
    name, hold = "cancer-mid", "test.kubeloop.io/hold"
    training = f"kubeloop.io/trainingrun={name},app.kubernetes.io/component=training"
    cleanup = f"kubeloop.io/trainingrun={name},app.kubernetes.io/component=artifact-cleanup"
    # Given a Delete-policy run whose trainer pod is still running; the pod carries a finalizer
    # of the test's, so it lingers while terminating the way a real trainer's grace period does
    run = trainingrun(name, cleanupPolicy="Delete", output={"storageUri": f"file://{tmp_path}/models"})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run)
    pod = wait_for(lambda: next(iter(core.list_namespaced_pod(namespace, label_selector=training).items), None),
                   60, what="trainer pod")
    core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"finalizers": [hold]}})
    wait_for(lambda: ARTIFACT_CLEANUP in (get_run(custom, namespace, name)["metadata"].get("finalizers") or []),
             30, what="our finalizer on the run")

    # When the run is deleted, then its training Job goes first and the trainer pod is stopping
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_for(lambda: not batch.list_namespaced_job(namespace, label_selector=training).items, 60, what="training Job deleted")
    stopping = wait_for(lambda: next((e for e in events_of(core, namespace, name) if e.reason == "StoppingTraining"), None),
                        30, what="StoppingTraining event")
    assert f"{name}-train" in stopping.message or "training Job" in stopping.message
    wait_for(lambda: core.read_namespaced_pod(pod.metadata.name, namespace).metadata.deletion_timestamp is not None,
             60, what="trainer pod terminating")
    waiting = wait_for(lambda: "waiting for the trainer pod" in (get_run(custom, namespace, name).get("status") or {}).get("message", "")
                       or None, 30, what="the run says it waits for the trainer")
    assert waiting
    time.sleep(2)  # a few resyncs' worth: no cleanup while a trainer could still write
    assert not batch.list_namespaced_job(namespace, label_selector=cleanup).items

    # When the trainer pod is gone, then the cleanup runs and the run goes
    core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"finalizers": None}})
    cleanup_pod = wait_for(lambda: next(iter(core.list_namespaced_pod(namespace, label_selector=cleanup).items), None),
                           60, what="cleanup pod")
    pod_body = core.api_client.sanitize_for_serialization(cleanup_pod)
    container = pod_body["spec"]["containers"][0]
    message_file = tmp_path / "cleanup-message.json"
    args = [str(message_file) if a == container["terminationMessagePath"] else a for a in container["args"]]
    proc = subprocess.run([sys.executable, "-m", "kubeloop.cli", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr  # the trainer never wrote: "Absent"
    play_kubelet_terminate(core, namespace, pod_body, message_file.read_text(), proc.returncode, container="cleanup")
    wait_for(lambda: run_gone(custom, namespace, name), 60, what="run deleted")
    events = events_with(core, namespace, name, {"StoppingTraining", "CleanupStarted"})
    reasons = [e.reason for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)]
    assert reasons.index("StoppingTraining") < reasons.index("CleanupStarted")


def test_retain_policy_leaves_the_artifacts(kube_api: Any, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    core, custom, batch = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api), client.BatchV1Api(kube_api)
    run_dir = trained_run(core, custom, namespace, tmp_path, "cancer-keep", "Retain")
    assert ARTIFACT_CLEANUP not in (get_run(custom, namespace, "cancer-keep")["metadata"].get("finalizers") or [])
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "cancer-keep")
    wait_for(lambda: run_gone(custom, namespace, "cancer-keep"), 60, what="run deleted")
    assert (run_dir / "model.skops").is_file() and (run_dir / "report.json").is_file()
    assert not batch.list_namespaced_job(namespace, label_selector="app.kubernetes.io/component=artifact-cleanup").items


@pytest.mark.parametrize(
    "storage_root",
    ["file:///var/lib/kubeloop/models", "file:///var/lib/kubeloop/models/", "pvc://team-models/root"],
)
def test_quickstart_run_gets_its_models_volume_from_the_storage_root(
    kube_api: Any, kubectl: Any, kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None,
    storage_root: str,
) -> None:
    """The quickstart run (no output.storageUri) under the chart's storage settings: its Job, as
    the API server stores it, mounts the volume the trainer writes to (the root itself)."""
    process = OperatorProcess(kubeconfig_path, namespace, tmp_path / "operator.log", env={
        "KUBELOOP_DEFAULT_STORAGE_URI": storage_root, "KUBELOOP_MODELS_PVC": "kubeloop-models",
    })
    process.start()
    try:
        quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "trainingrun.yaml"
        kubectl("apply", "-n", namespace, "-f", str(quickstart))
        batch = client.BatchV1Api(kube_api)
        job = wait_for(lambda: next(iter(batch.list_namespaced_job(namespace).items), None),
                       timeout=60, what="the quickstart's training Job")
    finally:
        process.stop()
    pod = job.spec.template.spec
    container = pod.containers[0]
    mounts = {m.mount_path: (m.name, bool(m.read_only)) for m in container.volume_mounts}
    claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim}
    spec = json.loads(next(e.value for e in container.env if e.name == "KUBELOOP_TRAININGRUN_SPEC"))
    if storage_root.startswith("pvc://"):
        assert mounts["/mnt/pvc/team-models"] == ("pvc-team-models", False)
        assert claims["pvc-team-models"] == "team-models"
        assert spec["output"]["storageUri"] == "/mnt/pvc/team-models/root"
    else:
        assert mounts["/var/lib/kubeloop/models"] == ("pvc-kubeloop-models", False)
        assert claims["pvc-kubeloop-models"] == "kubeloop-models"
        assert spec["output"]["storageUri"].rstrip("/") == "file:///var/lib/kubeloop/models"
