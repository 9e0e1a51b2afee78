"""`kubeloop artifacts delete` on real files: a run directory goes, anything else is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubeloop.runtime.artifacts import EXIT_REFUSED, delete_run_directory, main


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
        pytest.param({"cancer/cancer-1/model.sha256": b"x"}, "entries `kubeloop train` does not write (cancer)",
                     id="the-storage-root"),
        pytest.param({"notes.txt": b"mine", "data.csv": b"a,b"}, "does not write (data.csv, notes.txt)",
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
