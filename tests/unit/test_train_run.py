"""`kubeloop train` end to end on bundled datasets: artifacts, profile, gates, sweeps, exit codes."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from kubeloop.drift.profile import PREDICTION_FEATURE, Profile
from kubeloop.runtime.train import main
from kubeloop.training.artifacts import load_model
from kubeloop.training.data import load_table, make_synthetic
from kubeloop.training.evaluate import split_holdout
from kubeloop.training.result import parse_result
from kubeloop.training.spec import parse_spec
from kubeloop.training.trainer import TrainingRequest, run_training


@pytest.fixture(autouse=True)
def _one_thread_per_native_pool() -> Iterator[None]:
    # Two shared cores: OpenMP/BLAS pools spinning against other jobs make small fits crawl.
    with threadpool_limits(limits=1):
        yield



def _spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "cancer", "estimator": "sklearn.ensemble.RandomForestClassifier",
                  "params": {"n_estimators": 20, "random_state": 0}, "task": "classification"},
        "data": {"source": "sklearn://breast_cancer", "split": {"testFraction": 0.3, "seed": 11}},
        "evaluation": {"metric": "accuracy"},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


def _train(tmp_path: Path, spec: dict[str, Any], run: str, *extra: str,
           env: dict[str, str] | None = None) -> tuple[int, Any]:
    spec_file = tmp_path / f"{run}.json"
    spec_file.write_bytes(orjson.dumps(spec))
    termination = tmp_path / f"{run}.termination"
    code = main(
        ["--spec", str(spec_file), "--run-name", run, "--storage-uri", f"file://{tmp_path}/models",
         "--termination-log", str(termination), "--quiet", *extra],
        env=env or {},
    )
    return code, parse_result(termination.read_bytes())


def _run_dir(tmp_path: Path, model: str, run: str) -> Path:
    return tmp_path / "models" / model / run


def test_a_run_writes_a_complete_checksummed_record(tmp_path: Path) -> None:
    code, result = _train(tmp_path, _spec(evaluation={"threshold": 0.9}), "run-1")
    assert (code, result.status, result.exit_code) == (0, "Succeeded", 0)
    run_dir = _run_dir(tmp_path, "cancer", "run-1")
    assert sorted(os.listdir(run_dir)) == ["model.sha256", "model.skops", "profile.json", "report.json"]
    digest = hashlib.sha256((run_dir / "model.skops").read_bytes()).hexdigest()
    report = orjson.loads((run_dir / "report.json").read_bytes())
    assert report["artifacts"]["model"]["sha256"] == digest == result.sha256
    assert (run_dir / "model.sha256").read_text() == f"{digest}  model.skops\n"
    assert result.uri == f"file://{run_dir}/model.skops"
    assert result.metrics == report["evaluation"]["metrics"]
    assert set(result.metrics) == {"accuracy", "f1", "roc_auc", "log_loss"}
    assert report["data"]["rows"] == {"total": 569, "train": 398, "test": 171}
    assert report["data"]["targetClasses"] == [0, 1]
    assert report["data"]["fingerprint"] == result.data_fingerprint
    assert report["versions"]["scikit-learn"]
    assert {"load", "validate", "fingerprint", "fit", "evaluate", "profile", "serialise", "write"} <= set(report["timings"])
    assert [(g.name, g.passed) for g in result.gates] == [("threshold", True)]
    assert report["model"]["categoricalEncoding"] is None
    assert set(report["cpuTimings"]) >= {"load", "fit", "serialise", "process"}


def test_reloaded_model_predicts_like_the_trained_one(tmp_path: Path) -> None:
    spec = parse_spec(_spec())
    outcome = run_training(TrainingRequest(spec=spec, run_name="r", storage_uri=str(tmp_path)))
    assert outcome.result.status == "Succeeded"
    reloaded = load_model(outcome.result.uri or "", outcome.result.sha256)
    features = load_table("sklearn://breast_cancer").frame.drop(columns="target")
    np.testing.assert_array_equal(reloaded.predict(features), outcome.model.predict(features))
    np.testing.assert_array_equal(reloaded.predict_proba(features), outcome.model.predict_proba(features))


def _direct_counts(values: np.ndarray[Any, Any], edges: list[float]) -> list[int]:
    """Counts per bin (lo, hi] with open ends, written out without the profile's code."""
    bounds = [-np.inf, *edges, np.inf]
    return [int(np.sum((values > lo) & (values <= hi))) for lo, hi in itertools.pairwise(bounds)]


