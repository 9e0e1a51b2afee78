"""skops.io imported through ``kubeloop.trust.skops_io``: cheaper, and no trust decision moves.

Each side runs in a fresh interpreter (skops keeps its trust list from the first import):
one imports ``skops.io`` plainly, the other through ``skops_io()``. For real fitted models
(a forest, gradient boosting, a pipeline, a column transformer over text) both dump, ask
skops which types need trusting, load through Kubeloop's prefix rule and predict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

PROBE = r"""
import json, sys
mode = sys.argv[1]
if mode == "plain":
    import skops.io as sio
else:
    from kubeloop.trust.skops_io import skops_io
    sio = skops_io()
import numpy as np
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
import sklearn.utils

from kubeloop.training.artifacts import load_model_bytes

walked = "sklearn.gaussian_process" in sys.modules
x, y = load_breast_cancer(return_X_y=True)
frame = pd.DataFrame({"plan": np.where(x[:, 0] > 14, "gold", "basic"), "size": x[:, 1]})
models = {
    "forest": (RandomForestClassifier(n_estimators=5, random_state=0), x),
    "boosting": (HistGradientBoostingClassifier(max_iter=5), x),
    "pipeline": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), x),
    "text": (make_pipeline(make_column_transformer((OneHotEncoder(), ["plan"]),
                                                   remainder="passthrough"),
                           LogisticRegression(max_iter=500)), frame),
}
out = {"walked": walked, "discoveryRestored": len(sklearn.utils.all_estimators()) > 100,
       "models": {}}
for name, (model, features) in models.items():
    model.fit(features, y)
    payload = sio.dumps(model)
    loaded = load_model_bytes(payload, expected_sha256=None)
    out["models"][name] = {
        "untrusted": sorted(sio.get_untrusted_types(data=payload)),
        "samePredictions": bool(np.array_equal(loaded.predict(features), model.predict(features))),
    }
print(json.dumps(out))
"""


def _probe(mode: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def sides() -> dict[str, dict[str, Any]]:
    return {mode: _probe(mode) for mode in ("plain", "fast")}


def test_skops_io_skips_the_walk_through_every_sklearn_module(
    sides: dict[str, dict[str, Any]],
) -> None:
    # The plain import pulls in modules no model here uses; ours does not.
    assert sides["plain"]["walked"] is True
    assert sides["fast"]["walked"] is False
    # scikit-learn's own discovery works again once skops is imported.
    assert sides["fast"]["discoveryRestored"] is True


def test_every_model_loads_the_same_and_only_sklearn_types_move(
    sides: dict[str, dict[str, Any]],
) -> None:
    plain, fast = sides["plain"]["models"], sides["fast"]["models"]
    assert plain.keys() == fast.keys()
    for name in plain:
        assert plain[name]["samePredictions"] and fast[name]["samePredictions"], name
        # Nothing skops trusted by default becomes untrusted beyond scikit-learn's own
        # estimators, which Kubeloop's loaders trust by the "sklearn." prefix anyway.
        extra = set(fast[name]["untrusted"]) - set(plain[name]["untrusted"])
        assert all(t.startswith("sklearn.") for t in extra), (name, extra)
        assert set(plain[name]["untrusted"]) <= set(fast[name]["untrusted"]), name
    assert any(set(fast[n]["untrusted"]) - set(plain[n]["untrusted"]) for n in plain), (
        "the probe should include estimators that skops' default list covers"
    )
