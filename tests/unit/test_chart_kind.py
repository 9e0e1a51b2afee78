"""hack/kind-up.sh and hack/kind-config.yaml cannot run here (no Docker): check what can be
checked. The kind config against kind's v1alpha4 Cluster fields, the script with shellcheck,
and the chart values the script sets against the chart's schema."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_chart_support import CHART, REPO, helm

SCRIPT = REPO / "hack" / "kind-up.sh"
CONFIG = REPO / "hack" / "kind-config.yaml"

# kind's config API (sigs.k8s.io/kind/pkg/apis/config/v1alpha4): Cluster and Node fields.
CLUSTER_FIELDS = {
    "kind", "apiVersion", "name", "nodes", "networking", "featureGates", "runtimeConfig",
    "kubeadmConfigPatches", "kubeadmConfigPatchesJSON6902", "containerdConfigPatches",
    "containerdConfigPatchesJSON6902",
}  # fmt: skip
NODE_FIELDS = {
    "role", "image", "labels", "extraMounts", "extraPortMappings", "kubeadmConfigPatches",
    "kubeadmConfigPatchesJSON6902",
}  # fmt: skip


def test_kind_config_is_a_v1alpha4_cluster() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(config) <= CLUSTER_FIELDS, set(config) - CLUSTER_FIELDS
    nodes = config["nodes"]
    assert nodes and all(set(n) <= NODE_FIELDS for n in nodes)
    assert {n["role"] for n in nodes} <= {"control-plane", "worker"}
    assert [n["role"] for n in nodes].count("control-plane") >= 1
    for node in nodes:
        assert all(isinstance(v, str) for v in (node.get("labels") or {}).values())
    # One node: the ReadWriteOnce models volume is shared by every pod (see the comment).
    assert len(nodes) == 1
    # The script's default cluster name is the config's.
    assert f'CLUSTER="${{KIND_CLUSTER_NAME:-{config["name"]}}}"' in SCRIPT.read_text()


def test_kind_up_is_executable_and_refers_to_real_paths() -> None:
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    for relative in re.findall(r'\$\{ROOT\}/([\w./-]+)', text):
        assert (REPO / relative).exists(), relative


def test_kind_up_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        message = "shellcheck is not installed: apt-get install -y shellcheck (hack/setup)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run(
        [shellcheck, "--severity=style", "--external-sources", str(SCRIPT)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout


def test_the_values_kind_up_sets_pass_the_chart_schema(tmp_path: Path) -> None:
    sets = re.findall(r"--set '?([\w.]+=[^\s']+)", SCRIPT.read_text())
    assert len(sets) == 7, sets
    args = ["template", "kubeloop", str(CHART), "--namespace", "kubeloop"]
    for assignment in sets:
        args += ["--set", assignment.replace('"${IMAGE_REPO}"', "kubeloop").replace('"${IMAGE_TAG}"', "dev")]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "Never"
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # The runtime pods mount the claim; the operator reads nothing from storage (docs/storage.md).
    assert all(m["name"] != "models" for m in container["volumeMounts"])
