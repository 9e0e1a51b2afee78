"""What a credentials Secret may not set in a runtime pod (kubeloop.trust.pod_env, issue 13).

Every pod builder that hands a Secret to its container as ``envFrom`` pins each listed variable
in ``env`` (which Kubernetes lets win over the Secret's key of the same name), to a value its
reader takes as unset or to the value the operator intends, and leaves alone what the pod needs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kubeloop
from kubeloop.resources.cleanupjob import build_cleanup_job
from kubeloop.resources.driftjob import build_drift_job
from kubeloop.resources.serving import ModelRef, ServingSettings, Shadow, build_track_deployment
from kubeloop.resources.storage import PVC_MOUNT_ROOT
from kubeloop.resources.trainingjob import TrainerSettings, build_training_job
from kubeloop.runtime import artifacts as artifacts_cli
from kubeloop.runtime import drift as drift_cli
from kubeloop.runtime import train as train_cli
from kubeloop.runtime.serve import load_settings
from kubeloop.serving.settings import ENV_PREFIX, ServeSettings
from kubeloop.training.estimators import DEFAULT_ALLOWED_PREFIXES
from kubeloop.trust.data_paths import ENV_DATA_ROOTS, DataRoots
from kubeloop.trust.pod_env import JOB_COMPLETION_INDEX, PINNED, PINNED_NAMES, pinned_env

SETTINGS = TrainerSettings(
    image="kubeloop:test", image_pull_policy="IfNotPresent",
    default_storage_uri="file:///var/lib/kubeloop/models/", allowed_estimator_prefixes=("sklearn.",),
    job_ttl_seconds=600, models_pvc="kubeloop-models",
)
SERVING = ServingSettings(image="kubeloop:test", default_storage_uri="file:///var/lib/kubeloop/models/")
SHA = "a" * 64
CREDENTIALS = {"secretRef": {"name": "s3-creds"}}


def _run(*, credentials: bool = True, sweep: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "churn", "estimator": "sklearn.tree.DecisionTreeClassifier", "task": "classification"},
        "data": {"source": "pvc://datasets/train.csv"},
    }
    if credentials:
        spec["credentials"] = CREDENTIALS
    if sweep:
        spec["sweep"] = {"grid": {"max_depth": [2, 3]}}
    return {"apiVersion": "kubeloop.io/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "churn-1", "namespace": "ml", "uid": "u-1"}, "spec": spec}


def _policy(*, credentials: bool = True) -> dict[str, Any]:
    dataset: dict[str, Any] = {"uri": "s3://live/today.csv"}
    if credentials:
        dataset["credentials"] = CREDENTIALS
    return {"apiVersion": "kubeloop.io/v1alpha1", "kind": "DriftPolicy",
            "metadata": {"name": "churn-drift", "namespace": "ml", "uid": "u-2"},
            "spec": {"source": {"dataset": dataset}}}


def _deployment(*, credentials: bool = True, batching: bool = False) -> dict[str, Any]:
    model: dict[str, Any] = {"uri": "s3://models/churn/churn-1"}
    if credentials:
        model["credentials"] = CREDENTIALS
    spec: dict[str, Any] = {"model": model}
    if batching:
        spec["server"] = {"batching": {"maxBatchSize": 16, "maxLatencyMs": 7}}
    return {"apiVersion": "kubeloop.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "churn", "namespace": "ml", "uid": "u-3"}, "spec": spec}


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return container


MODEL = ModelRef(uri="s3://models/churn/churn-1", sha256=SHA)
SHADOW = Shadow(url="http://churn-canary.ml.svc:8080", percent=50)

# (pod, builds its container given whether the run/policy/deployment names a Secret)
BUILDERS: list[tuple[str, Callable[[bool], dict[str, Any]]]] = [
    ("training Job", lambda c: _container(build_training_job(_run(credentials=c), SETTINGS))),
    ("training Job of a sweep", lambda c: _container(build_training_job(_run(credentials=c, sweep=True), SETTINGS))),
    ("drift-check Job", lambda c: _container(build_drift_job(_policy(credentials=c), 1700000000, "s3://models/churn/churn-1/profile.json", {}, SETTINGS))),
    ("cleanup Job", lambda c: _container(build_cleanup_job(_run(credentials=c), SETTINGS))),
    ("stable server", lambda c: _container(build_track_deployment(_deployment(credentials=c), "stable", MODEL, 2, SERVING))),
    ("stable server mirroring", lambda c: _container(build_track_deployment(_deployment(credentials=c), "stable", MODEL, 2, SERVING, SHADOW))),
    ("canary server with batching", lambda c: _container(build_track_deployment(_deployment(credentials=c, batching=True), "canary", MODEL, 1, SERVING))),
]
IDS = [name for name, _ in BUILDERS]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container["env"]}


@pytest.mark.parametrize(("pod", "build"), BUILDERS, ids=IDS)
def test_every_listed_variable_is_pinned_where_a_secret_comes_in(pod: str, build: Callable[[bool], dict[str, Any]]) -> None:
    container = build(True)
    assert container["envFrom"] == [CREDENTIALS]
    env = _env(container)
    assert len(env) == len(container["env"]), f"{pod}: a variable is set twice"
    unpinned = PINNED_NAMES - set(env)
    if "sweep" in pod:
        # The Job controller sets it in an Indexed Job, and skips a container that already has it.
        assert unpinned == {JOB_COMPLETION_INDEX}
    else:
        assert unpinned == set()


@pytest.mark.parametrize(("pod", "build"), BUILDERS, ids=IDS)
def test_a_pinned_value_is_unset_or_the_intended_one(pod: str, build: Callable[[bool], dict[str, Any]]) -> None:
    own = build(False)["env"]  # what the builder itself sets, without a Secret
    appended = build(True)["env"][len(own):]
    policy = {variable.name: variable.value for variable in PINNED}
    for entry in appended:
        # Each appended entry is a listed variable at the policy's value ("" = unset to its reader).
        assert entry == {"name": entry["name"], "value": policy[entry["name"]]}, pod
    # A listed variable the builder sets itself keeps the builder's (intended) value.
    assert {e["name"] for e in own} & PINNED_NAMES == PINNED_NAMES - {e["name"] for e in appended} - (
        {JOB_COMPLETION_INDEX} if "sweep" in pod else set()
    )


@pytest.mark.parametrize(("pod", "build"), BUILDERS, ids=IDS)
def test_what_the_pod_needs_is_kept(pod: str, build: Callable[[bool], dict[str, Any]]) -> None:
    without, with_secret = build(False), build(True)
    # The builder's own entries come first and unchanged (the spec also names the Secret);
    # the pins are only appended.
    kept = with_secret["env"][: len(without["env"])]
    assert [e["name"] for e in kept] == [e["name"] for e in without["env"]]
    assert [e for e in kept if e["name"] != "KUBELOOP_TRAININGRUN_SPEC"] == [
        e for e in without["env"] if e["name"] != "KUBELOOP_TRAININGRUN_SPEC"
    ]
    assert "envFrom" not in without
    env = _env(with_secret)
    assert env["HOME"] == "/tmp"
    for needed in ("PATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                   "FSSPEC_S3_ENDPOINT_URL", "AWS_CA_BUNDLE", "HTTPS_PROXY"):
        assert needed not in env, f"{pod}: {needed} is the Secret's (or the image's) to set"


def test_the_training_job_keeps_its_spec_prefixes_and_data_roots() -> None:
    env = _env(_container(build_training_job(_run(), SETTINGS)))
    assert env["KUBELOOP_TRAININGRUN_SPEC"].startswith("{")
    assert env["KUBELOOP_ALLOWED_ESTIMATOR_PREFIXES"] == "sklearn."
    assert env[ENV_DATA_ROOTS] == "/mnt/pvc/datasets:/var/lib/kubeloop/models"
    assert env["JOBLIB_TEMP_FOLDER"] == "/tmp"


def test_the_server_keeps_its_shutdown_delay() -> None:
    env = _env(_container(build_track_deployment(_deployment(), "stable", MODEL, 2, SERVING)))
    assert float(env["KUBELOOP_SERVE_SHUTDOWN_DELAY_SECONDS"]) > 0


def test_pinned_env_leaves_what_env_sets_and_indexed_jobs_alone() -> None:
    pins = pinned_env([{"name": "PYTHONPATH", "value": "/opt/app"}])
    assert "PYTHONPATH" not in {p["name"] for p in pins}
    assert len(pins) == len(PINNED) - 1
    indexed = pinned_env([], indexed_job=True)
    assert JOB_COMPLETION_INDEX not in {p["name"] for p in indexed}


def test_every_entry_says_why() -> None:
    assert len(PINNED_NAMES) == len(PINNED)
    for variable in PINNED:
        assert variable.reason and not variable.reason.endswith("."), variable.name
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", variable.name)


# ---------------------------------------------------------------------------------------
# The pinned values mean what the policy says to the programs that read them.


@pytest.mark.parametrize("name", sorted(n for n in PINNED_NAMES if n.startswith(("PYTHON", "LD_", "GLIBC_"))))
def test_interpreter_and_loader_variables_are_pinned_empty(name: str) -> None:
    # CPython and glibc ignore an empty value of each of these (PYTHONBREAKPOINT: the default hook).
    assert next(v.value for v in PINNED if v.name == name) == ""


def test_every_serve_option_is_pinned() -> None:
    options = {ENV_PREFIX + field.upper() for field in ServeSettings.model_fields}
    assert options <= PINNED_NAMES
    assert {n for n in PINNED_NAMES if n.startswith(ENV_PREFIX)} == options


def _unset_as_none(settings: dict[str, Any]) -> dict[str, Any]:
    """An empty profile_uri / shadow_url is read as unset (``explicit or default_profile``,
    ``if settings.shadow_url``), as None is; pydantic keeps the "" it was given."""
    return {k: None if k in ("profile_uri", "shadow_url") and v == "" else v for k, v in settings.items()}


@pytest.mark.parametrize("batching", [False, True])
@pytest.mark.parametrize("shadow", [None, SHADOW])
def test_the_pinned_serve_environment_gives_the_command_line_settings(
    monkeypatch: pytest.MonkeyPatch, batching: bool, shadow: Shadow | None
) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    container = _container(build_track_deployment(_deployment(batching=batching), "stable", MODEL, 2, SERVING, shadow))
    own = _env(_container(build_track_deployment(_deployment(credentials=False, batching=batching), "stable", MODEL, 2, SERVING, shadow)))
    args = container["args"][1:]
    with monkeypatch.context() as unpinned:
        for name, value in own.items():
            unpinned.setenv(name, value)
        alone = load_settings(args)
    for name, value in _env(container).items():
        monkeypatch.setenv(name, value)
    pinned = load_settings(args)
    assert _unset_as_none(pinned.model_dump()) == alone.model_dump()
    assert pinned.insecure_skip_verify is False and pinned.sha256 == SHA


def test_the_serve_pins_are_the_defaults_when_not_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    defaults = ServeSettings(model_uri="m", sha256=SHA, workers=1).model_dump()
    for variable in PINNED:
        if variable.name.startswith(ENV_PREFIX):
            monkeypatch.setenv(variable.name, variable.value)
    pinned = ServeSettings(model_uri="m", sha256=SHA, workers=1, port=8080, track="stable", model_name="model").model_dump()
    assert _unset_as_none(pinned) == defaults


def test_a_lower_case_serve_key_reaches_no_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pins are upper case; a Secret key in another case must not get past them (the
    # kubelet's order of two such variables is not defined).
    monkeypatch.setenv(ENV_PREFIX + "INSECURE_SKIP_VERIFY", "false")
    monkeypatch.setenv((ENV_PREFIX + "INSECURE_SKIP_VERIFY").lower(), "true")
    monkeypatch.setenv("Kubeloop_Serve_Max_Batch_Size", "1")
    settings = ServeSettings(model_uri="m", sha256=SHA)
    assert settings.insecure_skip_verify is False
    assert settings.max_batch_size == ServeSettings.model_fields["max_batch_size"].default


def test_the_runtime_reads_empty_kubeloop_settings_as_their_defaults() -> None:
    assert DataRoots.from_env({ENV_DATA_ROOTS: ""}).roots == ()  # no local data at all
    assert train_cli._allowed_prefixes(None, {"KUBELOOP_ALLOWED_ESTIMATOR_PREFIXES": ""}) == DEFAULT_ALLOWED_PREFIXES
    # The pvc:// root each runtime falls back to is where the pod builders mount claims.
    assert artifacts_cli.DEFAULT_PVC_MOUNT_ROOT == PVC_MOUNT_ROOT
    for module in (train_cli, drift_cli):
        assert f'or "{PVC_MOUNT_ROOT}"' in Path(module.__file__ or "").read_text()


def test_every_kubeloop_variable_the_runtime_reads_is_pinned() -> None:
    package = Path(kubeloop.__file__).parent
    read: set[str] = set()
    for layer in ("runtime", "training", "serving", "drift"):
        for source in (package / layer).rglob("*.py"):
            read |= set(re.findall(r'"(KUBELOOP_[A-Z0-9_]*[A-Z0-9])"', source.read_text()))
    read.discard(ENV_PREFIX.rstrip("_"))
    assert read, "the scan found nothing: the runtime moved"
    assert read <= PINNED_NAMES, sorted(read - PINNED_NAMES)
