"""Shared by every peer script: load the benchmark tables, time phases, print one JSON line.

Stdlib + pyarrow + numpy only, so it runs in each peer's own virtualenv.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

ALPHA = 0.05


def load_columns(data_dir: Path, name: str) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """One table as numpy columns, plus the numerical and categorical column names."""
    table = pq.read_table(data_dir / f"{name}.parquet")
    meta = json.loads((data_dir / "meta.json").read_text())
    columns = {c: table.column(c).to_numpy() for c in table.column_names}
    return columns, meta["numerical"], meta["categorical"]


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH adjusted p-values (written out so peers without scipy>=1.11 can use it)."""
    order = np.argsort(p_values)
    ranked = p_values[order] * (p_values.size / np.arange(1, p_values.size + 1))
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty_like(ranked)
    adjusted[order] = np.clip(ranked, 0, 1)
    return adjusted


class Timer:
    """Wall-clock phases."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: dict[str, float] = {}
        self._last = self.start

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.marks[phase] = now - self._last
        self._last = now


def emit(tool: str, timer: Timer, features: dict[str, dict[str, Any]], **extra: Any) -> None:
    """Print the peer's result as the last line of stdout.

    ``features[name]`` holds ``p`` (raw p-value, or None), ``drifted`` (the tool's own verdict)
    and any statistics; ``drifted_bh`` is recomputed here from the p-values with
    Benjamini-Hochberg so verdicts can be compared under one multiple-testing rule.
    """
    names = [n for n, f in features.items() if f.get("p") is not None]
    if names:
        adjusted = benjamini_hochberg(np.array([features[n]["p"] for n in names], dtype=float))
        for name, p in zip(names, adjusted, strict=True):
            features[name]["p_bh"] = float(p)
            features[name]["drifted_bh"] = bool(p < ALPHA)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    payload = {
        "tool": tool,
        "phases": timer.marks,
        "compute_s": timer.marks.get("compute", float("nan")),
        "peak_rss_mib": peak_kib / 1024,
        "drifted": sorted(n for n, f in features.items() if f["drifted"]),
        "drifted_bh": sorted(n for n, f in features.items() if f.get("drifted_bh", f["drifted"])),
        "features": features,
        **extra,
    }
    sys.stdout.write(json.dumps(payload, default=float) + "\n")
    sys.stdout.flush()
