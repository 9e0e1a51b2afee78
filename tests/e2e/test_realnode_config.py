"""The real node's configuration agrees with itself, without starting anything.

``hack/realnode/up render`` writes the files the node would run with; these tests read them the
way containerd, the kubelet, kube-proxy and CNI would, and check that they name the same socket,
cgroup driver, pod range and sandbox image. They need no root and no node, so they always run.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
REALNODE = REPO / "hack" / "realnode"


def versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REALNODE / "versions.env").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pins[key] = value
    return pins


def render(tmp_path: Path, **env: str) -> Path:
    state = tmp_path / "state"
    result = subprocess.run(
        [str(REALNODE / "up"), "render"],
        env={**os.environ, "KUBELOOP_REALNODE_DIR": str(state), "KUBELOOP_CACHE": str(tmp_path / "cache"), **env},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return state


@pytest.mark.parametrize("pod_cidr", [None, "10.123.4.0/24", "172.30.0.0/23"])
def test_rendered_node_config_is_consistent(tmp_path: Path, pod_cidr: str | None) -> None:
    state = render(tmp_path, **({"KUBELOOP_REALNODE_POD_CIDR": pod_cidr} if pod_cidr else {}))
    containerd = tomllib.loads((state / "containerd.toml").read_text())
    kubelet: dict[str, Any] = yaml.safe_load((state / "kubelet-config.yaml").read_text())
    proxy: dict[str, Any] = yaml.safe_load((state / "kube-proxy-config.yaml").read_text())
    cni_dir = Path(containerd["plugins"]["io.containerd.cri.v1.runtime"]["cni"]["conf_dir"])
    conflists = sorted(cni_dir.glob("*.conflist"))
    assert len(conflists) == 1
    cni = json.loads(conflists[0].read_text())

    # The kubelet talks to exactly this containerd.
    assert kubelet["containerRuntimeEndpoint"] == "unix://" + containerd["grpc"]["address"]
    # cgroup v1 without systemd: both sides use cgroupfs, and the kubelet accepts cgroup v1.
    runc = containerd["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is False and kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["failCgroupV1"] is False and kubelet["failSwapOn"] is False
    # No CAP_SYS_RESOURCE here: containerd must not ask runc for a lower oom_score_adj.
    assert containerd["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"] is True
    # The sandbox image is the locally built, pinned one.
    images = containerd["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == versions()["PAUSE_IMAGE"]

    # One pod range, seen the same by CNI and kube-proxy; the node's address is its gateway.
    bridge = next(p for p in cni["plugins"] if p["type"] == "bridge")
    subnet = ipaddress.ip_network(bridge["ipam"]["ranges"][0][0]["subnet"])
    assert subnet == ipaddress.ip_network(pod_cidr or "10.88.0.0/24")
    assert ipaddress.ip_network(proxy["clusterCIDR"]) == subnet
    assert ipaddress.ip_address(kubelet["address"]) == subnet[1]
    # Pods stay on this machine: no masquerade to the outside, IPAM state in our own dir.
    assert bridge["ipMasq"] is False and bridge["isGateway"] is True
    assert Path(bridge["ipam"]["dataDir"]).is_relative_to(state)
    # The ClusterIP range of the node's control plane does not overlap the pod range.
    assert not subnet.overlaps(ipaddress.ip_network("10.97.0.0/16"))


def test_containerd_wrapper_module_pins_the_version_in_versions_env() -> None:
    go_mod = (REALNODE / "modules" / "containerd" / "go.mod").read_text()
    required = re.search(r"github\.com/containerd/containerd/v2 (v\S+)", go_mod)
    assert required is not None, "go.mod does not require github.com/containerd/containerd/v2"
    assert required.group(1) == versions()["CONTAINERD_VERSION"]
    assert (REALNODE / "modules" / "containerd" / "go.sum").stat().st_size > 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_realnode_scripts_pass_shellcheck() -> None:
    scripts = [REALNODE / name for name in ("up", "demo", "build.sh", "images.sh")]
    result = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


def test_unknown_command_names_the_valid_ones() -> None:
    result = subprocess.run([str(REALNODE / "up"), "start"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "unknown command: start" in result.stderr and "up | down | status" in result.stderr
