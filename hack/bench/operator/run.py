"""Benchmark: one ``kubeloop operator`` under N TrainingRuns / M ModelDeployments at once.

On the real API server of ``hack/cluster`` (kube-controller-manager's Job controller, the real
scheduler, kwok fake nodes added for the load). Per case, in one run:

* apply -> Job created, apply -> status Training, all runs Succeeded (watches started before the
  load, stamped with this machine's clock: sub-second, unlike ``creationTimestamp``);
* the yardstick: Job -> first Pod, created by kube-controller-manager's Job controller for the
  same Jobs in the same run;
* the operator's peak RSS and CPU seconds (/proc);
* the operator's API requests, counted by the API server: the operator runs under a
  ServiceAccount token of its own that a FlowSchema of its own matches
  (``apiserver_flowcontrol_dispatched_requests_total{flow_schema}``; the API server's
  ``apiserver_request_total`` has no user or user-agent label), sent to ``workload-low`` like
  an in-cluster operator's ServiceAccount; APF queueing of those requests too;
* ModelDeployments: apply -> Healthy, and the idle API load once everything is Healthy.

    python hack/bench/operator/run.py --runs 100,300 --deployments 100,300 --reps 1
    python hack/bench/operator/run.py --runs 1000 --deployments 300 --profile

Writes results.json (every repetition) and results.md (medians, targets met / not met) next to
this file (or --out DIR).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path[:0] = [str(REPO / "tests" / "integration"), str(REPO / "operator")]
# The operator and trainer subprocesses import kubeloop from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "operator"), os.environ.get("PYTHONPATH")]))

from clusterfixture import acquire_cluster  # noqa: E402
from harness import OperatorProcess, install_crds  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes import config as kube_config  # noqa: E402
from operatorload import (  # noqa: E402
    FakeNodes,
    Recorder,
    WatchKubelet,
    apf_wait,
    apply_all,
    dispatched,
    modeldeployment_body,
    operator_identity,
    percentile,
    process_use,
    remove_identity,
    trainer_message,
    trainingrun_body,
)

from kubeloop import API_GROUP, API_VERSION  # noqa: E402

MANUAL_KUBELET = {"kubeloop.io/test-kubelet": "manual"}
TARGETS = {
    "runs_apply_to_job_p99_s": 5.0,
    "runs_job_ratio": 2.0,
    "runs_peak_rss_mib": 300.0,
    "md_apply_to_healthy_p99_s": 10.0,
    "md_idle_requests_per_object_minute": 1.0,
}


def uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split(" ")[0:3])


#: Every operator the benchmark started: stopped when it exits, however it exits (see main).
STARTED: list[OperatorProcess] = []


def stop_started() -> None:
    for operator in STARTED:
        operator.stop()


def start_operator(api: Any, namespace: str, out: Path, tag: str) -> tuple[OperatorProcess, str]:
    kubeconfig, flow_schema = operator_identity(api, namespace, "kubeloop-operator", out / f"{tag}.kubeconfig")
    env = {
        "KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET),
        "KUBELOOP_RUNTIME_IMAGE": "kubeloop:test",
        # The chart's defaults (values.yaml), not the tests' fast resync.
        "KUBELOOP_RESYNC_SECONDS": "30",
        "KUBELOOP_ROLLOUT_TICK_SECONDS": "5",
    }
    operator = OperatorProcess(str(kubeconfig), namespace, out / f"{tag}.operator.log", env=env)
    operator.start()
    STARTED.append(operator)
    # Ready once kopf has logged in; then a few seconds for its first lists.
    deadline = time.monotonic() + 60
    while "Initial authentication has finished" not in operator.log_tail(400):
        assert operator.alive(), operator.log_tail()
        assert time.monotonic() < deadline, operator.log_tail()
        time.sleep(0.2)
    time.sleep(3)
    return operator, flow_schema


def namespace_for(api: Any, prefix: str) -> str:
    core = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"kubeloop.io/test": "true"}}})
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            return name
        except client.ApiException:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def profile_start(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--subprocesses",
             "--duration", str(seconds), "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return None


def profile_summary(raw: Path, top: int = 25) -> list[tuple[str, float]]:
    """Share of samples per frame anywhere on the stack (inclusive), from py-spy's raw output."""
    if not raw.exists():
        return []
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for frame in set(stack.split(";")):
            inclusive[frame] += count
    return [(frame, round(100 * n / total, 1)) for frame, n in inclusive.most_common(top)] if total else []


