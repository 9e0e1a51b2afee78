"""The data plane: Open Inference Protocol v2 and plain JSON, with no transport in sight.

Every function takes decoded request data (or raw body bytes) and returns the response
document; every refusal is a ``ProtocolError`` carrying its HTTP status and a message that
names the field and the fix. The HTTP adapter (``app.py``) only moves bytes. Anything a
client can send that the model cannot take is a 4xx here, never a 5xx.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from kubeloop.serving import binary_tensors
from kubeloop.serving.batching import MicroBatcher, ModelInputError, Prediction, QueueFull
from kubeloop.serving.feedback import (
    LABELLED,
    FeedbackError,
    FeedbackScore,
    IdInUse,
    RecentPredictions,
    class_roles,
    score,
)
from kubeloop.serving.metrics import ServeMetrics
from kubeloop.serving.model import ServedModel

Array = npt.NDArray[Any]

PREDICT_OUTPUT = "predict"
PROBA_OUTPUT = "predict_proba"
FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
SUPPORTED_DATATYPES = sorted([*FLOAT_TYPES, *INT_TYPES, "BOOL", "BYTES"])
SERVER_NAME = "kubeloop"


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # answer, then close the connection (e.g. a body left unread)


def bad_request(message: str) -> ProtocolError:
    return ProtocolError(400, message)


# --------------------------------------------------------------------------------------------
# Request ids


class RequestIds:
    """Unguessable ids: 128 random bits each, so nobody can label another client's request,
    after a random prefix of this worker process (which worker served an id, for logs)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6) + "-"

    def new(self) -> str:
        return self._prefix + secrets.token_hex(16)


# --------------------------------------------------------------------------------------------
# Decoding


def parse_json(body: bytes) -> Any:
    """The JSON document of a request body, or a 400 saying what is wrong with it."""
    if not body:
        raise bad_request("request body is empty: send a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from exc


def _shape_of(raw: Any, where: str) -> list[int]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise bad_request(f"{where}.shape must be a list of non-negative integers, got {raw!r}")
    return raw


def _numbers(data: Any, where: str, allow_null: bool) -> Array:
    """Any JSON (nested) list as a float64 array; refuses text, booleans and ragged lists."""
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError) as exc:
        raise bad_request(f"{where} is not a regular (non-ragged) list of numbers: {exc}") from exc
    if array.dtype.kind in "iuf":
        return array.astype(np.float64, copy=False)
    if array.dtype.kind == "O":
        flat = array.ravel().tolist()
        for v in flat:
            if v is None and allow_null:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise bad_request(f"{where} holds {v!r}, which is not a number")
        try:
            return np.asarray(
                [math.nan if v is None else v for v in flat], dtype=np.float64
            ).reshape(array.shape)
        except OverflowError as exc:
            raise bad_request(f"{where} holds a number too large for float64") from exc
    sample = array.ravel()[0] if array.size else None
    raise bad_request(f"{where} holds {sample!r}, which is not a number")


