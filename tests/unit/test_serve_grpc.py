"""The Open Inference Protocol, complete: binary tensor data over HTTP, and gRPC.

Given real ``kubeloop serve`` processes on real sockets, when third-party clients speak to
them as they do by default (``tritonclient.http``: binary tensor data for inputs and outputs;
``tritonclient.grpc``: raw contents), then the predictions equal the estimator's for FP64
matrices and for BYTES text features; bad binary data is a clear 400 (HTTP) or
INVALID_ARGUMENT (gRPC); an unknown model is NOT_FOUND; and gRPC requests go through the same
micro-batcher, request metrics and drift counters as HTTP ones (read back from /metrics).
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from serve_fixtures import (
    RunningServer,
    StoredModel,
    metric_sum,
    serving,
    train_with_kubeloop,
)

from kubeloop.serving import binary_tensors
from kubeloop.serving.binary_tensors import BinaryDataError

TEXT = ["plan", "region"]


@pytest.fixture(scope="module")
def forest(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with serving(models["forest"], tmp_path_factory.mktemp("logs"), "--model-name", "cancer") as s:
        yield s


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> StoredModel:
    return train_with_kubeloop(
        tmp_path_factory.mktemp("churn"),
        "churn",
        "sklearn.ensemble.RandomForestClassifier",
        {"n_estimators": 20, "max_depth": 6},
    )


@pytest.fixture(scope="module")
def churn_server(
    churn: StoredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with serving(churn, tmp_path_factory.mktemp("logs"), "--model-name", "churn") as s:
        yield s


def text_rows(churn: StoredModel, rows: int) -> pd.DataFrame:
    """Rows like the training data, an unknown category among them (binary BYTES has no null)."""
    frame = churn.frame.dropna().iloc[:rows].reset_index(drop=True)
    frame = frame.astype({"plan": object, "region": object})
    frame.loc[::4, "plan"] = "enterprise"  # never seen in training
    return frame


# -- the codec, pure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP64", np.array([[1.5, -2.0], [np.nan, 4.25]])),
        ("FP32", np.array([1.5, 2.5], dtype=np.float32)),
        ("INT64", np.array([-3, 7])),
        ("INT8", np.array([-3, 7], dtype=np.int8)),
        ("UINT16", np.array([3, 65535], dtype=np.uint16)),
        ("BOOL", np.array([True, False, True])),
        ("BYTES", np.array(["basic", "", "é"], dtype=object)),
    ],
)
def test_raw_bytes_round_trip(datatype: str, values: np.ndarray) -> None:
    raw = binary_tensors.encode_raw(values, datatype)
    decoded = binary_tensors.decode_raw(datatype, raw, list(values.shape), "input 'x'")
    np.testing.assert_array_equal(decoded, values.ravel())


def test_bytes_layout_is_the_protocols() -> None:
    raw = binary_tensors.encode_raw(np.array(["ab", "c"], dtype=object), "BYTES")
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"


@pytest.mark.parametrize(
    ("datatype", "raw", "shape", "message"),
    [
        ("FP64", b"\0" * 15, [2], "declares shape [2] of FP64 (2 values, 16 bytes) but its "
                                   "binary data holds 15 bytes"),
        ("BYTES", struct.pack("<I", 9) + b"abc", [1], "element 0 declares 9 bytes but only 3"),
        ("BYTES", struct.pack("<I", 1) + b"a", [2], "declares 2 elements but its binary data "
                                                    "holds only 5 bytes"),
        ("BYTES", struct.pack("<I", 1) + b"a" + b"zz", [1], "holds 2 bytes more"),
        ("BYTES", struct.pack("<I", 1) + b"\xff", [1], "is not UTF-8 text"),
        ("BYTES", b"", [10**12], "declares 1000000000000 elements"),
        ("BF16", b"\0\0", [1], "cannot be sent as binary data"),
    ],
)  # fmt: skip
def test_bad_raw_bytes_name_the_tensor_and_the_fix(
    datatype: str, raw: bytes, shape: list[int], message: str
) -> None:
    with pytest.raises(BinaryDataError, match="input 'x'") as caught:
        binary_tensors.decode_raw(datatype, raw, shape, "input 'x'")
    assert message in str(caught.value)


def test_binary_outputs_follow_the_request() -> None:
    names = ["predict", "predict_proba"]
    assert binary_tensors.binary_outputs({}, names) == set()
    assert binary_tensors.binary_outputs({"parameters": {"binary_data_output": True}}, names) == {
        "predict",
        "predict_proba",
    }
    document = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": False}}],
    }
    assert binary_tensors.binary_outputs(document, names) == {"predict"}


# -- HTTP: tritonclient with its defaults (binary tensor data) ------------------------------


def test_tritonclient_http_defaults_fp64(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    import tritonclient.http as triton

    model = models["forest"]
    rows = model.features[:17]
    client = triton.InferenceServerClient(url=forest.url.removeprefix("http://"))
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)  # default: binary_data=True
    assert tensor._get_binary_data() is not None, "the client should send binary data"
    outputs = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = client.infer("cancer", [tensor], outputs=outputs, request_id="bin-1")
    response = result.get_response()
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    assert response["id"] == "bin-1"
    np.testing.assert_array_equal(result.as_numpy("predict"), model.estimator.predict(rows))
    np.testing.assert_array_equal(
        result.as_numpy("predict_proba"), model.estimator.predict_proba(rows)
    )
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    result = client.infer("cancer", [tensor])
    np.testing.assert_array_equal(result.as_numpy("predict"), model.estimator.predict(rows))


def test_tritonclient_http_defaults_bytes_text_features(
    churn_server: RunningServer, churn: StoredModel
) -> None:
    import tritonclient.http as triton

    frame = text_rows(churn, 24)
    client = triton.InferenceServerClient(url=churn_server.url.removeprefix("http://"))
    inputs = []
    for name in churn.feature_names:
        if name in TEXT:
            tensor = triton.InferInput(name, [len(frame)], "BYTES")
            tensor.set_data_from_numpy(frame[name].to_numpy(dtype=object))
        else:
            tensor = triton.InferInput(name, [len(frame)], "FP64")
            tensor.set_data_from_numpy(frame[name].to_numpy(dtype=np.float64))
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = client.infer("churn", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("predict"), churn.estimator.predict(frame))
    np.testing.assert_array_equal(
        result.as_numpy("predict_proba"), churn.estimator.predict_proba(frame)
    )


def post_binary(
    url: str, header: dict[str, Any], tail: bytes, length: int | None = None
) -> httpx.Response:
    """A binary tensor data request: the JSON header, then ``tail``."""
    head = json.dumps(header).encode()
    return httpx.post(
        url + "/v2/models/cancer/infer",
        content=head + tail,
        headers={"Inference-Header-Content-Length": str(len(head) if length is None else length)},
        timeout=30,
    )


def test_binary_request_with_wrong_sizes_is_a_clear_400(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    rows = models["forest"].features[:2]
    raw = rows.astype("<f8").tobytes()

    def send(size: int, tail: bytes, length: int | None = None) -> httpx.Response:
        tensor = {"name": "input-0", "shape": [2, 30], "datatype": "FP64",
                  "parameters": {"binary_data_size": size}}  # fmt: skip
        return post_binary(forest.url, {"inputs": [tensor]}, tail, length)

    ok = send(len(raw), raw)
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"] == models["forest"].estimator.predict(rows).tolist()
    cases = [
        (send(len(raw) - 8, raw[:-8]), "declares shape [2, 30] of FP64 (60 values, 480 bytes) "
                                       "but its binary data holds 472 bytes"),
        (send(len(raw), raw[:-8]), "declares binary_data_size 480 but only 472 bytes"),
        (send(len(raw), raw + b"\0" * 8), "8 bytes of binary data that no input's "
                                           "binary_data_size"),
        (send(len(raw), raw, length=10**6), "Inference-Header-Content-Length is 1000000 but the "
                                            "body has only"),
    ]  # fmt: skip
    for response, message in cases:
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]


def test_binary_data_size_without_the_header_is_a_clear_400(forest: RunningServer) -> None:
    body = {"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64",
                        "parameters": {"binary_data_size": 240}}]}  # fmt: skip
    response = httpx.post(forest.url + "/v2/models/cancer/infer", json=body)
    assert response.status_code == 400
    assert "no Inference-Header-Content-Length header" in response.json()["error"]


def test_json_request_may_ask_for_binary_outputs(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["forest"]
    rows = model.features[:3]
    body = {
        "inputs": [{"name": "input-0", "shape": [3, 30], "datatype": "FP64",
                    "data": rows.ravel().tolist()}],
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": True}},
                    {"name": "predict"}],
    }  # fmt: skip
    response = httpx.post(forest.url + "/v2/models/cancer/infer", json=body)
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    proba, predict = header["outputs"]
    assert "data" not in proba and proba["parameters"]["binary_data_size"] == 3 * 2 * 8
    assert predict["data"] == model.estimator.predict(rows).tolist()
    np.testing.assert_array_equal(
        np.frombuffer(response.content[length:], dtype="<f8").reshape(3, 2),
        model.estimator.predict_proba(rows),
    )


# -- gRPC: tritonclient.grpc ----------------------------------------------------------------


def test_tritonclient_grpc_fp64_metadata_and_metrics(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    import tritonclient.grpc as triton

    model = models["forest"]
    client = triton.InferenceServerClient(url=forest.grpc_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cancer")
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata("cancer")
    assert metadata.name == "cancer"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("input-0", "FP64", [-1, 30])
    ]
    before = forest.metrics()
    total = 0
    for start in range(0, 60, 20):
        rows = model.features[start : start + 20]
        tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        outputs = [
            triton.InferRequestedOutput("predict"),
            triton.InferRequestedOutput("predict_proba"),
        ]
        result = client.infer("cancer", [tensor], outputs=outputs, request_id=f"g-{start}")
        assert result.get_response().id == f"g-{start}"
        np.testing.assert_array_equal(result.as_numpy("predict"), model.estimator.predict(rows))
        np.testing.assert_array_equal(
            result.as_numpy("predict_proba"), model.estimator.predict_proba(rows)
        )
        total += rows.shape[0]
    after = forest.metrics()

    def grew(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    assert grew("kubeloop_serve_requests_total", endpoint="grpc_infer", code="200") == 3
    assert grew("kubeloop_serve_predictions_total") == total
    assert grew("kubeloop_serve_batch_size_count") >= 1
    # The drift counters count gRPC rows too: every feature's bins grow by the rows sent.
    assert grew("kubeloop_serve_feature_bin_total") == total * (30 + 1)  # features + prediction


def test_tritonclient_grpc_bytes_text_features(
    churn_server: RunningServer, churn: StoredModel
) -> None:
    import tritonclient.grpc as triton

    frame = text_rows(churn, 30)
    client = triton.InferenceServerClient(url=churn_server.grpc_address)
    inputs = []
    for name in churn.feature_names:
        datatype = "BYTES" if name in TEXT else "FP64"
        tensor = triton.InferInput(name, [len(frame)], datatype)
        tensor.set_data_from_numpy(
            frame[name].to_numpy(dtype=object if name in TEXT else np.float64)
        )
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict_proba")]
    result = client.infer("churn", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("predict"), churn.estimator.predict(frame))
    np.testing.assert_array_equal(
        result.as_numpy("predict_proba"), churn.estimator.predict_proba(frame)
    )


def test_grpc_typed_contents_are_answered_typed(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    """A client that sends typed contents (not raw) gets typed contents back."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    model = models["forest"]
    rows = model.features[:4]
    request = service_pb2.ModelInferRequest(model_name="cancer")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    tensor.contents.fp64_contents.extend(rows.ravel().tolist())
    request.outputs.add(name="predict_proba")
    with grpc.insecure_channel(forest.grpc_address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert not response.raw_output_contents
    np.testing.assert_array_equal(
        np.reshape(response.outputs[0].contents.fp64_contents, (4, 2)),
        model.estimator.predict_proba(rows),
    )


def test_grpc_errors_are_proper_status_codes(
    forest: RunningServer, models: dict[str, StoredModel]
) -> None:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=forest.grpc_address)
    rows = models["forest"].features[:2]
    tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [tensor])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "model 'no-such-model' not found" in unknown.value.message()

    wrong = triton.InferInput("input-0", [2, 29], "FP64")
    wrong.set_data_from_numpy(rows[:, :29])
    with pytest.raises(InferenceServerException) as shape:
        client.infer("cancer", [wrong])
    assert shape.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected [rows, 30]" in shape.value.message()

    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("no-such-model")
    assert missing.value.status() == "StatusCode.NOT_FOUND"

    text = forest.metrics()
    assert metric_sum(text, "kubeloop_serve_requests_total", endpoint="grpc_infer", code="404") >= 1
    assert metric_sum(text, "kubeloop_serve_requests_total", endpoint="grpc_infer", code="400") >= 1