def operator_metrics(operator: OperatorProcess) -> dict[str, float]:
    """Reconciles and their summed seconds by kind, and the operator's requests by verb,
    resource and code, from the operator's own /metrics."""
    import httpx

    out: dict[str, float] = {}
    try:
        for name, key in (("_count", "reconciles"), ("_sum", "reconcile_seconds")):
            for sample in operator.samples("kubeloop_reconcile_duration_seconds" + name):
                kind = sample.labels.get("kind", "")
                out[f"{key}_{kind}"] = round(out.get(f"{key}_{kind}", 0) + sample.value, 1)
        # What each request was (the operator's own client; kopf's are not in it).
        for sample in operator.samples("kubeloop_api_requests_total"):
            if sample.value:
                labels = sample.labels
                out[f"api_requests {labels['verb']} {labels['resource']} {labels['code']}"] = sample.value
    except httpx.HTTPError:
        return {}
    return out


def controller_manager_limits(cluster: Any) -> str:
    """kube-controller-manager's client rate limit as it runs (hack/cluster's
    KUBELOOP_KCM_API_QPS / _BURST raise it): its Job, Deployment and ReplicaSet controllers are
    part of every figure here. Read from the process hack/cluster recorded for this cluster
    (its state dir holds the kubeconfig and pids/<component>.pid)."""
    if not cluster.local:
        return "unknown (a cluster hack/cluster did not start)"
    try:
        pid = (Path(cluster.kubeconfig).parent / "pids" / "kube-controller-manager.pid").read_text().strip()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "unknown (hack/cluster's kube-controller-manager is not running)"
    flags = dict(a.decode().lstrip("-").split("=", 1) for a in args[1:] if a.startswith(b"--kube-api-"))
    return f"{flags.get('kube-api-qps', '20 (default)')} requests/s, burst {flags.get('kube-api-burst', '30 (default)')}"


