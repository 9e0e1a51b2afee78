"""``kubectl kubeloop`` against the real control plane and a running operator.

Given two trained runs and a ModelDeployment rolling the second out in paused steps, the
plugin's promote moves the rollout on, abort sends all traffic back to stable, retry starts
again, pause/resume hold and release it, promote --full finishes it, undo brings the previous
model back, watch shows a live view until Ctrl-C, retrain asks a DriftPolicy for a run, and
status prints the lineage data -> run -> artifact -> deployment.

Then the command line as kubectl users type it, against the same API server (no operator needed:
the plugin reads and annotates objects): -n/--namespace, --context and --kubeconfig before the
command, after the object and between kind and name; `md x`, `modeldeployment/x` and a bare name
where the command implies the kind; list (the CRDs' printer columns, -A); version (client,
server, and the operator Deployment the chart installs); and the errors a user meets - an unknown
kind, a missing object, a missing namespace, RBAC's Forbidden - each one line on stderr, no
traceback. The plugin is also run the way kubectl runs it: `kubectl kubeloop ...`, through the
entry point pyproject installs as kubectl-kubeloop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import (
    OperatorProcess,
    install_crds,
    play_kubelet_terminate,
    sigint_as_in_a_terminal,
    wait_for,
)
from kubernetes import client
from test_trainingrun_controller import (
    MANUAL_KUBELET,
    run_trainer_locally,
    trainer_pods,
    trainingrun,
)

GROUP, VERSION = "kubeloop.io", "v1alpha1"


@pytest.fixture
def operator(kubeconfig_path: str, kubectl: Any, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    install_crds(kubectl)
    process = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        env={"KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET), "KUBELOOP_ROLLOUT_TICK_SECONDS": "1"},
    )
    process.start()
    yield process
    process.stop()


def plugin(kubeconfig: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubeloop.plugin", "-n", namespace, *args],
        env={**os.environ, "KUBECONFIG": kubeconfig, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=60,
    )


def progressing(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    conditions = md_status(custom, namespace).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Progressing"), {})


def md_status(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "cancer").get("status") or {}


def train(custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, name: str, tmp_path: Path, **spec: Any) -> str:
    run = trainingrun(name, **spec)
    message, code = run_trainer_locally(run, tmp_path / name)
    assert code == 0, message
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", run)
    pod = wait_for(lambda: next(iter(trainer_pods(core, namespace, name)), None), 60, what=f"{name} pod")
    play_kubelet_terminate(core, namespace, pod, message, 0)
    wait_for(lambda: (custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", name).get("status") or {}).get("phase") == "Succeeded", 60, what=f"{name} Succeeded")
    return str(json.loads(message)["sha256"])


def test_plugin_steers_a_rollout_and_shows_lineage(kube_api: Any, kubeconfig_path: str, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    first = train(custom, core, namespace, "cancer-1", tmp_path)
    second = train(custom, core, namespace, "cancer-2", tmp_path, model={
        "name": "cancer", "estimator": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 20, "random_state": 0}, "task": "classification",
    })
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "cancer"},
        "spec": {"model": {"trainingRunRef": {"name": "cancer-1"}}, "replicas": 4,
                 "rollout": {"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}]}},
    })
    wait_for(lambda: md_status(custom, namespace).get("phase") == "Healthy", 90, what="Healthy")

    shown = plugin(kubeconfig_path, namespace, "status", "tr/cancer-1")
    assert shown.returncode == 0, shown.stderr
    assert "sklearn://breast_cancer" in shown.stdout and first[:16] in shown.stdout
    assert "cancer (stable)" in shown.stdout  # served by

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "cancer", {"spec": {"model": {"trainingRunRef": {"name": "cancer-2"}}}})
    wait_for(lambda: md_status(custom, namespace).get("currentStep") == 1 and md_status(custom, namespace).get("canaryWeight") == 25, 90, what="paused at 25%")

    promoted = plugin(kubeconfig_path, namespace, "promote", "md/cancer")
    assert promoted.returncode == 0, promoted.stderr
    wait_for(lambda: md_status(custom, namespace).get("currentStep") == 3 and md_status(custom, namespace).get("canaryWeight") == 75, 90, what="promoted to 75%")

    shown = plugin(kubeconfig_path, namespace, "status", "md/cancer")
    assert "75%" in shown.stdout and second[:12] in shown.stdout and "cancer-1" in shown.stdout

    aborted = plugin(kubeconfig_path, namespace, "abort", "md/cancer")
    assert aborted.returncode == 0, aborted.stderr
    status = wait_for(lambda: (s := md_status(custom, namespace)).get("phase") == "Degraded" and s, 60, what="aborted")
    assert status["canaryWeight"] == 0
    assert status["stable"]["sha256"] == first

    retried = plugin(kubeconfig_path, namespace, "retry", "md/cancer")
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: md_status(custom, namespace).get("canaryWeight") == 25 and md_status(custom, namespace).get("phase") != "Degraded", 60, what="retried at 25%")

    # pause holds the rollout (Progressing Unknown, says why); resume lets it go on.
    paused = plugin(kubeconfig_path, namespace, "pause", "md/cancer")
    assert paused.returncode == 0, paused.stderr
    wait_for(lambda: (c := progressing(custom, namespace)).get("status") == "Unknown" and "spec.paused" in c.get("message", ""), 60, what="paused by spec.paused")
    resumed = plugin(kubeconfig_path, namespace, "resume", "md/cancer")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: progressing(custom, namespace).get("status") == "True", 60, what="resumed")

    # promote --full skips every remaining step: the second model becomes stable.
    full = plugin(kubeconfig_path, namespace, "promote", "--full", "md/cancer")
    assert full.returncode == 0, full.stderr
    wait_for(lambda: (s := md_status(custom, namespace)).get("phase") == "Healthy" and (s.get("stable") or {}).get("sha256") == second, 90, what="second model stable")

    # undo rolls back to the model served before: cancer-1 comes back as a canary first.
    undone = plugin(kubeconfig_path, namespace, "undo", "md/cancer")
    assert undone.returncode == 0 and "cancer-1" in undone.stdout, undone.stdout + undone.stderr
    wait_for(lambda: ((md_status(custom, namespace).get("canary") or {}).get("sha256")) == first, 90, what="first model back as canary")
    plugin(kubeconfig_path, namespace, "promote", "--full", "md/cancer")
    wait_for(lambda: (s := md_status(custom, namespace)).get("phase") == "Healthy" and (s.get("stable") or {}).get("sha256") == first, 90, what="first model stable again")

    # watch shows a live view until Ctrl-C, then exits 0.
    watching = subprocess.Popen(
        [sys.executable, "-m", "kubeloop.plugin", "-n", namespace, "watch", "md/cancer"],
        env={**os.environ, "KUBECONFIG": kubeconfig_path, "COLUMNS": "200"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal,
    )
    # Ctrl-C once it talks to the API server (imports alone take seconds on a loaded box),
    # after a first refresh.
    fds = Path(f"/proc/{watching.pid}/fd")

    def watch_connected() -> bool:
        links = []
        try:
            for fd in fds.iterdir():
                with suppress(OSError):  # an fd closed between listing and reading it
                    links.append(os.readlink(fd))
        except FileNotFoundError:  # the process is gone: the poll() below says how
            return True
        return any(link.startswith("socket:") for link in links)

    wait_for(watch_connected, 60, what="watch connected")
    time.sleep(3)
    assert watching.poll() is None, watching.communicate()[1]
    watching.send_signal(signal.SIGINT)
    watched, errors = watching.communicate(timeout=30)
    assert watching.returncode == 0, errors
    assert "cancer" in watched and first[:12] in watched

    # retrain asks the DriftPolicy for a run through the same path as drift: a TrainingRun
    # labelled with the reason "manual", owned by the policy.
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": "cancer"},
        "spec": {"targetRef": {"name": "cancer"}, "source": {"live": {}}, "interval": "1h",
                 "retrain": {"fromTrainingRun": {"name": "cancer-1"}, "autoPromote": False}},
    })
    asked = plugin(kubeconfig_path, namespace, "retrain", "dp/cancer")
    assert asked.returncode == 0, asked.stderr
    runs = wait_for(lambda: custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingruns",
        label_selector="kubeloop.io/driftpolicy=cancer,kubeloop.io/retrain-reason=manual")["items"], 90, what="manual retrain run")
    assert len(runs) == 1 and runs[0]["metadata"]["ownerReferences"][0]["name"] == "cancer"

    wrong = plugin(kubeconfig_path, namespace, "promote", "tr/cancer-1")
    assert wrong.returncode == 2 and "works on ModelDeployment, not TrainingRun" in wrong.stderr
    missing = plugin(kubeconfig_path, namespace, "status", "md/nope")
    assert missing.returncode == 1
    assert missing.stderr == f"error: modeldeployment nope not found in namespace {namespace}\n"


# --- the command line as kubectl users type it -------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
NOWHERE = "kubeloop-no-such-namespace"


def kubeloop(*args: str, kubeconfig: str) -> subprocess.CompletedProcess[str]:
    """The plugin with nothing added: the namespace comes from the flags or the kubeconfig."""
    return subprocess.run(
        [sys.executable, "-m", "kubeloop.plugin", *args],
        env={**os.environ, "KUBECONFIG": kubeconfig, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=60,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A user-facing failure: a single `error: ...` line on stderr, nothing on stdout, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.fixture
def objects(kube_api: Any, kubectl: Any, namespace: str) -> dict[str, str]:
    """A TrainingRun (status Succeeded, written as the operator would), a ModelDeployment and a
    DriftPolicy, all named after the model: nothing reconciles them, the plugin only reads and
    annotates."""
    install_crds(kubectl)
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", trainingrun("cancer-1"))
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "trainingruns", "cancer-1", {"status": {"phase": "Succeeded"}})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "cancer"},
        "spec": {"model": {"trainingRunRef": {"name": "cancer-1"}}, "replicas": 1},
    })
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DriftPolicy", "metadata": {"name": "cancer"},
        "spec": {"targetRef": {"name": "cancer"}, "source": {"live": {}}, "interval": "1h",
                 "retrain": {"fromTrainingRun": {"name": "cancer-1"}, "autoPromote": False}},
    })
    return {"tr": "cancer-1", "md": "cancer", "dp": "cancer"}


@pytest.fixture
def contexts(kubeconfig_path: str, namespace: str, tmp_path: Path) -> dict[str, str]:
    """Kubeconfigs for the test cluster whose current context points at a namespace that does
    not exist, with a second context "here" whose namespace is the test's; and one whose current
    context is "here"."""
    config = yaml.safe_load(Path(kubeconfig_path).read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
    config["contexts"] = [
        {"name": "elsewhere", "context": {**current, "namespace": NOWHERE}},
        {"name": "here", "context": {**current, "namespace": namespace}},
    ]
    paths = {}
    for current_context in ("elsewhere", "here"):
        path = tmp_path / f"kubeconfig-{current_context}"
        path.write_text(yaml.safe_dump({**config, "current-context": current_context}))
        paths[current_context] = str(path)
    return paths


def placed(flag: list[str], where: str, command: list[str]) -> list[str]:
    """``command`` is [subcommand, kind, name]; put ``flag`` before, after, or between kind and name."""
    sub, kind, name = command
    return {"before": [*flag, sub, kind, name], "after": [sub, kind, name, *flag],
            "between": [sub, kind, *flag, name]}[where]


@pytest.mark.parametrize("where", ["before", "after", "between"])
@pytest.mark.parametrize("flag", ["--namespace", "-n", "--context", "--kubeconfig"])
def test_connection_flags_work_before_or_after_the_command(
    objects: dict[str, str], contexts: dict[str, str], namespace: str, tmp_path: Path, flag: str, where: str,
) -> None:
    # Without the flag the plugin would look in NOWHERE (the current context's namespace) or,
    # for --kubeconfig, find no kubeconfig at all: finding md/cancer proves the flag was read.
    env_config, value = {
        "--namespace": (contexts["elsewhere"], namespace),
        "-n": (contexts["elsewhere"], namespace),
        "--context": (contexts["elsewhere"], "here"),
        "--kubeconfig": (str(tmp_path / "no-kubeconfig"), contexts["here"]),
    }[flag]
    shown = kubeloop(*placed([flag, value], where, ["status", "md", "cancer"]), kubeconfig=env_config)
    assert shown.returncode == 0, shown.stderr
    assert f"ModelDeployment {namespace}/cancer" in shown.stdout
    # And a write: promote with a bare name (the command implies md) lands on the same object.
    promoted = kubeloop(*placed([flag, value], where, ["promote", "--full", "cancer"]), kubeconfig=env_config)
    assert promoted.returncode == 0, promoted.stderr
    assert "modeldeployment/cancer: promote requested (kubeloop.io/promote-full=" in promoted.stdout


def test_without_flags_the_current_context_s_namespace_is_used(
    objects: dict[str, str], contexts: dict[str, str], namespace: str,
) -> None:
    here = kubeloop("status", "md", "cancer", kubeconfig=contexts["here"])
    assert here.returncode == 0 and f"ModelDeployment {namespace}/cancer" in here.stdout, here.stderr
    elsewhere = kubeloop("status", "md", "cancer", kubeconfig=contexts["elsewhere"])
    assert one_error_line(elsewhere) == f"error: modeldeployment cancer not found in namespace {NOWHERE}\n"
    assert elsewhere.returncode == 1
    # The last -n wins, as in kubectl; one before the command is not lost to the subcommand.
    last = kubeloop("-n", NOWHERE, "status", "md", "cancer", "-n", namespace, kubeconfig=contexts["elsewhere"])
    assert last.returncode == 0, last.stderr


@pytest.mark.parametrize("words", [["md/cancer"], ["md", "cancer"], ["modeldeployment/cancer"],
                                   ["modeldeployments", "cancer"], ["cancer"]])
def test_object_forms_name_the_same_deployment(
    kube_api: Any, objects: dict[str, str], contexts: dict[str, str], namespace: str, words: list[str],
) -> None:
    paused = kubeloop("pause", *words, kubeconfig=contexts["here"])
    assert paused.returncode == 0, paused.stderr
    md = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "cancer")
    assert md["spec"]["paused"] is True


def test_retrain_and_logs_take_their_kinds(objects: dict[str, str], contexts: dict[str, str], kube_api: Any, namespace: str) -> None:
    asked = kubeloop("retrain", "cancer", kubeconfig=contexts["here"])  # bare name: a DriftPolicy
    assert asked.returncode == 0, asked.stderr
    dp = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(GROUP, VERSION, namespace, "driftpolicies", "cancer")
    assert "kubeloop.io/retrain" in dp["metadata"]["annotations"]
    # logs works on tr and md, so a bare name is ambiguous and refused.
    bare = kubeloop("logs", "cancer", kubeconfig=contexts["here"])
    assert bare.returncode == 2 and "use tr/NAME, md/NAME, tr NAME, md NAME" in one_error_line(bare)
    # Nothing runs the TrainingRun here: no pods, said plainly (the real pods are in tests/e2e).
    no_pods = kubeloop("logs", "tr", "cancer-1", kubeconfig=contexts["here"])
    assert no_pods.returncode == 1 and "tr/cancer-1 has no pods" in one_error_line(no_pods)
    no_server = kubeloop("logs", "md/cancer", "--track", "canary", kubeconfig=contexts["here"])
    assert no_server.returncode == 1 and "md/cancer has no canary server pods" in one_error_line(no_server)


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_list_shows_the_printer_columns_in_one_namespace_or_all(
    kube_api: Any, objects: dict[str, str], contexts: dict[str, str], namespace: str,
) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    other = f"{namespace[:40]}-other"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other, labels={"kubeloop.io/test": "true"})))
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, other, "modeldeployments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "fraud"},
            "spec": {"model": {"trainingRunRef": {"name": "fraud-1"}}, "replicas": 1},
        })

        listed = kubeloop("list", kubeconfig=contexts["here"])
        assert listed.returncode == 0, listed.stderr
        blocks = [rows(block) for block in listed.stdout.split("\n\n")]
        # One block per kind, headed by the CRD's printer columns (priority 0), names as KIND/NAME.
        assert [block[0][:3] for block in blocks] == [["NAME", "MODEL", "PHASE"], ["NAME", "PHASE", "STABLE"],
                                                      ["NAME", "TARGET", "DRIFTED"]]
        assert blocks[0][1][:3] == ["tr/cancer-1", "cancer", "Succeeded"]
        assert blocks[1][1][0] == "md/cancer" and blocks[2][1][:2] == ["dp/cancer", "cancer"]
        assert "fraud" not in listed.stdout

        only_md = kubeloop("list", "md", kubeconfig=contexts["here"])
        assert [row[0] for row in rows(only_md.stdout)] == ["NAME", "cancer"]

        everywhere = kubeloop("list", "modeldeployments", "-A", kubeconfig=contexts["here"])
        assert everywhere.returncode == 0, everywhere.stderr
        table = rows(everywhere.stdout)
        assert table[0][:3] == ["NAMESPACE", "NAME", "PHASE"]
        assert [namespace, "cancer"] in [row[:2] for row in table] and [other, "fraud"] in [row[:2] for row in table]

        wide = kubeloop("list", "tr", "-o", "wide", kubeconfig=contexts["here"])
        assert "ESTIMATOR" in wide.stdout and "sklearn.linear_model.LogisticRegression" in wide.stdout

        empty = kubeloop("-n", NOWHERE, "list", kubeconfig=contexts["here"])
        assert empty.returncode == 0 and empty.stdout == ""
        assert empty.stderr == f"No Kubeloop objects found in namespace {NOWHERE}.\n"
    finally:
        core.delete_namespace(other)


def test_version_shows_client_server_and_the_chart_s_operator(
    kube_api: Any, contexts: dict[str, str], namespace: str, tmp_path: Path,
) -> None:
    from kubeloop import __version__

    client_only = kubeloop("version", "--client", kubeconfig=str(tmp_path / "no-kubeconfig"))
    assert client_only.returncode == 0 and client_only.stdout == f"Client Version: {__version__}\n"

    # An operator Deployment labelled as the chart labels it (nothing needs to run for the plugin
    # to read its version label and image).
    labels = {"app.kubernetes.io/name": "kubeloop", "app.kubernetes.io/instance": "kubeloop",
              "app.kubernetes.io/component": "operator", "app.kubernetes.io/part-of": "kubeloop",
              "app.kubernetes.io/version": "9.9.9-test"}
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")}
    client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kubeloop", "labels": labels},
        "spec": {"replicas": 0, "selector": {"matchLabels": selector}, "template": {
            "metadata": {"labels": selector},
            "spec": {"containers": [{"name": "operator", "image": "registry.example/kubeloop:9.9.9-test"}]}}},
    })
    server = client.VersionApi(kube_api).get_code().git_version
    shown = kubeloop("version", kubeconfig=contexts["elsewhere"])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:2] == [f"Client Version: {__version__}", f"Server Version: {server}"]
    assert lines[2].startswith("Operator Version: ")
    assert f"9.9.9-test (deployment {namespace}/kubeloop, image registry.example/kubeloop:9.9.9-test)" in lines[2]


def test_user_errors_are_one_line_without_a_traceback(
    kube_api: Any, objects: dict[str, str], contexts: dict[str, str], namespace: str,
) -> None:
    here = contexts["here"]
    bad_kind = kubeloop("status", "deploy/cancer", kubeconfig=here)
    assert bad_kind.returncode == 2
    assert one_error_line(bad_kind).startswith("error: unknown kind 'deploy': use tr/NAME, md/NAME, dp/NAME")
    wrong_kind = kubeloop("promote", "tr", "cancer-1", kubeconfig=here)
    assert wrong_kind.returncode == 2 and "works on ModelDeployment, not TrainingRun" in one_error_line(wrong_kind)
    for words, kind in ((["md", "nope"], "modeldeployment"), (["tr/nope"], "trainingrun"), (["dp", "nope"], "driftpolicy")):
        missing = kubeloop("status", *words, kubeconfig=here)
        assert missing.returncode == 1
        assert one_error_line(missing) == f"error: {kind} nope not found in namespace {namespace}\n"
    missing_write = kubeloop("abort", "nope", kubeconfig=here)
    assert one_error_line(missing_write) == f"error: modeldeployment nope not found in namespace {namespace}\n"
    undo = kubeloop("undo", "cancer", kubeconfig=here)
    assert undo.returncode == 1 and "md/cancer has no previous model" in one_error_line(undo)
    no_context = kubeloop("--context", "nope", "list", kubeconfig=here)
    assert no_context.returncode == 1 and "nope" in one_error_line(no_context)


def test_forbidden_shows_the_api_server_s_message(
    kube_api: Any, objects: dict[str, str], contexts: dict[str, str], namespace: str, tmp_path: Path,
) -> None:
    # A ServiceAccount with no RBAC at all, and a kubeconfig with its token.
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}).status.token
    config = yaml.safe_load(Path(contexts["here"]).read_text())
    config["users"] = [{"name": "nobody", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "nobody"
    nobody = tmp_path / "kubeconfig-nobody"
    nobody.write_text(yaml.safe_dump(config))

    denied = kubeloop("status", "md", "cancer", kubeconfig=str(nobody))
    assert denied.returncode == 1
    assert one_error_line(denied) == (
        f'error: from server (Forbidden): modeldeployments.kubeloop.io "cancer" is forbidden: User '
        f'"system:serviceaccount:{namespace}:nobody" cannot get resource "modeldeployments" in API group '
        f'"kubeloop.io" in the namespace "{namespace}"\n')
    denied_write = kubeloop("promote", "cancer", kubeconfig=str(nobody))
    assert denied_write.returncode == 1 and "cannot patch resource" in one_error_line(denied_write)
    # version still answers what it can, and says honestly why the operator's is unknown.
    version = kubeloop("version", kubeconfig=str(nobody))
    assert version.returncode == 0, version.stderr
    assert "Operator Version: unknown (cannot list Deployments: deployments.apps is forbidden" in version.stdout


def test_kubectl_runs_it_as_a_plugin(
    cluster: Any, objects: dict[str, str], contexts: dict[str, str], namespace: str, tmp_path: Path,
) -> None:
    # kubectl finds plugins as kubectl-<name> on PATH; pyproject installs kubectl-kubeloop as
    # kubeloop.cli:kubectl_plugin, which this wrapper calls (the repo is not pip-installed here).
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubectl-kubeloop"] == "kubeloop.cli:kubectl_plugin"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "kubectl-kubeloop"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -c "from kubeloop.cli import kubectl_plugin; kubectl_plugin()" "$@"\n')
    wrapper.chmod(0o755)
    kubectl_path = cluster.kubectl_bin
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KUBECONFIG": contexts["elsewhere"]}
    listed = subprocess.run([kubectl_path, "kubeloop", "list", "md", "--context", "here"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [row[0] for row in rows(listed.stdout)] == ["NAME", "cancer"]
    shown = subprocess.run([kubectl_path, "kubeloop", "-n", namespace, "status", "md", "cancer"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and f"ModelDeployment {namespace}/cancer" in shown.stdout, shown.stderr