def decode_tensor(tensor: Any, index: int, keep_bytes: bool = False) -> tuple[str, Array]:
    """One v2 input tensor as (name, array of its declared shape).

    The array is float64, except for a ``BYTES`` tensor when ``keep_bytes`` is set (a model
    that takes text): then it is an object array of the values as sent (str, numbers, None),
    converted per feature by ``rows_from_inputs``.
    """
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        raise bad_request(f"{where} must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    shape = _shape_of(tensor.get("shape"), where)
    datatype = tensor.get("datatype")
    if datatype not in SUPPORTED_DATATYPES:
        raise bad_request(
            f"{where}.datatype {datatype!r} is not supported; use one of {SUPPORTED_DATATYPES}"
        )
    if "data" not in tensor:
        raise bad_request(
            f"{where} has no 'data': send its values in 'data', or as binary tensor data "
            "(parameters.binary_data_size, with the Inference-Header-Content-Length header)"
        )
    data = tensor["data"]
    if isinstance(data, np.ndarray):  # binary tensor data or gRPC contents, already decoded
        values = _decoded_values(data, datatype, where, keep_bytes)
    else:
        values = _json_tensor_values(
            data if isinstance(data, list) else [data], datatype, where, keep_bytes
        )
    expected = math.prod(shape)
    if values.size != expected:
        raise bad_request(
            f"{where} declares shape {shape} ({expected} values) but its data holds "
            f"{values.size} values"
        )
    try:
        return name, values.reshape(shape)
    except ValueError as exc:  # e.g. more than 64 dimensions, or an empty shape too big to index
        raise bad_request(
            f"{where} declares shape {shape}, which numpy cannot hold: {exc}"
        ) from exc


def _json_tensor_values(data: list[Any], datatype: str, where: str, keep_bytes: bool) -> Array:
    """A tensor's JSON ``data`` as float64 (or, for text, an object array of what was sent)."""
    if datatype == "BYTES":
        return _bytes_values(data, where) if keep_bytes else _bytes_as_numbers(data, where)
    if datatype == "BOOL":
        return _bools(data, where)
    values = _numbers(data, f"{where}.data", allow_null=datatype in FLOAT_TYPES)
    if datatype in INT_TYPES:
        finite = values[np.isfinite(values)]
        if finite.size != values.size or not np.all(finite == np.round(finite)):
            raise bad_request(f"{where} is {datatype} but its data holds non-integer values")
    elif datatype != "FP64":
        # The client declared lower precision: the values are what that type can hold.
        with np.errstate(over="ignore"):
            values = values.astype(FLOAT_TYPES[datatype]).astype(np.float64)
    return values


def _decoded_values(data: Array, datatype: str, where: str, keep_bytes: bool) -> Array:
    """A tensor that arrived as raw bytes or typed gRPC contents (BYTES as an array of str)."""
    if datatype != "BYTES":
        return data.astype(np.float64)
    if keep_bytes:
        return data
    return _bytes_as_numbers(data.tolist(), where)


def _flat_objects(data: list[Any], where: str) -> list[Any]:
    try:
        flat: list[Any] = np.asarray(data, dtype=object).ravel().tolist()
    except ValueError as exc:
        raise bad_request(f"{where}.data is not a regular (non-ragged) list: {exc}") from exc
    if any(isinstance(v, list) for v in flat):  # rows of different lengths
        raise bad_request(f"{where}.data is not a regular (non-ragged) list of values")
    return flat


def _bytes_values(data: list[Any], where: str) -> Array:
    """BYTES data kept as sent, for models that take text: strings, numbers or null."""
    flat = _flat_objects(data, where)
    for v in flat:
        if v is not None and (isinstance(v, bool) or not isinstance(v, str | int | float)):
            raise bad_request(f"{where} (BYTES) holds {v!r}; send strings, numbers or null")
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out


def _bytes_as_numbers(data: list[Any], where: str) -> Array:
    flat = _flat_objects(data, where)
    out = np.empty(len(flat), dtype=np.float64)
    for i, v in enumerate(flat):
        try:
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ValueError(v)
            out[i] = float(v)
        except (ValueError, OverflowError) as exc:
            raise bad_request(
                f"{where} (BYTES) holds {v!r}, which is not a number; this model takes numeric "
                "features"
            ) from exc
    return out


def _bools(data: list[Any], where: str) -> Array:
    flat = _flat_objects(data, where)
    if not all(isinstance(v, bool) for v in flat):
        raise bad_request(f"{where} is BOOL but its data holds non-boolean values")
    return np.asarray(flat, dtype=np.float64)


def _feature_list(model: ServedModel) -> str:
    names = model.feature_names
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"{len(names)} features: {shown}"


# -- models that take text ------------------------------------------------------------------
# Their rows are an object matrix: a float in every numeric column (NaN when missing), a str
# in every text column (NaN when missing), which the model's DataFrame builder turns into
# the columns the model was fitted on.


def _text_value(value: Any, where: str) -> Any:
    """A text feature's value: strings as sent, numbers as the profile writes them."""
    if isinstance(value, str):
        return value
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{where} is {value!r}; this feature takes text: send a string")
    if isinstance(value, float):
        if math.isnan(value):
            return math.nan
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


def _number_value(value: Any, where: str, parse_text: bool) -> float:
    """A numeric feature's value; text is refused (or parsed, for BYTES tensors)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad_request(f"{where} is {value!r}, not a number; this feature takes numbers")
    if isinstance(value, str) and not parse_text:
        raise bad_request(f"{where} is {value!r}, not a number; this feature takes numbers")
    try:
        return float(value)
    except (ValueError, OverflowError) as exc:
        raise bad_request(
            f"{where} is {value!r}, not a number; this feature takes numbers"
        ) from exc


def _mixed_column(values: Array, text: bool, where: str) -> list[Any]:
    flat = values.tolist()
    if text:
        return [_text_value(v, where) for v in flat]
    parse_text = values.dtype.kind == "O"  # BYTES: numbers may come as strings
    return [_number_value(v, where, parse_text) for v in flat]


def _mixed_rows(columns: list[list[Any]]) -> Array:
    rows = np.empty((len(columns[0]), len(columns)), dtype=object)
    for i, column in enumerate(columns):
        rows[:, i] = column
    return rows


def _is_single_matrix(tensors: list[tuple[str, Array]], model: ServedModel) -> bool:
    """One input holding every feature (not one input per feature, named after it)."""
    return len(tensors) == 1 and (model.n_features == 1 or model.column_of(tensors[0][0]) is None)


def _as_matrix(name: str, values: Array, model: ServedModel, alternative: str = "") -> Array:
    """A single input as [rows, features]: a flat input is one row, or one column for 1 feature."""
    n_features = model.n_features
    if values.ndim == 1:
        if n_features == 1:
            values = values.reshape(-1, 1)
        elif values.shape[0] == n_features:
            values = values.reshape(1, -1)
    if values.ndim != 2 or values.shape[1] != n_features:
        raise bad_request(
            f"input {name!r} has shape {list(values.shape)}; expected [rows, {n_features}] "
            f"({_feature_list(model)}){alternative}"
        )
    return values


def _mixed_rows_from_tensors(tensors: list[tuple[str, Array]], model: ServedModel) -> Array:
    names, text = model.feature_names, model.text_columns
    n_features = model.n_features
    if _is_single_matrix(tensors, model):
        name, values = tensors[0]
        values = _as_matrix(name, values, model, ", or one input per feature named after it")
        columns = [
            _mixed_column(values[:, i], text[i], f"input {name!r} column {i} ({names[i]!r})")
            for i in range(n_features)
        ]
    else:
        by_column = _columns_by_feature(tensors, model)
        columns = [
            _mixed_column(by_column[i], text[i], f"input {names[i]!r}") for i in range(n_features)
        ]
    return _mixed_rows(columns)


def _instance_column(model: ServedModel, row: int, key: str) -> int:
    """The column of a /predict object's key; an unknown feature is the client's error."""
    column = model.column_of(key)
    if column is None:
        raise bad_request(
            f"instances[{row}] has unknown feature {key!r}; the model takes {_feature_list(model)}"
        )
    return column


def _mixed_rows_from_instances(instances: list[Any], model: ServedModel) -> Array:
    names, text = model.feature_names, model.text_columns
    n_features = model.n_features
    columns: list[list[Any]] = [[math.nan] * len(instances) for _ in range(n_features)]
    for r, row in enumerate(instances):
        if isinstance(row, dict):
            items = []
            for key, value in row.items():
                column = _instance_column(model, r, key)
                items.append((column, value, f"instances[{r}].{key}"))
        else:
            items = [(i, v, f"instances[{r}][{i}] ({names[i]!r})") for i, v in enumerate(row)]
        for column, value, where in items:
            columns[column][r] = (
                _text_value(value, where)
                if text[column]
                else _number_value(value, where, parse_text=False)
            )
    return _mixed_rows(columns)


def rows_from_inputs(inputs: Any, model: ServedModel) -> Array:
    """The (rows x features) matrix a v2 request describes.

    Either one input holding a [rows, features] matrix (or [features] for one row), or one
    input per feature, named after it, each [rows] or [rows, 1]. For a model that takes
    text, text features come as ``BYTES`` (strings), and the matrix is an object matrix.
    """
    if not isinstance(inputs, list) or not inputs:
        raise bad_request("inputs must be a non-empty list of tensors")
    if model.takes_text:
        tensors = [decode_tensor(t, i, keep_bytes=True) for i, t in enumerate(inputs)]
        rows = _mixed_rows_from_tensors(tensors, model)
        if rows.shape[0] == 0:
            raise bad_request("the request has no rows (shape has 0 rows)")
        return rows
    tensors = [decode_tensor(t, i) for i, t in enumerate(inputs)]
    if _is_single_matrix(tensors, model):
        name, values = tensors[0]
        rows = _as_matrix(name, values, model)
    else:
        rows = _columns_to_rows(tensors, model)
    if rows.shape[0] == 0:
        raise bad_request("the request has no rows (shape has 0 rows)")
    return rows


def _columns_to_rows(tensors: list[tuple[str, Array]], model: ServedModel) -> Array:
    columns = _columns_by_feature(tensors, model)
    return np.column_stack([columns[i] for i in range(model.n_features)])


def _columns_by_feature(tensors: list[tuple[str, Array]], model: ServedModel) -> dict[int, Array]:
    """One input per feature: each feature's column, all of the same length."""
    columns: dict[int, Array] = {}
    for name, values in tensors:
        column = model.column_of(name)
        if column is None:
            raise bad_request(
                f"input {name!r} is not a feature of this model; send one input per feature "
                f"named after it, or one [rows, {model.n_features}] input ({_feature_list(model)})"
            )
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise bad_request(f"input {name!r} has shape {list(values.shape)}; expected [rows]")
        columns[column] = values
    missing = [model.feature_names[i] for i in range(model.n_features) if i not in columns]
    if missing:
        raise bad_request(f"inputs are missing features {missing[:10]}; send all of them")
    lengths = {v.shape[0] for v in columns.values()}
    if len(lengths) != 1:
        raise bad_request(f"feature inputs have different row counts {sorted(lengths)}")
    return columns


def rows_from_instances(instances: Any, model: ServedModel) -> Array:
    """The matrix of a /predict request: lists of values, or objects keyed by feature name."""
    if not isinstance(instances, list) or not instances:
        raise bad_request("instances must be a non-empty list of rows")
    n_features = model.n_features
    if model.takes_text:
        _check_instance_rows(instances, model)
        return _mixed_rows_from_instances(instances, model)
    if all(isinstance(row, dict) for row in instances):
        rows = np.full((len(instances), n_features), np.nan)
        for r, row in enumerate(instances):
            for key, value in row.items():
                column = _instance_column(model, r, key)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise bad_request(f"instances[{r}].{key} is {value!r}, not a number")
                rows[r, column] = value
        return rows
    _check_instance_rows(instances, model)
    return _numbers(instances, "instances", allow_null=True)


def _check_instance_rows(instances: list[Any], model: ServedModel) -> None:
    """Every row an object, or every row a list of one value per feature."""
    if all(isinstance(row, dict) for row in instances):
        return
    if any(isinstance(row, dict) for row in instances):
        raise bad_request("instances mixes lists and objects; use one form for every row")
    n_features = model.n_features
    for r, row in enumerate(instances):
        if not isinstance(row, list):
            raise bad_request(f"instances[{r}] must be a list of {n_features} values")
        if len(row) != n_features:
            raise bad_request(
                f"instances[{r}] has {len(row)} values; the model takes {_feature_list(model)}"
            )


# --------------------------------------------------------------------------------------------
# Encoding


def output_datatype(values: Array) -> str:
    """The v2 datatype of a numpy array."""
    kind = values.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


def _json_values(values: Array) -> Any:
    if values.dtype.kind in "iufb":
        return values.ravel()  # orjson writes numpy arrays natively
    return [str(v) for v in values.ravel().tolist()]


def encode_output(name: str, values: Array) -> dict[str, Any]:
    """One v2 output tensor (data flattened in row-major order, as the protocol says)."""
    return {
        "name": name,
        "shape": list(values.shape),
        "datatype": output_datatype(values),
        "data": _json_values(values),
    }


def dumps(document: Any) -> bytes:
    """Serialise a response document (numpy arrays included)."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


# --------------------------------------------------------------------------------------------
# The data plane


@dataclass
class Inference:
    """One answered v2 inference request, before it is encoded for its transport."""

    request_id: str
    outputs: list[tuple[str, Array]]  # (output name, values), in the order asked for
    parameters: dict[str, Any] | None


@dataclass
class FeedbackOutcome:
    """What one /feedback call did, and the ids this worker did not know."""

    matched: list[str] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    already_labelled: list[str] = field(default_factory=list)


class DataPlane:
    """Protocol handling for one served model; transport-free and testable on its own."""

    def __init__(
        self,
        model: ServedModel,
        batcher: MicroBatcher,
        metrics: ServeMetrics,
        recent: RecentPredictions,
        mirror: Callable[[Array, Array], None] | None = None,
        version: str = "0",
        max_request_rows: int = 100_000,
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.metrics = metrics
        self.recent = recent
        self.mirror = mirror
        self.version = version
        self.max_request_rows = max_request_rows
        self.ids = RequestIds()
        self.draining = False
        self._versions = {model.short_sha, model.sha256}
        self._output_names = [PREDICT_OUTPUT, *([PROBA_OUTPUT] if model.has_proba else [])]
        self.class_roles = class_roles(model.classes)  # how live F1 counts each class
        metrics.start_feedback_classes(self.class_roles)

    # -- health and metadata ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": SERVER_NAME,
            "version": self.version,
            "extensions": [binary_tensors.EXTENSION],
        }

    def check_model(self, name: str, version: str | None = None) -> None:
        """404 unless ``name`` (and ``version``, when given) is the served model."""
        if name != self.model.name:
            raise ProtocolError(
                404, f"model {name!r} not found; this server serves {self.model.name!r}"
            )
        if version is not None and version not in self._versions:
            raise ProtocolError(
                404,
                f"version {version!r} of model {name!r} not found; this server serves version "
                f"{self.model.short_sha!r}",
            )

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        self.check_model(name, version)
        model = self.model
        outputs = [{"name": PREDICT_OUTPUT, "datatype": self._predict_datatype(), "shape": [-1]}]
        if model.has_proba and model.classes is not None:
            outputs.append(
                {"name": PROBA_OUTPUT, "datatype": "FP64", "shape": [-1, len(model.classes)]}
            )
        parameters: dict[str, Any] = {
            "task": model.task,
            "sha256": model.sha256,
            "feature_names": model.feature_names,
            "content_type": "pd" if model.takes_text else "np",
        }
        if model.takes_text:
            parameters["text_features"] = model.text_features
        if model.classes is not None:
            parameters["classes"] = _json_values(model.classes)
        return {
            "name": model.name,
            "versions": [model.short_sha],
            "platform": "sklearn",
            "inputs": self._inputs_metadata(),
            "outputs": outputs,
            "parameters": parameters,
        }

    def _inputs_metadata(self) -> list[dict[str, Any]]:
        model = self.model
        if not model.takes_text:
            return [{"name": "input-0", "datatype": "FP64", "shape": [-1, model.n_features]}]
        # Text features are BYTES: one input per feature, named after it.
        return [
            {"name": name, "datatype": "BYTES" if text else "FP64", "shape": [-1]}
            for name, text in zip(model.feature_names, model.text_columns, strict=True)
        ]

    def _predict_datatype(self) -> str:
        if self.model.classes is not None:
            return output_datatype(self.model.classes)
        return "FP64"

    # -- inference --------------------------------------------------------------------------

    def _requested_outputs(self, outputs: Any) -> list[str]:
        # No selection means the model's main output, as MLServer's scikit-learn runtime does.
        if outputs is None or outputs == []:
            return [PREDICT_OUTPUT]
        if not isinstance(outputs, list):
            raise bad_request('outputs must be a list of {"name": ...} objects')
        names = []
        for i, output in enumerate(outputs):
            name = output.get("name") if isinstance(output, dict) else None
            if name not in self._output_names:
                raise bad_request(
                    f"outputs[{i}].name {name!r} is not an output of this model; "
                    f"choose from {self._output_names}"
                )
            names.append(name)
        return names

    def check_rows(self, count: int) -> None:
        """413 for a request of more rows than ``max_request_rows``."""
        if count > self.max_request_rows:
            raise ProtocolError(
                413,
                f"the request has {count} rows; this server takes at most "
                f"{self.max_request_rows} per request (--max-request-rows): split it",
            )

    async def _predict(self, rows: Array, want_proba: bool) -> Prediction:
        self.check_rows(rows.shape[0])
        try:
            return await self.batcher.predict(rows, want_proba)
        except ModelInputError as exc:
            raise bad_request(f"the model rejected the input: {exc}") from exc
        except QueueFull as exc:
            raise ProtocolError(503, f"overloaded: {exc}; retry later") from exc

    def request_id(self, document: dict[str, Any], header_id: str | None) -> str:
        """The id a response carries: the client's (body, then header) or a new one.

        A client's id that this worker still holds a prediction or label for is refused
        (409): an id names one prediction, so a second request cannot take over its label.
        """
        given = document.get("id")
        if given is not None:
            if not isinstance(given, str) or not given or len(given) > 256:
                raise bad_request("id must be a non-empty string of at most 256 characters")
        elif header_id:
            given = header_id[:256]
        else:
            return self.ids.new()
        if self.recent.holds(given):
            raise _id_in_use(given)
        return given

    async def infer(
        self, name: str, body: bytes, header_id: str | None = None, version: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Open Inference Protocol v2 inference, JSON only; returns (request id, response)."""
        self.check_model(name, version)
        inference = await self.infer_document(name, parse_json(body), header_id, version)
        return inference.request_id, self.response_document(inference)

    async def infer_http(
        self,
        name: str,
        body: bytes,
        header_length: str | None = None,
        header_id: str | None = None,
        version: str | None = None,
    ) -> tuple[str, bytes, int | None]:
        """v2 inference over HTTP, JSON or binary tensor data (``Inference-Header-Content-Length``).

        Returns (request id, response body, byte length of the JSON header when the response
        carries binary outputs, else ``None``).
        """
        self.check_model(name, version)
        try:
            length = binary_tensors.header_length(header_length, len(body))
            document = parse_json(body if length is None else body[:length])
            if isinstance(document, dict):
                binary_tensors.attach_binary_inputs(
                    document, None if length is None else body[length:]
                )
        except binary_tensors.BinaryDataError as exc:
            raise bad_request(str(exc)) from exc
        inference = await self.infer_document(name, document, header_id, version)
        binary = binary_tensors.binary_outputs(document, [n for n, _ in inference.outputs])
        raw = {
            name: binary_tensors.encode_raw(values, output_datatype(values))
            for name, values in inference.outputs
            if name in binary
        }
        response = self.response_document(inference, without_data=binary)
        reply, json_length = binary_tensors.encode_response(response, raw)
        return inference.request_id, reply, json_length

    async def infer_document(
        self, name: str, document: Any, header_id: str | None = None, version: str | None = None
    ) -> Inference:
        """Inference on a decoded request document (input ``data`` may be decoded arrays)."""
        self.check_model(name, version)
        if not isinstance(document, dict):
            raise bad_request("request body must be a JSON object with 'inputs'")
        request_id = self.request_id(document, header_id)
        parameters = document.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise bad_request("parameters must be a JSON object")
        wanted = self._requested_outputs(document.get("outputs"))
        rows = rows_from_inputs(document.get("inputs"), self.model)
        want_proba = PROBA_OUTPUT in wanted
        result = await self._predict(rows, want_proba)
        self._after_prediction(request_id, rows, result.predictions)
        outputs = []
        for output in wanted:
            if output == PREDICT_OUTPUT:
                outputs.append((PREDICT_OUTPUT, result.predictions))
            elif result.probabilities is not None:
                outputs.append((PROBA_OUTPUT, result.probabilities))
        return Inference(request_id, outputs, parameters or None)

    def response_document(
        self, inference: Inference, without_data: Collection[str] = ()
    ) -> dict[str, Any]:
        """The v2 response document; outputs named in ``without_data`` go as binary data."""
        outputs = []
        for name, values in inference.outputs:
            output = encode_output(name, values)
            if name in without_data:
                del output["data"]
            outputs.append(output)
        response: dict[str, Any] = {
            "model_name": self.model.name,
            "model_version": self.model.short_sha,
            "id": inference.request_id,
            "outputs": outputs,
        }
        if inference.parameters:
            response["parameters"] = inference.parameters
        return response

    async def predict(
        self, body: bytes, header_id: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Plain JSON prediction: ``{"instances": [...]}`` -> ``{"predictions": [...]}``."""
        document = parse_json(body)
        if isinstance(document, list):
            document = {"instances": document}
        if isinstance(document, dict) and isinstance(document.get("instances"), list):
            self.check_rows(len(document["instances"]))  # before any conversion
        if not isinstance(document, dict) or "instances" not in document:
            raise bad_request(
                'request body must be {"instances": [[...], ...]} or '
                '{"instances": [{"feature": value, ...}, ...]}'
            )
        request_id = self.request_id(document, header_id)
        want_proba = bool(document.get("probabilities", False))
        if want_proba and not self.model.has_proba:
            raise bad_request("probabilities: this model is not a classifier with predict_proba")
        rows = rows_from_instances(document["instances"], self.model)
        result = await self._predict(rows, want_proba)
        self._after_prediction(request_id, rows, result.predictions)
        response: dict[str, Any] = {
            "predictions": _json_values(result.predictions),
            "id": request_id,
        }
        if result.probabilities is not None:
            response["probabilities"] = result.probabilities
        return request_id, response

    def _after_prediction(self, request_id: str, rows: Array, predictions: Array) -> None:
        try:
            self.recent.remember(request_id, predictions)
        except IdInUse as exc:  # a concurrent request with the same id got there first
            raise _id_in_use(request_id) from exc
        if self.mirror is not None:
            self.mirror(rows, predictions)

    # -- feedback ---------------------------------------------------------------------------

    def parse_feedback(self, body: bytes) -> list[dict[str, Any]]:
        """Feedback items ``{"id": ..., "labels": [...]}`` (or ``"label"`` for one row)."""
        document = parse_json(body)
        items = document if isinstance(document, list) else [document]
        parsed = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise bad_request(
                    f'feedback[{i}] must be {{"id": "<request id>", "labels": [...]}}'
                )
            if "labels" in item:
                labels = item["labels"]
                if not isinstance(labels, list):
                    raise bad_request(f"feedback[{i}].labels must be a list, one label per row")
            elif "label" in item:
                labels = [item["label"]]
            else:
                raise bad_request(f"feedback[{i}] needs 'labels' (a list) or 'label'")
            parsed.append({"id": item["id"], "labels": labels})
        return parsed

    def feedback(self, items: list[dict[str, Any]], count_unknown: bool = True) -> FeedbackOutcome:
        """Score labels against remembered predictions and update the live metrics.

        All items are checked before any is counted, so a 400 has no side effects. Each id
        is scored once: a label for an id already labelled is listed in ``already_labelled``
        (the HTTP layer answers 409) and changes nothing.
        """
        scored: list[tuple[str, FeedbackScore]] = []
        outcome = FeedbackOutcome()
        seen: set[str] = set()
        for item in items:
            predictions = self.recent.peek(item["id"])
            if predictions is LABELLED or item["id"] in seen:
                outcome.already_labelled.append(item["id"])
                continue
            if not isinstance(predictions, np.ndarray):
                outcome.unknown.append(item)
                continue
            seen.add(item["id"])
            try:
                scored.append(
                    (
                        item["id"],
                        score(predictions, item["labels"], self.model.task, self.class_roles),
                    )
                )
            except FeedbackError as exc:
                raise bad_request(f"feedback for id {item['id']!r}: {exc}") from exc
        base = self.metrics.labels.values()
        for request_id, result in scored:
            self.recent.mark_labelled(request_id)
            outcome.matched.append(request_id)
            self.metrics.feedback.labels(*base, "matched").inc()
            self.metrics.count_feedback(result)
        if count_unknown:
            self.count_unknown_feedback(len(outcome.unknown))
        return outcome

    def count_already_labelled(self, count: int) -> None:
        if count:
            self.metrics.feedback.labels(*self.metrics.labels.values(), "already_labelled").inc(
                count
            )

    def count_unknown_feedback(self, count: int) -> None:
        if count:
            self.metrics.feedback.labels(*self.metrics.labels.values(), "unknown").inc(count)


def _id_in_use(request_id: str) -> ProtocolError:
    return ProtocolError(
        409,
        f"id {request_id!r} is already used by a prediction this server keeps for /feedback; "
        "give each request its own id (or none: the server then makes an unguessable one)",
    )
