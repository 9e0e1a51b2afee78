"""``skops.io``, imported without its walk through every scikit-learn module.

When ``skops.io`` is first imported it builds a default trust list from
``sklearn.utils.all_estimators()``, which imports every scikit-learn submodule: 0.6-1.1 CPU-s
on this project's machines even when the estimator's own modules are loaded already, paid by
every trainer run (only to *write* a model) and every model-server start.

Kubeloop never relies on that list. Every loader here asks skops which types a file needs
beyond skops' own safe defaults and decides each one itself
(:func:`kubeloop.trust.model_types.decide`): an empty list therefore changes no decision of
ours; it only makes skops' default (for any other caller in the process) stricter, never looser.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any


def _no_estimators(*args: Any, **kwargs: Any) -> list[tuple[str, type]]:
    return []


def skops_io() -> ModuleType:
    """The ``skops.io`` module; the first import skips scikit-learn's estimator discovery."""
    loaded = sys.modules.get("skops.io")
    if loaded is not None:
        return loaded
    import sklearn.utils

    discovery = sklearn.utils.all_estimators
    # skops binds the function by name at import (``from sklearn.utils import ...``).
    sklearn.utils.all_estimators = _no_estimators
    try:
        import skops.io
    finally:
        sklearn.utils.all_estimators = discovery
    module: ModuleType = skops.io
    return module
