"""The storage root, written with or without a trailing slash, gets its volume in runtime pods.

Regression: ``PodStorage.resolve`` mounted the models claim only for URIs strictly *below*
the root, and a TrainingRun without ``output.storageUri`` writes to the root itself, so the
chart's default ``file:///var/lib/kubeloop/models`` gave the quickstart's training pod no
models volume on a read-only root filesystem. The e2e test and the demo used to add a trailing
slash to get around it; both now use the chart's form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart_support import one, render

from kubeloop.config import OperatorConfig
from kubeloop.controllers.trainingrun import trainer_settings
from kubeloop.resources.storage import PodStorage
from kubeloop.resources.trainingjob import build_training_job

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "trainingrun.yaml"


@pytest.mark.parametrize(
    ("root", "uri", "mounted_at"),
    [
        ("file:///var/lib/kubeloop/models", "file:///var/lib/kubeloop/models", "/var/lib/kubeloop/models"),
        ("file:///var/lib/kubeloop/models/", "file:///var/lib/kubeloop/models", "/var/lib/kubeloop/models"),
        ("file:///var/lib/kubeloop/models", "file:///var/lib/kubeloop/models/", "/var/lib/kubeloop/models"),
        ("file:///var/lib/kubeloop/models/", "file:///var/lib/kubeloop/models/", "/var/lib/kubeloop/models"),
        ("file:///var/lib/kubeloop/models", "file:///var/lib/kubeloop/models/iris/run-1", "/var/lib/kubeloop/models"),
        ("/var/lib/kubeloop/models", "/var/lib/kubeloop/models", "/var/lib/kubeloop/models"),
        # Not below the root: no claim (a sibling sharing the prefix is not inside it).
        ("file:///var/lib/kubeloop/models", "file:///var/lib/kubeloop/models-other", None),
        ("file:///var/lib/kubeloop/models", "file:///var/lib/kubeloop", None),
        ("file:///var/lib/kubeloop/models", "s3://bucket/models", None),
        ("s3://bucket/models", "s3://bucket/models", None),
    ],
)
def test_the_models_claim_is_mounted_for_the_root_and_below(root: str, uri: str, mounted_at: str | None) -> None:
    storage = PodStorage()
    assert storage.resolve(uri, read_only=False, models_pvc="models", models_root=root) == uri
    if mounted_at is None:
        assert storage.mounts == []
    else:
        assert storage.mounts == [{"name": "pvc-models", "mountPath": mounted_at, "readOnly": False}]
        assert storage.volumes == [{"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models"}}]


def test_pvc_uris_mount_their_own_claim() -> None:
    storage = PodStorage()
    assert storage.resolve("pvc://data/models", read_only=False) == "/mnt/pvc/data/models"
    assert storage.resolve("pvc://data", read_only=True) == "/mnt/pvc/data"
    assert storage.mounts == [{"name": "pvc-data", "mountPath": "/mnt/pvc/data", "readOnly": False}]


def test_the_models_claim_read_through_pvc_is_still_mounted_at_the_root() -> None:
    # A retrain whose data is pvc://<models claim>/... must still see the storage root (the
    # champion and its own output live there): one volume, two mounts.
    storage = PodStorage()
    root = "file:///var/lib/kubeloop/models"
    assert storage.resolve("pvc://models/data/x.csv", read_only=True) == "/mnt/pvc/models/data/x.csv"
    storage.resolve(root, read_only=False, models_pvc="models", models_root=root)
    storage.resolve(root + "/m/champion/model.skops", read_only=True, models_pvc="models", models_root=root)
    assert storage.volumes == [{"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models"}}]
    assert storage.mounts == [
        {"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": True},
        {"name": "pvc-models", "mountPath": "/var/lib/kubeloop/models", "readOnly": False},
    ]


def _operator_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, Any]) -> OperatorConfig:
    deployment = one(render(tmp_path, values), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for variable in container["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    return OperatorConfig()


@pytest.mark.parametrize(
    "storage_uri",
    ["file:///var/lib/kubeloop/models", "file:///var/lib/kubeloop/models/"],
)
def test_quickstart_run_gets_its_volume_through_the_charts_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage_uri: str
) -> None:
    config = _operator_config(
        tmp_path, monkeypatch,
        {"storage": {"storageUri": storage_uri, "modelsPvc": {"name": "kubeloop-models", "create": True}}},
    )
    run = yaml.safe_load(QUICKSTART.read_text())
    assert "output" not in run["spec"], "the quickstart relies on the chart's storage root"
    run["metadata"].update(namespace="kubeloop", uid="0b7e3d0c-2f6e-4a59-9d0e-5a1b2c3d4e5f")
    job = build_training_job(run, trainer_settings(config))
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "pvc-kubeloop-models")
    assert mount == {"name": "pvc-kubeloop-models", "mountPath": "/var/lib/kubeloop/models", "readOnly": False}
    assert {"name": "pvc-kubeloop-models", "persistentVolumeClaim": {"claimName": "kubeloop-models"}} in pod["volumes"]


def test_pvc_storage_root_through_the_charts_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _operator_config(tmp_path, monkeypatch, {"storage": {"storageUri": "pvc://shared-models/root"}})
    run = yaml.safe_load(QUICKSTART.read_text())
    run["metadata"].update(namespace="kubeloop", uid="0b7e3d0c-2f6e-4a59-9d0e-5a1b2c3d4e5f")
    job = build_training_job(run, trainer_settings(config))
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "pvc-shared-models", "mountPath": "/mnt/pvc/shared-models", "readOnly": False} in container["volumeMounts"]
