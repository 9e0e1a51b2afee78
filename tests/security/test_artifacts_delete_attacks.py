"""Attack: make a cleanup Job delete another run's artifacts (issue 13, "Deletes").

``kubeloop artifacts delete`` takes ``<storageUri>/<model>/<run>`` built from a namespace user's
spec. On real files under ``tmp_path``: two run directories ``a`` and ``b`` of one model, and a
victim run outside the storage root. Each attack runs against a weakened deletion first (it
must remove the victim, so the attack is real), then through the real ``kubeloop artifacts
delete`` process, which must refuse with exit 2 and leave every victim file in place.

A run directory may also hold the dataset drift checks' reports (``drift/<policy>/<epoch>/
report.html``): the cleanup deletes them with the run, so that tree is held to exactly that
shape, without following a link, and anything else in it refuses the whole directory.
"""

from __future__ import annotations

import glob
import json
import os
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


def drift_page(run: Path, policy: str = "daily", epoch: str = "1700000000") -> Path:
    page = run / "drift" / policy / epoch / "report.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<!DOCTYPE html>")
    return page


@pytest.mark.parametrize(
    ("linked", "named"),
    [
        pytest.param("drift", "drift is a symbolic link", id="drift-itself"),
        pytest.param("drift/daily", "drift/daily is a symbolic link", id="a-policy-directory"),
        pytest.param("drift/daily/1700000000", "drift/daily/1700000000 is a symbolic link", id="a-check-directory"),
    ],
)
def test_a_link_in_the_drift_tree_cannot_lead_the_cleanup_out(tmp_path: Path, root: Path, linked: str,
                                                              named: str) -> None:
    # Another team's reports, shaped like the part of the drift tree the link stands for.
    victim = tmp_path / "elsewhere" / "reports"
    depth = {"drift": 3, "drift/daily": 2, "drift/daily/1700000000": 1}[linked]
    victim_page = victim.joinpath(*["daily", "1700000000", "report.html"][3 - depth:])
    victim_page.parent.mkdir(parents=True)
    victim_page.write_text("theirs")
    run = run_dir(root / "m" / "r")
    own = linked != "drift"  # beside the link, the run's own report
    if own:
        drift_page(run, "weekly")
    (run / linked).parent.mkdir(parents=True, exist_ok=True)
    (run / linked).symlink_to(victim)

    # Weakened: a cleanup that deletes the pages by the path a report's URI spells follows the
    # link (glob does) and deletes the victim's page.
    for page in glob.glob(f"{run}/drift/*/*/report.html"):
        os.remove(page)
    assert not victim_page.exists()
    victim_page.write_text("theirs")
    if own:
        drift_page(run, "weekly")

    for extra in ((), ("--storage-root", f"file://{root}")):
        code, result = delete(tmp_path, f"file://{run}", *extra)
        assert (code, result["status"]) == (EXIT_REFUSED, "Refused"), result
        assert named in str(result["message"])
        assert victim_page.read_text() == "theirs" and intact(run) and (run / linked).is_symlink()


def test_a_linked_drift_page_is_refused_and_its_target_kept(tmp_path: Path, root: Path) -> None:
    victim = tmp_path / "elsewhere" / "secret.txt"
    victim.parent.mkdir()
    victim.write_text("theirs")
    run = run_dir(root / "m" / "r")
    page = drift_page(run)
    page.unlink()
    page.symlink_to(victim)
    code, result = delete(tmp_path, f"file://{run}", "--storage-root", f"file://{root}")
    assert (code, result["status"]) == (EXIT_REFUSED, "Refused")
    assert "drift/daily/1700000000/report.html is a symbolic link" in str(result["message"])
    assert victim.read_text() == "theirs" and intact(run)


@pytest.mark.parametrize(
    ("stranger", "named"),
    [
        pytest.param("drift", "drift is not a directory", id="drift-is-a-file"),
        pytest.param("drift/notes.txt", "drift/notes.txt is not a DriftPolicy's report directory",
                     id="a-file-for-a-policy"),
        pytest.param("drift/Daily/1700000000/report.html", "drift/Daily is not a DriftPolicy's",
                     id="not-an-object-name"),
        pytest.param("drift/daily/latest/report.html", "drift/daily/latest is not a drift check's",
                     id="not-an-epoch"),
        pytest.param("drift/daily/1700000000/data.csv", "drift/daily/1700000000/data.csv is not a drift report",
                     id="a-stranger-beside-the-page"),
        pytest.param("drift/daily/1700000000/report.html/x", "drift/daily/1700000000/report.html is not a drift report",
                     id="a-directory-for-the-page"),
    ],
)
def test_someone_elses_files_in_the_drift_tree_refuse_the_whole_directory(tmp_path: Path, root: Path,
                                                                          stranger: str, named: str) -> None:
    run = run_dir(root / "m" / "r")
    if stranger != "drift":
        drift_page(run, "weekly")
    (run / stranger).parent.mkdir(parents=True, exist_ok=True)
    (run / stranger).write_text("mine")
    code, result = delete(tmp_path, f"file://{run}", "--storage-root", f"file://{root}")
    assert (code, result["status"]) == (EXIT_REFUSED, "Refused"), result
    assert named in str(result["message"])
    assert (run / stranger).read_text() == "mine" and intact(run)


def test_the_drift_reports_and_a_check_s_temporary_file_go_with_the_run(root: Path) -> None:
    run = run_dir(root / "m" / "r")
    drift_page(run)
    page = drift_page(run, "weekly", "1700086400")
    (page.parent / ".report.html.tmp-0123abcd").write_bytes(b"half")
    result = delete_run_directory(f"file://{run}", env={}, storage_root=f"file://{root}")
    assert (result.status, result.files) == ("Deleted", 4 + 3)
    assert not run.exists() and (root / "m").is_dir()
