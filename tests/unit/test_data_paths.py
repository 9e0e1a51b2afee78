"""The data-source policy (kubeloop.trust.data_paths) as tables on real paths, and the Job
builders that declare a pod's data roots (issue 13, item 3)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kubeloop.resources.driftjob import build_drift_job
from kubeloop.resources.storage import PodStorage
from kubeloop.resources.trainingjob import TrainerSettings, build_training_job
from kubeloop.training.data import DataSourceNotAllowed, load_table
from kubeloop.trust.data_paths import (
    ENV_DATA_ROOTS,
    DataPathNotAllowed,
    DataRoots,
    column_names,
    display_uri,
    encode_roots,
    is_at_or_below,
    read_error_summary,
    remote_scheme_problem,
)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "mnt" / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "train.csv").write_text("a,target\n1,0\n2,1\n")
    (tmp_path / "mnt" / "data-other").mkdir()
    (tmp_path / "mnt" / "data-other" / "x.csv").write_text("a\n1\n")
    (root / "out.csv").symlink_to(tmp_path / "mnt" / "data-other" / "x.csv")
    (root / "in.csv").symlink_to(root / "sub" / "train.csv")
    return root


# (path relative to the volume's parent, allowed?)
PATHS = [
    ("data/sub/train.csv", True),
    ("data/../data/sub/train.csv", True),  # '..' that stays inside is fine once resolved
    ("data/in.csv", True),  # a symlink that stays inside
    ("data", True),
    ("data/out.csv", False),  # a symlink that leads out
    ("data/../data-other/x.csv", False),
    ("data-other/x.csv", False),  # shares the prefix, is not inside
    ("data/sub/../../../../../../../proc/self/environ", False),
]


@pytest.mark.parametrize(("relative", "allowed"), PATHS)
@pytest.mark.parametrize("trailing_slash", [False, True])
def test_only_paths_that_resolve_below_a_root_are_allowed(
    volume: Path, relative: str, allowed: bool, trailing_slash: bool
) -> None:
    roots = DataRoots.from_env({ENV_DATA_ROOTS: f"{volume}{'/' if trailing_slash else ''}"})
    path = f"{volume.parent}/{relative}"
    if allowed:
        assert roots.check(path) == os.path.realpath(path)
    else:
        with pytest.raises(DataPathNotAllowed) as refused:
            roots.check(path)
        message = str(refused.value)
        assert "spec.data.source" in message and str(volume) in message and "pvc://<claim>/<path>" in message


def test_declared_but_empty_roots_allow_no_local_file(volume: Path) -> None:
    roots = DataRoots.from_env({ENV_DATA_ROOTS: ""})
    with pytest.raises(DataPathNotAllowed, match=r"allowed roots: none"):
        roots.check(str(volume / "sub" / "train.csv"))


@pytest.mark.parametrize(
    "path", ["/proc/self/environ", "/etc/passwd", "/var/run/secrets/kubernetes.io/serviceaccount/token",
             "/sys/kernel", "/dev/null", os.__file__],
)
def test_without_declared_roots_the_machines_own_files_are_refused(path: str) -> None:
    with pytest.raises(DataPathNotAllowed, match=r"machine's own files"):
        DataRoots.from_env({}).check(path)


def test_without_declared_roots_a_laptop_reads_its_files(volume: Path) -> None:
    assert DataRoots.from_env({}).check(str(volume / "sub" / "train.csv")).endswith("train.csv")


def test_load_table_reads_the_checked_path_and_refuses_the_rest(volume: Path) -> None:
    env = {ENV_DATA_ROOTS: str(volume)}
    assert list(load_table(f"file://{volume}/in.csv", env=env).frame.columns) == ["a", "target"]
    with pytest.raises(DataSourceNotAllowed, match=r"spec\.data\.source"):
        load_table(f"file://{volume}/out.csv", env=env)
    with pytest.raises(DataSourceNotAllowed, match=r"not below a data volume"):
        load_table("pvc://data/../data-other/x.csv", env=env, pvc_mount_root=str(volume.parent))


@pytest.mark.parametrize(
    ("location", "allowed"),
    [
        ("https://example.test/x.csv", True),
        ("s3://bucket/x.parquet", True),
        ("gs://bucket/x.parquet", True),
        ("local:///proc/self/environ", False),
        ("memory://x.csv", False),
        ("simplecache::file:///etc/passwd", False),
        ("zip://x.csv::https://example.test/a.zip", False),
        ("ftp://example.test/x.csv", False),
    ],
)
def test_remote_schemes(location: str, allowed: bool) -> None:
    assert (remote_scheme_problem(location) is None) is allowed


def test_is_at_or_below() -> None:
    assert is_at_or_below("/a/b", "/a") and is_at_or_below("/a", "/a/") and is_at_or_below("/x", "/")
    assert not is_at_or_below("/ab", "/a") and not is_at_or_below("/", "/a")


def test_encode_roots() -> None:
    assert encode_roots(["/mnt/pvc/data/", "/var/lib/models", "/mnt/pvc/data"]) == "/mnt/pvc/data:/var/lib/models"
    with pytest.raises(ValueError, match="absolute"):
        encode_roots(["relative/dir"])


def test_messages_show_uris_without_secrets_and_columns_capped() -> None:
    assert display_uri("https://user:pw@host.test/x.csv?X-Amz-Signature=abc#frag") == "https://host.test/x.csv"
    listed = column_names([f"c{i}" for i in range(12)] + ["a\x00b\nc" + "y" * 80])
    assert listed.startswith("'c0', 'c1'") and listed.endswith("(13 in all)")
    assert "\x00" not in column_names(["a\x00b"]) and len(column_names(["z" * 200])) <= 44


def test_read_error_summary_keeps_type_and_line_only() -> None:
    error = ValueError("Error tokenizing data. C error: Expected 2 fields in line 3, saw 4: s3cr3t")
    assert read_error_summary(error, "csv") == "not readable as csv; ValueError; line 3"
    decode = UnicodeDecodeError("utf-8", b"s3cr3t\xff", 6, 7, "invalid start byte")
    assert read_error_summary(decode, "csv") == (
        "not readable as csv; UnicodeDecodeError; undecodable byte at offset 6")


# --- the Job builders ---------------------------------------------------------------------


SETTINGS = TrainerSettings(
    image="kubeloop:test", image_pull_policy="IfNotPresent",
    default_storage_uri="file:///var/lib/kubeloop/models/", allowed_estimator_prefixes=("sklearn.",),
    job_ttl_seconds=600, models_pvc="kubeloop-models",
)


def _run(source: str, output: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "churn", "estimator": "sklearn.tree.DecisionTreeClassifier", "task": "classification"},
        "data": {"source": source},
        "credentials": {"secretRef": {"name": "s3-creds"}},
    }
    if output:
        spec["output"] = {"storageUri": output}
    return {"apiVersion": "kubeloop.io/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "churn-1", "namespace": "ml", "uid": "u-1"}, "spec": spec}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


@pytest.mark.parametrize(
    ("source", "output", "roots"),
    [
        ("pvc://datasets/churn/train.csv", None, "/mnt/pvc/datasets:/var/lib/kubeloop/models"),
        ("s3://bucket/train.csv", None, "/var/lib/kubeloop/models"),
        ("https://example.test/train.csv", "pvc://scratch/out", "/mnt/pvc/scratch:/var/lib/kubeloop/models"),
        ("file:///proc/self/environ", None, "/var/lib/kubeloop/models"),
    ],
)
def test_the_training_pod_is_told_its_data_roots(source: str, output: str | None, roots: str) -> None:
    job = build_training_job(_run(source, output), SETTINGS)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert _env(container)[ENV_DATA_ROOTS] == roots
    # Every root is a volume the pod mounts (or the storage root), never the container's own files.
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert set(roots.split(":")) <= mounted | {"/var/lib/kubeloop/models"}
    # Set in env, which wins over a key of the same name in the credentials Secret (envFrom).
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_roots_without_local_storage_are_declared_empty() -> None:
    settings = TrainerSettings(**{**SETTINGS.__dict__, "default_storage_uri": "s3://models", "models_pvc": ""})
    container = build_training_job(_run("s3://bucket/train.csv"), settings)["spec"]["template"]["spec"]["containers"][0]
    assert _env(container)[ENV_DATA_ROOTS] == ""  # declared: no local file may be read


def test_the_drift_pod_is_told_its_data_roots() -> None:
    policy = {
        "apiVersion": "kubeloop.io/v1alpha1", "kind": "DriftPolicy",
        "metadata": {"name": "churn-drift", "namespace": "ml", "uid": "u-2"},
        "spec": {"source": {"dataset": {"uri": "pvc://datasets/live.csv"}}},
    }
    job = build_drift_job(policy, 1700000000, "file:///var/lib/kubeloop/models/churn/churn-1/profile.json", {}, SETTINGS)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert _env(container) == {"HOME": "/tmp", ENV_DATA_ROOTS: "/mnt/pvc/datasets:/var/lib/kubeloop/models"}


def test_pod_storage_never_declares_the_file_system_root() -> None:
    storage = PodStorage()
    storage.resolve("pvc://a/x", read_only=True)
    assert storage.data_roots("file:///") == ["/mnt/pvc/a"]
    assert storage.data_roots("file:///var/lib/m/") == ["/mnt/pvc/a", "/var/lib/m"]


def test_a_parquet_dataset_directory_is_read_and_held_to_the_roots(volume: Path, tmp_path: Path) -> None:
    import pandas as pd

    dataset = volume / "export"
    dataset.mkdir()
    pd.DataFrame({"a": [1, 2], "target": [0, 1]}).to_parquet(dataset / "part-0.parquet")
    pd.DataFrame({"a": [3], "target": [1]}).to_parquet(dataset / "part-1.parquet")
    env = {ENV_DATA_ROOTS: str(volume)}
    frame = load_table(f"file://{dataset}", format="parquet", env=env).frame
    assert sorted(frame["a"]) == [1, 2, 3]

    outside = tmp_path / "outside"
    outside.mkdir()
    pd.DataFrame({"a": [9], "target": [0]}).to_parquet(outside / "secret.parquet")
    (dataset / "part-2.parquet").symlink_to(outside / "secret.parquet")
    with pytest.raises(DataSourceNotAllowed, match=r"not below a data volume"):
        load_table(f"file://{dataset}", format="parquet", env=env)
