"""Models trained on text columns, served over a real socket.

Given a table with numeric and text columns (``plan``, ``region``) trained by
``kubeloop.training`` (which puts its one-hot ColumnTransformer in front of the estimator),
when clients send text as v2 ``BYTES`` tensors, as /predict feature-name objects or as lists
of mixed values, then the served answers are exactly ``estimator.predict(DataFrame)``, unknown
and missing categories work, numbers stay checked, and the drift counters count text values
into the profile's categories. Which features are text is read from the fitted model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import skops.io
from serve_fixtures import (
    RunningServer,
    StoredModel,
    fuzz_for_server_errors,
    metric_sum,
    parse_metrics,
    serving,
    subscriptions,
    train_with_kubeloop,
)
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from kubeloop.drift.profile import OTHER_CATEGORY, Profile
from kubeloop.serving.inputs import (
    NEVER_SERVED_MODULES,
    modules_to_leave_out,
    needs_dataframe,
    needs_pandas,
    text_features,
)
from kubeloop.training.estimators import wrap_for_categorical

BIN_METRIC = "kubeloop_serve_feature_bin_total"
TEXT = ["plan", "region"]


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> StoredModel:
    return train_with_kubeloop(
        tmp_path_factory.mktemp("churn"),
        "churn",
        "sklearn.ensemble.RandomForestClassifier",
        {"n_estimators": 25, "max_depth": 6},
    )


@pytest.fixture(scope="module")
def server(churn: StoredModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(churn, tmp_path_factory.mktemp("logs"), "--model-name", "churn") as running:
        yield running


def json_value(value: Any) -> Any:
    """A DataFrame cell as a client sends it: NaN becomes null, numpy scalars plain."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def instances_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {name: json_value(value) for name, value in row.items()}
        for row in frame.astype(object).to_dict(orient="records")
    ]


def per_feature_inputs(frame: pd.DataFrame) -> list[dict[str, Any]]:
    inputs = []
    for name in frame.columns:
        values = [json_value(v) for v in frame[name].astype(object).tolist()]
        datatype = "BYTES" if name in TEXT else "FP64"
        inputs.append({"name": name, "shape": [len(values)], "datatype": datatype, "data": values})
    return inputs


def live_rows(churn: StoredModel, rows: int, seed: int) -> pd.DataFrame:
    """Rows like the training data, with unknown and missing categories mixed in."""
    rng = np.random.default_rng(seed)
    frame = churn.frame.iloc[rng.integers(0, len(churn.frame), rows)].reset_index(drop=True)
    frame = frame.astype({"plan": object, "region": object})
    frame.loc[rng.random(rows) < 0.1, "plan"] = "enterprise"  # never seen in training
    frame.loc[rng.random(rows) < 0.05, "region"] = np.nan
    frame["usage"] = frame["usage"] * 1.2
    return frame


def infer(server: RunningServer, body: Any) -> httpx.Response:
    return httpx.post(server.url + "/v2/models/churn/infer", json=body, timeout=30)


# -- which features are text: decided once, from the fitted model ---------------------------


def _table(rows: int = 200) -> pd.DataFrame:
    return subscriptions(rows, seed=1).drop(columns="churned")


def _target(rows: int = 200) -> np.ndarray:
    return subscriptions(rows, seed=1)["churned"].to_numpy()


def _models() -> list[tuple[str, Any, Any, list[str], bool]]:
    """(case, unfitted model, what it is fitted on, text features, needs a DataFrame)."""
    table = _table()
    numeric = table[["usage", "seats"]]
    user_pipeline = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("text", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                               OneHotEncoder(handle_unknown="ignore")), ["plan"]),
                        ("numbers", StandardScaler(), ["usage", "seats"]),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    )  # fmt: skip
    by_position = make_pipeline(
        ColumnTransformer([("codes", OrdinalEncoder(), [1])], remainder="passthrough"),
        LogisticRegression(max_iter=1000),
    )
    return [
        ("trainer's one-hot pipeline", wrap_for_categorical(LogisticRegression(max_iter=1000),
                                                            TEXT), table, TEXT, True),
        ("bare estimator on a matrix", LogisticRegression(max_iter=1000),
         numeric.to_numpy(), [], False),
        ("bare estimator on a DataFrame", LogisticRegression(max_iter=1000), numeric, [], False),
        ("numbers declared categorical", wrap_for_categorical(LogisticRegression(max_iter=1000),
                                                              ["seats"]), numeric, [], True),
        ("user pipeline, encoder in a pipeline", user_pipeline, table[["usage", "plan", "seats"]],
         ["plan"], True),
        ("encoder by column position", by_position, numeric.to_numpy(), [], False),
    ]  # fmt: skip


