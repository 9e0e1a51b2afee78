"""Command-line usage errors of the runtime commands (train, drift, artifacts).

argparse exits 2 on bad usage, but 2 already means something in each command's exit codes
(data validation failed, input refused...): a usage error is raised instead, and each command
maps it to its own usage exit code.
"""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """The command line (or the environment standing in for it) is not usable."""


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)
