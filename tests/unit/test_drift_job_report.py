"""The dataset drift Job writes its HTML report beside the profile, and only there."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from kubeloop.drift.profile import build_profile
from kubeloop.drift.result import EXIT_CHECKED
from kubeloop.resources.driftjob import REPORT_ANNOTATION, build_drift_job, drift_report_uri
from kubeloop.resources.trainingjob import TrainerSettings
from kubeloop.runtime.drift import main

SETTINGS = TrainerSettings(
    image="kubeloop:test", image_pull_policy="IfNotPresent",
    default_storage_uri="file:///var/lib/kubeloop/models/", allowed_estimator_prefixes=("sklearn.",),
    job_ttl_seconds=600, models_pvc="kubeloop-models",
)  # fmt: skip
EPOCH = 1700000000


def _policy(dataset_uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "DriftPolicy",
        "metadata": {"name": "daily", "namespace": "ml", "uid": "u-1"},
        "spec": {"source": {"dataset": {"uri": dataset_uri}}},
    }  # fmt: skip


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


def _arg(container: dict[str, Any], flag: str) -> str:
    args: list[str] = container["args"]
    return args[args.index(flag) + 1]


def test_the_report_goes_beside_the_profile_and_the_job_says_where() -> None:
    profile = "file:///var/lib/kubeloop/models/churn/churn-1/profile.json"
    job = build_drift_job(_policy("pvc://datasets/live.csv"), EPOCH, profile, {}, SETTINGS)
    report = "file:///var/lib/kubeloop/models/churn/churn-1/drift/daily/1700000000/report.html"
    assert drift_report_uri(profile, "daily", EPOCH) == report
    assert job["metadata"]["annotations"][REPORT_ANNOTATION] == report
    container = _container(job)
    assert _arg(container, "--html") == report.removeprefix("file://")
    assert _arg(container, "--title") == "DriftPolicy ml/daily: dataset check"
    # The models claim stays read-only; only the report's own directory is writable.
    writable = [m for m in container["volumeMounts"] if m.get("readOnly") is False]
    assert writable == [
        {
            "name": "pvc-kubeloop-models",
            "mountPath": "/var/lib/kubeloop/models/churn/churn-1/drift/daily/1700000000",
            "subPath": "churn/churn-1/drift/daily/1700000000",
            "readOnly": False,
        }
    ]
    root = next(
        m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/kubeloop/models"
    )
    assert root["readOnly"] is True
    # Mounted after the read-only root it sits in.
    assert container["volumeMounts"].index(root) < container["volumeMounts"].index(writable[0])


def test_a_profile_on_a_pvc_uri_gets_its_report_on_that_claim() -> None:
    job = build_drift_job(
        _policy("pvc://datasets/live.csv"), EPOCH, "pvc://team-models/churn/run-2/profile.json", {},
        SETTINGS,
    )  # fmt: skip
    container = _container(job)
    assert (
        _arg(container, "--html")
        == "/mnt/pvc/team-models/churn/run-2/drift/daily/1700000000/report.html"
    )
    writable = [m for m in container["volumeMounts"] if m.get("readOnly") is False]
    assert [(m["name"], m["subPath"]) for m in writable] == [
        ("pvc-team-models", "churn/run-2/drift/daily/1700000000")
    ]


def test_object_storage_needs_no_mount() -> None:
    job = build_drift_job(
        _policy("s3://live/today.csv"),
        EPOCH,
        "s3://models/churn/churn-1/profile.json",
        {},
        SETTINGS,
    )
    container = _container(job)
    assert (
        _arg(container, "--html") == "s3://models/churn/churn-1/drift/daily/1700000000/report.html"
    )
    assert all(m.get("readOnly") is not False for m in container["volumeMounts"])


def test_the_jobs_command_line_writes_the_page_where_the_annotation_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Job's own arguments, run by the real ``kubeloop drift`` on a local storage root."""
    root = tmp_path / "models"
    run_dir = root / "churn" / "churn-1"
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"age": rng.normal(40, 10, 800), "plan": rng.choice(["a", "b"], 800)})
    profile = build_profile(
        {c: reference[c].to_numpy() for c in reference.columns}, categorical=["plan"]
    )
    (run_dir / "profile.json").write_bytes(profile.to_json_bytes())
    data = root / "incoming" / "today.csv"
    data.parent.mkdir()
    pd.DataFrame({"age": rng.normal(55, 10, 600), "plan": rng.choice(["a", "b"], 600)}).to_csv(
        data, index=False
    )
    settings = TrainerSettings(
        **{**SETTINGS.__dict__, "default_storage_uri": f"file://{root}", "models_pvc": ""}
    )
    job = build_drift_job(
        _policy(f"file://{data}"), EPOCH, f"file://{run_dir}/profile.json", {}, settings
    )
    container = _container(job)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    log = tmp_path / "termination-log"
    args = [a if a != "/dev/termination-log" else str(log) for a in container["args"][1:]]
    assert main(args, env=env) == EXIT_CHECKED
    written = Path(job["metadata"]["annotations"][REPORT_ANNOTATION].removeprefix("file://"))
    assert written == run_dir / "drift" / "daily" / str(EPOCH) / "report.html"
    page = written.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "DriftPolicy ml/daily: dataset check" in page
    assert 'data-feature="age"' in page and 'data-feature="plan"' in page


def test_on_object_storage_the_page_lands_beside_the_profile_in_the_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real local S3 server (moto's server mode on 127.0.0.1): the Job's own arguments read
    the data and the profile from the bucket and write the page there, with the pod's
    credentials (the same environment that read the profile)."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto keeps its buckets in process-wide state: start from an empty S3.
        urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset", method="POST"))
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
        fs.mkdir("models")
        fs.mkdir("live")
        rng = np.random.default_rng(5)
        profile = build_profile({"age": rng.normal(40, 10, 800)})
        fs.pipe_file("models/churn/churn-1/profile.json", profile.to_json_bytes())
        fs.pipe_file(
            "live/today.csv",
            pd.DataFrame({"age": rng.normal(52, 10, 500)}).to_csv(index=False).encode(),
        )
        settings = TrainerSettings(**{**SETTINGS.__dict__, "default_storage_uri": "s3://models"})
        job = build_drift_job(
            _policy("s3://live/today.csv"), EPOCH, "s3://models/churn/churn-1/profile.json", {},
            settings,
        )  # fmt: skip
        container = _container(job)
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env |= {**credentials, "AWS_ENDPOINT_URL": endpoint}
        log = tmp_path / "termination-log"
        args = [a if a != "/dev/termination-log" else str(log) for a in container["args"][1:]]
        assert main(args, env=env) == EXIT_CHECKED
        report_uri = job["metadata"]["annotations"][REPORT_ANNOTATION]
        assert report_uri == "s3://models/churn/churn-1/drift/daily/1700000000/report.html"
        fs.invalidate_cache()
        page = fs.cat_file(report_uri.removeprefix("s3://")).decode()
        assert page.startswith("<!DOCTYPE html>") and 'data-feature="age"' in page
        assert sorted(fs.ls("models/churn/churn-1/drift/daily/1700000000")) == [
            "models/churn/churn-1/drift/daily/1700000000/report.html"
        ]  # no temporary file left
    finally:
        server.stop()
