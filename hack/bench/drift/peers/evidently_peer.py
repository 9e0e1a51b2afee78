"""Peer: Evidently's data-drift report (DataDriftPreset) with KS for numerical and chi-squared
for categorical columns, per-column verdict at p < 0.05 (Evidently does not correct p-values).

Phases: ``convert`` (``Dataset.from_pandas`` of both frames) and ``compute`` (``Report.run`` and
reading its results), so the statistics are compared without the conversion and both are
reported."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Timer, emit

os.environ.setdefault("DO_NOT_TRACK", "1")


def main() -> None:
    timer = Timer()
    import json

    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    timer.mark("import")
    data_dir = Path(sys.argv[1])
    meta = json.loads((data_dir / "meta.json").read_text())
    numerical, categorical = meta["numerical"], meta["categorical"]
    reference = pd.read_parquet(data_dir / "reference.parquet")
    current = pd.read_parquet(data_dir / "current.parquet")
    timer.mark("load")
    # Two phases, timed apart: Evidently's own dataset conversion (pandas -> its Dataset) and
    # its statistics (the report itself). `compute` is the statistics alone, the same work the
    # other tools' `compute` covers; `convert` is reported next to it.
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    current_dataset = Dataset.from_pandas(current, data_definition=definition)
    reference_dataset = Dataset.from_pandas(reference, data_definition=definition)
    timer.mark("convert")
    report = Report([DataDriftPreset(num_method="ks", cat_method="chisquare")])
    snapshot = report.run(current_dataset, reference_dataset)
    metrics = snapshot.dict()["metrics"]
    timer.mark("compute")
    features = {}
    pattern = re.compile(
        r"ValueDrift\(column=(?P<column>[^,]+),method=(?P<method>[^,]+),threshold=(?P<threshold>[^)]+)\)"
    )
    for metric in metrics:
        match = pattern.match(metric["metric_name"])
        if not match:
            continue
        p_value = float(metric["value"])
        features[match["column"]] = {
            "test": "chi2" if match["method"] == "chisquare" else match["method"],
            "p": p_value,
            "drifted": p_value < float(match["threshold"]),
        }
    emit("evidently", timer, features)


if __name__ == "__main__":
    main()