MODELS = _models()


@pytest.mark.parametrize(
    ("case", "model", "features", "text", "frame"), MODELS, ids=[m[0] for m in MODELS]
)
def test_text_features_and_dataframe_need_come_from_the_fitted_model(
    case: str, model: Any, features: Any, text: list[str], frame: bool
) -> None:
    model.fit(features, _target())
    assert text_features(model) == text
    assert needs_dataframe(model) is frame
    # Read from the skops schema before scikit-learn is imported: pandas is kept whenever the
    # model needs DataFrames (a ColumnTransformer is enough to keep it).
    stored = skops.io.dumps(model)
    assert needs_pandas(stored) is (frame or "ColumnTransformer" in repr(model))
    if frame:
        assert "pandas" not in modules_to_leave_out(stored)


def test_pandas_output_keeps_pandas_and_other_models_leave_it_out() -> None:
    table = _table()[["usage", "seats"]]
    scaled = make_pipeline(StandardScaler(), LogisticRegression()).set_output(transform="pandas")
    scaled.fit(table, _target())
    assert needs_pandas(skops.io.dumps(scaled))
    plain = LogisticRegression().fit(table, _target())
    assert modules_to_leave_out(skops.io.dumps(plain)) == NEVER_SERVED_MODULES | {"pandas"}
    assert modules_to_leave_out(b"not a zip file") == NEVER_SERVED_MODULES | {"pandas"}


def test_numeric_models_keep_the_float_matrix_path(tmp_path: Path) -> None:
    from kubeloop.serving.dataplane import rows_from_instances
    from kubeloop.serving.model import fetch_artifact, load_model, sha256_hex

    table = _table()[["usage", "seats"]]
    fitted = LogisticRegression(max_iter=1000).fit(table, _target())
    skops.io.dump(fitted, tmp_path / "model.skops")
    artifact = fetch_artifact(
        f"file://{tmp_path}", sha256_hex((tmp_path / "model.skops").read_bytes())
    )
    model = load_model(artifact, "numbers")
    assert (model.takes_text, model.to_frame, model.fast is not None) == (False, None, True)
    rows = rows_from_instances([{"usage": 1.0, "seats": 3}], model)
    assert rows.dtype == np.float64


# -- served answers -------------------------------------------------------------------------


def test_metadata_declares_text_inputs_as_bytes(server: RunningServer, churn: StoredModel) -> None:
    metadata = httpx.get(server.url + "/v2/models/churn").json()
    assert metadata["inputs"] == [
        {"name": name, "datatype": "BYTES" if name in TEXT else "FP64", "shape": [-1]}
        for name in churn.feature_names
    ]
    assert metadata["parameters"]["text_features"] == TEXT
    assert metadata["parameters"]["content_type"] == "pd"
    assert "features taken as text: plan, region" in server.log()


