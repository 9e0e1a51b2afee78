"""The container's termination message: where a runtime job leaves its compact JSON result.

The operator reads it from the pod's status (``terminationMessagePath``), so a runtime needs no
API access of its own. Outside Kubernetes there is usually no such file, and nothing is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_PATH = "/dev/termination-log"


def resolve_path(flag: str | None) -> Path | None:
    """The explicit path, else Kubernetes' default when it is there and writable, else none."""
    if flag:
        return Path(flag)
    default = Path(DEFAULT_PATH)
    if default.exists() and os.access(default, os.W_OK):
        return default
    return None


def write(path: Path | None, payload: bytes, program: str) -> None:
    """Write ``payload`` to ``path``; a failure is reported on stderr, never raised.

    The result still reaches the logs: a missing message must not hide the exit code.
    """
    if path is None:
        return
    try:
        path.write_bytes(payload)
    except OSError as exc:
        print(f"{program}: cannot write {path}: {exc}", file=sys.stderr)
