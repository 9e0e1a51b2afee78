"""Why a ModelDeployment is not ready, in its conditions: a server that refused its model
(ChecksumMismatch, ModelUnusable, from the pods' exit codes) and a route that cannot carry the
weights (TrafficRoutingFailed)."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from modeldeployment_world import SHA_A, SHA_B, World, model, modeldeployment

from kubeloop.decide import server_pods
from kubeloop.decide.modeldeployment import Observed, tracks_to_inspect
from kubeloop.decide.server_pods import (
    MAX_SERVER_WORDS,
    POD_CHECK_AFTER,
    server_refusal,
    server_words,
)
from kubeloop.runtime import serve
from kubeloop.serving import model as serving_model

SAID = "sha256 mismatch for /models/churn/model.skops: expected aaaa, got ffff; refusing to load it"


def pod(name: str, sha: str = SHA_A, **container: Any) -> dict[str, Any]:
    status = {"name": "server", "ready": False, "restartCount": 0, **container}
    return {
        "metadata": {"name": name, "annotations": {"kubeloop.io/model-sha256": sha}},
        "status": {"phase": "Running", "containerStatuses": [status]},
    }


def crashed(code: int, message: str | None = SAID) -> dict[str, Any]:
    """What the kubelet shows of a container that exited and is waiting to be restarted."""
    terminated: dict[str, Any] = {"exitCode": code, "reason": "Error"}
    if message is not None:
        terminated["message"] = message
    return {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": terminated},
            "restartCount": 2}


def exited(code: int, message: str = SAID) -> dict[str, Any]:
    """Between the exit and the restart: the current state is the termination."""
    return {"state": {"terminated": {"exitCode": code, "reason": "Error", "message": message}}}


# --- the pure reading of pod statuses -------------------------------------------------------


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([], None),
        ([pod("p1", state={"running": {}})], None),
        ([pod("p1", **crashed(3))], ("ChecksumMismatch", "p1", 3, 0)),
        ([pod("p1", **exited(3))], ("ChecksumMismatch", "p1", 3, 0)),
        ([pod("p1", **crashed(4))], ("ModelUnusable", "p1", 4, 0)),
        # exit codes outside the table say nothing (OOM, a crash, a bad flag)
        ([pod("p1", **crashed(137))], None),
        ([pod("p1", **crashed(1))], None),
        ([pod("p1", **crashed(2))], None),
        # a pod of another model (an old ReplicaSet's) does not speak for this one
        ([pod("p1", sha=SHA_B, **crashed(3))], None),
        # the first by name, and how many more
        ([pod("p2", **crashed(3)), pod("p1", **crashed(3)), pod("p3", state={"running": {}})],
         ("ChecksumMismatch", "p1", 3, 1)),
        # another container of the pod (a sidecar) is not the server
        ([{**pod("p1"), "status": {"containerStatuses": [{"name": "proxy", **crashed(3)}]}}], None),
        # an exit code that is not a number
        ([pod("p1", lastState={"terminated": {"exitCode": "3"}})], None),
        ([pod("p1", lastState={"terminated": {"exitCode": True}})], None),
    ],
)
def test_a_refusal_is_read_from_the_server_container_exit_code(
    pods: list[dict[str, Any]], expected: tuple[str, str, int, int] | None
) -> None:
    found = server_refusal(pods, SHA_A)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.reason, found.pod, found.exit_code, found.others) == expected


def test_the_server_s_words_are_one_bounded_line_and_only_in_the_detail() -> None:
    hostile = "line one\nline two\r\x1b[31mred\x00" + "x" * 5000
    words = server_words(hostile)
    assert "\n" not in words and "\x1b" not in words and "\x00" not in words and "\r" not in words
    assert len(words) == MAX_SERVER_WORDS and words.endswith("…")
    assert words.startswith("line one line two [31mred")
    assert server_words(None) == "" and server_words(42) == ""
    refusal = server_refusal([pod("p1", **crashed(3, hostile))], SHA_A)
    assert refusal is not None
    assert words in refusal.detail() and "line" not in refusal.short()
    assert refusal.short() == "pod p1 exited 3: " + server_pods.SERVER_EXITS[3][1]
    no_message = server_refusal([pod("p1", **crashed(3, None))], SHA_A)
    assert no_message is not None and no_message.detail() == no_message.short()


def test_the_exit_table_is_the_server_s() -> None:
    assert server_pods.EXIT_CHECKSUM_MISMATCH == serving_model.EXIT_CHECKSUM_MISMATCH
    assert server_pods.EXIT_MODEL_UNUSABLE == serving_model.EXIT_MODEL_UNUSABLE
    assert set(server_pods.SERVER_EXITS) == {3, 4}


# --- the real server writes what the operator reads ---------------------------------------------


def test_the_server_writes_its_refusal_to_the_termination_log(tmp_path: Path) -> None:
    (tmp_path / "model.skops").write_bytes(b"not the pinned bytes")
    log = tmp_path / "termination-log"
    code = serve.main(["--model-uri", str(tmp_path), "--sha256", "a" * 64, "--workers", "1",
                       "--termination-log", str(log)])
    assert code == 3
    written = log.read_text()
    assert written.startswith(f"sha256 mismatch for {tmp_path}/model.skops: expected {'a' * 64}, got ")
    assert "\n" not in written and len(written) <= serve.MAX_REFUSAL_CHARS
    # and what the operator makes of it
    refusal = server_refusal([pod("p1", **crashed(code, written))], SHA_A)
    assert refusal is not None and refusal.reason == "ChecksumMismatch"
    assert refusal.server_said == written


def test_a_missing_model_file_is_exit_4_and_is_written_too(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    code = serve.main(["--model-uri", str(tmp_path / "nothing"), "--sha256", "a" * 64,
                       "--workers", "1", "--termination-log", str(log)])
    assert code == 4 and log.read_text().startswith("model_uri: no model at ")


def double(values: Any) -> Any:
    """A function from outside scikit-learn: skops records it as an untrusted type."""
    return values * 2


def test_a_worker_that_refuses_untrusted_types_writes_exit_4_s_reason(tmp_path: Path) -> None:
    import hashlib

    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    iris = load_iris()
    pipeline = make_pipeline(FunctionTransformer(double), LogisticRegression(max_iter=500))
    pipeline.fit(iris.data, iris.target)
    skops.io.dump(pipeline, tmp_path / "model.skops")
    digest = hashlib.sha256((tmp_path / "model.skops").read_bytes()).hexdigest()
    log = tmp_path / "termination-log"
    # two workers: the supervisor verifies the bytes, a worker refuses the types and writes
    code = serve.main(["--model-uri", str(tmp_path), "--sha256", digest, "--workers", "2",
                       "--port", "0", "--termination-log", str(log)])
    assert code == 4
    assert "does not trust" in log.read_text()


# --- when the controller reads pods, and what the status says ---------------------------------


class PodWorld(World):
    """The World, with server pods the controller reads only for :func:`tracks_to_inspect`."""

    def __init__(self, md: dict[str, Any]) -> None:
        super().__init__(md)
        self.pods: dict[str, list[dict[str, Any]]] = {"stable": [], "canary": []}
        self.reads: list[str] = []
        self.route_refused: str | None = None

    def observed(self) -> Observed:
        seen = super().observed()
        tracks = tracks_to_inspect(self.md, seen, self.now)
        self.reads.extend(tracks)
        return Observed(**{**seen.__dict__, "route_refused": self.route_refused,
                           "server_pods": {t: copy.deepcopy(self.pods[t]) for t in tracks}})

    def not_ready(self, track: str) -> None:
        deployment = self.deployments[f"churn-{track}"]
        deployment["status"].update(readyReplicas=0, availableReplicas=0)


def test_a_healthy_or_starting_deployment_reads_no_pods() -> None:
    world = PodWorld(modeldeployment())
    world.kubelet_ready = False
    world.run()
    world.tick(POD_CHECK_AFTER.total_seconds() - 1)
    world.run()
    assert world.reads == []
    world.kubelet_ready = True
    world.settle_all()
    world.tick(3600)
    world.run()
    assert world.status["phase"] == "Healthy" and world.reads == []


@pytest.mark.parametrize(
    ("exit_code", "reason"), [(3, "ChecksumMismatch"), (4, "ModelUnusable"), (137, "ReplicasNotReady")]
)
def test_stable_pods_that_refuse_the_model_say_why(exit_code: int, reason: str) -> None:
    world = PodWorld(modeldeployment())
    world.kubelet_ready = False
    world.run()
    world.pods["stable"] = [pod(f"churn-stable-{i}", **crashed(exit_code)) for i in range(4)]
    world.tick(POD_CHECK_AFTER.total_seconds())
    world.run()
    assert world.reads and set(world.reads) == {"stable"}
    status = world.status
    for type_ in ("Ready", "StableReady"):
        condition = world.condition(type_)
        assert (condition["status"], condition["reason"]) == ("False", reason)
    if reason == "ReplicasNotReady":
        assert status["phase"] == "Progressing" and SAID not in str(status)
        return
    # the conditions name the pod and quote the server
    assert "pod churn-stable-0 (and 3 more pod(s)) exited" in world.condition("StableReady")["message"]
    assert SAID in world.condition("StableReady")["message"] and SAID in world.condition("Ready")["message"]
    # needs a person: Degraded, one Warning Event, lastFailure - in our words only
    assert status["phase"] == "Degraded"
    assert world.condition("Degraded")["reason"] == reason
    assert world.condition("Progressing")["reason"] == reason
    outside_conditions = {k: v for k, v in status.items() if k != "conditions"}
    assert SAID not in str(outside_conditions) and "churn-stable-0" in status["message"]
    warnings = [e for e in world.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == [reason]
    assert SAID not in warnings[0].message
    assert status["lastFailure"]["reason"] == reason
    # the same again: no second Event
    world.run()
    assert [e.reason for e in world.events if e.type == "Warning"] == [reason]

    # fixed (the file the pin names is back): the pods become ready, the reasons go
    world.kubelet_ready = True
    world.settle_all()
    world.run()
    assert world.status["phase"] == "Healthy"
    assert world.condition("Degraded")["status"] == "False"
    assert world.condition("StableReady")["reason"] == "ReplicasReady"


def test_a_rollout_s_canary_that_refuses_its_model_says_why_and_holds() -> None:
    steps = [{"setWeight": 20}, {"pause": {}}]
    world = PodWorld(modeldeployment(steps))
    world.run()
    assert world.status["phase"] == "Healthy"
    world.change_spec(model=model(SHA_B))
    world.kubelet_ready = False
    world.run()
    world.pods["canary"] = [pod("churn-canary-0", sha=SHA_B, **crashed(3))]
    world.tick(POD_CHECK_AFTER.total_seconds())
    world.run()
    assert set(world.reads) == {"canary"}
    canary = world.condition("CanaryReady")
    assert (canary["status"], canary["reason"]) == ("False", "ChecksumMismatch")
    assert SAID in canary["message"]
    status = world.status
    assert status["currentStep"] == 0 and status["canaryWeight"] == 0
    assert "canary pod churn-canary-0 exited 3" in world.condition("Progressing")["message"]
    # the stable model still serves
    assert world.condition("Ready")["status"] == "True" and world.condition("Ready")["reason"] == "Healthy"


def test_a_track_is_read_once_it_has_not_been_ready_for_the_grace() -> None:
    world = PodWorld(modeldeployment())
    world.run()
    world.kubelet_ready = False
    world.not_ready("stable")
    world.run()
    since = world.condition("StableReady")["lastTransitionTime"]
    assert world.condition("StableReady")["status"] == "False"
    assert tracks_to_inspect(world.md, World.observed(world), world.now) == []
    world.tick((POD_CHECK_AFTER - timedelta(seconds=1)).total_seconds())
    assert tracks_to_inspect(world.md, World.observed(world), world.now) == []
    world.tick(1)
    assert tracks_to_inspect(world.md, World.observed(world), world.now) == ["stable"]
    assert world.condition("StableReady")["lastTransitionTime"] == since


# --- a route that cannot carry the weights ---------------------------------------------------


ROUTE = {
    "metadata": {"name": "churn", "resourceVersion": "1"},
    "spec": {"rules": [{"backendRefs": [{"name": "churn-stable", "port": 8080},
                                        {"name": "churn-canary", "port": 8080}]}]},
}


@pytest.mark.parametrize(
    ("step", "route", "error"),
    [
        ({"setWeight": 20}, None, "HTTPRoute 'churn' not found"),
        ({"pause": {"duration": "10s"}}, None, "HTTPRoute 'churn' not found"),
        ({"pause": {}}, None, "HTTPRoute 'churn' not found"),
        ({"shadow": {"percent": 50, "duration": "10s"}}, None, "HTTPRoute 'churn' not found"),
        ({"setWeight": 20}, {"metadata": {"name": "churn"}, "spec": {"rules": [{"backendRefs": [
            {"name": "elsewhere", "port": 80}]}]}}, "churn-stable"),
    ],
)
def test_a_route_that_cannot_carry_the_weights_holds_the_rollout_as_traffic_routing_failed(
    step: dict[str, Any], route: dict[str, Any] | None, error: str
) -> None:
    steps = [step, {"setWeight": 100}]
    world = PodWorld(modeldeployment(steps, rollout={
        "steps": steps, "trafficRouting": {"gatewayAPI": {"httpRoute": "churn"}}}))
    world.route = copy.deepcopy(ROUTE)
    world.run()
    assert world.status["phase"] == "Healthy"
    world.route = copy.deepcopy(route)
    world.change_spec(model=model(SHA_B))
    world.run()
    world.tick(3600)
    world.run()
    status = world.status
    progressing = world.condition("Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "TrafficRoutingFailed")
    assert error in progressing["message"] and error in status["message"]
    assert status["currentStep"] == 0 and status["canaryWeight"] == 0
    assert status["stable"]["sha256"] == SHA_A and status["phase"] == "Progressing"
    # the route is fixed: the rollout goes on to the end
    world.route = copy.deepcopy(ROUTE)
    world.annotate("kubeloop.io/promote", "t1")
    world.run(5)
    world.tick(3600)
    world.run(5)
    assert world.status["stable"]["sha256"] == SHA_B, world.status
    assert world.condition("Progressing")["reason"] == "Healthy"


def test_a_route_whose_weights_the_api_server_refused_holds_the_rollout_too() -> None:
    """The controller decides again with the refusal it got from its write of the weights."""
    steps = [{"setWeight": 20}, {"pause": {}}]
    world = PodWorld(modeldeployment(steps, rollout={
        "steps": steps, "trafficRouting": {"gatewayAPI": {"httpRoute": "churn"}}}))
    world.route = copy.deepcopy(ROUTE)
    world.run()
    world.route_refused = "HTTPRoute 'churn': the API server refused the new weights (422: frozen)"
    world.change_spec(model=model(SHA_B))
    world.run()
    progressing = world.condition("Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "TrafficRoutingFailed")
    assert world.route_refused in progressing["message"]
    assert world.status["currentStep"] == 0 and world.status["canaryWeight"] == 0
    assert "StepAdvanced" not in world.event_reasons()
    world.route_refused = None
    world.run()
    assert world.status["currentStep"] == 1 and world.status["canaryWeight"] == 20
    assert world.condition("Progressing")["reason"] == "Paused"
