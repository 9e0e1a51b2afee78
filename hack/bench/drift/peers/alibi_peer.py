"""Peer: alibi-detect's TabularDrift (KS per numerical feature, chi-squared per categorical,
feature-level verdicts at p < 0.05; its 'fdr' correction applies to the batch verdict)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ALPHA, Timer, emit, load_columns


def main() -> None:
    timer = Timer()
    from alibi_detect.cd import TabularDrift

    timer.mark("import")
    data_dir = Path(sys.argv[1])
    reference, numerical, categorical = load_columns(data_dir, "reference")
    current, _, _ = load_columns(data_dir, "current")
    names = [*numerical, *categorical]
    # alibi takes one 2-D float array; categories are integer codes.
    x_ref = np.column_stack([reference[n].astype(np.float64) for n in names])
    x_cur = np.column_stack([current[n].astype(np.float64) for n in names])
    del reference, current
    timer.mark("load")
    detector = TabularDrift(
        x_ref,
        p_val=ALPHA,
        categories_per_feature={names.index(c): None for c in categorical},
        correction="fdr",
    )
    prediction = detector.predict(
        x_cur, drift_type="feature", return_p_val=True, return_distance=True
    )
    timer.mark("compute")
    data = prediction["data"]
    features = {
        name: {
            "test": "chi2" if name in categorical else "ks",
            "statistic": float(data["distance"][i]),
            "p": float(data["p_val"][i]),
            "drifted": bool(data["is_drift"][i]),
        }
        for i, name in enumerate(names)
    }
    emit("alibi-detect", timer, features)


if __name__ == "__main__":
    main()