def release(api: Any, namespace: str, plural: str) -> None:
    """Drop any finalizer left on the case's objects once its operator is stopped (the operator
    puts none on these since its resyncs left kopf timers, but an older operator's would keep
    the namespace Terminating, and every later case would share the machine with it)."""
    objects = client.CustomObjectsApi(api)
    listed: dict[str, Any] = objects.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural)  # type: ignore[assignment]
    for item in listed["items"]:
        if item["metadata"].get("finalizers"):
            with contextlib.suppress(client.ApiException):
                objects.patch_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, plural, item["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )


def bench_runs(api: Any, kubectl: Any, n: int, out: Path, message: str, profile: bool) -> dict[str, Any]:
    namespace = namespace_for(api, f"bench-runs-{n}")
    result: dict[str, Any] = {"case": "trainingruns", "n": n, "namespace": namespace, "load_before": uptime()}
    with FakeNodes(api, f"bench-{namespace}", math.ceil(n / 100) + 1) as nodes:
        operator, flow_schema = start_operator(api, namespace, out, f"runs-{n}")
        recorder = Recorder(api, namespace)
        kubelet = WatchKubelet(api, namespace, message)
        recorder.listeners.append(kubelet)
        recorder.start()
        spy = None
        try:
            assert operator.process is not None
            if profile:
                spy = profile_start(operator.process.pid, out / f"runs-{n}.pyspy.raw", 600)
            before, use_before = dispatched(api, flow_schema), process_use(operator.process.pid)
            apf_before = apf_wait(api, flow_schema)
            started = time.time()
            sent = apply_all(api, namespace, "trainingruns", [trainingrun_body(f"run-{i:04d}", nodes.placement) for i in range(n)])
            result["apply_seconds"] = round(time.time() - started, 2)
            deadline = time.monotonic() + max(300, n * 1.5)
            while time.monotonic() < deadline:
                with recorder.lock:
                    done = sum(1 for p in recorder.timeline.run_phase.values() if p in ("Succeeded", "Failed"))
                if done >= n:
                    break
                time.sleep(1)
            finished = time.time()
            time.sleep(5)  # the last status patches and Events of the operator are counted too
            after, use_after = dispatched(api, flow_schema), process_use(operator.process.pid)
            apf_after = apf_wait(api, flow_schema)
            result["operator_metrics"] = operator_metrics(operator)
        finally:
            if spy is not None:
                # py-spy writes its output on SIGINT (Ctrl-C); SIGTERM would lose it.
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=30)
            recorder.stop()
            kubelet.close()
            operator.stop()
            remove_identity(api, flow_schema)
        t = recorder.timeline
        to_job = [t.job_added[r] - sent[r] for r in sent if r in t.job_added]
        to_training = [t.run_phase_at[r]["Training"] - sent[r] for r in sent if "Training" in t.run_phase_at[r]]
        job_to_pod = [t.first_pod[r] - t.job_added[r] for r in sent if r in t.first_pod and r in t.job_added]
        succeeded = [r for r in sent if t.run_phase.get(r) == "Succeeded"]
        last_done = max((t.run_phase_at[r].get("Succeeded", 0.0) for r in sent), default=0.0)
        result.update({
            "jobs_seen": len(to_job),
            **p50_p99("apply_to_job", to_job),
            **p50_p99("apply_to_training", to_training),
            **p50_p99("job_to_pod", job_to_pod),
            "succeeded": len(succeeded),
            "failed": sum(1 for r in sent if t.run_phase.get(r) == "Failed"),
            "all_succeeded_after_s": round(last_done - started, 1) if len(succeeded) == n else None,
            "waited_s": round(finished - started, 1),
            "duplicate_jobs": sum(1 for r in sent if t.job_adds[r] > 1 or len(t.job_uids[r]) > 1),
            "operator_peak_rss_mib": round(use_after.peak_rss_mib, 1) if use_after else None,
            "operator_cpu_seconds": round(use_after.cpu_seconds - use_before.cpu_seconds, 1)
            if use_after and use_before else None,
            "operator_requests": after - before,
            "operator_requests_per_run": round((after - before) / n, 1),
            "apf_queued_requests": apf_after["queued_requests"] - apf_before["queued_requests"],
            "apf_queued_seconds": round(apf_after["queued_seconds"] - apf_before["queued_seconds"], 2),
            "apf_rejected": apf_after["rejected"] - apf_before["rejected"],
            "load_after": uptime(),
        })
        if profile:
            result["profile_top_frames"] = profile_summary(out / f"runs-{n}.pyspy.raw")
    release(api, namespace, "trainingruns")
    client.CoreV1Api(api).delete_namespace(namespace)
    return result


def modeldeployment_bodies(m: int, placement: dict[str, Any]) -> list[dict[str, Any]]:
    """The M ModelDeployments both ModelDeployment cases apply (the operator's and the yardstick's)."""
    return [modeldeployment_body(f"md-{i:04d}", "a" * 64, placement=placement) for i in range(m)]