def test_profile_bins_reproduce_the_training_distribution(tmp_path: Path) -> None:
    frame = make_synthetic(rows=3000, features=3, categorical=2, seed=9)
    frame.loc[frame.index[:50], "x1"] = np.nan
    path = tmp_path / "synthetic.parquet"
    frame.to_parquet(path)
    spec = _spec(
        model={"name": "synth", "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
               "params": {"max_iter": 30, "random_state": 0}},
        data={"source": str(path), "target": "target", "categoricalFeatures": ["c0", "c1"]},
    )
    code, result = _train(tmp_path, spec, "run-p")
    assert code == 0, result.message
    run_dir = _run_dir(tmp_path, "synth", "run-p")
    profile = Profile.from_json_bytes((run_dir / "profile.json").read_bytes())

    holdout = split_holdout(load_table(str(path)).frame, "target", 0.3, 11, stratify=True)
    train = holdout.train
    assert profile.rows == len(train)
    for name in ("x0", "x1", "x2"):
        feature = profile.feature(name)
        values = train[name].to_numpy(dtype=float)
        assert feature.kind == "numerical"
        assert feature.counts == _direct_counts(values[~np.isnan(values)], feature.edges)
        assert feature.missing == int(np.isnan(values).sum())
        assert len(feature.counts) > 10  # quantile bins, not one lump
    for name in ("c0", "c1"):
        feature = profile.feature(name)
        observed = train[name].astype(str).value_counts()
        assert feature.kind == "categorical"
        assert dict(zip(feature.categories, feature.counts, strict=False)) == observed.to_dict()
        assert feature.counts[-1] == 0  # nothing in __other__ at training time
    # The prediction profile counts the model's predictions on the holdout.
    model = load_model(result.uri, result.sha256)
    predicted = pd.Series(model.predict(holdout.test.drop(columns="target"))).astype(str).value_counts()
    prediction = profile.feature(PREDICTION_FEATURE)
    assert prediction.kind == "categorical"
    assert dict(zip(prediction.categories, prediction.counts, strict=False)) == predicted.to_dict()


def test_regression_profiles_the_prediction_as_numbers(tmp_path: Path) -> None:
    spec = _spec(model={"name": "diabetes", "estimator": "sklearn.linear_model.Ridge", "params": {},
                        "task": "regression"},
                 data={"source": "sklearn://diabetes"}, evaluation={"metric": "rmse", "threshold": 80})
    code, result = _train(tmp_path, spec, "run-r")
    assert code == 0, result.message
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    profile = Profile.from_json_bytes((_run_dir(tmp_path, "diabetes", "run-r") / "profile.json").read_bytes())
    assert profile.feature(PREDICTION_FEATURE).kind == "numerical"
    assert sum(profile.feature(PREDICTION_FEATURE).counts) == 133  # ceil(442 * 0.3)


def test_validation_failure_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = _spec(validation={"minRows": 10_000, "ranges": {"mean radius": {"max": 20}}})
    code, result = _train(tmp_path, spec, "run-v")
    assert (code, result.status) == (2, "DataValidationFailed")
    assert {(f.rule, f.column) for f in result.failures} == {("min_rows", None), ("range", "mean radius")}
    assert "'mean radius'" in result.message
    assert not (tmp_path / "models").exists()


def test_disallowed_estimator_is_refused_without_importing_it(tmp_path: Path) -> None:
    spec = _spec(model={"estimator": "subprocess.Popen", "params": {"args": ["touch", str(tmp_path / "pwned")]}})
    code, result = _train(tmp_path, spec, "run-x")
    assert (code, result.status, result.reason) == (4, "TrainingFailed", "EstimatorNotAllowed")
    assert "subprocess.Popen" in result.message and "sklearn." in result.message
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "models").exists()


