"""Make installed modules look uninstalled to this process, for the runtimes (train, serve).

One image carries every runtime's dependencies, and libraries import optional modules
whenever they can: skops imports ``sklearn.utils._testing``, which imports pytest when it is
installed. A runtime that never uses such a module can leave it out with :func:`leave_out`;
an import of it then raises :class:`ModuleNotFoundError` as on a machine without it, which
the importing library already handles (that is what makes the module optional to it).
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Iterable
from typing import Any


class AbsentModules(importlib.abc.MetaPathFinder):
    """Makes the named top-level modules (and everything under them) look uninstalled."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".", 1)[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def leave_out(names: Iterable[str]) -> frozenset[str]:
    """Make the top-level modules ``names`` look uninstalled from now on; returns those newly
    left out. One already imported cannot be taken back and stays (so under pytest, pytest
    does); calling this again with the same names adds nothing."""
    covered: set[str] = set()
    for finder in sys.meta_path:
        if isinstance(finder, AbsentModules):
            covered |= finder.names
    absent = frozenset(n for n in names if n not in covered and n not in sys.modules)
    if absent:
        sys.meta_path.insert(0, AbsentModules(absent))
    return absent
