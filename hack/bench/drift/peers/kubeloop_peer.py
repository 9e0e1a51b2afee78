"""Peer: kubeloop.drift (this repository), exact mode: KS + PSI per numerical feature,
chi-squared per categorical feature, Benjamini-Hochberg across features."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Timer, emit, load_columns


def main() -> None:
    timer = Timer()
    import scipy.stats  # noqa: F401  (p-values; imported lazily by kubeloop, here as by the peers)

    from kubeloop.drift.report import DriftConfig, drift_report_from_samples

    timer.mark("import")
    data_dir = Path(sys.argv[1])
    reference, _numerical, categorical = load_columns(data_dir, "reference")
    current, _, _ = load_columns(data_dir, "current")
    timer.mark("load")
    config = DriftConfig(numerical_test="ks", categorical_test="chi2", extra_scores=["psi"])
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    report = drift_report_from_samples(
        reference, current, config, categorical=categorical, workers=workers
    )
    timer.mark("compute")
    features = {
        f.feature: {
            "test": f.test,
            "statistic": f.score,
            "p": f.p_value,
            "psi": f.scores.get("psi"),
            "drifted": f.drifted,
        }
        for f in report.features
    }
    emit("kubeloop" if workers == 1 else f"kubeloop-{workers}threads", timer, features)


if __name__ == "__main__":
    main()
