"""The gRPC adapter: the Open Inference Protocol's ``inference.GRPCInferenceService``.

A thin layer over the same :class:`~kubeloop.serving.dataplane.DataPlane` the HTTP adapter
uses: it runs on ``grpc.aio`` in the worker's own event loop, so a gRPC request goes through
the same model, micro-batcher, Prometheus metrics, drift counters and /feedback memory as an
HTTP one. Each RPC converts the protobuf request to the data plane's decoded form and back;
a ``ProtocolError`` becomes the matching gRPC status (400 -> INVALID_ARGUMENT, 404 ->
NOT_FOUND, ...), and every RPC is counted in ``kubeloop_serve_requests_total`` with endpoint
``grpc_<rpc>`` and the HTTP status of the same outcome, so error-rate queries keep working.

Tensor contents come either typed (``contents.fp64_contents``...) or raw
(``raw_input_contents``, the layout of :mod:`kubeloop.serving.binary_tensors`); the answer
uses ``raw_output_contents`` when the request used raw inputs (what tritonclient expects),
typed contents otherwise.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from kubeloop.serving import binary_tensors
from kubeloop.serving.binary_tensors import Array, BinaryDataError
from kubeloop.serving.dataplane import DataPlane, ProtocolError, bad_request, output_datatype
from kubeloop.serving.oip import open_inference_grpc_pb2 as pb

log = logging.getLogger("kubeloop.serve")

SERVICE = "inference.GRPCInferenceService"

_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

# datatype -> (InferTensorContents field, numpy dtype of its values)
_CONTENTS: dict[str, tuple[str, Any]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int64),
    "INT16": ("int_contents", np.int64),
    "INT32": ("int_contents", np.int64),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint64),
    "UINT16": ("uint_contents", np.uint64),
    "UINT32": ("uint_contents", np.uint64),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status of a refusal the HTTP adapter would answer with ``http_status``."""
    if http_status in _STATUS_CODES:
        return _STATUS_CODES[http_status]
    return grpc.StatusCode.INTERNAL if http_status >= 500 else grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------------------------
# Protobuf <-> the data plane's decoded form


def _parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def _contents_array(
    contents: pb.InferTensorContents, datatype: str, where: str
) -> Array | list[Any]:
    """A tensor's typed contents as a flat array (BYTES: an object array of str)."""
    if datatype == "BYTES":
        values = np.empty(len(contents.bytes_contents), dtype=object)
        for i, raw in enumerate(contents.bytes_contents):
            try:
                values[i] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise bad_request(f"{where} (BYTES) element {i} is not UTF-8 text") from exc
        return values
    field = _CONTENTS.get(datatype)
    if field is None:
        if datatype == "FP16":
            raise bad_request(f"{where} is FP16, which has no typed contents: send it raw")
        return []  # the data plane names the unsupported datatype
    return np.fromiter(getattr(contents, field[0]), dtype=field[1])


def request_document(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The data plane's request document for a ``ModelInferRequest`` (data decoded)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries but inputs has {len(request.inputs)}; "
            "send one entry per input, in the order of inputs"
        )
    inputs: list[dict[str, Any]] = []
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r}" if tensor.name else f"inputs[{index}]"
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise bad_request(f"{where}.shape must be non-negative integers, got {shape}")
        data: Array | list[Any]
        if raw:
            if tensor.HasField("contents"):
                raise bad_request(
                    f"{where} has contents but the request uses raw_input_contents; send one "
                    "form for every input"
                )
            try:
                data = binary_tensors.decode_raw(tensor.datatype, raw[index], shape, where)
            except BinaryDataError as exc:
                raise bad_request(str(exc)) from exc
        else:
            data = _contents_array(tensor.contents, tensor.datatype, where)
        inputs.append(
            {"name": tensor.name, "shape": shape, "datatype": tensor.datatype, "data": data}
        )
    document: dict[str, Any] = {"inputs": inputs}
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [{"name": output.name} for output in request.outputs]
    if request.parameters:
        document["parameters"] = {
            key: _parameter_value(value) for key, value in request.parameters.items()
        }
    return document


def _fill_contents(contents: pb.InferTensorContents, values: Array, datatype: str) -> None:
    flat = values.ravel().tolist()
    if datatype == "BYTES":
        contents.bytes_contents.extend(str(v).encode("utf-8") for v in flat)
    elif datatype == "BOOL":
        contents.bool_contents.extend(flat)
    elif datatype == "INT64":
        contents.int64_contents.extend(int(v) for v in flat)
    else:
        contents.fp64_contents.extend(flat)


