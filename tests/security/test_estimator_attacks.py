"""Attack: run your own Python in the trainer by naming a *function* under ``sklearn.`` as the
estimator (issue 13, item 2, "Estimators").

The attack as it was run: ``spec.model.estimator:
sklearn.utils._testing.assert_run_python_script_without_output`` with ``params: {source_code:
<python>}``. The path passes a string prefix check (it starts with ``sklearn.``); the old
resolver accepted classes *or functions* there and checked "has fit/predict" only on what the
call returned, by which time the function had run the source. Here the payload writes a marker
file, so "the code ran" is a fact on disk.

(a) Weakened resolver (the old behaviour, rebuilt inside this test: accept a function, call it,
    then check): the marker IS written - the attack is real on this machine.
(b) The real trainer, ``kubeloop train`` as a subprocess: exit 4, reason ``EstimatorNotAllowed``
    naming the field, no marker, nothing stored; the same for the function hidden in a
    Pipeline step.
(c) The real operator (a ``kubeloop operator`` process) against the real API server: the run is
    ``Failed`` with a Ready condition of reason ``EstimatorNotAllowed`` naming
    ``spec.model.estimator`` (``spec.model.params.steps[1][1].estimator`` for the nested one), a
    Warning Event, and no Job exists.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from kubeloop.training.result import parse_result

ATTACK = "sklearn.utils._testing.assert_run_python_script_without_output"
REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "kubeloop.io", "v1alpha1"


def payload(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')\n"


def attack_model(marker: Path) -> dict[str, Any]:
    return {"name": "cancer", "estimator": ATTACK, "params": {"source_code": payload(marker)},
            "task": "classification"}


def nested_attack_model(marker: Path) -> dict[str, Any]:
    return {
        "name": "cancer", "estimator": "sklearn.pipeline.Pipeline", "task": "classification",
        "params": {"steps": [
            ["scale", {"estimator": "sklearn.preprocessing.StandardScaler"}],
            ["model", {"estimator": ATTACK, "params": {"source_code": payload(marker)}}],
        ]},
    }


def spec(model: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "data": {"source": "sklearn://breast_cancer"},
            "evaluation": {"metric": "accuracy"}}


# --- (a) the old resolver, rebuilt: functions accepted, called, then checked -----------------


def weakened_build(path: str, params: dict[str, Any], prefixes: tuple[str, ...] = ("sklearn.",)) -> Any:
    """What training.estimators did before issue 13 item 2 (a string prefix, then call)."""
    assert any(path.startswith(prefix) for prefix in prefixes)
    module_name, _, attribute = path.rpartition(".")
    target = getattr(importlib.import_module(module_name), attribute)
    instance = target(**params)  # the call happens here...
    if not (hasattr(instance, "fit") and hasattr(instance, "predict")):  # ...the check after it
        raise ValueError(f"{path} made a {type(instance).__name__}: not an estimator")
    return instance


def test_weakened_the_function_runs_the_payload(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ValueError, match="not an estimator"):
        weakened_build(ATTACK, {"source_code": payload(marker)})
    assert marker.read_text() == "pwned"  # the check came after the code had run


# --- (b) the real trainer --------------------------------------------------------------------


def kubeloop_train(tmp_path: Path, model: dict[str, Any], run: str) -> tuple[int, Any]:
    spec_file = tmp_path / f"{run}.json"
    spec_file.write_bytes(orjson.dumps(spec(model)))
    termination = tmp_path / f"{run}.termination"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBELOOP_")}
    completed = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", "train", "--spec", str(spec_file), "--run-name", run,
         "--storage-uri", f"file://{tmp_path}/models", "--termination-log", str(termination), "--quiet"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    return completed.returncode, parse_result(termination.read_bytes())


@pytest.mark.parametrize(
    ("model_of", "field"),
    [(attack_model, "spec.model.estimator"), (nested_attack_model, "spec.model.params.steps[1][1].estimator")],
    ids=["top-level", "pipeline-step"],
)
def test_the_trainer_refuses_the_function_before_calling_it(
    tmp_path: Path, model_of: Any, field: str
) -> None:
    marker = tmp_path / "pwned"
    code, result = kubeloop_train(tmp_path, model_of(marker), "evil")
    assert (code, result.status, result.reason) == (4, "TrainingFailed", "EstimatorNotAllowed")
    assert result.message.startswith(f"{field} {ATTACK!r} is not allowed: it is a function")
    assert "sklearn.ensemble.RandomForestClassifier" in result.message  # what to write instead
    assert not marker.exists()
    assert not (tmp_path / "models").exists()


# --- (c) the real operator on the real API server --------------------------------------------


def test_the_operator_fails_the_run_without_creating_a_job(
    kubeconfig_path: str, kube_api: Any, namespace: str, crds: None, tmp_path: Path,
) -> None:
    from harness import OperatorProcess, event_keys, events_once, wait_for
    from kubernetes import client

    from kubeloop.controllers.kube import Kube

    kube = Kube(kube_api)
    core = client.CoreV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    marker = tmp_path / "pwned"  # the operator runs on this machine: it must not run the payload
    runs = {
        "evil-run": (attack_model(marker), "spec.model.estimator"),
        "evil-pipeline": (nested_attack_model(marker), "spec.model.params.steps[1][1].estimator"),
    }
    # Given the operator in its default configuration (estimators from sklearn.)
    operator = OperatorProcess(
        kubeconfig_path, namespace, tmp_path / "operator.log",
        env={"KUBELOOP_RUNTIME_IMAGE": "kubeloop:test"}, inherit_kubeloop_env=False,
    )
    operator.start()
    try:
        # When a user creates TrainingRuns naming a function under sklearn.
        for name, (model, _) in runs.items():
            assert model["estimator"].startswith("sklearn.")  # it passes the old string check
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun",
                    "metadata": {"name": name}, "spec": spec(model)}
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", body)

        def refused(name: str) -> dict[str, Any] | None:
            run: Any = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "trainingruns", name
            )
            status = run.get("status") or {}
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c["type"] == "Ready"), {}
            )
            return run if ready.get("reason") == "EstimatorNotAllowed" else None

        # Then each run is Failed, the condition names the field, and no Job exists
        for name, (_, field) in runs.items():
            run = wait_for(lambda name=name: refused(name), timeout=60,
                           what=f"{name} refused (log:\n{operator.log_tail()})")
            status = run["status"]
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            assert status["phase"] == "Failed"
            assert ready["status"] == "False"
            assert ready["message"].startswith(f"{field} {ATTACK!r} is not allowed: it is a function")
            assert status["lastFailure"]["reason"] == "EstimatorNotAllowed"
        expected = {(name, "EstimatorNotAllowed", "Warning") for name in runs}
        events = events_once(core, namespace, lambda found: expected <= event_keys(found), "EstimatorNotAllowed events")
        reasons = event_keys(events)
        for name in runs:
            assert (name, "EstimatorNotAllowed", "Warning") in reasons

        time.sleep(5)  # a few resyncs (2 s): still nothing created for the refused runs
        assert operator.alive(), operator.log_tail()
        for name in runs:
            assert kube.get_or_none("Job", namespace, f"{name}-train") is None
        assert kube.list("Job", namespace) == []
        assert not marker.exists()
    finally:
        operator.stop()