def test_v2_one_tensor_per_feature_equals_the_estimator(
    server: RunningServer, churn: StoredModel
) -> None:
    frame = live_rows(churn, 60, seed=1)
    body = {
        "inputs": per_feature_inputs(frame),
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    response = infer(server, body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert frame["plan"].eq("enterprise").any() and frame["region"].isna().any()
    np.testing.assert_array_equal(outputs["predict"]["data"], churn.estimator.predict(frame))
    np.testing.assert_array_equal(
        np.reshape(outputs["predict_proba"]["data"], (-1, 2)), churn.estimator.predict_proba(frame)
    )


def test_v2_one_bytes_matrix_of_mixed_values(server: RunningServer, churn: StoredModel) -> None:
    frame = live_rows(churn, 12, seed=2)
    data = [[json_value(v) for v in row] for row in frame.astype(object).to_numpy().tolist()]
    data[0][0] = str(data[0][0])  # BYTES: a number may come as text
    body = {"inputs": [{"name": "x", "shape": [12, 4], "datatype": "BYTES", "data": data}]}
    response = infer(server, body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == churn.estimator.predict(frame).tolist()


def test_predict_with_feature_objects_and_mixed_lists(
    server: RunningServer, churn: StoredModel
) -> None:
    frame = live_rows(churn, 30, seed=3)
    expected = churn.estimator.predict(frame).tolist()
    as_objects = httpx.post(
        server.url + "/predict", json={"instances": instances_of(frame), "probabilities": True}
    )
    assert as_objects.status_code == 200, as_objects.text
    assert as_objects.json()["predictions"] == expected
    np.testing.assert_array_equal(
        as_objects.json()["probabilities"], churn.estimator.predict_proba(frame)
    )
    as_lists = [list(row.values()) for row in instances_of(frame)]
    response = httpx.post(server.url + "/predict", json={"instances": as_lists})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == expected


def test_a_missing_key_is_a_missing_value(server: RunningServer, churn: StoredModel) -> None:
    row = {"usage": 4.0, "seats": 2, "region": "eu"}  # no plan
    response = httpx.post(server.url + "/predict", json={"instances": [row]})
    assert response.status_code == 200, response.text
    missing_plan = pd.DataFrame([{**row, "plan": np.nan}]).astype({"plan": object})
    expected = churn.estimator.predict(missing_plan[churn.feature_names])
    assert response.json()["predictions"] == expected.tolist()


ROW = [3.5, "pro", 4, "eu"]
TEXT_BAD_REQUESTS: list[tuple[str, str, Any, str]] = [
    ("text in a numeric feature (object)", "/predict",
     {"instances": [{"usage": "lots", "plan": "pro"}]}, "usage"),
    ("text in a numeric feature (list)", "/predict",
     {"instances": [["lots", "pro", 4, "eu"]]}, "'usage'"),
    ("boolean in a text feature", "/predict", {"instances": [[3.5, True, 4, "eu"]]}, "'plan'"),
    ("list in a text feature", "/predict", {"instances": [[3.5, ["pro"], 4, "eu"]]}, "'plan'"),
    ("unknown feature", "/predict", {"instances": [{"colour": "red"}]}, "colour"),
    ("wrong row length", "/predict", {"instances": [ROW[:3]]}, "4 features"),
    ("text in a numeric BYTES tensor", "/v2/models/churn/infer",
     {"inputs": [{"name": "usage", "shape": [1], "datatype": "BYTES", "data": ["lots"]},
                 {"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["pro"]},
                 {"name": "seats", "shape": [1], "datatype": "INT64", "data": [4]},
                 {"name": "region", "shape": [1], "datatype": "BYTES", "data": ["eu"]}]},
     "'usage'"),
    ("text in a numeric FP64 tensor", "/v2/models/churn/infer",
     {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}]},
     "not a number"),
    ("text in a numeric column of a BYTES matrix", "/v2/models/churn/infer",
     {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES",
                  "data": ["3.5", "pro", "four", "eu"]}]}, "'seats'"),
    ("a missing feature input", "/v2/models/churn/infer",
     {"inputs": [{"name": "usage", "shape": [1], "datatype": "FP64", "data": [1.0]},
                 {"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["pro"]}]},
     "missing features"),
    ("ragged BYTES", "/v2/models/churn/infer",
     {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "BYTES",
                  "data": [ROW, ROW[:2]]}]}, "ragged"),
    ("matrix of the wrong width", "/v2/models/churn/infer",
     {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ROW[:3]}]},
     "expected [rows, 4]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "path", "body", "message"), TEXT_BAD_REQUESTS, ids=[c[0] for c in TEXT_BAD_REQUESTS]
)
def test_malformed_requests_to_a_text_model_are_400(
    server: RunningServer, case: str, path: str, body: Any, message: str
) -> None:
    response = httpx.post(server.url + path, json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_numbers_in_a_text_feature_are_its_categories_as_text(
    server: RunningServer, churn: StoredModel
) -> None:
    # As the profile compares categories: 3 and 3.0 are the category "3".
    rows = [[3.5, 3, 4, "eu"], [3.5, 3.0, 4, "eu"]]
    response = httpx.post(server.url + "/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    frame = pd.DataFrame([[3.5, "3", 4, "eu"]] * 2, columns=churn.feature_names)
    assert response.json()["predictions"] == churn.estimator.predict(frame).tolist()


def test_shadow_mirrors_text_rows_as_bytes(churn: StoredModel, tmp_path: Path) -> None:
    frame = live_rows(churn, 15, seed=6)
    with (
        serving(churn, tmp_path / "c", "--model-name", "churn", "--track", "canary") as chal,
        serving(
            churn, tmp_path / "s", "--model-name", "churn",
            "--shadow-url", chal.url + "/v2/models/churn/infer", "--shadow-percent", "100",
        ) as primary,
    ):  # fmt: skip
        for i in range(0, len(frame), 3):
            body = {"instances": instances_of(frame.iloc[i : i + 3])}
            assert httpx.post(primary.url + "/predict", json=body).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = primary.metrics()
            if metric_sum(text, "kubeloop_serve_shadow_requests_total") == 5:
                break
            time.sleep(0.1)
    assert metric_sum(text, "kubeloop_serve_shadow_requests_total", result="agree") == 5
    assert metric_sum(text, "kubeloop_serve_shadow_rows_total", result="agree") == len(frame)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_in_a_text_model(server: RunningServer) -> None:
    assert fuzz_for_server_errors(server.url) == []
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


# -- drift counters -------------------------------------------------------------------------


def served_bins(text: str, feature: str) -> dict[str, float]:
    return {
        dict(labels)["bin"]: value
        for (name, labels), value in parse_metrics(text).items()
        if name == BIN_METRIC and dict(labels)["feature"] == feature
    }


def direct_category_counts(values: pd.Series, categories: list[str]) -> dict[str, float]:
    """Counts over the profile's categories, __other__ and missing, written out here."""
    counts = {c: 0.0 for c in [*categories, OTHER_CATEGORY, "missing"]}
    for value in values.astype(object).tolist():
        if isinstance(value, float) and math.isnan(value):
            counts["missing"] += 1
        elif value in categories:
            counts[value] += 1
        else:
            counts[OTHER_CATEGORY] += 1
    return counts


def test_drift_counters_count_text_values_into_the_profile_categories(
    churn: StoredModel, tmp_path: Path
) -> None:
    profile = Profile.from_json_bytes((churn.directory / "profile.json").read_bytes())
    frame = live_rows(churn, 210, seed=4)
    chunks = [frame.iloc[i : i + 7] for i in range(0, len(frame), 7)]

    with serving(churn, tmp_path / "logs", "--model-name", "churn") as running:

        def send(index: int) -> None:
            chunk = chunks[index]
            if index % 2:
                response = infer(running, {"inputs": per_feature_inputs(chunk)})
            else:
                response = httpx.post(
                    running.url + "/predict", json={"instances": instances_of(chunk)}, timeout=30
                )
            assert response.status_code == 200, response.text

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(send, range(len(chunks))))
        metrics = running.metrics()
    for name in TEXT:
        feature = profile.feature(name)
        assert served_bins(metrics, name) == direct_category_counts(
            frame[name], feature.categories
        ), name
    for name in ("usage", "seats"):
        edges = profile.feature(name).edges
        values = frame[name].to_numpy(dtype=np.float64)
        counts = np.bincount(np.digitize(values, edges, right=True), minlength=len(edges) + 1)
        expected = {str(i): float(c) for i, c in enumerate(counts)} | {"missing": 0.0}
        assert served_bins(metrics, name) == expected, name
    predicted = pd.Series(churn.estimator.predict(frame)).astype(str).value_counts()
    prediction = served_bins(metrics, "__prediction__")
    assert {k: v for k, v in prediction.items() if v} == {k: float(v) for k, v in predicted.items()}
