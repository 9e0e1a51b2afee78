"""Fixtures shared by the unit tests that start real ``kubeloop serve`` processes."""

from __future__ import annotations

import pytest
from serve_fixtures import StoredModel, train_models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StoredModel]:
    """Three small real models as the trainer leaves them (see ``train_models``), per module;
    a module that needs other models defines its own ``models``."""
    return train_models(tmp_path_factory.mktemp("models"))
