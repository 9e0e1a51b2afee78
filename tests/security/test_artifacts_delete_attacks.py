"""Attack: make a cleanup Job delete another run's artifacts (issue 13, "Deletes").

``kubeloop artifacts delete`` takes ``<storageUri>/<model>/<run>`` built from a namespace user's
spec. On real files under ``tmp_path``: two run directories ``a`` and ``b`` of one model, and a
victim run outside the storage root. Each attack runs against a weakened deletion first (it
must remove the victim, so the attack is real), then through the real ``kubeloop artifacts
delete`` process, which must refuse with exit 2 and leave every victim file in place.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kubeloop.runtime import artifacts
from kubeloop.runtime.artifacts import EXIT_REFUSED, delete_run_directory

TRAINER_FILES = ("model.skops", "model.sha256", "profile.json", "report.json")


def run_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in TRAINER_FILES:
        (path / name).write_bytes(b"x")
    return path


def intact(path: Path) -> bool:
    return all((path / name).is_file() for name in TRAINER_FILES)


def delete(tmp_path: Path, uri: str, *extra: str) -> tuple[int, dict[str, object]]:
    """The real command, in its own process."""
    message = tmp_path / "termination.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", "artifacts", "delete", uri, *extra,
         "--termination-log", str(message)],
        capture_output=True, text=True, timeout=120,
    )
    return proc.returncode, json.loads(message.read_text())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


def test_dotdot_cannot_reach_a_sibling_run(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = run_dir(root / "m" / "a"), run_dir(root / "m" / "b")
    uri = f"file://{root}/m/a/../b"

    # Weakened (1): a plain recursive delete of the path as written; the OS follows '..'.
    shutil.rmtree(f"{root}/m/a/../b")
    assert not b.exists() and intact(a)
    # Weakened (2): the command without its path check, as on main before issue 13: fsspec
    # folds 'a/../b' into 'b', which looks like a run directory, and deletes it.
    run_dir(b)
    monkeypatch.setattr(artifacts, "_path_problem", lambda *args: None)
    assert delete_run_directory(uri, env={}).status == "Deleted"
    assert not b.exists() and intact(a)
    monkeypatch.undo()

    run_dir(b)
    for extra in ((), ("--storage-root", f"file://{root}")):
        code, result = delete(tmp_path, uri, *extra)
        assert (code, result["status"]) == (EXIT_REFUSED, "Refused")
        assert "'..'" in str(result["message"])
        assert intact(a) and intact(b)


def test_a_symlinked_parent_cannot_lead_out_of_the_root(tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = run_dir(tmp_path / "elsewhere" / "m" / "r")
    (root).mkdir()
    (root / "m").symlink_to(victim.parent)
    uri = f"file://{root}/m/r"

    monkeypatch.setattr(artifacts, "_path_problem", lambda *args: None)
    assert delete_run_directory(uri, env={}).status == "Deleted"
    assert not victim.exists()  # weakened: the victim went
    monkeypatch.undo()

    run_dir(victim)
    for extra in ((), ("--storage-root", f"file://{root}")):
        code, result = delete(tmp_path, uri, *extra)
        assert (code, result["status"]) == (EXIT_REFUSED, "Refused"), result
        assert "symbolic link" in str(result["message"])
        assert intact(victim) and (root / "m").is_symlink()


def test_a_symlinked_run_directory_is_refused(tmp_path: Path, root: Path) -> None:
    victim = run_dir(tmp_path / "elsewhere" / "m" / "r")
    (root / "m").mkdir(parents=True)
    link = root / "m" / "r"
    link.symlink_to(victim)

    # Weakened: a file-by-file delete of what the path lists (how fsspec deletes on an object
    # store) follows the link and empties the victim.
    import fsspec

    fs = fsspec.filesystem("file")
    for path in fs.find(str(link)):
        fs.rm_file(path)
    assert not any(victim.iterdir())

    for name in TRAINER_FILES:
        (victim / name).write_bytes(b"x")
    code, result = delete(tmp_path, f"file://{link}", "--storage-root", f"file://{root}")
    assert (code, result["status"]) == (EXIT_REFUSED, "Refused")
    assert "symbolic link" in str(result["message"])
    assert intact(victim) and link.is_symlink()
    code, result = delete(tmp_path, f"file://{link}")
    assert (code, result["status"]) == (EXIT_REFUSED, "Refused")
    assert intact(victim)


def test_with_a_storage_root_only_exactly_model_and_run_is_deleted(tmp_path: Path, root: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A sweep trial looks like a run directory (it has the markers) but is one level deeper.
    run = run_dir(root / "m" / "sweep")
    trial = run_dir(run / "trials" / "0")
    uri = f"file://{trial}"

    assert delete_run_directory(uri, env={}).status == "Deleted"  # weakened: no root to hold it to
    assert not trial.exists()

    run_dir(trial)
    code, result = delete(tmp_path, uri, "--storage-root", f"file://{root}")
    assert (code, result["status"]) == (EXIT_REFUSED, "Refused")
    assert "exactly <storage root>/<model>/<run>" in str(result["message"])
    assert intact(trial)

    code, result = delete(tmp_path, f"file://{run}", "--storage-root", f"file://{root}/")
    assert (code, result["status"]) == (0, "Deleted")
    assert not run.exists()


@pytest.mark.parametrize(
    "uri",
    ["file://{root}/m/./a", "file://{root}/m//a", "{root}/m/%2e%2e/a", "s3://bucket/models/m/../a"],
)
def test_dot_and_empty_segments_are_refused_before_any_file_system_sees_them(tmp_path: Path, root: Path, uri: str) -> None:
    a = run_dir(root / "m" / "a")
    result = delete_run_directory(uri.format(root=root), env={})
    assert result.status == "Refused" and "segment" in result.message
    assert intact(a)
