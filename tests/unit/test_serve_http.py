"""`kubeloop serve` over a real socket: every endpoint, served numbers, protocol errors.

Given real models trained in a temp dir and a real server process per model, when a client
speaks Open Inference Protocol v2 or plain JSON to it, then the answers are exactly what the
estimator computes, and malformed requests get a 4xx with a message, never a 5xx.
"""

from __future__ import annotations

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
    v2_request,
)


@pytest.fixture(scope="module")
def forest(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with serving(
        models["forest"], tmp_path_factory.mktemp("logs"), "--model-name", "cancer"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def wine(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with serving(
        models["wine"], tmp_path_factory.mktemp("logs"), "--model-name", "wine", "--track", "canary"
    ) as server:
        yield server


def infer(server: RunningServer, model: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30, **kwargs)


# -- health and metadata -------------------------------------------------------------------


def test_health_and_server_metadata(forest: RunningServer) -> None:
    assert httpx.get(forest.url + "/v2/health/live").status_code == 200
    assert httpx.get(forest.url + "/v2/health/ready").status_code == 200
    metadata = httpx.get(forest.url + "/v2").json()
    assert metadata["name"] == "kubeloop"
    assert isinstance(metadata["extensions"], list)


def test_model_metadata_describes_inputs_and_outputs(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["forest"]
    metadata = httpx.get(forest.url + "/v2/models/cancer").json()
    assert metadata["name"] == "cancer"
    assert metadata["versions"] == [model.sha256[:12]]
    assert metadata["inputs"] == [
        {"name": "input-0", "datatype": "FP64", "shape": [-1, len(model.feature_names)]}
    ]
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "predict": [-1],
        "predict_proba": [-1, 2],
    }
    assert metadata["parameters"]["feature_names"] == model.feature_names
    assert metadata["parameters"]["sha256"] == model.sha256
    assert metadata["parameters"]["classes"] == [0, 1]
    assert httpx.get(forest.url + "/v2/models/cancer/ready").status_code == 200
    versioned = httpx.get(f"{forest.url}/v2/models/cancer/versions/{model.sha256[:12]}")
    assert versioned.status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/v2/models/nope", "/v2/models/nope/ready", "/v2/models/cancer/versions/deadbeef"],
)
def test_unknown_model_or_version_is_404(forest: RunningServer, path: str) -> None:
    response = httpx.get(forest.url + path)
    assert response.status_code == 404
    assert "not found" in response.json()["error"]


def test_unknown_model_infer_is_404(forest: RunningServer) -> None:
    response = infer(forest, "nope", v2_request(np.zeros((1, 30))))
    assert response.status_code == 404
    assert "'cancer'" in response.json()["error"]


def test_unknown_path_and_wrong_method(forest: RunningServer) -> None:
    assert httpx.get(forest.url + "/nowhere").status_code == 404
    assert httpx.get(forest.url + "/v2/models/cancer/infer").status_code == 405
    assert httpx.get(forest.url + "/predict").status_code == 405


# -- served numbers ------------------------------------------------------------------------


def test_infer_many_rows_equals_estimator(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["forest"]
    rows = model.features[::7]
    response = infer(
        forest,
        "cancer",
        v2_request(rows, outputs=[{"name": "predict"}, {"name": "predict_proba"}]),
    )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["predict"]["shape"] == [rows.shape[0]]
    assert outputs["predict"]["datatype"] == "INT64"
    np.testing.assert_array_equal(outputs["predict"]["data"], model.estimator.predict(rows))
    assert outputs["predict_proba"]["shape"] == [rows.shape[0], 2]
    np.testing.assert_array_equal(
        np.reshape(outputs["predict_proba"]["data"], (-1, 2)), model.estimator.predict_proba(rows)
    )


def test_outputs_selection_returns_only_what_was_asked(
    wine: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["wine"]
    rows = model.features[:5]
    response = infer(wine, "wine", v2_request(rows, outputs=[{"name": "predict_proba"}]))
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["predict_proba"]
    np.testing.assert_array_equal(
        np.reshape(outputs[0]["data"], (5, 3)), model.estimator.predict_proba(rows)
    )
    default = infer(wine, "wine", v2_request(rows)).json()["outputs"]
    assert [o["name"] for o in default] == ["predict"]


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64", "BYTES"])
def test_datatypes(wine: RunningServer, models: dict[str, StoredModel], datatype: str) -> None:
    model = models["wine"]
    rows = model.features[10:20]
    if datatype == "INT64":
        rows = np.round(rows)
        data: list[Any] = rows.astype(np.int64).ravel().tolist()
        expected_rows = rows
    elif datatype == "FP32":
        data = rows.astype(np.float32).ravel().tolist()
        expected_rows = rows.astype(np.float32).astype(np.float64)
    elif datatype == "BYTES":
        data = [repr(v) for v in rows.ravel().tolist()]
        expected_rows = rows
    else:
        data = rows.ravel().tolist()
        expected_rows = rows
    body = {
        "inputs": [{"name": "x", "shape": list(rows.shape), "datatype": datatype, "data": data}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    response = infer(wine, "wine", body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    np.testing.assert_array_equal(outputs["predict"], model.estimator.predict(expected_rows))
    np.testing.assert_array_equal(
        np.reshape(outputs["predict_proba"], (-1, 3)), model.estimator.predict_proba(expected_rows)
    )


def test_one_row_nested_data_and_one_input_per_feature(
    wine: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["wine"]
    row = model.features[42]
    flat = infer(
        wine,
        "wine",
        {"inputs": [{"name": "x", "shape": [13], "datatype": "FP64", "data": row.tolist()}]},
    )
    assert flat.json()["outputs"][0]["data"] == model.estimator.predict(row[None, :]).tolist()
    rows = model.features[:4]
    nested = infer(
        wine,
        "wine",
        {"inputs": [{"name": "x", "shape": [4, 13], "datatype": "FP64", "data": rows.tolist()}]},
    )
    assert nested.json()["outputs"][0]["data"] == model.estimator.predict(rows).tolist()
    per_feature = {
        "inputs": [
            {"name": name, "shape": [4], "datatype": "FP64", "data": rows[:, i].tolist()}
            for i, name in reversed(list(enumerate(model.feature_names)))
        ]
    }
    columns = infer(wine, "wine", per_feature)
    assert columns.status_code == 200, columns.text
    assert columns.json()["outputs"][0]["data"] == model.estimator.predict(rows).tolist()


def test_request_id_is_echoed_in_body_and_header(forest: RunningServer) -> None:
    rows = np.zeros((1, 30))
    given = infer(forest, "cancer", v2_request(rows, id="order-17", parameters={"a": 1}))
    assert given.json()["id"] == "order-17"
    assert given.headers["x-request-id"] == "order-17"
    assert given.json()["parameters"] == {"a": 1}
    from_header = infer(forest, "cancer", v2_request(rows), headers={"x-request-id": "hdr-1"})
    assert from_header.json()["id"] == "hdr-1"
    generated = [infer(forest, "cancer", v2_request(rows)) for _ in range(3)]
    ids = {r.json()["id"] for r in generated}
    assert len(ids) == 3
    assert all(r.headers["x-request-id"] == r.json()["id"] for r in generated)


@pytest.mark.parametrize("odd_id", ["\x1f", " padded ", "naïve", "tab\there"])
def test_an_id_that_cannot_be_a_header_is_echoed_in_the_body_only(
    forest: RunningServer, odd_id: str
) -> None:
    rows = np.zeros((1, 30))
    # Two ids: an id names one prediction (a second request under it is a 409).
    for path, body, sent in [
        ("/v2/models/cancer/infer", v2_request(rows, id=odd_id), odd_id),
        ("/predict", {"instances": rows.tolist(), "id": odd_id * 2}, odd_id * 2),
    ]:
        answer = httpx.post(forest.url + path, json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == sent
        assert "x-request-id" not in answer.headers


def test_plain_predict_with_lists_and_feature_dicts(
    wine: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["wine"]
    rows = model.features[100:106]
    as_lists = httpx.post(wine.url + "/predict", json={"instances": rows.tolist()}).json()
    assert as_lists["predictions"] == model.estimator.predict(rows).tolist()
    assert as_lists["id"]
    as_dicts = httpx.post(
        wine.url + "/predict",
        json={
            "instances": [
                dict(zip(model.feature_names, row.tolist(), strict=True)) for row in rows
            ],
            "probabilities": True,
        },
    ).json()
    assert as_dicts["predictions"] == model.estimator.predict(rows).tolist()
    np.testing.assert_array_equal(as_dicts["probabilities"], model.estimator.predict_proba(rows))


def test_missing_value_goes_to_models_that_take_it(
    forest: RunningServer, models: dict[str, StoredModel], wine: RunningServer
) -> None:
    model = models["forest"]
    row = model.features[3].copy()
    row[0] = np.nan
    sent = [None if np.isnan(v) else v for v in row.tolist()]
    response = httpx.post(forest.url + "/predict", json={"instances": [sent]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == model.estimator.predict(row[None, :]).tolist()
    # LogisticRegression refuses NaN: that is the client's input, so 400, not 500.
    refused = httpx.post(wine.url + "/predict", json={"instances": [[None] * 13]})
    assert refused.status_code == 400
    assert "NaN" in refused.json()["error"]


# -- protocol errors -----------------------------------------------------------------------

ROW = [0.5] * 13
BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("not json", b"{nope", "not valid JSON"),
    ("empty body", b"", "empty"),
    ("array body", b"[1, 2]", "JSON object"),
    ("no inputs", {"outputs": []}, "inputs"),
    ("inputs not a list", {"inputs": {"a": 1}}, "inputs"),
    ("input not an object", {"inputs": [3]}, "inputs[0]"),
    ("no name", {"inputs": [{"shape": [1, 13], "datatype": "FP64", "data": ROW}]}, "name"),
    ("bad shape", {"inputs": [{"name": "x", "shape": [1, -13], "datatype": "FP64", "data": ROW}]}, "shape"),
    ("shape not list", {"inputs": [{"name": "x", "shape": "1x13", "datatype": "FP64", "data": ROW}]}, "shape"),
    ("shape vs data", {"inputs": [{"name": "x", "shape": [2, 13], "datatype": "FP64", "data": ROW}]}, "26 values"),
    ("feature count", {"inputs": [{"name": "x", "shape": [1, 12], "datatype": "FP64", "data": ROW[:12]}]}, "13 features"),
    ("3-d", {"inputs": [{"name": "x", "shape": [1, 1, 13], "datatype": "FP64", "data": ROW}]}, "expected [rows, 13]"),
    ("zero rows", {"inputs": [{"name": "x", "shape": [0, 13], "datatype": "FP64", "data": []}]}, "no rows"),
    ("unknown datatype", {"inputs": [{"name": "x", "shape": [1, 13], "datatype": "FP128", "data": ROW}]}, "datatype"),
    ("text in FP32", {"inputs": [{"name": "x", "shape": [1, 13], "datatype": "FP32", "data": ["a"] * 13}]}, "not a number"),
    ("bool in FP64", {"inputs": [{"name": "x", "shape": [1, 13], "datatype": "FP64", "data": [True] * 13}]}, "not a number"),
    ("fraction in INT64", {"inputs": [{"name": "x", "shape": [1, 13], "datatype": "INT64", "data": [1.5] * 13}]}, "non-integer"),
    ("text in BYTES", {"inputs": [{"name": "x", "shape": [1, 13], "datatype": "BYTES", "data": ["abc"] * 13}]}, "not a number"),
    ("ragged", {"inputs": [{"name": "x", "shape": [2, 13], "datatype": "FP64", "data": [ROW, ROW[:3]]}]}, "ragged"),
    ("no data", {"inputs": [{"name": "x", "shape": [1, 13], "datatype": "FP64"}]}, "data"),
    ("unknown output", {"inputs": [{"name": "x", "shape": [1, 13], "datatype": "FP64", "data": ROW}], "outputs": [{"name": "logits"}]}, "logits"),
    ("bad id", {"id": 5, "inputs": [{"name": "x", "shape": [1, 13], "datatype": "FP64", "data": ROW}]}, "id"),
    ("unknown feature input", {"inputs": [{"name": "alcohol", "shape": [1], "datatype": "FP64", "data": [1.0]}, {"name": "zzz", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "zzz"),
    ("empty shape too big", {"inputs": [{"name": "x", "shape": [2**47, 2**30, 0], "datatype": "FP64", "data": []}]}, "numpy cannot hold"),
    ("65 dimensions", {"inputs": [{"name": "x", "shape": [1] * 65, "datatype": "FP64", "data": [1.0]}]}, "numpy cannot hold"),
    ("huge number", b'{"inputs": [{"name": "x", "shape": [1, 13], "datatype": "INT64", "data": [' + b"1" * 400 + b"]}]}", ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "body", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_malformed_requests_are_400_with_a_message(
    wine: RunningServer, case: str, body: Any, message: str
) -> None:
    url = wine.url + "/v2/models/wine/infer"
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"rows": []}, "instances"),
        ({"instances": []}, "non-empty"),
        ({"instances": [[1.0, 2.0]]}, "13 features"),
        ({"instances": [{"color": 1.0}]}, "color"),
        ({"instances": [{"alcohol": "high"}]}, "not a number"),
        ({"instances": [ROW, {"alcohol": 1.0}]}, "mixes"),
        ({"instances": [ROW], "probabilities": True, "id": ""}, "id"),
    ],
)
def test_malformed_predict_requests_are_400(wine: RunningServer, body: Any, message: str) -> None:
    response = httpx.post(wine.url + "/predict", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_errors_are_counted_by_endpoint_and_code(wine: RunningServer) -> None:
    before = metric_sum(
        wine.metrics(), "kubeloop_serve_request_errors_total", endpoint="infer", code="400"
    )
    for _ in range(3):
        httpx.post(wine.url + "/v2/models/wine/infer", content=b"{")
    after = wine.metrics()
    assert (
        metric_sum(after, "kubeloop_serve_request_errors_total", endpoint="infer", code="400")
        == before + 3
    )
    assert metric_sum(after, "kubeloop_serve_requests_total", track="canary", code="400") >= 3


def test_openapi_document_is_served(forest: RunningServer) -> None:
    document = httpx.get(forest.url + "/v2/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/v2/models/{model_name}/infer" in document["paths"]
    assert httpx.get(forest.url + "/openapi.json").json() == document


def test_log_names_the_verified_artifact(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    assert f"verified {Path(models['forest'].directory) / 'model.skops'}" in forest.log()


def test_bare_linear_model_is_served_through_its_checked_fast_path(
    models: dict[str, StoredModel], tmp_path: Path
) -> None:
    from serve_fixtures import store_model
    from sklearn.linear_model import LogisticRegression

    forest = models["forest"]
    model = store_model(
        tmp_path / "cancer-lr" / "run-1",
        LogisticRegression(max_iter=10000),
        forest.features,
        forest.target,
        forest.feature_names,
        classification=True,
    )
    rows = model.features[::3]
    with serving(model, tmp_path / "logs") as server:
        one = infer(server, "model", v2_request(rows[:1]))
        many = infer(server, "model", v2_request(rows, outputs=[{"name": "predict_proba"}]))
        log = server.log()
    assert one.status_code == 200, one.text
    assert one.json()["outputs"][0]["data"] == model.estimator.predict(rows[:1]).tolist()
    np.testing.assert_array_equal(
        np.reshape(many.json()["outputs"][0]["data"], (-1, 2)), model.estimator.predict_proba(rows)
    )
    assert "fast path" not in log, log
