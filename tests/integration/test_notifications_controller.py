"""Notifications on the real API server, received by real HTTP receivers in the test.

Given ``kubeloop operator`` configured with sinks that point at threaded HTTP servers on
127.0.0.1 (a CloudEvents receiver subscribed to every trigger, a Slack-compatible one named by
annotations, one answering 500 twice, one that hangs and one closed port), when TrainingRuns
succeed, fail and miss their gate, a ModelDeployment rolls out, is promoted and aborted, and a
DriftPolicy detects drift (in its features, or in live performance on labelled traffic) and retrains a model the champion gate refuses, then each turn arrives as a CloudEvent that the cloudevents SDK
parses, with the attributes and the numbers of the object's status; a 500 is retried; a
dead sink does not slow the reconcile down.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import OperatorProcess, events_once, install_crds, play_kubelet_terminate, wait_for
from kubernetes import client

from webhook_receiver import HANG, Received, WebhookReceiver

GROUP, VERSION = "kubeloop.io", "v1alpha1"
MANUAL_KUBELET = {"kubeloop.io/test-kubelet": "manual"}
SUBSCRIBE_ALL = "notifications.kubeloop.io/subscribe"
SUBSCRIBE = SUBSCRIBE_ALL + "."
SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sinks:
    """The test's receivers and the operator's notifications setting that points at them."""

    def __init__(self, tmp_path: Path) -> None:
        self.events = WebhookReceiver()
        self.slack = WebhookReceiver()
        self.flaky = WebhookReceiver(statuses=[500, 500])
        self.hanging = WebhookReceiver(default_status=HANG)
        self.slack_url_file = tmp_path / "slack-url"  # as the chart mounts a Secret

    def __enter__(self) -> Sinks:
        for receiver in (self.events, self.slack, self.flaky, self.hanging):
            receiver.__enter__()
        self.slack_url_file.write_text(self.slack.url + "?token=t0ps3cret\n")
        return self

    def __exit__(self, *_: object) -> None:
        for receiver in (self.events, self.slack, self.flaky, self.hanging):
            receiver.__exit__()

    def setting(self) -> str:
        return json.dumps(
            {
                "sinks": {
                    "events": {"type": "cloudevents", "url": self.events.url},
                    "slack": {"type": "slack", "urlFile": str(self.slack_url_file)},
                    "flaky": {"type": "cloudevents", "mode": "binary", "url": self.flaky.url},
                    "hanging": {"type": "cloudevents", "url": self.hanging.url},
                    "dead": {
                        "type": "cloudevents",
                        "url": f"http://127.0.0.1:{closed_port()}/hook",
                    },
                },
                "subscriptions": {"*": ["events"]},
                "source": "//test-cluster",
                "backoffSeconds": 0.3,
                "maxBackoffSeconds": 2,
                "maxAttempts": 4,
                "timeoutSeconds": 5,
            }
        )


@pytest.fixture
def sinks(tmp_path: Path) -> Iterator[Sinks]:
    with Sinks(tmp_path) as s:
        yield s


def start_operator(
    kubeconfig_path: str, namespace: str, tmp_path: Path, sinks: Sinks, **env: str
) -> OperatorProcess:
    process = OperatorProcess(
        kubeconfig_path,
        namespace,
        tmp_path / "operator.log",
        env={
            "KUBELOOP_RUNTIME_IMAGE": "kubeloop:test",
            "KUBELOOP_ROLLOUT_TICK_SECONDS": "1",
            "KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET),
            "KUBELOOP_NOTIFICATIONS": sinks.setting(),
            **env,
        },
    )
    process.start()
    return process


@pytest.fixture
def notifying_operator(
    kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None, sinks: Sinks
) -> Iterator[OperatorProcess]:
    process = start_operator(kubeconfig_path, namespace, tmp_path, sinks)
    yield process
    process.stop()
    print(process.log_tail(40))


def cloudevents_of(receiver: WebhookReceiver, subject: str) -> list[Any]:
    return [e for e in receiver.cloudevents() if e.get_subject() == subject]


def wait_event(receiver: WebhookReceiver, subject: str, type_: str, timeout: float = 60) -> Any:
    """The first CloudEvent of ``type_`` about ``subject`` that ``receiver`` was sent."""

    def found(_: list[Received]) -> Any:
        return next((e for e in cloudevents_of(receiver, subject) if e.get_type() == type_), None)

    try:
        return receiver.wait_for(found, timeout=timeout)
    except AssertionError:
        seen = [(e.get_subject(), e.get_type()) for e in receiver.cloudevents()]
        raise AssertionError(f"no {type_} for {subject}; received {seen}") from None


# --- TrainingRuns ---------------------------------------------------------------------------


def test_run_succeeded_and_failed_arrive_as_cloudevents_with_the_metric(
    kube_api: Any, namespace: str, notifying_operator: OperatorProcess, sinks: Sinks, tmp_path: Path
) -> None:
    from test_trainingrun_controller import run_trainer_locally, trainer_pods, trainingrun

    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    good = trainingrun("cancer-1")
    good["metadata"]["annotations"] = {SUBSCRIBE + "run.succeeded": "events,slack"}
    bad = trainingrun("cancer-bad", validation={"minRows": 100000})
    gated = trainingrun("cancer-gate", evaluation={"metric": "accuracy", "threshold": 0.999})
    # The trainers' real termination messages, computed side by side.
    with ThreadPoolExecutor(3) as pool:
        (message, code), (bad_message, bad_code), (gate_message, gate_code) = pool.map(
            run_trainer_locally,
            (good, bad, gated),
            (tmp_path / "t1", tmp_path / "t2", tmp_path / "t3"),
        )
    assert (code, bad_code, gate_code) == (0, 2, 3), (message, bad_message, gate_message)

    # Given three runs whose trainers succeed, fail, and miss their gate
    for run in (good, bad, gated):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", run)
    for name, said, exit_code in (
        ("cancer-1", message, 0),
        ("cancer-bad", bad_message, 2),
        ("cancer-gate", gate_message, 3),
    ):
        pod = wait_for(
            lambda name=name: next(iter(trainer_pods(core, namespace, name)), None),
            60,
            what=f"{name} pod",
        )
        wait_for(
            lambda pod=pod: (
                core.read_namespaced_pod(pod["metadata"]["name"], namespace).spec.node_name
            ),
            30,
            what="scheduled",
        )
        play_kubelet_terminate(core, namespace, pod, said, exit_code)

    # Then run.succeeded carries the run's metric, as its status records it
    succeeded = wait_event(sinks.events, "cancer-1", "io.kubeloop.run.succeeded")
    status = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns", "cancer-1"
    )["status"]
    assert (
        succeeded.get_source()
        == f"//test-cluster/apis/kubeloop.io/v1alpha1/namespaces/{namespace}/trainingruns/cancer-1"
    )
    assert succeeded.get_extension("kubeloopnamespace") == namespace
    assert succeeded.get_extension("kubeloopreason") == "Succeeded"
    data = succeeded.get_data()
    assert data["metric"] == "accuracy" and data["threshold"] == 0.8
    assert data["value"] == pytest.approx(status["model"]["metrics"]["accuracy"])
    assert data["model"]["sha256"] == status["model"]["sha256"] == json.loads(message)["sha256"]

    # run.gate-failed carries the value that missed the threshold
    gate = wait_event(sinks.events, "cancer-gate", "io.kubeloop.run.gate-failed")
    gate_status = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns", "cancer-gate"
    )["status"]
    assert gate.get_data()["threshold"] == 0.999
    assert gate.get_data()["value"] == pytest.approx(gate_status["model"]["metrics"]["accuracy"])
    assert gate.get_data()["value"] < 0.999
    assert gate.get_data()["failure"]["reason"] == "GateFailed"
    assert not [
        e
        for e in cloudevents_of(sinks.events, "cancer-gate")
        if e.get_type().endswith("run.failed")
    ]

    # and run.failed names the reason; the Slack sink, named by annotation, got only its one
    failed = wait_event(sinks.events, "cancer-bad", "io.kubeloop.run.failed")
    assert failed.get_data()["failure"]["reason"] == "DataValidationFailed"
    assert "rows" in failed.get_data()["message"]
    slack = sinks.slack.wait_for(lambda r: r, timeout=30)
    assert len(slack) == 1 and slack[0].path == "/hook?token=t0ps3cret"  # the URL from the file
    posted = json.loads(slack[0].body)
    assert posted["text"].startswith(f"TrainingRun {namespace}/cancer-1: run.succeeded")
    fields = {f["title"]: f["value"] for f in posted["attachments"][0]["fields"]}
    assert float(fields["accuracy"]) == pytest.approx(
        status["model"]["metrics"]["accuracy"], abs=1e-4
    )
    # A namespace user chose the sink by name; the operator never logs its URL.
    assert "t0ps3cret" not in notifying_operator.log_path.read_text()


# --- ModelDeployments -----------------------------------------------------------------------


def md_status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return (
        custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeldeployments", name
        ).get("status")
        or {}
    )


def modeldeployment(
    name: str, sha: str, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "model": {"storageUri": f"s3://models/{sha[:4]}/model.skops", "sha256": sha},
            "replicas": 2,
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {}}]},
        },
    }


def patch_md(
    custom: client.CustomObjectsApi, namespace: str, name: str, body: dict[str, Any]
) -> None:
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", name, body)


def new_model(sha: str) -> dict[str, Any]:
    return {"spec": {"model": {"storageUri": f"s3://models/{sha[:4]}/model.skops", "sha256": sha}}}


def test_rollout_started_steps_paused_promoted_and_aborted(
    kube_api: Any, namespace: str, notifying_operator: OperatorProcess, sinks: Sinks
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    md = modeldeployment(
        "churn",
        SHA_A,
        {
            SUBSCRIBE + "rollout.aborted": "events,slack",
            SUBSCRIBE + "rollout.promoted": "events,pager",
        },
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", md)
    wait_for(
        lambda: md_status(custom, namespace, "churn").get("phase") == "Healthy",
        90,
        0.3,
        "Healthy on A",
    )

    # When model B rolls out and is promoted past its pause
    patch_md(custom, namespace, "churn", new_model(SHA_B))
    wait_for(
        lambda: md_status(custom, namespace, "churn").get("phase") == "Paused",
        90,
        0.3,
        "paused at 50%",
    )
    patch_md(
        custom, namespace, "churn", {"metadata": {"annotations": {"kubeloop.io/promote": "go-1"}}}
    )
    promoted = wait_event(sinks.events, "churn", "io.kubeloop.rollout.promoted", 90)

    # Then every turn arrived in order, with the models and weights of that moment
    kinds = [
        e.get_type().removeprefix("io.kubeloop.") for e in cloudevents_of(sinks.events, "churn")
    ]
    assert kinds[:5] == [
        "rollout.started",
        "rollout.started",
        "rollout.step-reached",
        "rollout.paused",
        "rollout.step-reached",
    ], kinds
    assert kinds[-1] == "rollout.promoted"
    events = cloudevents_of(sinks.events, "churn")
    started = events[1].get_data()
    assert started["stable"]["sha256"] == SHA_A and started["canary"]["sha256"] == SHA_B
    step = events[2].get_data()
    assert step["canaryWeight"] == 50 and step["message"].startswith("step 0: 50% of traffic")
    assert events[3].get_data()["phase"] == "Paused"
    assert (
        promoted.get_data()["stable"]["sha256"] == SHA_B
        and promoted.get_data()["previous"]["sha256"] == SHA_A
    )
    assert promoted.get_data()["canary"] is None
    # "pager" is no sink of the operator's: the events sink still got the promotion, and the
    # object says what is wrong, once (the Warning may land after the sink's delivery).
    events = events_once(
        client.CoreV1Api(kube_api),
        namespace,
        lambda found: any(e.reason == "NotificationSinkUnknown" for e in found),
        "the NotificationSinkUnknown Warning",
        name="churn",
    )
    warnings = [e for e in events if e.reason == "NotificationSinkUnknown"]
    assert [(w.type, w.message) for w in warnings] == [
        (
            "Warning",
            f"annotation {SUBSCRIBE}rollout.promoted names pager, which the operator has no sink for; "
            "configured sinks: events, slack, flaky, hanging, dead (an administrator adds sinks with the "
            "chart value notifications.sinks)",
        )
    ]

    # When model C is aborted at its pause
    patch_md(custom, namespace, "churn", new_model(SHA_C))
    wait_for(
        lambda: md_status(custom, namespace, "churn").get("phase") == "Paused",
        90,
        0.3,
        "C paused at 50%",
    )
    patch_md(
        custom, namespace, "churn", {"metadata": {"annotations": {"kubeloop.io/abort": "stop-1"}}}
    )
    aborted = wait_event(sinks.events, "churn", "io.kubeloop.rollout.aborted", 60)
    assert aborted.get_extension("kubeloopreason") == "Aborted"
    data = aborted.get_data()
    assert data["aborted"] is True and data["canaryWeight"] == 0
    assert data["canary"]["sha256"] == SHA_C and data["stable"]["sha256"] == SHA_B
    assert data["failure"]["reason"] == "Aborted"
    # The Slack sink was subscribed to aborts only, by the object's annotation
    slack = sinks.slack.wait_for(lambda r: r, timeout=30)
    assert [json.loads(r.body)["attachments"][0]["title"] for r in slack] == [
        f"ModelDeployment {namespace}/churn: rollout.aborted"
    ]


def test_a_500_is_retried_and_a_dead_sink_does_not_delay_the_reconcile(
    kube_api: Any, namespace: str, notifying_operator: OperatorProcess, sinks: Sinks
) -> None:
    custom = client.CustomObjectsApi(kube_api)

    def rollout_seconds(name: str, annotations: dict[str, str]) -> float:
        """Seconds from applying a ModelDeployment to Healthy plus from a model change to 50 %."""
        start = time.monotonic()
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeldeployments", modeldeployment(name, SHA_A, annotations)
        )
        wait_for(
            lambda: md_status(custom, namespace, name).get("phase") == "Healthy",
            90,
            0.1,
            f"{name} Healthy",
        )
        healthy = time.monotonic() - start
        start = time.monotonic()
        patch_md(custom, namespace, name, new_model(SHA_B))
        wait_for(
            lambda: md_status(custom, namespace, name).get("canaryWeight") == 50,
            90,
            0.1,
            f"{name} at 50%",
        )
        return healthy + time.monotonic() - start

    # A sink answering 500 twice gets the same CloudEvent a third time, in binary mode
    flaky = rollout_seconds("flaky", {SUBSCRIBE_ALL: "flaky"})
    received = sinks.flaky.wait_for(lambda r: len(r) >= 3 and r, timeout=30)
    assert [r.status for r in received[:3]] == [500, 500, 200]
    assert (
        len({r.headers["ce-id"] for r in received[:3]}) == 1
        and received[0].headers["ce-type"] == "io.kubeloop.rollout.started"
    )
    assert received[2].cloudevent().get_data()["stable"]["sha256"] == SHA_A
    assert (
        notifying_operator.metric("kubeloop_notification_attempts_total", sink="flaky", outcome="http_5xx")
        == 2
    )
    wait_for(
        lambda: notifying_operator.metric("kubeloop_notifications_total", sink="flaky", result="delivered") >= 3,
        30,
        0.5,
        "flaky deliveries counted",
    )

    # Without any sink, and with a hanging and a closed-port sink for every turn
    quiet = rollout_seconds("quiet", {SUBSCRIBE_ALL: "none"})
    dead = rollout_seconds("dead", {SUBSCRIBE_ALL: "hanging,dead"})
    sinks.hanging.wait_for(lambda r: r, timeout=10)  # the hanging sink was really tried
    print(
        f"NOTIFY-TIMING create->Healthy + change->50%: no sink {quiet:.2f} s, hanging+closed sinks {dead:.2f} s, flaky {flaky:.2f} s"
    )
    # A reconcile that waited for the hanging sink would take timeoutSeconds (5 s) per Event and
    # attempt: 3 Events at least 15 s. The margin is for a shared, loaded test machine.
    assert dead < quiet + 6.0, (quiet, dead)
    wait_for(
        lambda: notifying_operator.metric("kubeloop_notification_attempts_total", sink="dead", outcome="error") >= 2,
        30,
        0.5,
        "closed-port attempts counted",
    )
    assert not cloudevents_of(sinks.events, "quiet")  # muted by its annotation


# --- DriftPolicies --------------------------------------------------------------------------


def test_drift_detected_retrain_created_and_refused_carry_the_scores_and_metrics(
    kubeconfig_path: str, kubectl: Any, kube_api: Any, namespace: str, tmp_path: Path, sinks: Sinks
) -> None:
    from test_closed_loop import FEATURES, LocalKubelet, run_spec, serve_champion, synthetic

    from kubeloop.training.data import make_synthetic

    install_crds(kubectl)
    operator = start_operator(
        kubeconfig_path,
        namespace,
        tmp_path,
        sinks,
        KUBELOOP_DEFAULT_STORAGE_URI=f"file://{tmp_path}/models",
    )
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    kubelet = LocalKubelet(core, namespace, tmp_path)
    kubelet.start()
    try:
        serve_champion(custom, namespace, {"replicas": 1})
        current = tmp_path / "models" / "incoming" / "requests.csv"
        current.parent.mkdir(parents=True, exist_ok=True)
        make_synthetic(rows=1000, features=FEATURES, seed=11, shift=1.5).drop(
            columns=["target"]
        ).to_csv(current, index=False)
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "driftpolicies",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DriftPolicy",
                "metadata": {"name": "daily"},
                "spec": {
                    "targetRef": {"name": "loop"},
                    "source": {"dataset": {"uri": f"file://{current}"}},
                    "interval": "1h",
                    "minSamples": 100,
                    "retrain": {
                        # A retrain that cannot beat the champion by 0.9 accuracy: refused.
                        "template": {
                            "spec": {
                                **run_spec(synthetic(2, shift=1.5)),
                                "evaluation": {
                                    "metric": "accuracy",
                                    "threshold": 0.5,
                                    "minImprovement": 0.9,
                                },
                            }
                        },
                        "autoPromote": False,
                    },
                },
            },
        )
        drift = wait_event(sinks.events, "daily", "io.kubeloop.drift.detected", 180)
        created = wait_event(sinks.events, "daily", "io.kubeloop.retrain.created", 30)
        status = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "driftpolicies", "daily"
        )["status"]
        data = drift.get_data()
        assert drift.get_source().endswith(f"/namespaces/{namespace}/driftpolicies/daily")
        assert data["drifted"] is True and data["targetRef"] == "loop"
        assert (
            sorted(data["driftedFeatures"]) == sorted(status["driftedFeatures"])
            and len(data["driftedFeatures"]) >= FEATURES // 2
        )
        assert data["samples"] == 1000 and data["driftedShare"] == status["driftedShare"]
        by_feature = {(s["feature"], s["test"]): s["score"] for s in status["scores"]}
        assert {(s["feature"], s["test"]): s["score"] for s in data["scores"]} == by_feature
        assert all(s["drifted"] for s in data["scores"][: len(data["driftedFeatures"])])
        retrain = created.get_data()["retrain"]
        assert retrain["name"] == status["lastRetrain"]["name"] and retrain["reason"] == "Drift"
        assert created.get_extension("kubeloopreason") == "RetrainCreated"
        # The champion's own run and the first deployment were told too.
        wait_event(sinks.events, "loop-0", "io.kubeloop.run.succeeded", 5)
        wait_event(sinks.events, "loop", "io.kubeloop.rollout.started", 5)

        # When the retrain trains for real and misses the champion gate, the refusal carries
        # the challenger's metric against the champion's, as the run's status records them
        refused = wait_event(sinks.events, "daily", "io.kubeloop.retrain.refused", 240)
        run = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "trainingruns", retrain["name"]
        )
        model = run["status"]["model"]
        numbers = refused.get_data()["retrain"]
        assert numbers["name"] == retrain["name"] and numbers["outcome"] == "Rejected"
        assert numbers["metric"] == "accuracy"
        assert numbers["value"] == pytest.approx(model["metrics"]["accuracy"])
        assert numbers["championValue"] == pytest.approx(model["championMetrics"]["accuracy"])
        assert refused.get_extension("kubeloopreason") == "RetrainRejected"
        wait_event(sinks.events, retrain["name"], "io.kubeloop.run.gate-failed", 5)
    finally:
        kubelet.stop.set()
        operator.stop()
        print(operator.log_tail(40))


def test_performance_degraded_is_drift_detected_with_live_against_reference(
    kubeconfig_path: str, kubectl: Any, kube_api: Any, namespace: str, tmp_path: Path, sinks: Sinks
) -> None:
    """A policy with spec.performance turns Drifted with reason PerformanceDegraded (not
    DriftDetected): its subscribers to drift.detected hear of it, with the live metric against
    the reference, and of the retrain it creates (reason Performance)."""
    from harness import Server, free_port, route_pods_to_host
    from test_closed_loop import LocalKubelet, serve_champion
    from test_performance_loop import LabelledTraffic, new_concept, performance_policy

    install_crds(kubectl)
    operator = start_operator(
        kubeconfig_path,
        namespace,
        tmp_path,
        sinks,
        KUBELOOP_DEFAULT_STORAGE_URI=f"file://{tmp_path}/models",
    )
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    kubelet = LocalKubelet(core, namespace, tmp_path)
    kubelet.start()
    server = traffic = None
    try:
        # Given a champion served here, and a performance policy the Slack sink hears
        # drift.detected of (the subscription every drift subscriber already has)
        port = free_port()
        stable = serve_champion(custom, namespace, {"replicas": 1, "server": {"port": port}})
        server = Server(stable["uri"], stable["sha256"], "stable", tmp_path / "serve.log", "loop",
                        host="0.0.0.0", port=port)  # fmt: skip
        server.wait_ready()
        wait_for(
            lambda: route_pods_to_host(
                core, namespace, "kubeloop.io/modeldeployment=loop,kubeloop.io/track=stable"
            ),
            60,
            1,
            "stable pod routed here",
        )
        relabelled = tmp_path / "models" / "incoming" / "relabelled.csv"
        relabelled.parent.mkdir(parents=True, exist_ok=True)
        new_concept(4000, seed=2).to_csv(relabelled, index=False)
        policy = performance_policy("labels", 100, f"file://{relabelled}")
        policy["metadata"]["annotations"] = {SUBSCRIBE + "drift.detected": "events,slack"}
        policy["spec"]["retrain"]["autoPromote"] = False
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", policy)

        # When the labels of half the input space flip and arrive on /feedback
        traffic = LabelledTraffic(server.url, new_concept(3000, seed=9))
        traffic.start()

        # Then drift.detected arrives with the reason PerformanceDegraded and the numbers the
        # policy's status records
        drift = wait_event(sinks.events, "labels", "io.kubeloop.drift.detected", 180)
        created = wait_event(sinks.events, "labels", "io.kubeloop.retrain.created", 30)
        status = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "driftpolicies", "labels"
        )["status"]
        assert drift.get_extension("kubeloopreason") == "PerformanceDegraded"
        data = drift.get_data()
        assert data["signal"] == "performance" and data["drifted"] is True
        assert data["targetRef"] == "loop"
        numbers, recorded = data["performance"], status["performance"]
        assert numbers["metric"] == "accuracy" and numbers["degraded"] is True
        assert numbers["reference"] == pytest.approx(recorded["reference"])
        assert numbers["limit"] == pytest.approx(recorded["limit"])
        assert numbers["live"] < numbers["limit"] and numbers["labels"] >= 100
        retrain = created.get_data()["retrain"]
        assert retrain["reason"] == "Performance" and retrain["name"] == status["lastRetrain"]["name"]
        assert created.get_data()["message"].endswith("(performance)")
        # and the Slack sink, subscribed to drift.detected by annotation, shows live and limit
        slack = sinks.slack.wait_for(lambda r: r, timeout=30)
        attachment = json.loads(slack[0].body)["attachments"][0]
        assert attachment["title"] == f"DriftPolicy {namespace}/labels: drift.detected"
        fields = {f["title"]: f["value"] for f in attachment["fields"]}
        assert float(fields["live accuracy"]) == pytest.approx(numbers["live"], abs=1e-3)
        assert float(fields["limit"]) == pytest.approx(numbers["limit"], abs=1e-3)
    finally:
        if traffic is not None:
            traffic.stop.set()
        kubelet.stop.set()
        if server is not None:
            server.stop()
        operator.stop()
        print(operator.log_tail(40))


# --- a graceful stop ------------------------------------------------------------------------


def test_an_operator_stopped_by_sigterm_sends_what_it_had_queued_first(
    kube_api: Any, kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    # Given a sink that takes 1.5 s per answer, subscribed to rollout.started
    with WebhookReceiver(delay=1.5) as slow:
        setting = json.dumps({
            "sinks": {"slow": {"type": "cloudevents", "url": slow.url}},
            "subscriptions": {"rollout.started": ["slow"]},
            "source": "//test-cluster",
            "timeoutSeconds": 5,
        })
        process = OperatorProcess(
            kubeconfig_path, namespace, tmp_path / "operator.log",
            env={"KUBELOOP_RUNTIME_IMAGE": "kubeloop:test", "KUBELOOP_NOTIFICATIONS": setting},
        )
        process.start()
        try:
            # And three new ModelDeployments, each of which notifies rollout.started at once
            names = ["churn-0", "churn-1", "churn-2"]
            for name in names:
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, "modeldeployments", modeldeployment(name, SHA_A)
                )
            for name in names:
                wait_for(lambda name=name: md_status(custom, namespace, name).get("phase"), 60,
                         what=f"{name}'s first status")
            slow.wait_for(lambda r: r, timeout=30)  # the first is being answered; two wait

            # When the operator is stopped as Kubernetes stops a pod (SIGTERM)
            assert process.process is not None
            stopped_at = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            code = process.process.wait(timeout=30)
            exited_after = time.monotonic() - stopped_at
        finally:
            process.stop()
            print(process.log_tail(30))
        subjects = sorted(e.get_subject() for e in slow.cloudevents()
                          if e.get_type() == "io.kubeloop.rollout.started")

    # Then it exits cleanly within the pod's grace period (30 s), and only after sending the
    # notifications it had queued (the worker threads are daemons: before, they died with it)
    assert code == 0, process.log_tail(30)
    assert exited_after < 30
    assert subjects == names, subjects
