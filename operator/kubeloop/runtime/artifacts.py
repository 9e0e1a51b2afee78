"""``kubeloop artifacts delete``: remove one run directory the trainer wrote (a cleanup Job's entry point).

    kubeloop artifacts delete file:///models/churn/churn-1 --termination-log /dev/termination-log

The operator runs this in a TrainingRun's cleanup Job (``spec.cleanupPolicy: Delete``) because
only a pod gets the run's storage as the trainer did: its ``pvc://`` claim mounted writable,
its Secret's credentials for ``s3://``. The directory is ``<storageUri>/<model>/<run>/``.

Before anything is deleted the directory must look like what ``kubeloop train`` writes
(:mod:`kubeloop.training.artifacts`): ``model.sha256`` or ``report.json`` at its top or in a
sweep's ``trials/<index>/``, and nothing at its top but the trainer's files, ``trials/`` and
the trainer's temporary files. So a mistyped URI (a storage root, someone else's directory)
is refused rather than emptied. A directory that is missing or empty counts as done.

Prints one line to stdout and a compact JSON result to the termination message path::

    {"status": "Deleted"|"Absent"|"Refused"|"Failed", "uri": "...", "files": 4, "message": "..."}

Exit codes: 0 Deleted or Absent, 2 Refused (not a run directory: no retry can help),
3 Failed (storage error: a retry may), 64 usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from kubeloop.runtime import termination
from kubeloop.runtime.usage import UsageError, UsageParser

EXIT_OK, EXIT_REFUSED, EXIT_FAILED, EXIT_USAGE = 0, 2, 3, 64
ENV_PVC_ROOT = "KUBELOOP_PVC_MOUNT_ROOT"
DEFAULT_PVC_MOUNT_ROOT = "/mnt/pvc"

# What `kubeloop train` writes at the top of a run directory (kubeloop.training.artifacts).
MARKER_FILES = ("model.sha256", "report.json")
TRAINER_FILES = frozenset({"model.skops", "model.sha256", "profile.json", "report.json", "trials"})
TEMPORARY_FILE = re.compile(r"^\.[^/]+\.tmp-[0-9a-f]+$")  # write_atomic's temporary sibling


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
    delete.add_argument("--pvc-mount-root",
                        help=f"where pvc://<claim>/ is mounted (default: env {ENV_PVC_ROOT} or "
                             f"{DEFAULT_PVC_MOUNT_ROOT})")
    return parser


def _filesystem(uri: str, env: Mapping[str, str], pvc_mount_root: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    if uri.startswith("pvc://"):
        uri = os.path.join(pvc_mount_root, uri.removeprefix("pvc://").lstrip("/"))
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


def _refusal(fs: Any, path: str) -> str | None:
    """Why ``path`` is not a run directory written by the trainer (None: it is one)."""
    entries = [_name(str(entry)) for entry in fs.ls(path, detail=False)]
    unexpected = sorted(n for n in entries if n not in TRAINER_FILES and not TEMPORARY_FILE.match(n))
    has_marker = any(marker in entries for marker in MARKER_FILES)
    if not has_marker and "trials" in entries:
        for trial in fs.ls(f"{path}/trials", detail=False):
            if _name(str(trial)).isdigit() and fs.isdir(str(trial)):
                inside = {_name(str(e)) for e in fs.ls(str(trial), detail=False)}
                if inside & set(MARKER_FILES):
                    has_marker = True
                    break
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        return f"it holds entries `kubeloop train` does not write ({shown})"
    if not has_marker:
        return "it has no model.sha256 or report.json (at its top or in trials/<index>/)"
    return None


def delete_run_directory(uri: str, env: Mapping[str, str] | None = None,
                         pvc_mount_root: str = DEFAULT_PVC_MOUNT_ROOT) -> DeleteResult:
    """Delete the run directory at ``uri`` if it is one (see the module doc)."""
    environment = dict(os.environ if env is None else env)
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
                f"`kubeloop train`: {refusal}",
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
    result = delete_run_directory(args.uri, environment, pvc_root)
    termination.write(termination.resolve_path(args.termination_log), result.render(), "kubeloop artifacts")
    print(f"kubeloop artifacts delete: {result.status}: {result.message}",
          file=sys.stdout if result.exit_code == EXIT_OK else sys.stderr, flush=True)
    return result.exit_code
