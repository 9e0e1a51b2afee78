"""``kubeloop drift`` end to end on real files: a profile from build_profile, shifted CSV/Parquet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kubeloop.drift.profile import build_profile
from kubeloop.drift.result import (
    EXIT_CHECKED,
    EXIT_DRIFTED,
    EXIT_INPUT_INVALID,
    EXIT_USAGE,
    TERMINATION_MESSAGE_LIMIT,
    DriftCheckResult,
    parse_result,
    render_result,
)
from kubeloop.runtime.drift import main

ROWS = 3000


def _table(seed: int, shifted: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(40 + (8 if shifted else 0), 12, ROWS)
    age[::50] = np.nan
    return pd.DataFrame(
        {
            "age": age,
            "income": rng.lognormal(10, 0.5, ROWS),
            "tenure": rng.integers(0, 60, ROWS),
            "plan": rng.choice(
                ["basic", "plus", "pro"], ROWS, p=[0.2, 0.3, 0.5] if shifted else [0.6, 0.3, 0.1]
            ),
            "score": rng.uniform(0, 1, ROWS) ** (3 if shifted else 1),
            "customer_id": np.arange(ROWS),
        }
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    reference = _table(1, shifted=False)
    features = reference[["age", "income", "tenure", "plan"]]
    profile = build_profile(
        {name: features[name].to_numpy() for name in features.columns},
        categorical=["plan"],
        prediction=reference["score"].to_numpy(),
    )
    paths = {
        "profile": tmp_path / "profile.json",
        "reference": tmp_path / "reference.parquet",
        "shifted": tmp_path / "shifted.csv",
        "same": tmp_path / "same.csv",
        "log": tmp_path / "termination-log",
    }
    paths["profile"].write_bytes(profile.to_json_bytes())
    reference.to_parquet(paths["reference"])
    _table(2, shifted=True).to_csv(paths["shifted"], index=False)
    _table(3, shifted=False).to_csv(paths["same"], index=False)
    return paths


def test_binned_check_of_a_shifted_csv(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--data", str(files["shifted"]),
            "--profile", f"file://{files['profile']}",
            "--prediction-column", "score",
            "--termination-log", str(files["log"]),
        ]
    )  # fmt: skip
    assert code == EXIT_CHECKED
    message = json.loads(files["log"].read_bytes())
    assert message["status"] == "Checked"
    assert message["mode"] == "binned"
    assert message["driftedFeatures"] == ["age", "plan"]
    assert message["share"] == 0.5
    assert message["drifted"] is True  # 2 of 4 reaches the default driftShare 0.5
    assert message["predictionDrifted"] is True
    assert message["sampleSize"] == ROWS
    assert set(message["features"]) == {"age", "income", "tenure", "plan", "__prediction__"}
    test, score, p_value, drifted = message["features"]["age"]
    assert (test, p_value, drifted) == ("wasserstein", None, True)
    assert score > 0.5
    assert len(files["log"].read_bytes()) <= TERMINATION_MESSAGE_LIMIT
    assert parse_result(files["log"].read_bytes()).drifted_features == ["age", "plan"]
    table = capsys.readouterr().out
    assert "FEATURE" in table and "DRIFTED: 2/4 features drifted" in table


def test_binned_check_of_unshifted_data(files: dict[str, Path]) -> None:
    code = main(
        ["--data", str(files["same"]), "--profile", str(files["profile"]),
         "--termination-log", str(files["log"]), "--fail-on-drift"]
    )  # fmt: skip
    assert code == EXIT_CHECKED
    message = json.loads(files["log"].read_bytes())
    assert message["drifted"] is False
    assert message["driftedFeatures"] == []
    assert message["predictionDrifted"] is False


def test_exact_check_against_reference_data(files: dict[str, Path], tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    config = '{"numericalTest": "ks", "categoricalTest": "chi2", "extraScores": ["psi"]}'
    code = main(
        [
            "--data", str(files["shifted"]),
            "--reference", str(files["reference"]),
            "--profile", str(files["profile"]),
            "--config", config,
            "--report", str(report_path),
            "--termination-log", str(files["log"]),
            "--fail-on-drift",
        ]
    )  # fmt: skip
    assert code == EXIT_DRIFTED
    message = json.loads(files["log"].read_bytes())
    assert message["mode"] == "exact"
    assert message["driftedFeatures"] == ["age", "plan"]
    assert message["features"]["age"][0] == "ks"
    assert message["features"]["plan"][0] == "chi2"
    full = json.loads(report_path.read_text())
    assert all("psi" in f["scores"] for f in full["features"])


def test_config_file_in_yaml(files: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "drift.yaml"
    config.write_text("numericalTest: psi\ncategoricalTest: psi\ndriftShare: 0.75\n")
    code = main(
        ["--data", str(files["shifted"]), "--profile", str(files["profile"]),
         "--config", str(config), "--termination-log", str(files["log"])]
    )  # fmt: skip
    assert code == EXIT_CHECKED
    message = json.loads(files["log"].read_bytes())
    assert message["driftShare"] == 0.75
    assert message["drifted"] is False
    assert {row[0] for row in message["features"].values()} == {"psi"}


@pytest.mark.parametrize(
    ("args", "reason", "words"),
    [
        (["--data", "{dir}/nope.csv", "--profile", "{profile}"], "DataUnavailable", "no data at"),
        (["--data", "{shifted}", "--profile", "{dir}/nope.json"], "ProfileUnavailable", "cannot be read"),
        (["--data", "{shifted}", "--profile", "{shifted}"], "ProfileUnavailable", "not a kubeloop profile.json"),
        (["--data", "{shifted}", "--profile", "{profile}", "--features", "age,height"], "DataMismatch", "height not in the profile"),
        (["--data", "{shifted}", "--profile", "{profile}", "--config", '{"driftShare": 2}'], "ConfigInvalid", "driftShare"),
        # Per-feature limits nothing would read (the DriftPolicy's thresholds/alpha.features).
        (["--data", "{shifted}", "--profile", "{profile}", "--config", '{"features": {"agee": {"alpha": 0.1}}}'], "ConfigInvalid",
         "--config features.agee.alpha (a DriftPolicy's spec.alpha.features): 'agee' is not in the profile"),
        (["--data", "{shifted}", "--profile", "{profile}", "--config", '{"numericalTest": "psi", "features": {"age": {"alpha": 0.1}}}'],
         "ConfigInvalid", "'age' is numerical and its test is psi, which never reads an alpha"),
        (["--data", "{shifted}", "--profile", "{profile}", "--features", "age,income", "--config", '{"features": {"plan": {"threshold": 0.3}}}'],
         "ConfigInvalid", "'plan' is not checked (--features leaves it out)"),
        (["--data", "{shifted}", "--reference", "{reference}", "--features", "age,zip"], "DataMismatch", "--data lacks column(s) zip"),
    ],
)  # fmt: skip
def test_bad_input_fails_with_a_named_reason(
    files: dict[str, Path], args: list[str], reason: str, words: str
) -> None:
    values = {
        "dir": str(files["profile"].parent),
        "profile": str(files["profile"]),
        "shifted": str(files["shifted"]),
        "reference": str(files["reference"]),
    }
    argv = [
        values.get(a.strip("{}"), a) if a.startswith("{") and a.endswith("}") else a for a in args
    ]
    argv = [a.replace("{dir}", values["dir"]) for a in argv]
    argv += ["--termination-log", str(files["log"])]
    assert main(argv) == EXIT_INPUT_INVALID
    message = json.loads(files["log"].read_bytes())
    assert message["status"] == "Failed"
    assert message["reason"] == reason
    assert words in message["message"]


def test_usage_errors(files: dict[str, Path]) -> None:
    assert main(["--data", str(files["shifted"])]) == EXIT_USAGE
    assert main(["--profile", str(files["profile"])]) == EXIT_USAGE


def test_long_results_are_trimmed_to_the_termination_limit() -> None:
    features = {f"feature_{i:04d}": ("psi", 0.123456, None, i % 3 == 0) for i in range(400)}
    drifted = [name for name, row in features.items() if row[3]]
    result = DriftCheckResult(
        status="Checked", drifted=False, share=0.33, drifted_features=drifted, features=features
    )
    rendered = render_result(result)
    assert len(rendered) <= TERMINATION_MESSAGE_LIMIT
    parsed = parse_result(rendered)
    assert parsed.trimmed
    assert parsed.share == 0.33 and parsed.status == "Checked"
    assert parsed.drifted_features == drifted[: len(parsed.drifted_features)]


def test_the_kubeloop_command_routes_to_drift(files: dict[str, Path]) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", "from kubeloop.cli import main; main()", "drift",
         "--data", str(files["shifted"]), "--profile", str(files["profile"]),
         "--termination-log", str(files["log"])],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "DRIFTED" in completed.stdout
    assert parse_result(files["log"].read_bytes()).drifted_features == ["age", "plan"]