def test_the_allowlist_comes_from_flags_or_env(tmp_path: Path) -> None:
    spec = _spec(model={"estimator": "sklearn.dummy.DummyClassifier", "params": {}})
    code, result = _train(tmp_path, spec, "run-e", env={"KUBELOOP_ALLOWED_ESTIMATOR_PREFIXES": "xgboost.,lightgbm."})
    assert (code, result.reason) == (4, "EstimatorNotAllowed")
    code, result = _train(tmp_path, spec, "run-f", "--allowed-estimator-prefix", "sklearn.dummy")
    assert code == 0, result.message


def _champion(tmp_path: Path, estimator: str, params: dict[str, Any]) -> tuple[str, str]:
    code, result = _train(tmp_path, _spec(model={"estimator": estimator, "params": params}), "champion")
    assert code == 0, result.message
    return result.uri, result.sha256


def test_a_worse_challenger_is_refused_by_the_champion_gate(tmp_path: Path) -> None:
    uri, sha = _champion(tmp_path, "sklearn.ensemble.RandomForestClassifier", {"n_estimators": 30, "random_state": 0})
    worse = _spec(model={"estimator": "sklearn.dummy.DummyClassifier", "params": {"strategy": "most_frequent"}},
                  evaluation={"compareTo": "champion", "minImprovement": 0.0})
    code, result = _train(tmp_path, worse, "challenger", "--champion-uri", uri, "--champion-sha256", sha)
    assert (code, result.status) == (3, "GateFailed")
    assert [g.name for g in result.failed_gates] == ["minImprovement"]
    assert result.metrics["accuracy"] < result.champion_metrics["accuracy"]  # type: ignore[index]
    assert "minImprovement" in result.message
    # The run is a record: the artifact and report are written, marked GateFailed.
    report = orjson.loads((_run_dir(tmp_path, "cancer", "challenger") / "report.json").read_bytes())
    assert report["status"] == "GateFailed"
    assert report["evaluation"]["champion"]["metrics"] == result.champion_metrics


def test_a_better_challenger_passes_and_both_are_scored_on_the_same_holdout(tmp_path: Path) -> None:
    uri, sha = _champion(tmp_path, "sklearn.dummy.DummyClassifier", {"strategy": "most_frequent"})
    better = _spec(evaluation={"compareTo": "champion", "minImprovement": 0.05, "threshold": 0.9})
    code, result = _train(tmp_path, better, "challenger", "--champion-uri", uri, "--champion-sha256", sha)
    assert (code, result.status) == (0, "Succeeded"), result.message
    assert all(g.passed for g in result.gates)
    # Same holdout: a majority-class model's accuracy is the holdout's majority share.
    holdout = split_holdout(load_table("sklearn://breast_cancer").frame, "target", 0.3, 11, stratify=True)
    majority = holdout.test["target"].value_counts(normalize=True).max()
    assert result.champion_metrics["accuracy"] == pytest.approx(majority)  # type: ignore[index]


def test_a_champion_with_the_wrong_checksum_is_not_loaded(tmp_path: Path) -> None:
    uri, sha = _champion(tmp_path, "sklearn.dummy.DummyClassifier", {})
    spec = _spec(evaluation={"compareTo": "champion"})
    code, result = _train(tmp_path, spec, "challenger", "--champion-uri", uri, "--champion-sha256", "0" * 64)
    assert (code, result.reason) == (4, "ChampionUnavailable")
    assert sha in result.message


def test_the_threshold_gate_is_named_when_it_fails(tmp_path: Path) -> None:
    spec = _spec(model={"estimator": "sklearn.dummy.DummyClassifier", "params": {}},
                 evaluation={"metric": "roc_auc", "threshold": 0.8})
    code, result = _train(tmp_path, spec, "run-t")
    assert (code, result.status) == (3, "GateFailed")
    assert [(g.name, g.metric, g.required) for g in result.failed_gates] == [("threshold", "roc_auc", 0.8)]