def bench_deployments(api: Any, m: int, out: Path, idle_seconds: int) -> dict[str, Any]:
    namespace = namespace_for(api, f"bench-md-{m}")
    result: dict[str, Any] = {"case": "modeldeployments", "m": m, "namespace": namespace, "load_before": uptime()}
    with FakeNodes(api, f"bench-{namespace}", math.ceil(m / 100) + 1) as nodes:
        operator, flow_schema = start_operator(api, namespace, out, f"md-{m}")
        recorder = Recorder(api, namespace).start()
        try:
            assert operator.process is not None
            before = dispatched(api, flow_schema)
            use_before, load_t0 = process_use(operator.process.pid), time.monotonic()
            sent = apply_all(api, namespace, "modeldeployments",
                             modeldeployment_bodies(m, nodes.placement))
            deadline = time.monotonic() + max(300, m * 1.5)
            while time.monotonic() < deadline:
                with recorder.lock:
                    healthy = sum(1 for r in sent if "Healthy" in recorder.timeline.md_phase_at[r])
                if healthy >= m:
                    break
                time.sleep(1)
            after_load = dispatched(api, flow_schema)
            use_loaded, load_seconds = process_use(operator.process.pid), time.monotonic() - load_t0
            time.sleep(30)  # let the last status writes and Deployment rollouts settle
            idle_start, idle_t0 = dispatched(api, flow_schema), time.monotonic()
            time.sleep(idle_seconds)
            idle_end, idle_t1 = dispatched(api, flow_schema), time.monotonic()
            use = process_use(operator.process.pid)
            result["operator_metrics"] = operator_metrics(operator)
        finally:
            recorder.stop()
            operator.stop()
            remove_identity(api, flow_schema)
        t = recorder.timeline
        to_healthy = [t.md_phase_at[r]["Healthy"] - sent[r] for r in sent if "Healthy" in t.md_phase_at[r]]
        # Where apply -> Healthy goes: the operator writes the stable Deployment; the cluster's
        # Deployment and ReplicaSet controllers, scheduler and kwok make it available; the
        # operator notices and writes Healthy.
        to_deployment = [t.stable_added[r] - sent[r] for r in sent if r in t.stable_added]
        to_available = [t.stable_available[r] - t.stable_added[r] for r in sent
                        if r in t.stable_available and r in t.stable_added]
        noticed = [t.md_phase_at[r]["Healthy"] - t.stable_available[r] for r in sent
                   if "Healthy" in t.md_phase_at[r] and r in t.stable_available]
        minutes = (idle_t1 - idle_t0) / 60
        # From the moment the load began (the first apply), as the yardstick is timed:
        # per-object apply times leave out how long the benchmark's client took to create
        # them all (apply_seconds).
        load_start = min(sent.values())
        from_load_start = [t.md_phase_at[r]["Healthy"] - load_start for r in sent if "Healthy" in t.md_phase_at[r]]
        result.update({
            "healthy": len(to_healthy),
            "apply_seconds": round(max(sent.values()) - load_start, 1),
            **p50_p99("load_start_to_healthy", from_load_start),
            **p50_p99("apply_to_healthy", to_healthy),
            **p50_p99("apply_to_deployment", to_deployment),
            **p50_p99("deployment_to_available", to_available),
            **p50_p99("available_to_healthy", noticed),
            "operator_requests_during_load": after_load - before,
            # How busy the operator was while it brought them up (of this machine's 2 cores):
            # its share, next to the API server, etcd and the controllers, of the same CPUs.
            "load_window_s": round(load_seconds, 1),
            "operator_cpu_seconds": round(use_loaded.cpu_seconds - use_before.cpu_seconds, 1)
            if use_loaded and use_before else None,
            "idle_window_s": round(idle_t1 - idle_t0, 1),
            "idle_requests": idle_end - idle_start,
            "idle_requests_per_object_minute": round((idle_end - idle_start) / m / minutes, 3),
            "operator_peak_rss_mib": round(use.peak_rss_mib, 1) if use else None,
            "load_after": uptime(),
        })
    release(api, namespace, "modeldeployments")
    client.CoreV1Api(api).delete_namespace(namespace)
    return result


