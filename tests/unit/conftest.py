"""Fixtures shared by the unit tests that start real ``kubeloop serve`` processes, and the
status schema guard on every decide() (tests/unit/status_schema_guard.py)."""

from __future__ import annotations

import pytest
import status_schema_guard
from serve_fixtures import StoredModel, train_models

# Before any test module imports decide: each decided status is checked against its schema.
status_schema_guard.install()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StoredModel]:
    """Three small real models as the trainer leaves them (see ``train_models``), per module;
    a module that needs other models defines its own ``models``."""
    return train_models(tmp_path_factory.mktemp("models"))
