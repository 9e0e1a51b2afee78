"""The operator process leaves out the table libraries its estimator check would load
(kubeloop.controllers.main.table_libraries_left_out): scikit-learn, XGBoost and LightGBM import
pandas, and pandas pyarrow, whenever they can. Checked in a fresh interpreter, as the operator
starts: the estimator check still judges every framework, and nothing loads pandas or pyarrow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, sys
    from kubeloop.controllers.main import table_libraries_left_out
    from kubeloop.trust.estimators import spec_refusal

    def rss_mib():
        return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

    prefixes = ["sklearn.", "xgboost.", "lightgbm."]
    with table_libraries_left_out():
        verdicts = {
            path: spec_refusal(path, {}, prefixes)
            for path in [
                "sklearn.ensemble.RandomForestClassifier",
                "sklearn.pipeline.Pipeline",
                "xgboost.XGBClassifier",
                "lightgbm.LGBMRegressor",
                "xgboost.XGBRanker",
            ]
        }
        loaded = [name for name in ("pandas", "pyarrow") if sys.modules.get(name) is not None]
        rss = rss_mib()
    import pandas  # works again after the operator's scope
    print(json.dumps({"verdicts": verdicts, "loaded": loaded, "rss": rss, "after": pandas.__name__}))
    """
)


def test_the_estimator_check_runs_without_pandas_or_pyarrow() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["loaded"] == []
    verdicts = found["verdicts"]
    assert [path for path, refusal in verdicts.items() if refusal is None] == [
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.pipeline.Pipeline",
        "xgboost.XGBClassifier",
        "lightgbm.LGBMRegressor",
    ]
    assert "not one of the boosters" in verdicts["xgboost.XGBRanker"]  # still judged, not skipped
    assert found["after"] == "pandas"
    print(f"RSS with every framework's estimator check loaded: {found['rss']:.0f} MiB")