def response_message(
    plane: DataPlane,
    request_id: str,
    outputs: list[tuple[str, Array]],
    parameters: Mapping[str, Any] | None,
    raw: bool,
) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` of an answered request."""
    response = pb.ModelInferResponse(
        model_name=plane.model.name, model_version=plane.model.short_sha, id=request_id
    )
    for name, values in outputs:
        datatype = output_datatype(values)
        output = response.outputs.add(name=name, datatype=datatype, shape=list(values.shape))
        if raw:
            response.raw_output_contents.append(binary_tensors.encode_raw(values, datatype))
        else:
            _fill_contents(output.contents, values, datatype)
    for key, value in (parameters or {}).items():
        if value is not None:
            _set_parameter(response.parameters[key], value)
    return response


# --------------------------------------------------------------------------------------------
# The service

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)
Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class InferenceService:
    """``inference.GRPCInferenceService`` over one worker's data plane."""

    def __init__(self, plane: DataPlane, auth_token: bytes | None = None) -> None:
        self.plane = plane
        self.auth_token = auth_token

    async def server_live(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelReadyResponse:
        self.plane.check_model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.plane.ready)

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ServerMetadataResponse:
        metadata = self.plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=metadata["name"], version=metadata["version"], extensions=metadata["extensions"]
        )

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelMetadataResponse:
        metadata = self.plane.model_metadata(request.name, request.version or None)

        def tensors(items: list[dict[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t["name"], datatype=t["datatype"], shape=t["shape"]
                )
                for t in items
            ]

        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=tensors(metadata["inputs"]),
            outputs=tensors(metadata["outputs"]),
        )

    async def model_infer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        plane = self.plane
        if self.auth_token is not None and not _authorized(context, self.auth_token):
            raise ProtocolError(401, "missing or wrong bearer token (metadata authorization)")
        plane.batcher.request_started()
        try:
            plane.check_model(request.model_name, request.model_version or None)
            header_id = _metadata(context, "x-request-id")
            inference = await plane.infer_document(
                request.model_name,
                request_document(request),
                header_id,
                request.model_version or None,
            )
        finally:
            plane.batcher.request_finished()
        return response_message(
            plane,
            inference.request_id,
            inference.outputs,
            inference.parameters,
            raw=bool(request.raw_input_contents),
        )


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _authorized(context: grpc.aio.ServicerContext[Any, Any], token: bytes) -> bool:
    given = _metadata(context, "authorization") or ""
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token)


def _counted(plane: DataPlane, endpoint: str, method: Handler) -> Handler:
    """``method`` with its refusals as gRPC statuses and every call in the request metrics."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        status = 200
        try:
            return await method(request, context)
        except ProtocolError as exc:
            status = exc.status
            await context.abort(status_code(exc.status), exc.message)
        except Exception as exc:  # a bug, not a bad request: say so, keep serving
            if isinstance(exc, grpc.aio.AbortError):  # context.abort() above, or a cancel
                raise
            status = 500
            log.exception("unexpected error on gRPC %s", endpoint)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        finally:
            plane.metrics.observe_request(endpoint, status, time.perf_counter() - started)

    return call


def service_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    """The method handlers of ``inference.GRPCInferenceService``."""
    rpcs: dict[str, tuple[Handler, type[Message], str]] = {
        "ServerLive": (service.server_live, pb.ServerLiveRequest, "grpc_server_live"),
        "ServerReady": (service.server_ready, pb.ServerReadyRequest, "grpc_server_ready"),
        "ModelReady": (service.model_ready, pb.ModelReadyRequest, "grpc_model_ready"),
        "ServerMetadata": (
            service.server_metadata,
            pb.ServerMetadataRequest,
            "grpc_server_metadata",
        ),
        "ModelMetadata": (service.model_metadata, pb.ModelMetadataRequest, "grpc_model_metadata"),
        "ModelInfer": (service.model_infer, pb.ModelInferRequest, "grpc_infer"),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _counted(service.plane, endpoint, method),
            request_deserializer=request_type.FromString,
            response_serializer=_serialize,
        )
        for name, (method, request_type, endpoint) in rpcs.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def start_server(
    plane: DataPlane,
    address: str,
    reuse_port: bool,
    max_message_bytes: int,
    max_concurrent_rpcs: int | None = None,
    auth_token: bytes | None = None,
) -> grpc.aio.Server:
    """Listen on ``address`` (host:port) and serve until ``stop`` is called.

    ``reuse_port``: several worker processes bind the same port and the kernel spreads
    *connections* across them (an HTTP/2 connection, with all its calls, stays on one
    worker). A single-process server binds exclusively, so a second server on the same port
    fails instead of silently sharing it.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers([service_handler(InferenceService(plane, auth_token))])
    server.add_insecure_port(address)
    await server.start()
    return server
