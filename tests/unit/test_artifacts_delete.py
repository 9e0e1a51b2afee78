"""`kubeloop artifacts delete` on real files: a run directory goes, anything else is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubeloop.drift.result import EXIT_CHECKED
from kubeloop.resources.driftjob import REPORT_ANNOTATION, build_drift_job
from kubeloop.resources.trainingjob import TrainerSettings
from kubeloop.runtime import drift, train
from kubeloop.runtime.artifacts import EXIT_REFUSED, delete_run_directory, main
from kubeloop.training.data import load_table


def write_run_dir(root: Path, trials: int = 0) -> Path:
    """The files `kubeloop train` leaves in <storageUri>/<model>/<run>/."""
    run = root / "cancer" / "cancer-1"
    run.mkdir(parents=True)
    for name in ("model.skops", "model.sha256", "profile.json", "report.json"):
        (run / name).write_bytes(b"x")
    for index in range(trials):
        trial = run / "trials" / str(index)
        trial.mkdir(parents=True)
        for name in ("model.skops", "model.sha256", "report.json"):
            (trial / name).write_bytes(b"x")
    return run


def run_command(uri: str, tmp_path: Path) -> tuple[int, dict[str, object]]:
    message = tmp_path / "message.json"
    code = main(["delete", uri, "--termination-log", str(message)], env={})
    return code, json.loads(message.read_text())


def test_deletes_a_run_directory_with_its_trials(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "models", trials=2)
    code, result = run_command(f"file://{run}", tmp_path)
    assert code == 0
    assert result["status"] == "Deleted" and result["files"] == 10
    assert not run.exists()
    assert (tmp_path / "models" / "cancer").is_dir()  # only the run's own directory goes


def _dataset_check(root: Path, run: Path, policy: str, due_epoch: int, data: Path) -> Path:
    """The dataset drift Job's own command line (resources.driftjob), run by the real
    ``kubeloop drift``: it writes its page beside the run's profile; returns the page."""
    settings = TrainerSettings(
        image="kubeloop:test", image_pull_policy="IfNotPresent", default_storage_uri=f"file://{root}",
        allowed_estimator_prefixes=("sklearn.",), job_ttl_seconds=600, models_pvc="",
    )  # fmt: skip
    policy_body = {"apiVersion": "kubeloop.io/v1alpha1", "kind": "DriftPolicy",
                   "metadata": {"name": policy, "namespace": "ml", "uid": "u-1"},
                   "spec": {"source": {"dataset": {"uri": f"file://{data}"}}}}  # fmt: skip
    job = build_drift_job(policy_body, due_epoch, f"file://{run}/profile.json", {}, settings)
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    message = root.parent / f"drift-{policy}-{due_epoch}.json"
    args = [str(message) if a == "/dev/termination-log" else a for a in container["args"][1:]]
    assert drift.main(args, env=env) == EXIT_CHECKED
    return Path(job["metadata"]["annotations"][REPORT_ANNOTATION].removeprefix("file://"))


def test_a_run_checked_by_dataset_drift_policies_is_deleted_with_its_reports(tmp_path: Path) -> None:
    # Given a run trained by the real `kubeloop train` and checked three times by two DriftPolicies
    root = tmp_path / "models"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "model": {"name": "iris", "estimator": "sklearn.linear_model.LogisticRegression",
                  "params": {"max_iter": 300}, "task": "classification"},
        "data": {"source": "sklearn://iris"}, "evaluation": {"metric": "accuracy"},
    }))  # fmt: skip
    code = train.main(["--spec", str(spec), "--run-name", "iris-1", "--storage-uri", f"file://{root}",
                       "--termination-log", str(tmp_path / "train.json"), "--quiet"], env={})
    assert code == 0
    run = root / "iris" / "iris-1"
    data = root / "incoming" / "today.csv"
    data.parent.mkdir()
    load_table("sklearn://iris").frame.to_csv(data, index=False)
    pages = [_dataset_check(root, run, policy, epoch, data)
             for policy, epoch in (("daily", 1700000000), ("daily", 1700086400), ("weekly", 1700000000))]
    assert all(page.is_file() and page.is_relative_to(run / "drift") for page in pages)

    # When its cleanup runs, then the whole directory goes, reports included, and nothing else
    code = main(["delete", f"file://{run}", "--storage-root", f"file://{root}",
                 "--termination-log", str(tmp_path / "cleanup.json")], env={})
    result = json.loads((tmp_path / "cleanup.json").read_text())
    assert (code, result["status"]) == (0, "Deleted"), result
    assert result["files"] == 4 + len(pages)  # model.skops, model.sha256, profile.json, report.json
    assert not run.exists() and data.is_file()


def test_a_sweep_directory_with_markers_only_in_its_trials_is_a_run(tmp_path: Path) -> None:
    run = tmp_path / "models" / "cancer" / "sweep-1" / "trials" / "0"
    run.mkdir(parents=True)
    (run / "report.json").write_bytes(b"{}")
    code, result = run_command(str(run.parents[1]), tmp_path)
    assert (code, result["status"]) == (0, "Deleted")
    assert not run.parents[1].exists()


def test_a_trainer_temporary_file_does_not_block_deletion(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "models")
    (run / ".model.skops.tmp-0123abcd").write_bytes(b"half")
    assert delete_run_directory(str(run), env={}).status == "Deleted"
    assert not run.exists()


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        pytest.param({"cancer/cancer-1/model.sha256": b"x"}, "entries neither `kubeloop train` nor a drift check writes (cancer)",
                     id="the-storage-root"),
        pytest.param({"notes.txt": b"mine", "data.csv": b"a,b"}, "writes (data.csv, notes.txt)",
                     id="someone-elses-directory"),
        pytest.param({"model.skops": b"x", "profile.json": b"{}"}, "no model.sha256 or report.json",
                     id="no-marker"),
        pytest.param({"report.json": b"{}", "keep.me": b"x"}, "(keep.me)", id="marker-and-a-stranger"),
    ],
)
def test_refuses_what_is_not_a_run_directory(tmp_path: Path, layout: dict[str, bytes], words: str) -> None:
    target = tmp_path / "target"
    for relative, payload in layout.items():
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_bytes(payload)
    code, result = run_command(f"file://{target}", tmp_path)
    assert code == EXIT_REFUSED
    assert result["status"] == "Refused"
    assert "refusing to delete" in str(result["message"]) and words in str(result["message"])
    assert all((target / relative).exists() for relative in layout)


def test_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(b"x")
    assert delete_run_directory(str(path), env={}).status == "Refused"
    assert path.exists()


def test_missing_or_empty_directory_counts_as_done(tmp_path: Path) -> None:
    code, result = run_command(f"file://{tmp_path}/models/cancer/gone", tmp_path)
    assert (code, result["status"]) == (0, "Absent")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    code, result = run_command(str(empty), tmp_path)
    assert (code, result["status"]) == (0, "Absent")
    assert not empty.exists()


def test_pvc_uris_resolve_under_the_mount_root(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "mnt" / "models-claim" / "root")
    code = main(["delete", "pvc://models-claim/root/cancer/cancer-1", "--pvc-mount-root", str(tmp_path / "mnt"),
                 "--termination-log", str(tmp_path / "m.json")], env={})
    assert code == 0 and not run.exists()


def test_the_kubeloop_command_routes_to_it(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "models")
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", "artifacts", "delete", f"file://{run}",
         "--termination-log", str(tmp_path / "m.json")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Deleted" in proc.stdout and not run.exists()
    usage = subprocess.run([sys.executable, "-m", "kubeloop.cli", "artifacts"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 64
