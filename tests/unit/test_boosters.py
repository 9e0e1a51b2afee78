"""XGBoost and LightGBM: trained by ``kubeloop train``, stored natively inside model.skops.

Given each booster wrapper trained on a bundled dataset (and as a Pipeline's last step after
scikit-learn's one-hot encoding), when the trainer's artifact is written and read back through
the loader every reader uses, then the predictions equal the in-memory model's, the booster is
in its framework's own format (the library loads the entry by itself), no entry is a pickle,
and a champion of another framework is scored on the same holdout.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import orjson
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

from kubeloop.serving.model import ModelArtifact, load_model
from kubeloop.training import artifacts
from kubeloop.training.spec import parse_spec
from kubeloop.training.trainer import TrainingRequest, run_training
from kubeloop.trust import boosters, estimators, model_types


def _iris() -> tuple[Any, Any]:
    return load_iris(return_X_y=True)


def _cancer() -> tuple[Any, Any]:
    data = load_breast_cancer(as_frame=True)
    return data.data, data.target.to_numpy()


def _diabetes() -> tuple[Any, Any]:
    return load_diabetes(return_X_y=True)


def _labelled_iris() -> tuple[Any, Any]:
    features, target = load_iris(return_X_y=True)
    return features, np.array(["setosa", "versicolor", "virginica"])[target]


CASES = {
    "xgboost binary (DataFrame)": (lambda: xgboost.XGBClassifier(n_estimators=8), _cancer),
    "xgboost multiclass": (lambda: xgboost.XGBClassifier(n_estimators=8), _iris),
    "xgboost regressor": (lambda: xgboost.XGBRegressor(n_estimators=8), _diabetes),
    "lightgbm binary (DataFrame)": (
        lambda: lightgbm.LGBMClassifier(n_estimators=8, verbose=-1), _cancer),
    "lightgbm text labels": (
        lambda: lightgbm.LGBMClassifier(n_estimators=8, verbose=-1), _labelled_iris),
    "lightgbm regressor": (lambda: lightgbm.LGBMRegressor(n_estimators=8, verbose=-1), _diabetes),
}  # fmt: skip


def _entries(payload: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reloaded_booster_predicts_exactly_like_the_fitted_one(case: str) -> None:
    make, dataset = CASES[case]
    features, target = dataset()
    fitted = make().fit(features, target)
    payload = artifacts.dump_model(fitted)

    entries = _entries(payload)
    manifest = orjson.loads(entries[boosters.MANIFEST_ENTRY])
    [record] = manifest["boosters"]
    assert record["path"] == [] and record["type"] == boosters.type_name(fitted)
    native = entries[record["entry"]]
    assert not any(entry[:1] == b"\x80" for entry in entries.values())  # nothing pickled
    # The skops part holds the wrapper only; the booster is the library's own format.
    if isinstance(fitted, xgboost.XGBModel):
        assert record["entry"].endswith(".ubj") and native[:1] == b"{"
        alone = xgboost.Booster()
        alone.load_model(bytearray(native))
        assert alone.save_raw("ubj") == fitted.get_booster().save_raw("ubj")
    else:
        assert record["entry"].endswith(".txt") and native.startswith(b"tree\n")
        alone = lightgbm.Booster(model_str=native.decode())
        np.testing.assert_array_equal(alone.predict(features), fitted.booster_.predict(features))

    loaded = artifacts.load_model_bytes(payload, artifacts.sha256_hex(payload))
    assert type(loaded) is type(fitted) and loaded is not fitted
    np.testing.assert_array_equal(loaded.predict(features), fitted.predict(features))
    if hasattr(fitted, "predict_proba"):
        np.testing.assert_array_equal(
            loaded.predict_proba(features), fitted.predict_proba(features)
        )
    # The fitted model was not changed by writing it.
    assert "_Booster" in vars(fitted)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_server_calls_the_booster_directly_with_the_same_answers(case: str) -> None:
    make, dataset = CASES[case]
    features, target = dataset()
    fitted = make().fit(features, target)
    payload = artifacts.dump_model(fitted)
    served = load_model(
        ModelArtifact("file:///run/model.skops", payload, artifacts.sha256_hex(payload), None),
        "booster",
    )
    assert served.fast is not None, "the booster's own predict is the served path"
    rows = np.asarray(features, dtype=np.float64)
    np.testing.assert_array_equal(served.predict(rows), fitted.predict(features))
    if served.classes is not None:
        np.testing.assert_array_equal(served.predict_proba(rows), fitted.predict_proba(features))
    assert served.estimator.n_jobs == 1  # parallelism is the server's worker processes


def test_a_pipeline_keeps_scikit_learn_parts_in_skops_and_the_booster_native() -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, target = _iris()
    pipeline = make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=5))
    pipeline.fit(features, target)
    payload = artifacts.dump_model(pipeline)
    manifest = orjson.loads(_entries(payload)[boosters.MANIFEST_ENTRY])
    assert manifest["boosters"] == [
        {"path": [1], "type": "xgboost.sklearn.XGBClassifier", "entry": "kubeloop/booster-0.ubj"}
    ]
    loaded = model_types.load_trusted(payload)
    np.testing.assert_array_equal(loaded.predict_proba(features), pipeline.predict_proba(features))


def test_a_plain_scikit_learn_file_has_no_booster_entries() -> None:
    from sklearn.linear_model import LogisticRegression

    features, target = _iris()
    payload = artifacts.dump_model(LogisticRegression(max_iter=500).fit(features, target))
    assert not [n for n in _entries(payload) if n.startswith("kubeloop/")]


# -- which classes a spec may name and a file may hold ------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed", "why"),
    [
        ("xgboost.XGBClassifier", True, ""),
        ("xgboost.XGBRegressor", True, ""),
        ("lightgbm.LGBMClassifier", True, ""),
        ("lightgbm.LGBMRegressor", True, ""),
        ("xgboost.XGBRanker", False, "not one of the boosters"),
        ("xgboost.XGBRFClassifier", False, "not one of the boosters"),
        ("lightgbm.LGBMRanker", False, "not one of the boosters"),
        ("xgboost.Booster", False, "not a scikit-learn estimator"),
        ("lightgbm.train", False, "not a class"),
    ],
)
def test_default_estimator_policy_allows_exactly_the_four_booster_wrappers(
    path: str, allowed: bool, why: str
) -> None:
    if allowed:
        assert estimators.resolve_class(path, estimators.DEFAULT_ALLOWED_PREFIXES)
        return
    with pytest.raises(estimators.EstimatorNotAllowedError, match=why):
        estimators.resolve_class(path, estimators.DEFAULT_ALLOWED_PREFIXES)


@pytest.mark.parametrize(
    ("name", "trusted"),
    [
        ("xgboost.sklearn.XGBClassifier", True),
        ("xgboost.sklearn.XGBRegressor", True),
        ("lightgbm.sklearn.LGBMClassifier", True),
        ("lightgbm.sklearn.LGBMRegressor", True),
        ("collections.OrderedDict", True),
        ("xgboost.core.Booster", False),
        ("xgboost.sklearn.XGBRanker", False),
        ("lightgbm.basic.Booster", False),
        ("xgboost.XGBClassifier", False),  # a re-export, not where the class is defined
    ],
)
def test_file_types_trust_the_booster_wrappers_by_exact_name_only(name: str, trusted: bool) -> None:
    # Even when a trainer passes its estimator prefixes, which include the booster packages.
    for packages in (model_types.DEFAULT_ESTIMATOR_PACKAGES, ("sklearn", "xgboost", "lightgbm")):
        assert model_types.decide_type(name, packages).trusted is trusted, packages


# -- kubeloop train ------------------------------------------------------------------------


def _train(
    root: Path, run: str, estimator: str, params: dict[str, Any], champion: Any = None
) -> Any:
    spec = parse_spec(
        {
            "model": {"name": "cancer", "estimator": estimator, "params": params,
                      "task": "classification"},
            "data": {"source": "sklearn://breast_cancer", "split": {"testFraction": 0.3, "seed": 5}},
            "evaluation": {"metric": "roc_auc"},
        }
    )  # fmt: skip
    return run_training(
        TrainingRequest(
            spec=spec,
            run_name=run,
            storage_uri=f"file://{root}/models",
            champion_uri=None if champion is None else champion.uri,
            champion_sha256=None if champion is None else champion.sha256,
        )
    )


def test_trainer_trains_xgboost_and_scores_a_scikit_learn_champion_on_the_same_holdout(
    tmp_path: Path,
) -> None:
    champion = _train(tmp_path, "forest", "sklearn.ensemble.RandomForestClassifier",
                      {"n_estimators": 20}).result  # fmt: skip
    assert champion.status == "Succeeded", champion.message
    challenger = _train(tmp_path, "xgb", "xgboost.XGBClassifier", {"n_estimators": 20},
                        champion).result  # fmt: skip
    assert challenger.status == "Succeeded", challenger.message
    assert challenger.champion_metrics is not None
    # The champion's metric on this run's holdout is the champion run's own test metric: same
    # split, same rows, so the comparison is fair.
    assert challenger.champion_metrics["roc_auc"] == pytest.approx(champion.metrics["roc_auc"])
    assert challenger.metrics["roc_auc"] > 0.95
    loaded = artifacts.load_model(challenger.uri, challenger.sha256)
    assert isinstance(loaded, xgboost.XGBClassifier)

    # And the other way round: a scikit-learn challenger against a LightGBM champion.
    lgbm = _train(tmp_path, "lgbm", "lightgbm.LGBMClassifier",
                  {"n_estimators": 20, "verbose": -1}).result  # fmt: skip
    assert lgbm.status == "Succeeded", lgbm.message
    # LightGBM renames "mean radius" to "mean_radius"; the artifact keeps the data's names,
    # which the server and the champion scoring use.
    stored = artifacts.load_model(lgbm.uri, lgbm.sha256)
    assert stored.feature_names_in_[0] == "mean_radius"
    assert boosters.feature_names_in(stored) == list(_cancer()[0].columns)
    tree = _train(tmp_path, "tree", "sklearn.tree.DecisionTreeClassifier", {"max_depth": 3},
                  lgbm).result  # fmt: skip
    assert tree.status == "Succeeded", tree.message
    assert tree.champion_metrics is not None
    assert tree.champion_metrics["roc_auc"] == pytest.approx(lgbm.metrics["roc_auc"])


def test_trainer_refuses_a_booster_class_it_cannot_store(tmp_path: Path) -> None:
    outcome = _train(tmp_path, "ranker", "xgboost.XGBRanker", {})
    assert outcome.result.status == "TrainingFailed"
    assert "xgboost.sklearn.XGBRanker is not one of the boosters" in outcome.result.message