def bench_children(api: Any, kubeconfig: str, m: int) -> dict[str, Any]:
    """The yardstick for ModelDeployments: the children the operator writes for M new ones (the
    three Services and the stable Deployment each, the very bodies ``decide`` builds) written by
    a plain client with no operator, 32 ModelDeployments at a time, in the same run. What is left
    between this and the operator's figures is the operator's; this is the cluster's floor."""
    from datetime import UTC, datetime

    from kubeloop.config import OperatorConfig
    from kubeloop.controllers.kube import Kube
    from kubeloop.controllers.modeldeployment import serving_settings
    from kubeloop.decide.modeldeployment import Observed, decide

    namespace = namespace_for(api, f"bench-children-{m}")
    result: dict[str, Any] = {"case": "children", "m": m, "namespace": namespace, "load_before": uptime()}
    settings = serving_settings(OperatorConfig(runtime_image="kubeloop:test"))
    kube = Kube.from_environment(kubeconfig, connections=40)
    with FakeNodes(api, f"bench-{namespace}", math.ceil(m / 100) + 1) as nodes:
        # The owners exist first (the garbage collector deletes children whose owner is gone);
        # no operator reconciles them.
        apply_all(api, namespace, "modeldeployments",
                  modeldeployment_bodies(m, nodes.placement))
        listed: dict[str, Any] = client.CustomObjectsApi(api).list_namespaced_custom_object(  # type: ignore[assignment]
            API_GROUP, API_VERSION, namespace, "modeldeployments")
        owners: list[dict[str, Any]] = listed["items"]
        recorder = Recorder(api, namespace).start()

        def write(md: dict[str, Any]) -> int:
            decision = decide(md, Observed(), settings, datetime.now(UTC))
            for obj in (*decision.services, *decision.deployments):
                kube.apply(obj)
            return len(decision.services) + len(decision.deployments)

        try:
            # All at once, as the ModelDeployments were applied: from this moment, like apply.
            started = time.time()
            with ThreadPoolExecutor(max_workers=32) as pool:
                writes = sum(pool.map(write, owners))
            result["write_seconds"] = round(time.time() - started, 1)
            deadline = time.monotonic() + max(300, m * 1.5)
            while time.monotonic() < deadline:
                with recorder.lock:
                    if len(recorder.timeline.stable_available) >= m:
                        break
                time.sleep(0.5)
        finally:
            recorder.stop()
        t = recorder.timeline
        names = [md["metadata"]["name"] for md in owners]
        to_available = [t.stable_available[r] - started for r in names if r in t.stable_available]
        added_to_available = [t.stable_available[r] - t.stable_added[r] for r in names
                              if r in t.stable_available and r in t.stable_added]
        result.update({
            "available": len(to_available),
            "writes_per_object": round(writes / m, 1),
            **p50_p99("start_to_available", to_available),
            **p50_p99("deployment_to_available", added_to_available),
            "load_after": uptime(),
        })
    client.CoreV1Api(api).delete_namespace(namespace)
    return result


def p50_p99(name: str, seconds: list[float]) -> dict[str, float | None]:
    """``<name>_p50_s`` and ``<name>_p99_s`` of ``seconds`` (None for both when there are none)."""
    return {
        f"{name}_p50_s": round(statistics.median(seconds), 3) if seconds else None,
        f"{name}_p99_s": round(percentile(seconds, 99), 3) if seconds else None,
    }


