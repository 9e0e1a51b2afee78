"""``kubeloop artifacts delete``: remove one run directory the trainer wrote (a cleanup Job's entry point).

    kubeloop artifacts delete file:///models/churn/churn-1 --termination-log /dev/termination-log

The operator runs this in a TrainingRun's cleanup Job (``spec.cleanupPolicy: Delete``) because
only a pod gets the run's storage as the trainer did: its ``pvc://`` claim mounted writable,
its Secret's credentials for ``s3://``. The directory is ``<storageUri>/<model>/<run>/``.

Before anything is deleted the directory must look like what Kubeloop writes there (the one
list: :mod:`kubeloop.trust.run_directory`): ``model.sha256`` or ``report.json`` at its top or
in a sweep's ``trials/<index>/``, and nothing at its top but the trainer's files, ``trials/``,
the dataset drift checks' reports (``drift/<policy>/<epoch>/report.html``, every entry of that
tree checked, none a symbolic link) and the writers' temporary files. So a mistyped URI (a
storage root, someone else's directory) is refused rather than emptied. A directory that is
missing or empty counts as done.

The path is checked as written, before any file system sees it (fsspec would quietly fold
``a/../b`` into ``b``, deleting a sibling run): ``.``, ``..`` and empty segments are refused,
and so is a local run directory that is, or lies below, a symbolic link (its real path must
be the path as written). With ``--storage-root`` (the cleanup Job passes the run's output
root) the directory must be exactly ``<root>/<model>/<run>``; below the root no symlink is
followed.

Prints one line to stdout and a compact JSON result to the termination message path::

    {"status": "Deleted"|"Absent"|"Refused"|"Failed", "uri": "...", "files": 4, "message": "..."}

Exit codes: 0 Deleted or Absent, 2 Refused (not a run directory: no retry can help),
3 Failed (storage error: a retry may), 64 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from kubeloop.runtime import termination
from kubeloop.runtime.usage import UsageError, UsageParser
from kubeloop.trust.run_directory import (
    DRIFT_DIR,
    KUBELOOP_ENTRIES,
    MARKER_FILES,
    TEMPORARY_FILE,
    TRIALS_DIR,
    drift_entry_problem,
)

EXIT_OK, EXIT_REFUSED, EXIT_FAILED, EXIT_USAGE = 0, 2, 3, 64
ENV_PVC_ROOT = "KUBELOOP_PVC_MOUNT_ROOT"
DEFAULT_PVC_MOUNT_ROOT = "/mnt/pvc"


@dataclass(frozen=True)
class DeleteResult:
    status: str  # Deleted, Absent, Refused, Failed
    uri: str
    message: str
    files: int = 0

    @property
    def exit_code(self) -> int:
        return {"Deleted": EXIT_OK, "Absent": EXIT_OK, "Refused": EXIT_REFUSED}.get(self.status, EXIT_FAILED)

    def render(self) -> bytes:
        return orjson.dumps(
            {"status": self.status, "uri": self.uri, "files": self.files, "message": self.message[:900]}
        )


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="kubeloop artifacts", description="Manage a TrainingRun's stored artifacts.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    delete = commands.add_parser(
        "delete",
        help="delete one run directory <storageUri>/<model>/<run>/ written by `kubeloop train`",
        description="Delete one run directory written by `kubeloop train` (recursively, "
                    "trials/ included); anything else is refused.",
    )
    delete.add_argument("uri", help="the run directory: file://, a path, pvc://<claim>/..., s3://")
    delete.add_argument("--termination-log", metavar="PATH",
                        help=f"where to write the JSON result (default: {termination.DEFAULT_PATH} "
                             "when writable)")
    delete.add_argument("--storage-root", metavar="URI",
                        help="the run's output root: the directory must be exactly "
                             "<root>/<model>/<run>")
    delete.add_argument("--pvc-mount-root",
                        help=f"where pvc://<claim>/ is mounted (default: env {ENV_PVC_ROOT} or "
                             f"{DEFAULT_PVC_MOUNT_ROOT})")
    return parser


def _local_form(uri: str, pvc_mount_root: str) -> str:
    if uri.startswith("pvc://"):
        return os.path.join(pvc_mount_root, uri.removeprefix("pvc://").lstrip("/"))
    return uri


def _written_path(uri: str) -> str:
    """The path part of ``uri`` exactly as written (no normalisation), for the checks."""
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" in uri:
        return "/" + uri.partition("://")[2].partition("/")[2]  # an object store's key
    return uri


def _store(uri: str) -> tuple[str, str]:
    """Which file system ``uri`` is on: ("local", "") or its scheme and bucket."""
    if "://" not in uri or uri.startswith(("file://", "pvc://")):
        return ("local", "")
    scheme, _, rest = uri.partition("://")
    return (scheme, rest.partition("/")[0])


def _path_problem(uri: str, storage_root: str | None, pvc_mount_root: str) -> str | None:
    """Why ``uri`` does not name a run directory as written (None: it may be one)."""
    written = _written_path(_local_form(uri, pvc_mount_root)).rstrip("/")
    segments = written.split("/")[1:] if written.startswith("/") else written.split("/")
    decoded = [unquote(segment) for segment in segments]
    if any(segment in {".", ".."} for segment in (*segments, *decoded)):
        return "its path has '.' or '..' segments; name the run directory itself, <storageUri>/<model>/<run>"
    if any(not segment for segment in segments):
        return "its path has an empty segment ('//'); name the run directory itself, <storageUri>/<model>/<run>"
    local = _store(uri) == ("local", "")
    if storage_root is not None:
        root = _written_path(_local_form(storage_root, pvc_mount_root)).rstrip("/")
        root_segments = [s for s in root.split("/") if s]
        if any(s in {".", ".."} for s in root_segments) or _store(uri) != _store(storage_root):
            return f"it is not below the storage root {storage_root}"
        below = written.removeprefix(root + "/") if written.startswith(root + "/") else None
        if below is None or len(below.split("/")) != 2:
            return f"it is not exactly <storage root>/<model>/<run> (storage root {storage_root})"
        if local and os.path.realpath(written) != os.path.join(os.path.realpath(root), below):
            return ("its model or run directory is a symbolic link (it leads to "
                    f"{os.path.realpath(written)}); only the run's own directory is deleted")
        return None
    if local and written.startswith("/") and os.path.realpath(written) != written:
        return (f"it is or lies below a symbolic link (it leads to {os.path.realpath(written)}); "
                "name the run directory by its real path")
    return None


def _filesystem(uri: str, env: Mapping[str, str], pvc_mount_root: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    uri = _local_form(uri, pvc_mount_root)
    options: dict[str, Any] = {}
    if uri.startswith(("s3://", "s3a://")):
        for name in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if env.get(name):
                options["endpoint_url"] = env[name]
                break
    fs, path = url_to_fs(uri, **options)
    return fs, str(path).rstrip("/")


def _name(path: str) -> str:
    return path.rstrip("/").rpartition("/")[2]


def _kind(entry: Mapping[str, Any]) -> str:
    """directory, file, link or other, without following a link (fsspec's local ``islink``)."""
    if entry.get("islink"):
        return "link"
    kind = str(entry.get("type"))
    return kind if kind in {"directory", "file"} else "other"


def _drift_problem(fs: Any, path: str) -> str | None:
    """Why ``<path>/drift`` holds more than drift checks' reports (None: it holds only those).

    Walked without following links: a link anywhere in it (or ``drift`` itself one) refuses
    the whole directory, so nothing outside the run is ever listed, counted or deleted.
    """
    top = f"{path}/{DRIFT_DIR}"
    kind = _kind(fs.info(top))
    if kind != "directory":
        what = "a symbolic link" if kind == "link" else "not a directory"
        return f"{DRIFT_DIR} is {what}, not the drift checks' report directory"
    pending = [""]
    while pending:
        relative = pending.pop()
        for entry in fs.ls(f"{top}/{relative}" if relative else top, detail=True):
            below = f"{relative}/{_name(str(entry['name']))}" if relative else _name(str(entry["name"]))
            kind = _kind(entry)
            problem = drift_entry_problem(below, kind)
            if problem is not None:
                return problem
            if kind == "directory":
                pending.append(below)
    return None


def _refusal(fs: Any, path: str) -> str | None:
    """Why ``path`` is not a run directory written by Kubeloop (None: it is one)."""
    entries = [_name(str(entry)) for entry in fs.ls(path, detail=False)]
    unexpected = sorted(n for n in entries if n not in KUBELOOP_ENTRIES and not TEMPORARY_FILE.match(n))
    has_marker = any(marker in entries for marker in MARKER_FILES)
    if not has_marker and TRIALS_DIR in entries:
        for trial in fs.ls(f"{path}/{TRIALS_DIR}", detail=False):
            if _name(str(trial)).isdigit() and fs.isdir(str(trial)):
                inside = {_name(str(e)) for e in fs.ls(str(trial), detail=False)}
                if inside & set(MARKER_FILES):
                    has_marker = True
                    break
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        return f"it holds entries neither `kubeloop train` nor a drift check writes ({shown})"
    if not has_marker:
        return "it has no model.sha256 or report.json (at its top or in trials/<index>/)"
    if DRIFT_DIR in entries:
        return _drift_problem(fs, path)
    return None


def delete_run_directory(uri: str, env: Mapping[str, str] | None = None,
                         pvc_mount_root: str = DEFAULT_PVC_MOUNT_ROOT,
                         storage_root: str | None = None) -> DeleteResult:
    """Delete the run directory at ``uri`` if it is one (see the module doc)."""
    environment = dict(os.environ if env is None else env)
    problem = _path_problem(uri, storage_root, pvc_mount_root)
    if problem is not None:
        return DeleteResult("Refused", uri, f"refusing to delete {uri}: {problem}")
    try:
        fs, path = _filesystem(uri, environment, pvc_mount_root)
        if not path or path == "/":
            return DeleteResult("Refused", uri, f"refusing to delete {uri}: it is a storage root, not a run directory")
        if not fs.exists(path):
            return DeleteResult("Absent", uri, f"{uri} does not exist: nothing to delete")
        if not fs.isdir(path):
            return DeleteResult("Refused", uri, f"refusing to delete {uri}: it is a file, not a run directory")
        if not fs.ls(path, detail=False):
            fs.rm(path, recursive=True)
            return DeleteResult("Absent", uri, f"{uri} was empty: removed it")
        refusal = _refusal(fs, path)
        if refusal is not None:
            return DeleteResult(
                "Refused", uri,
                f"refusing to delete {uri}: it does not look like a run directory written by "
                f"Kubeloop: {refusal}",
            )
        files = len(fs.find(path))
        fs.rm(path, recursive=True)
    except OSError as exc:
        return DeleteResult("Failed", uri, f"cannot delete {uri}: {exc}")
    return DeleteResult("Deleted", uri, f"deleted {uri} ({files} files)", files)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``kubeloop artifacts``; returns the exit code."""
    environment = dict(os.environ if env is None else env)
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"kubeloop artifacts: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    pvc_root = args.pvc_mount_root or environment.get(ENV_PVC_ROOT) or DEFAULT_PVC_MOUNT_ROOT
    result = delete_run_directory(args.uri, environment, pvc_root, args.storage_root)
    termination.write(termination.resolve_path(args.termination_log), result.render(), "kubeloop artifacts")
    print(f"kubeloop artifacts delete: {result.status}: {result.message}",
          file=sys.stdout if result.exit_code == EXIT_OK else sys.stderr, flush=True)
    return result.exit_code
