"""What the e2e tests share: the running real node, and the stage timings they report."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# Seconds per stage (up, train, serve, canary), printed in pytest's terminal summary so cold
# and warm runs can be compared.
TIMINGS: dict[str, float] = {}


@dataclass(frozen=True)
class RealNode:
    """A running real node and what tests need to use it."""

    kubeconfig: str
    runtime_image: str
    node_name: str
    state_dir: Path
    kubectl_path: str
    up_seconds: float

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the cached kubectl against the node's cluster."""
        return subprocess.run(
            [self.kubectl_path, "--kubeconfig", self.kubeconfig, *args],
            capture_output=True, text=True, check=check, timeout=timeout,
        )