def median_of(reps: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in reps if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [
        "# Operator scale benchmark: results",
        "",
        f"Written by `hack/bench/operator/run.py` on {results['date']}. Command: `{results['command']}`.",
        "",
        "## Environment",
        "",
        f"- Machine: {results['env']['cpus']} CPUs, {results['env']['platform']}, Python {results['env']['python']}",
        f"- Load average before / after (1, 5, 15 min): {results['env']['load_before']} / {results['env']['load_after']}"
        " (each case's own before/after figures are in results.json)",
        f"- Control plane: hack/cluster (Kubernetes {results['env']['kubernetes']}, kwok fake nodes added per case,"
        " 110 pods each, tainted for the load alone); the operator as a process on this machine, with the"
        " chart's resync (30 s) and rollout tick (5 s), under its own ServiceAccount token and FlowSchema"
        " (priority level workload-low); kube-controller-manager's client rate limit:"
        f" {results['env'].get('controller_manager_limits', '20 requests/s, burst 30 (its defaults)')}",
        f"- Repetitions per case: {results['reps']} (figures below are medians of the repetitions; with one repetition, that run's figures)",
        "",
        "## TrainingRuns applied at once",
        "",
        *runs_table(results["runs"]),
        "",
        "## ModelDeployments applied at once",
        "",
        *deployments_table(results["deployments"]),
        *children_table(results.get("children") or {}, results["deployments"]),
        *requests_table(results),
    ]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for row in results["targets"]:
        lines.append(f"| {row['target']} | {row['measured']} | {row['met']} |")
    before = results.get("before")
    if before:
        lines += [
            "",
            "## Before the fixes (same script, same kind of day)",
            "",
            f"{before['note']} Written {before['date']}; load average before / after: "
            f"{before['env']['load_before']} / {before['env'].get('load_after', '?')}.",
            "",
            *runs_table(before["runs"]),
            "",
            *deployments_table(before["deployments"]),
        ]
    if results.get("profile"):
        lines += ["", "## Where the operator's time went (py-spy, inclusive share of samples)", ""]
        for n, frames in results["profile"].items():
            lines.append(f"N = {n}:")
            lines.append("")
            lines += [f"- {share} % `{frame}`" for frame, share in frames[:15]]
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def by_size(cases: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """A table's rows: each case size (N or M) with its repetitions, smallest first."""
    return sorted(cases.items(), key=lambda kv: int(kv[0]))


def p50_p99_of(reps: list[dict[str, Any]], name: str) -> str:
    """"p50 / p99" of ``<name>_p50_s`` and ``<name>_p99_s`` (each the median of the repetitions)."""
    return f"{median_of(reps, f'{name}_p50_s')} / {median_of(reps, f'{name}_p99_s')}"


def runs_table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| N | apply→Job p50 / p99 (s) | apply→Training p50 / p99 (s) | Job controller Job→Pod p50 / p99 (s)"
        " | all Succeeded after (s) | Succeeded | duplicate Jobs | peak RSS (MiB) | CPU (s) | API requests / run"
        " | APF queued |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, reps in by_size(runs):
        def m(key: str, reps: list[dict[str, Any]] = reps) -> Any:
            return median_of(reps, key)
        lines.append(
            f"| {n} | {p50_p99_of(reps, 'apply_to_job')} | {p50_p99_of(reps, 'apply_to_training')} | "
            f"{p50_p99_of(reps, 'job_to_pod')} | "
            f"{m('all_succeeded_after_s')} | {min(r['succeeded'] for r in reps)}/{n} | "
            f"{max(r['duplicate_jobs'] for r in reps)} | {m('operator_peak_rss_mib')} | {m('operator_cpu_seconds')} | "
            f"{m('operator_requests_per_run')} | {m('apf_queued_requests')} |"
        )
    return lines


def per_object(total: float | None, m: int) -> str:
    return "-" if total is None else f"{total / m:.1f}"


def deployments_table(deployments: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| M | apply→Healthy p50 / p99 (s) | of which: apply→stable Deployment (operator) p50 / p99 | "
        "Deployment→available (cluster's controllers) p50 / p99 | available→Healthy (operator) p50 / p99 | "
        "Healthy | API requests / object (load) | operator CPU (s) over the load window (s) | "
        "idle requests / object / minute | idle window (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mm, reps in by_size(deployments):
        def d(key: str, reps: list[dict[str, Any]] = reps) -> Any:
            return median_of(reps, key)
        lines.append(
            f"| {mm} | {p50_p99_of(reps, 'apply_to_healthy')} | {p50_p99_of(reps, 'apply_to_deployment')} | "
            f"{p50_p99_of(reps, 'deployment_to_available')} | {p50_p99_of(reps, 'available_to_healthy')} | "
            f"{min(r['healthy'] for r in reps)}/{mm} | {per_object(d('operator_requests_during_load'), int(mm))} | "
            f"{d('operator_cpu_seconds') or '-'} / {d('load_window_s') or '-'} | {d('idle_requests_per_object_minute')} | "
            f"{d('idle_window_s')} | {d('operator_peak_rss_mib')} |"
        )
    return lines


def requests_table(results: dict[str, Any]) -> list[str]:
    """The operator's own requests per object by verb, resource and code (its
    kubeloop_api_requests_total at the end of each case, median of the repetitions), for the
    largest N and M: where the "API requests" columns above go. kopf's (watches, peering) are
    not in it."""
    columns: list[tuple[str, list[dict[str, Any]], int]] = []
    for label, letter, cases in (("per TrainingRun", "N", results["runs"]),
                                 ("per ModelDeployment", "M", results["deployments"])):
        if cases:
            size, reps = by_size(cases)[-1]
            columns.append((f"{label} ({letter} = {size})", reps, int(size)))
    keys = sorted({k for _, reps, _ in columns for r in reps for k in r.get("operator_metrics", {})
                   if k.startswith("api_requests ")})
    if not keys:
        return []
    lines = [
        "",
        "The operator's own requests (`kubeloop_api_requests_total`, read from its /metrics at the end"
        " of each case; kopf's watches and peering are not in it), per object, medians of the repetitions:",
        "",
        "| verb | resource | code | " + " | ".join(title for title, _, _ in columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for key in keys:
        _, verb, resource, code = key.split(" ")
        cells = []
        for _, reps, size in columns:
            values = [r.get("operator_metrics", {}).get(key, 0.0) / size for r in reps]
            cells.append(f"{statistics.median(values):.2f}" if any(values) else "")
        lines.append(f"| {verb} | {resource} | {code} | " + " | ".join(cells) + " |")
    return lines


def children_table(children: dict[str, list[dict[str, Any]]], deployments: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The yardstick for ModelDeployments (:func:`bench_children`) next to the operator's figure."""
    if not children:
        return []
    lines = [
        "",
        "The yardstick, in the same run: the same children (three Services and the stable Deployment"
        " per ModelDeployment, the bodies the operator's decision builds) written by a plain client,"
        " 32 at a time, with no operator; timed from the moment it starts on all of them.",
        "",
        "| M | writes / object | all written after (s) | start→Deployment available p50 / p99 (s) |"
        " Deployment→available p50 / p99 (s) | operator: first apply→Healthy p50 / p99 (s) |"
        " operator p99 / this p99 (both from the load's start) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mm, reps in by_size(children):
        operator = deployments.get(mm) or []
        operator_p99 = median_of(operator, "load_start_to_healthy_p99_s")
        floor_p99 = median_of(reps, "start_to_available_p99_s")
        ratio = f"{operator_p99 / floor_p99:.2f}" if operator_p99 and floor_p99 else "-"
        lines.append(
            f"| {mm} | {median_of(reps, 'writes_per_object')} | {median_of(reps, 'write_seconds')} | "
            f"{p50_p99_of(reps, 'start_to_available')} | {p50_p99_of(reps, 'deployment_to_available')} | "
            f"{p50_p99_of(operator, 'load_start_to_healthy')} | {ratio} |"
        )
    return lines


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    runs = results["runs"]
    biggest = max(runs, key=int) if runs else None
    if biggest is not None:
        reps = runs[biggest]
        p99 = median_of(reps, "apply_to_job_p99_s")
        yard = median_of(reps, "job_to_pod_p99_s")
        rss = median_of(reps, "operator_peak_rss_mib")
        ok_all = all(r["succeeded"] == int(biggest) for r in reps)
        note = "" if int(biggest) == 1000 else f" (target is for N = 1,000; largest N run: {biggest})"
        rows += [
            {"target": "apply→Job p99 ≤ 5 s" + note, "measured": f"{p99} s",
             "met": "met" if p99 is not None and p99 <= TARGETS["runs_apply_to_job_p99_s"] else "not met"},
            {"target": "apply→Job p99 ≤ 2 x Job controller's Job→Pod p99" + note,
             "measured": f"{p99} s vs 2 x {yard} s",
             "met": "met" if p99 is not None and yard is not None and p99 <= 2 * yard else "not met"},
            {"target": "all runs Succeeded" + note, "measured": f"{min(r['succeeded'] for r in reps)}/{biggest}",
             "met": "met" if ok_all else "not met"},
            {"target": "operator peak RSS ≤ 300 MiB" + note, "measured": f"{rss} MiB",
             "met": "met" if rss is not None and rss <= TARGETS["runs_peak_rss_mib"] else "not met"},
        ]
    mds = results["deployments"]
    if mds:
        biggest_md = max(mds, key=int)
        reps = mds[biggest_md]
        p99 = median_of(reps, "apply_to_healthy_p99_s")
        idle = median_of(reps, "idle_requests_per_object_minute")
        note = "" if int(biggest_md) == 300 else f" (target is for M = 300; largest M run: {biggest_md})"
        rows += [
            {"target": "ModelDeployments apply→Healthy p99 ≤ 10 s" + note, "measured": f"{p99} s",
             "met": "met" if p99 is not None and p99 <= TARGETS["md_apply_to_healthy_p99_s"] else "not met"},
            {"target": "idle API load ≤ 1 request / object / minute" + note, "measured": f"{idle}",
             "met": "met" if idle is not None and idle <= TARGETS["md_idle_requests_per_object_minute"] else "not met"},
        ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="100,300", help="comma-separated N of TrainingRuns (default 100,300)")
    parser.add_argument("--deployments", default="100,300", help="comma-separated M of ModelDeployments")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--idle-seconds", type=int, default=90, help="idle window for the API load")
    parser.add_argument("--profile", action="store_true", help="py-spy the operator during the largest N")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--before", type=Path, default=None,
                        help="results.json of an earlier run to show side by side (e.g. before a change)")
    parser.add_argument("--before-note", default="", help="what the --before run was")
    parser.add_argument("--operator-src", type=Path, default=None,
                        help="import the operator from this copy of operator/ (e.g. a 'before' snapshot)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only write results.md from this results.json (with --before, --notes)")
    parser.add_argument("--notes", type=Path, default=None, help="markdown appended to results.md")
    args = parser.parse_args()
    # A stopped benchmark stops its operators: killed by SIGTERM, its operator process ran on
    # and loaded the next run (seen: most of a core). sys.exit runs the atexit hook.
    atexit.register(stop_started)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.from_json is not None:
        finish(json.loads(args.from_json.read_text()), args)
        return 0
    if args.operator_src is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(args.operator_src), os.environ["PYTHONPATH"]])
    runs = [int(x) for x in args.runs.split(",") if x]
    deployments = [int(x) for x in args.deployments.split(",") if x]
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"kubeloop-operator-bench-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)

    cluster = acquire_cluster()
    os.environ["KUBECONFIG"] = cluster.kubeconfig
    api = kube_config.new_client_from_config(config_file=cluster.kubeconfig)
    install_crds(cluster.kubectl)
    message = trainer_message()
    version = client.VersionApi(api).get_code().git_version
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "hack/bench/operator/run.py", *sys.argv[1:]]),
        "reps": args.reps,
        "env": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                "kubernetes": version, "load_before": uptime(),
                "controller_manager_limits": controller_manager_limits(cluster)},
        "runs": {}, "deployments": {}, "profile": {},
    }
    for rep in range(args.reps):
        for n in runs:
            profile = args.profile and n == max(runs) and rep == 0
            row = bench_runs(api, cluster.kubectl, n, work, message, profile)
            print(json.dumps({k: v for k, v in row.items() if k != "profile_top_frames"}), flush=True)
            if profile:
                results["profile"][str(n)] = row.pop("profile_top_frames", [])
            results["runs"].setdefault(str(n), []).append(row)
        for m in deployments:
            row = bench_deployments(api, m, work, args.idle_seconds)
            print(json.dumps(row), flush=True)
            results["deployments"].setdefault(str(m), []).append(row)
            floor = bench_children(api, cluster.kubeconfig, m)
            print(json.dumps(floor), flush=True)
            results.setdefault("children", {}).setdefault(str(m), []).append(floor)
    results["env"]["load_after"] = uptime()
    finish(results, args)
    return 0


def finish(results: dict[str, Any], args: argparse.Namespace) -> None:
    results["targets"] = targets(results)
    if args.before is not None:
        before = json.loads(args.before.read_text())
        results["before"] = {k: before[k] for k in ("date", "env", "runs", "deployments")}
        results["before"]["note"] = args.before_note
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    path = args.out / "results.md"
    write_markdown(results, path)
    if args.notes is not None:
        path.write_text(path.read_text() + "\n" + args.notes.read_text())
    print(path.read_text())


if __name__ == "__main__":
    raise SystemExit(main())
