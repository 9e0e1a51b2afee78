"""What Kubeloop writes into a run directory ``<storageUri>/<model>/<run>/``: the one list.

Two writers put files there, and one command deletes the directory:

* ``kubeloop train`` (:mod:`kubeloop.training.trainer`, :mod:`kubeloop.training.artifacts`)
  writes :data:`TRAINER_ENTRIES` at the top (a sweep trial writes the same files under
  ``trials/<index>/``);
* a DriftPolicy's dataset check (:mod:`kubeloop.resources.driftjob`, ``kubeloop drift --html``)
  writes its page beside the profile it checked: ``drift/<policy>/<due epoch>/report.html``
  (:func:`drift_report_path`);
* ``kubeloop artifacts delete`` (:mod:`kubeloop.runtime.artifacts`, a TrainingRun's cleanup)
  deletes a directory only when everything at its top is in :data:`KUBELOOP_ENTRIES` (or a
  writer's temporary file) and the ``drift/`` tree has exactly the shape above
  (:func:`drift_entry_problem`): anything else is someone else's and is refused.

Every writer names these files through this module, so a new file cannot be written without
the cleanup knowing it. Pure: no I/O.
"""

from __future__ import annotations

import re
import uuid

MODEL_FILE = "model.skops"
CHECKSUM_FILE = "model.sha256"
PROFILE_FILE = "profile.json"
REPORT_FILE = "report.json"
TRIALS_DIR = "trials"
DRIFT_DIR = "drift"
DRIFT_REPORT_FILE = "report.html"

MARKER_FILES = (CHECKSUM_FILE, REPORT_FILE)
"""A directory with one of these (at its top or in ``trials/<index>/``) was written by the trainer."""
TRAINER_ENTRIES = frozenset({MODEL_FILE, CHECKSUM_FILE, PROFILE_FILE, REPORT_FILE, TRIALS_DIR})
"""What ``kubeloop train`` writes at the top of a run directory."""
KUBELOOP_ENTRIES = TRAINER_ENTRIES | {DRIFT_DIR}
"""What any Kubeloop runtime writes at the top of a run directory."""

TEMPORARY_FILE = re.compile(r"^\.[^/]+\.tmp-[0-9a-f]+$")
"""The temporary sibling of an atomic write (:func:`temporary_name`), left by a crash."""
_POLICY_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a Kubernetes object name
_EPOCH = re.compile(r"^[0-9]{1,12}$")


def temporary_name(name: str) -> str:
    """The temporary sibling an atomic write of ``name`` goes through (matches TEMPORARY_FILE)."""
    return f".{name}.tmp-{uuid.uuid4().hex}"


def drift_report_path(directory: str, policy_name: str, due_epoch: int) -> str:
    """Where the dataset check of ``policy_name`` due at ``due_epoch`` writes its page, in the
    directory that holds the profile it checked (a run directory or a sweep trial's)."""
    return f"{directory.rstrip('/')}/{DRIFT_DIR}/{policy_name}/{due_epoch}/{DRIFT_REPORT_FILE}"


def drift_entry_problem(relative: str, kind: str) -> str | None:
    """Why an entry below ``drift/`` is not a drift check's (None: it is one).

    ``relative`` is its path below ``drift/`` (``<policy>``, ``<policy>/<epoch>`` or
    ``<policy>/<epoch>/<file>``); ``kind`` is ``directory``, ``file`` or ``link`` (a symbolic
    link, never followed: it is refused wherever it is, so the cleanup cannot be led out).
    """
    parts = relative.split("/")
    shown = f"{DRIFT_DIR}/{relative}"
    if kind == "link":
        return f"{shown} is a symbolic link"
    if len(parts) == 1 and (kind != "directory" or not _POLICY_NAME.match(parts[0])):
        return f"{shown} is not a DriftPolicy's report directory"
    if len(parts) == 2 and (kind != "directory" or not _EPOCH.match(parts[1])):
        return f"{shown} is not a drift check's directory (<policy>/<epoch>)"
    if len(parts) == 3 and (
        kind != "file" or not (parts[2] == DRIFT_REPORT_FILE or TEMPORARY_FILE.match(parts[2]))
    ):
        return f"{shown} is not a drift report ({DRIFT_REPORT_FILE})"
    if len(parts) > 3:
        return f"{shown} is deeper than drift/<policy>/<epoch>/{DRIFT_REPORT_FILE}"
    return None