def test_sweep_trial_mode_trains_the_indexed_combination(tmp_path: Path) -> None:
    grid = {"n_estimators": [5, 10], "max_depth": [2, 4, None]}
    spec = _spec(sweep={"grid": grid, "parallelism": 2})
    expected = [dict(zip(["max_depth", "n_estimators"], combo, strict=True))
                for combo in itertools.product(grid["max_depth"], grid["n_estimators"])]
    for index in (0, 3, 5):
        code, result = _train(tmp_path, spec, "sweep", env={"JOB_COMPLETION_INDEX": str(index)})
        assert code == 0, result.message
        assert result.trial == index
        assert result.params == {"random_state": 0, **expected[index]}
        trial_dir = _run_dir(tmp_path, "cancer", "sweep") / "trials" / str(index)
        model = load_model(str(trial_dir), result.sha256)
        assert (model.max_depth, model.n_estimators) == (expected[index]["max_depth"], expected[index]["n_estimators"])
        report = orjson.loads((trial_dir / "report.json").read_bytes())
        assert report["trial"] == {"index": index, "of": 6, "params": expected[index]}
    code, result = _train(tmp_path, spec, "sweep", env={"JOB_COMPLETION_INDEX": "6"})
    assert (code, result.reason) == (4, "SpecInvalid")
    assert "outside" in result.message


def test_text_categories_are_encoded_and_served_raw(tmp_path: Path) -> None:
    frame = make_synthetic(rows=1500, features=2, categorical=1, seed=3)
    frame["c0"] = frame["c0"].astype(str)
    frame.to_csv(tmp_path / "data.csv", index=False)
    spec = _spec(model={"name": "cat", "estimator": "sklearn.linear_model.LogisticRegression", "params": {}},
                 data={"source": f"file://{tmp_path}/data.csv", "target": "target"})
    code, result = _train(tmp_path, spec, "run-c")
    assert code == 0, result.message
    report = orjson.loads((_run_dir(tmp_path, "cat", "run-c") / "report.json").read_bytes())
    assert report["model"]["categoricalEncoding"] == "one-hot, added by the trainer"
    assert report["data"]["categoricalFeatures"] == ["c0"]
    model = load_model(result.uri, result.sha256)
    raw = pd.read_csv(tmp_path / "data.csv").drop(columns="target")
    assert set(model.predict(raw.head(50))) <= {0, 1}
    unseen = raw.head(3).assign(c0="zzz")  # an unseen category must not break serving
    assert len(model.predict(unseen)) == 3


def test_validate_only_trains_and_writes_nothing(tmp_path: Path) -> None:
    code, result = _train(tmp_path, _spec(), "run-d", "--validate-only")
    assert (code, result.reason) == (0, "ValidatedOnly")
    assert result.data_fingerprint and not result.uri
    assert not (tmp_path / "models").exists()