def test_grpc_raw_contents_with_wrong_sizes_is_invalid_argument(forest: RunningServer) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="cancer")
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, 30])
    request.raw_input_contents.append(b"\0" * 100)
    with grpc.insecure_channel(forest.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "240 bytes) but its binary data holds 100 bytes" in caught.value.details()


def test_two_workers_serve_grpc_on_one_port(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With --workers 2 every worker binds the gRPC port (SO_REUSEPORT), like the HTTP port."""
    import tritonclient.grpc as triton

    model = models["forest"]
    rows = model.features[:5]
    with serving(model, tmp_path_factory.mktemp("logs"), "--model-name", "cancer", workers=2) as s:
        for _ in range(4):  # a new client (connection) each time: the kernel spreads them
            client = triton.InferenceServerClient(url=s.grpc_address)
            tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows)
            result = client.infer("cancer", [tensor])
            np.testing.assert_array_equal(result.as_numpy("predict"), model.estimator.predict(rows))
            client.close()
        served = metric_sum(s.metrics(), "kubeloop_serve_requests_total", endpoint="grpc_infer")
    assert served == 4


def test_grpc_readiness_follows_the_drain_and_calls_are_still_answered(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGTERM: gRPC ServerReady turns false with HTTP readiness, calls keep being answered."""
    import signal

    import tritonclient.grpc as triton

    model = models["forest"]
    rows = model.features[:3]
    with serving(
        model, tmp_path_factory.mktemp("logs"), "--model-name", "cancer",
        "--shutdown-delay-seconds", "4",
    ) as server:  # fmt: skip
        client = triton.InferenceServerClient(url=server.grpc_address)
        assert client.is_server_ready()
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.is_server_ready()
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503
        tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        result = client.infer("cancer", [tensor])
        np.testing.assert_array_equal(result.as_numpy("predict"), model.estimator.predict(rows))
        assert server.process.wait(timeout=60) == 0


def test_grpc_infer_takes_the_same_bearer_token_as_http(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    model = models["forest"]
    rows = model.features[:2]
    env = {"KUBELOOP_SERVE_AUTH_TOKEN": "s3cret-token"}
    with serving(model, tmp_path_factory.mktemp("logs"), "--model-name", "cancer", env=env) as s:
        client = triton.InferenceServerClient(url=s.grpc_address)
        tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("cancer", [tensor])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as wrong:
            client.infer("cancer", [tensor], headers={"authorization": "Bearer nope"})
        assert wrong.value.status() == "StatusCode.UNAUTHENTICATED"
        result = client.infer("cancer", [tensor], headers={"authorization": "Bearer s3cret-token"})
        np.testing.assert_array_equal(result.as_numpy("predict"), model.estimator.predict(rows))
        text = s.metrics()
    assert metric_sum(text, "kubeloop_serve_requests_total", endpoint="grpc_infer", code="401") == 2


# -- the wire contract ----------------------------------------------------------------------


def test_committed_grpc_module_is_generated_from_the_proto() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "hack" / "serving" / "generate-grpc"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_our_messages_are_the_ones_tritonclient_speaks() -> None:
    """Every message and field of our .proto has the same number and type in Triton's."""
    from google.protobuf.descriptor import Descriptor
    from tritonclient.grpc import service_pb2 as triton

    from kubeloop.serving.oip import open_inference_grpc_pb2 as ours

    def fields(message: Descriptor) -> dict[str, tuple[int, int, str]]:
        return {
            f.name: (f.number, f.type, f.message_type.full_name if f.message_type else "")
            for f in message.fields
        }

    def walk(message: Descriptor) -> Iterator[Descriptor]:
        yield message
        for nested in message.nested_types:
            yield from walk(nested)

    theirs = triton.DESCRIPTOR.pool
    checked = 0
    for top in ours.DESCRIPTOR.message_types_by_name.values():
        for message in walk(top):
            other = theirs.FindMessageTypeByName(message.full_name)
            mine, known = fields(message), fields(other)
            for name, spec in mine.items():
                # Triton's InferParameter has no double/uint64 yet: newer in the specification.
                if message.full_name == "inference.InferParameter" and name not in known:
                    continue
                assert known[name] == spec, (message.full_name, name)
                checked += 1
    assert checked > 60
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    triton_service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        assert triton_service.methods_by_name[method.name].input_type.full_name == (
            method.input_type.full_name
        )
