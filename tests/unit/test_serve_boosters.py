"""XGBoost and LightGBM models served by a real ``kubeloop serve`` over real sockets.

Given a booster trained by ``kubeloop.training`` behind its one-hot ColumnTransformer (text
columns ``plan`` and ``region``), when clients send v2 ``BYTES`` tensors or /predict feature
objects, then the answers are exactly the estimator's on the same DataFrame. Given a bare
booster on numbers (written as the trainer writes it: the booster natively inside model.skops),
when clients use v2 JSON, /predict and gRPC, then the answers equal the estimator's, the
server calls the booster's own predict on the batch, and requests, predictions and the drift
counters are counted as for any scikit-learn model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serve_fixtures import (
    RunningServer,
    StoredModel,
    metric_sum,
    serving,
    subscriptions,
    train_with_kubeloop,
    v2_request,
)
from sklearn.datasets import load_breast_cancer, load_diabetes

from kubeloop.drift.profile import build_profile
from kubeloop.training.artifacts import dump_model

TEXT = ["plan", "region"]
PIPELINES = {
    "xgboost": ("xgboost.XGBClassifier", {"n_estimators": 30, "max_depth": 3}),
    "lightgbm": ("lightgbm.LGBMClassifier", {"n_estimators": 30, "verbose": -1}),
}


def store_booster(
    directory: Path, estimator: Any, features: np.ndarray, target: np.ndarray,
    names: list[str], classification: bool,
) -> StoredModel:  # fmt: skip
    """Fit and write model.skops (with the native booster), model.sha256 and profile.json."""
    directory.mkdir(parents=True, exist_ok=True)
    estimator.fit(features, target)
    payload = dump_model(estimator, names)
    (directory / "model.skops").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    (directory / "model.sha256").write_text(digest)
    profile = build_profile(
        {name: features[:, i] for i, name in enumerate(names)},
        prediction=estimator.predict(features),
        prediction_kind="categorical" if classification else "numerical",
    )
    (directory / "profile.json").write_bytes(profile.to_json_bytes())
    return StoredModel(directory, digest, estimator, features, names, target)


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def churn(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[StoredModel, RunningServer]
]:  # fmt: skip
    estimator, params = PIPELINES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = train_with_kubeloop(root, "churn", estimator, params)
    with serving(model, root / "logs", "--model-name", "churn") as server:
        yield model, server


@pytest.fixture(scope="module")
def cancer_xgb(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StoredModel, RunningServer]]:
    import xgboost

    data = load_breast_cancer()
    root = tmp_path_factory.mktemp("cancer-xgb")
    model = store_booster(
        root / "run-1", xgboost.XGBClassifier(n_estimators=25, max_depth=3), data.data,
        data.target, [str(n).replace(" ", "_") for n in data.feature_names], classification=True,
    )  # fmt: skip
    with serving(model, root / "logs", "--model-name", "cancer") as server:
        yield model, server


@pytest.fixture(scope="module")
def diabetes_lgbm(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StoredModel, RunningServer]]:
    import lightgbm

    data = load_diabetes()
    root = tmp_path_factory.mktemp("diabetes-lgbm")
    model = store_booster(
        root / "run-1", lightgbm.LGBMRegressor(n_estimators=25, verbose=-1), data.data,
        data.target, [str(n) for n in data.feature_names], classification=False,
    )  # fmt: skip
    # Two workers: spawned processes that each load the model (pandas left out for numbers).
    with serving(model, root / "logs", "--model-name", "diabetes", workers=2) as server:
        yield model, server


def _value(value: Any) -> Any:
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def live_rows(model: StoredModel, rows: int, seed: int) -> Any:
    """Rows like the training data, with an unseen and a missing category mixed in."""
    rng = np.random.default_rng(seed)
    frame = subscriptions(rows, seed=seed).drop(columns="churned")[model.feature_names]
    frame = frame.astype({"plan": object, "region": object})
    frame.loc[rng.random(rows) < 0.1, "plan"] = "enterprise"
    frame.loc[rng.random(rows) < 0.05, "region"] = np.nan
    return frame


# -- Pipelines with text columns ----------------------------------------------------------


def test_v2_bytes_tensors_equal_the_pipelines_answers(
    churn: tuple[StoredModel, RunningServer],
) -> None:
    model, server = churn
    frame = live_rows(model, 80, seed=3)
    inputs = [
        {"name": name, "shape": [len(frame)], "datatype": "BYTES" if name in TEXT else "FP64",
         "data": [_value(v) for v in frame[name].astype(object).tolist()]}
        for name in frame.columns
    ]  # fmt: skip
    body = {"inputs": inputs, "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}
    response = httpx.post(server.url + "/v2/models/churn/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert frame["plan"].eq("enterprise").any() and frame["region"].isna().any()
    np.testing.assert_array_equal(outputs["predict"]["data"], model.estimator.predict(frame))
    np.testing.assert_array_equal(
        np.reshape(outputs["predict_proba"]["data"], (-1, 2)), model.estimator.predict_proba(frame)
    )
    assert "features taken as text: plan, region" in server.log()


def test_predict_feature_objects_equal_the_pipelines_answers(
    churn: tuple[StoredModel, RunningServer],
) -> None:
    model, server = churn
    frame = live_rows(model, 40, seed=4)
    instances = [
        {name: _value(value) for name, value in row.items()}
        for row in frame.astype(object).to_dict(orient="records")
    ]
    response = httpx.post(
        server.url + "/predict", json={"instances": instances, "probabilities": True}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == model.estimator.predict(frame).tolist()
    np.testing.assert_array_equal(
        response.json()["probabilities"], model.estimator.predict_proba(frame)
    )


# -- bare boosters on numbers ---------------------------------------------------------------


def test_xgboost_v2_json_and_grpc_with_metrics_and_drift_counters(
    cancer_xgb: tuple[StoredModel, RunningServer],
) -> None:
    import tritonclient.grpc as triton

    model, server = cancer_xgb
    before = server.metrics()
    rows = model.features[::5]
    body = v2_request(rows, outputs=[{"name": "predict"}, {"name": "predict_proba"}])
    response = httpx.post(server.url + "/v2/models/cancer/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    np.testing.assert_array_equal(outputs["predict"]["data"], model.estimator.predict(rows))
    np.testing.assert_array_equal(
        np.reshape(outputs["predict_proba"]["data"], (-1, 2)), model.estimator.predict_proba(rows)
    )

    client = triton.InferenceServerClient(url=server.grpc_address)
    grpc_rows = model.features[:30]
    tensor = triton.InferInput("input-0", list(grpc_rows.shape), "FP64")
    tensor.set_data_from_numpy(grpc_rows)
    result = client.infer("cancer", [tensor], outputs=[triton.InferRequestedOutput("predict")])
    np.testing.assert_array_equal(result.as_numpy("predict"), model.estimator.predict(grpc_rows))

    after = server.metrics()

    def grew(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    total = rows.shape[0] + grpc_rows.shape[0]
    assert grew("kubeloop_serve_predictions_total") == total
    assert grew("kubeloop_serve_requests_total", endpoint="grpc_infer", code="200") == 1
    assert grew("kubeloop_serve_feature_bin_total") == total * (30 + 1)  # features + prediction


def test_lightgbm_regressor_over_v2_and_predict(
    diabetes_lgbm: tuple[StoredModel, RunningServer],
) -> None:
    model, server = diabetes_lgbm
    rows = model.features[:50]
    response = httpx.post(
        server.url + "/v2/models/diabetes/infer", json=v2_request(rows), timeout=30
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        response.json()["outputs"][0]["data"], model.estimator.predict(rows)
    )
    instances = [dict(zip(model.feature_names, row.tolist(), strict=True)) for row in rows[:10]]
    response = httpx.post(server.url + "/predict", json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        response.json()["predictions"], model.estimator.predict(rows[:10])
    )


def test_concurrent_requests_are_batched_into_one_booster_call(
    cancer_xgb: tuple[StoredModel, RunningServer],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    model, server = cancer_xgb
    rows = model.features[:64]
    before = metric_sum(server.metrics(), "kubeloop_serve_batch_size_count")

    def one(i: int) -> list[int]:
        answer = httpx.post(
            server.url + "/v2/models/cancer/infer", json=v2_request(rows[i : i + 1]), timeout=30
        )
        assert answer.status_code == 200, answer.text
        data: list[int] = answer.json()["outputs"][0]["data"]
        return data

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(64)))
    assert [a[0] for a in answers] == model.estimator.predict(rows).tolist()
    batches = metric_sum(server.metrics(), "kubeloop_serve_batch_size_count") - before
    assert 1 <= batches <= 64


def test_a_scikit_learn_champion_mirrors_to_a_booster_challenger_in_shadow(
    churn: tuple[StoredModel, RunningServer], tmp_path: Path
) -> None:
    import time

    challenger, challenger_server = churn
    champion = train_with_kubeloop(
        tmp_path / "champion", "churn", "sklearn.linear_model.LogisticRegression",
        {"max_iter": 500},
    )  # fmt: skip
    frame = live_rows(challenger, 15, seed=6)
    with serving(
        champion, tmp_path / "logs", "--model-name", "churn",
        "--shadow-url", challenger_server.url + "/v2/models/churn/infer", "--shadow-percent", "100",
    ) as primary:  # fmt: skip
        for i in range(0, len(frame), 3):
            instances = [
                {name: _value(value) for name, value in row.items()}
                for row in frame.iloc[i : i + 3].astype(object).to_dict(orient="records")
            ]
            answer = httpx.post(primary.url + "/predict", json={"instances": instances})
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = primary.metrics()
            if metric_sum(text, "kubeloop_serve_shadow_requests_total") == 5:
                break
            time.sleep(0.1)
    agree = int((champion.estimator.predict(frame) == challenger.estimator.predict(frame)).sum())
    assert metric_sum(text, "kubeloop_serve_shadow_requests_total") == 5
    assert metric_sum(text, "kubeloop_serve_shadow_rows_total", result="agree") == agree
    assert metric_sum(text, "kubeloop_serve_shadow_rows_total") == len(frame)