def test_the_real_command_line(tmp_path: Path) -> None:
    kubeloop = shutil.which("kubeloop") or pytest.skip("the kubeloop console script is not installed")
    assert kubeloop is not None
    env = {**os.environ, "KUBELOOP_TRAININGRUN_SPEC": orjson.dumps(_spec()).decode(),
           "KUBELOOP_RUN_NAME": "cli-run"}
    env.pop("JOB_COMPLETION_INDEX", None)
    termination = tmp_path / "termination-log"
    ok = subprocess.run(
        [kubeloop, "train", "--storage-uri", str(tmp_path / "models"), "--termination-log", str(termination)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Succeeded" in ok.stdout and "sha256" in ok.stdout
    result = parse_result(termination.read_bytes())
    assert {p.name for p in _run_dir(tmp_path, "cancer", "cli-run").iterdir()} == {
        "model.skops", "model.sha256", "profile.json", "report.json"}
    assert result.uri and result.uri.endswith("cli-run/model.skops")
    # The process ends with gc frozen (kubeloop.runtime.train._prepare_process): teardown
    # must still be clean, with nothing left to complain about on stderr.
    assert "Exception ignored" not in ok.stderr and "Traceback" not in ok.stderr

    env["KUBELOOP_TRAININGRUN_SPEC"] = orjson.dumps(_spec(validation={"minRows": 5000})).decode()
    invalid = subprocess.run(
        [kubeloop, "train", "--storage-uri", str(tmp_path / "other"), "--termination-log", str(termination)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert invalid.returncode == 2, invalid.stderr
    assert parse_result(termination.read_bytes()).status == "DataValidationFailed"
    assert "min_rows" in invalid.stdout

    usage_cli = subprocess.run([kubeloop, "train", "--no-such-flag"], env=env, capture_output=True,
                               text=True, timeout=120)
    assert usage_cli.returncode == 64, usage_cli.stderr
    assert "--no-such-flag" in usage_cli.stderr


def test_same_spec_and_data_give_the_same_model(tmp_path: Path) -> None:
    # No random_state in params: the trainer seeds it from data.split.seed, so a run repeats.
    # (The skops bytes themselves differ between processes: its zip names entries by object id.)
    spec = _spec(model={"estimator": "sklearn.ensemble.ExtraTreesClassifier", "params": {"n_estimators": 5}})
    first_code, first = _train(tmp_path, spec, "again-1")
    second_code, second = _train(tmp_path, spec, "again-2")
    assert first_code == second_code == 0
    assert first.metrics == second.metrics
    assert first.data_fingerprint == second.data_fingerprint
    report = orjson.loads((_run_dir(tmp_path, "cancer", "again-1") / "report.json").read_bytes())
    assert report["model"]["seededFromSplit"] == ["random_state"]
    one, other = load_model(first.uri, first.sha256), load_model(second.uri, second.sha256)
    assert one.random_state == other.random_state == 11
    features = load_table("sklearn://breast_cancer").frame.drop(columns="target")
    np.testing.assert_array_equal(one.predict_proba(features), other.predict_proba(features))


def test_a_fit_error_exits_4_and_names_the_estimator(tmp_path: Path) -> None:
    spec = _spec(model={"estimator": "sklearn.linear_model.LogisticRegression", "params": {"solver": "no-such-solver"}})
    code, result = _train(tmp_path, spec, "run-fit")
    assert (code, result.status, result.reason) == (4, "TrainingFailed", "FitFailed")
    assert "LogisticRegression" in result.message and "solver" in result.message
    assert not (tmp_path / "models").exists()


def test_data_or_a_champion_out_of_reach_exits_5_to_be_retried(tmp_path: Path) -> None:
    code, result = _train(tmp_path, _spec(data={"source": f"file://{tmp_path}/not-yet.csv"}), "run-d")
    assert (code, result.status, result.reason) == (5, "TrainingFailed", "DataUnavailable")
    spec = _spec(evaluation={"compareTo": "champion"})
    code, result = _train(tmp_path, spec, "run-c", "--champion-uri", f"file://{tmp_path}/gone/model.skops",
                          "--champion-sha256", "0" * 64)
    assert (code, result.reason) == (5, "ChampionUnavailable")


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("sklearn://no_such_dataset", "unknown bundled dataset sklearn://no_such_dataset"),
        ("sklearn://synthetic?rows=100&colour=red", "unknown synthetic parameter 'colour'"),
        ("sklearn://synthetic?rows=many", "synthetic parameter rows='many' is not a valid value"),
        ("file:///data/table.bin", "set spec.data.format to csv or parquet"),
        ("pvc://just-a-claim", "a pvc:// URI needs a claim and a path"),
    ],
)
def test_data_named_wrongly_in_the_spec_exits_4_final_not_5(tmp_path: Path, source: str, says: str) -> None:
    # A retry cannot make an unknown dataset exist: exit 4 fails the Job at once (its
    # podFailurePolicy), where exit 5 would spend every backoffLimit retry on the same error.
    code, result = _train(tmp_path, _spec(data={"source": source}), "run-spec-data")
    assert (code, result.status, result.reason) == (4, "TrainingFailed", "SpecInvalid")
    assert says in result.message


def test_unwritable_storage_exits_5_to_be_retried_and_leaves_no_completion_marker(tmp_path: Path) -> None:
    blocker = tmp_path / "models"
    blocker.write_text("a file where the storage directory should be")
    code, result = _train(tmp_path, _spec(), "run-w")
    assert (code, result.reason) == (5, "StorageFailed")
    assert str(blocker) in result.message
    assert result.metrics  # the evaluation happened and is still reported
