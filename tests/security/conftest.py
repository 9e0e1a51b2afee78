"""Fixtures for the attack tests (issue 13).

Each test performs one attack twice: against a deliberately weakened policy, where it must
succeed (so the test cannot pass vacuously), then against the real policy, where it must fail.

Tests that need the API server use the same fixtures as tests/integration (``cluster``,
``kube_api``, ``kubectl``, ``namespace``), loaded from that directory's conftest so both suites
share one implementation; such tests are marked ``integration`` by being requested here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(_INTEGRATION))

_spec = importlib.util.spec_from_file_location(
    "kubeloop_integration_fixtures", _INTEGRATION / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

cluster = _fixtures.cluster
kubeconfig_path = _fixtures.kubeconfig_path
kube_api = _fixtures.kube_api
kubectl = _fixtures.kubectl
namespace = _fixtures.namespace
crds = _fixtures.crds
