"""What a `kubeloop serve` process imports: only what its model needs.

Given real models (bare estimators, pipelines, forests, a regressor, one fitted on a
DataFrame, two trained by ``kubeloop.training`` with its one-hot encoder: on text columns and
on numbers declared categorical), when a real server process has started and answered a
request, then the modules installed for others (pytest, pyarrow, rich, charset_normalizer)
were never imported, pandas only for the models that take DataFrames, fsspec not for a
local file, and the answers are the estimator's. The pandas decision is read from the skops
file before scikit-learn is imported, and spawned workers take the same decision.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from serve_fixtures import (
    StoredModel,
    free_port,
    serving,
    store_model,
    subscriptions,
    train_models,
    train_with_kubeloop,
)
from sklearn.linear_model import LogisticRegression

from kubeloop.serving.inputs import NEVER_SERVED_MODULES

WATCHED = sorted([*NEVER_SERVED_MODULES, "pandas", "fsspec", "sklearn"])
# Runs the real `kubeloop serve` main() in this process; a thread waits until it is ready,
# sends one /predict request, records the answer and which watched modules were imported,
# then stops the server with SIGTERM (its normal, graceful shutdown).
WATCHER = """
import json, os, signal, sys, threading, time, urllib.request
url, body, out = sys.argv.pop(1), sys.argv.pop(1).encode(), sys.argv.pop(1)
watched = sys.argv.pop(1).split(",")

def watch():
    while True:
        try:
            urllib.request.urlopen(url + "/v2/health/ready", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    request = urllib.request.Request(
        url + "/predict", data=body, headers={"content-type": "application/json"}
    )
    answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    loaded = sorted(m for m in watched if m in sys.modules)
    with open(out, "w") as handle:
        json.dump({"predictions": answer["predictions"], "loaded": loaded}, handle)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
from kubeloop.cli import main
main()
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StoredModel]:
    root = tmp_path_factory.mktemp("models")
    trained = train_models(root)
    table = subscriptions(400, seed=2)
    trained["dataframe"] = store_model(
        root / "dataframe" / "run-1",
        LogisticRegression(max_iter=1000),
        table[["usage", "seats"]],
        table["churned"].to_numpy(),
        ["usage", "seats"],
        classification=True,
    )
    trained["text"] = train_with_kubeloop(
        root / "text", "churn", "sklearn.linear_model.LogisticRegression", {"max_iter": 1000}
    )
    # Numbers declared categorical: a by-name ColumnTransformer, so a DataFrame, but no text.
    trained["declared"] = train_with_kubeloop(
        root / "declared", "seats", "sklearn.ensemble.RandomForestClassifier",
        {"n_estimators": 10}, features=["usage", "seats"], categorical=["seats"],
    )  # fmt: skip
    return trained


def instances(model: StoredModel) -> tuple[list[Any], Any]:
    """A /predict body's instances for ``model`` and the estimator's answer for them."""
    if model.frame is not None:
        frame = model.frame.iloc[:6]
        rows = [
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict(orient="records")
        ]
        return rows, model.estimator.predict(frame)
    if model.feature_names == ["usage", "seats"]:  # fitted on a DataFrame: send names
        rows = [dict(zip(model.feature_names, r, strict=True)) for r in model.features[:6].tolist()]
        return rows, model.estimator.predict(pd.DataFrame(rows))
    return model.features[:6].tolist(), model.estimator.predict(model.features[:6])


@pytest.mark.parametrize(
    ("name", "needs_pandas"),
    [
        ("forest", False),
        ("wine", False),
        ("diabetes", False),
        ("diabetes_ridge", False),
        ("dataframe", False),
        ("text", True),
        ("declared", True),
    ],
)
def test_a_server_imports_only_what_its_model_needs(
    models: dict[str, StoredModel], tmp_path: Path, name: str, needs_pandas: bool
) -> None:
    model = models[name]
    rows, expected = instances(model)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "watched.json"
    command = [
        sys.executable, "-c", WATCHER, url, orjson.dumps({"instances": rows}).decode(), str(out),
        ",".join(WATCHED),
        "serve", "--model-uri", str(model.directory), "--sha256", model.sha256,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    watched = orjson.loads(out.read_bytes())
    assert watched["predictions"] == expected.tolist()
    assert watched["loaded"] == (["pandas", "sklearn"] if needs_pandas else ["sklearn"])
    left_out = sorted(NEVER_SERVED_MODULES | (set() if needs_pandas else {"pandas"}))
    assert f"serving without {', '.join(left_out)} (" in result.stderr


def test_the_pandas_decision_imports_no_scikit_learn(models: dict[str, StoredModel]) -> None:
    path = models["text"].directory / "model.skops"
    script = (
        "import sys; from kubeloop.serving.inputs import needs_pandas; "
        f"print(needs_pandas(open({str(path)!r}, 'rb').read())); "
        "print(sorted(m for m in ('sklearn', 'skops', 'pandas', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["True", "[]"]


# -- spawned workers take the same decision --------------------------------------------------


def worker_pids(supervisor: int) -> list[int]:
    """The spawned worker processes of a ``kubeloop serve`` supervisor (from /proc)."""
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if parent == supervisor and b"spawn_main" in command:
            workers.append(int(entry.name))
    return sorted(workers)


def native_code_of(pid: int) -> set[str]:
    """Which watched packages have native code mapped into a process (from /proc/pid/maps)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    packages = ("pandas", "pyarrow", "charset_normalizer", "sklearn")
    return {name for name in packages if f"/{name}/" in maps}


@pytest.mark.parametrize(("name", "needs_pandas"), [("text", True), ("dataframe", False)])
def test_workers_take_the_same_decision(
    models: dict[str, StoredModel], tmp_path: Path, name: str, needs_pandas: bool
) -> None:
    model = models[name]
    rows, expected = instances(model)
    with serving(model, tmp_path / "logs", workers=2) as server:
        answers = [
            httpx.post(server.url + "/predict", json={"instances": rows}, timeout=30)
            for _ in range(6)
        ]
        workers = worker_pids(server.process.pid)
        native = [native_code_of(pid) for pid in workers]
        log = server.log()
    assert all(a.status_code == 200 for a in answers), answers[0].text
    assert {tuple(a.json()["predictions"]) for a in answers} == {tuple(expected.tolist())}
    assert len(workers) == 2
    assert native == [{"pandas", "sklearn"} if needs_pandas else {"sklearn"}] * 2
    left_out = sorted(NEVER_SERVED_MODULES | (set() if needs_pandas else {"pandas"}))
    assert log.count(f"serving without {', '.join(left_out)} (") == 3  # supervisor + workers
