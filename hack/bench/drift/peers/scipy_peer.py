"""Peer: plain scipy as a user would write it: ks_2samp per numerical feature, PSI with numpy
over the reference's quantile bins, chi2_contingency per categorical feature, then
Benjamini-Hochberg (scipy.stats.false_discovery_control)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ALPHA, Timer, emit, load_columns


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 20, eps: float = 1e-4) -> float:
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = edges[edges < reference.max()]
    full = np.concatenate(([-np.inf], edges, [np.inf]))
    expected = np.maximum(np.histogram(reference, full)[0] / reference.size, eps)
    actual = np.maximum(np.histogram(current, full)[0] / current.size, eps)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def main() -> None:
    timer = Timer()
    from scipy import stats

    timer.mark("import")
    data_dir = Path(sys.argv[1])
    reference, numerical, categorical = load_columns(data_dir, "reference")
    current, _, _ = load_columns(data_dir, "current")
    timer.mark("load")
    features: dict[str, dict[str, object]] = {}
    for name in numerical:
        result = stats.ks_2samp(reference[name], current[name])
        features[name] = {
            "test": "ks",
            "statistic": float(result.statistic),
            "p": float(result.pvalue),
            "psi": psi(reference[name], current[name]),
        }
    for name in categorical:
        categories = np.union1d(reference[name], current[name])
        table = np.stack(
            [
                np.unique(np.concatenate((categories, reference[name])), return_counts=True)[1] - 1,
                np.unique(np.concatenate((categories, current[name])), return_counts=True)[1] - 1,
            ]
        )
        result = stats.chi2_contingency(table)
        features[name] = {
            "test": "chi2",
            "statistic": float(result.statistic),
            "p": float(result.pvalue),
        }
    names = list(features)
    adjusted = stats.false_discovery_control([features[n]["p"] for n in names])
    for name, p in zip(names, adjusted, strict=True):
        features[name]["drifted"] = bool(p < ALPHA)
    timer.mark("compute")
    emit("scipy", timer, features)


if __name__ == "__main__":
    main()
