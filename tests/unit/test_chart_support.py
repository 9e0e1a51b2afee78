"""Shared helpers of the chart tests (no tests here): the cached helm binary and rendering.

helm (and kubeconform) are built from Go modules by ``hack/cluster build`` (``make setup``).
Outside CI a missing binary skips the chart tests with the command that builds it; in CI
(``CI=true``) it fails them, so a broken setup cannot pass silently.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeloop"
HACK_CLUSTER = REPO / "hack" / "cluster"


def tool(name: str) -> str:
    """Path of a tool cached by hack/cluster (helm, kubeconform, kubectl)."""
    proc = subprocess.run(
        [str(HACK_CLUSTER), "which", name], capture_output=True, text=True, check=False
    )
    path = proc.stdout.strip()
    if proc.returncode == 0 and path and os.access(path, os.X_OK):
        return path
    message = f"{name} is not built ({path or proc.stderr.strip()}): run `hack/cluster build {name}`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the cached helm; with ``check`` a failure shows helm's own message."""
    proc = subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def template_args(
    values: Mapping[str, Any] | None = None,
    release: str = "kl",
    namespace: str = "kubeloop",
    values_file: Path | None = None,
    helm_tests: bool = False,
) -> list[str]:
    """``helm template`` arguments; ``values`` go in as one JSON values file (exact types).

    Without ``helm_tests`` the `helm test` hooks (objects only `helm test` creates, with their
    own RBAC: test_chart_monitoring.py checks them) are left out, so the other tests see what
    `helm install` creates."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    if not helm_tests:
        args.append("--skip-tests")
    if values is not None:
        if values_file is None:
            raise ValueError("values need a values_file path to be written to")
        values_file.write_text(json.dumps(values))
        args += ["--values", str(values_file)]
    return args


def render_text(
    tmp_path: Path,
    values: Mapping[str, Any] | None = None,
    namespace: str = "kubeloop",
    helm_tests: bool = False,
) -> str:
    """The chart's manifests as ``helm template`` prints them."""
    return helm(
        *template_args(
            values, namespace=namespace, values_file=tmp_path / "values.json", helm_tests=helm_tests
        )
    ).stdout


def render(
    tmp_path: Path,
    values: Mapping[str, Any] | None = None,
    namespace: str = "kubeloop",
    helm_tests: bool = False,
) -> list[dict[str, Any]]:
    """The chart's manifests, parsed (empty documents dropped)."""
    text = render_text(tmp_path, values, namespace, helm_tests)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: Sequence[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(doc) for doc in docs if doc["kind"] == kind]


def one(docs: Sequence[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
