"""Which data a runtime may read, and what of it may be repeated (issue 13, items 3 and 7).

A TrainingRun's ``data.source`` (and a DriftPolicy's dataset) is written by a namespace user
but read by a pod that also holds the run's credentials Secret in its environment. So:

* **Local files only below the declared data volumes.** A ``file://`` URI, a plain path or a
  ``pvc://`` URI (once mapped to its mount) is resolved with :func:`os.path.realpath` (so
  ``..`` segments and symlinks cannot step out) and must then lie at or below one of the
  *data roots*: the mount paths of the ``pvc://`` claims the Job mounts and the operator's
  configured storage root. The operator's Job builders put them into the pod as
  ``KUBELOOP_DATA_ROOTS`` (``:``-separated, :func:`encode_roots`), set explicitly in the
  container's ``env``, which Kubernetes lets win over any key of an ``envFrom`` Secret. The
  container's own file system (``/proc/self/environ``, ``/etc``, ``/var/run/secrets``, the
  Python installation) is never a data root.
* **Without declared roots** (``kubeloop train`` on a laptop, no ``KUBELOOP_DATA_ROOTS``) any
  local file may be read except the machine's system areas (:data:`SYSTEM_AREAS`, and the
  running Python installation).
* **Remote data only through known schemes** (:data:`REMOTE_SCHEMES`); fsspec's other
  protocols (``local://``, ``memory://``, chained ``simplecache::file://...``, ``zip://``)
  would reach local files around the rule above and are refused.
* **Messages never echo content.** Column names are repeated capped in count and length and
  with control characters removed (:func:`column_names`); a reader's error becomes a fixed
  summary — format, error type, line number if the reader gave one (:func:`read_error_summary`)
  — because pandas and pyarrow quote the offending line of an unparseable file; cell values are
  never repeated by validation rules.

Pure except :meth:`DataRoots.check` and :func:`resolved`, which ask the file system where a
path really leads (no file is opened). No kopf, no kubernetes.
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

ENV_DATA_ROOTS = "KUBELOOP_DATA_ROOTS"
"""The pod's data roots, ``:``-separated absolute paths (set by the operator's Job builders)."""
DATA_SOURCE_FIELD = "spec.data.source"
SYSTEM_AREAS = (
    "/proc", "/sys", "/dev", "/etc", "/run", "/var/run", "/var/lib/kubelet", "/boot",
    "/root", "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin",
)
"""Refused even when no data roots are declared: the machine's own files, not data."""
REMOTE_SCHEMES = ("http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
"""Schemes read through fsspec; every other ``scheme://`` (and any ``::`` chain) is refused."""
MAX_COLUMNS_SHOWN = 10
MAX_COLUMN_NAME = 40


class DataPathNotAllowed(ValueError):
    """A data URI the runtime refuses to read; the message names the field, roots and fix."""


@dataclass(frozen=True)
class DataRoots:
    """Where local data may be read from; ``roots`` None means none were declared."""

    roots: tuple[str, ...] | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DataRoots:
        """The roots the operator declared in ``KUBELOOP_DATA_ROOTS`` (present but empty: none
        at all, so no local file may be read); absent: undeclared (see the module doc)."""
        if ENV_DATA_ROOTS not in env:
            return cls(None)
        return cls(tuple(part for part in env[ENV_DATA_ROOTS].split(":") if part.strip()))

    def describe(self) -> str:
        if self.roots is None:
            return "any local path outside the system areas (no data roots declared)"
        if not self.roots:
            return "none (this pod mounts no data volume)"
        return ", ".join(self.roots)

    def check(self, path: str, field: str = DATA_SOURCE_FIELD, uri: str | None = None) -> str:
        """The real path of local ``path`` when it may be read; raises
        :class:`DataPathNotAllowed` naming ``field``, the allowed roots and the fix."""
        real = resolved(path)
        shown = display_uri(uri if uri is not None else path)
        if self.roots is None:
            refused = [area for area in (*SYSTEM_AREAS, *_python_installation()) if is_at_or_below(real, area)]
            if not refused:
                return real
            raise DataPathNotAllowed(
                f"{field} {shown!r} leads to {real}, inside {refused[0]}, which holds this "
                "machine's own files, not data; put the data on a data volume (pvc://<claim>/<path>) "
                "or under the storage root"
            )
        if any(is_at_or_below(real, resolved(root)) for root in self.roots):
            return real
        raise DataPathNotAllowed(
            f"{field} {shown!r} is not below a data volume of this pod (it leads to {real}); "
            f"allowed roots: {self.describe()}. Fix: put the data on a PersistentVolumeClaim "
            "and name it pvc://<claim>/<path>, or under the operator's storage root"
        )


def resolved(path: str) -> str:
    """``path`` made absolute with every ``..`` and symlink followed (:func:`os.path.realpath`)."""
    return os.path.realpath(path)


def is_at_or_below(path: str, root: str) -> bool:
    """Whether normalised absolute ``path`` is ``root`` or inside it (``/`` holds everything)."""
    root = root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")


def encode_roots(roots: Iterable[str]) -> str:
    """``KUBELOOP_DATA_ROOTS`` for ``roots``: absolute, normalised, deduplicated, ``:``-joined."""
    kept: list[str] = []
    for root in roots:
        if not root.startswith("/") or ":" in root:
            raise ValueError(f"data root {root!r} must be an absolute path without ':'")
        normal = os.path.normpath(root)
        if normal not in kept:
            kept.append(normal)
    return ":".join(kept)


def remote_scheme_problem(location: str) -> str | None:
    """Why ``location`` (not a local path) must not be opened through fsspec; None if it may."""
    if "::" in location:
        return "chained fsspec URLs ('::') are not data sources"
    scheme = urlsplit(location).scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        return (
            f"the scheme {scheme}:// is not a data source; use file://, pvc://, sklearn:// or "
            + ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
        )
    return None


def display_uri(uri: str) -> str:
    """``uri`` as a message may show it: without user information, query string or fragment
    (a presigned URL's signature, a token), control characters removed."""
    if "://" in uri:
        try:
            parts = urlsplit(uri)
            host = parts.netloc.rpartition("@")[2]
            uri = urlunsplit((parts.scheme, host, parts.path, "", ""))
        except ValueError:
            uri = uri.split("?", 1)[0].split("#", 1)[0]
    return clean_text(uri, 300)


def clean_text(text: str, limit: int) -> str:
    """``text`` without control or format characters, whitespace collapsed, at most ``limit``
    characters (an ellipsis marks a cut)."""
    kept = "".join(
        " " if c.isspace() else c
        for c in text
        if c.isspace() or not unicodedata.category(c).startswith("C")
    )
    collapsed = " ".join(kept.split())
    return collapsed if len(collapsed) <= limit else collapsed[: max(0, limit - 1)] + "…"


def column_name(name: object, quoted: bool = True) -> str:
    """One column name as a message may show it (sanitised, at most ``MAX_COLUMN_NAME``)."""
    text = clean_text(str(name), MAX_COLUMN_NAME)
    return repr(text) if quoted else text


def column_names(names: Sequence[object], limit: int = MAX_COLUMNS_SHOWN, quoted: bool = True) -> str:
    """Column names as a message may list them: the first ``limit``, each sanitised and cut."""
    shown = ", ".join(column_name(name, quoted) for name in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names)} in all)"
    return shown


_LINE = re.compile(r"\b(?:line|row)\s+(\d{1,12})\b", re.IGNORECASE)


def read_error_summary(error: BaseException, table_format: str) -> str:
    """What a failed read may say: the format, the error's type, an HTTP status and a line
    number when the reader gave them. Never the reader's message, which may quote the data."""
    parts = [f"not readable as {table_format}", type(error).__name__]
    status = getattr(error, "status", None) or getattr(error, "code", None)
    if isinstance(status, int) and 100 <= status <= 599:
        parts.append(f"HTTP {status}")
    line = _LINE.search(str(error)) if not isinstance(error, UnicodeDecodeError) else None
    if line is not None:
        parts.append(f"line {int(line.group(1))}")
    if isinstance(error, UnicodeDecodeError):
        parts.append(f"undecodable byte at offset {error.start}")
    elif isinstance(error, OSError) and isinstance(error.strerror, str):
        parts.append(clean_text(error.strerror, 80))
    return "; ".join(parts)


def _python_installation() -> tuple[str, ...]:
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # the kubeloop package
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, here}
    return tuple(sorted(resolved(p) for p in prefixes if p and resolved(p) != "/"))
