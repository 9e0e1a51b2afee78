"""The binary tensor data extension of the Open Inference Protocol, and raw tensor bytes.

Over HTTP, a request whose ``Inference-Header-Content-Length`` header is N carries a JSON
header in its first N bytes and, after it, the raw bytes of every input whose
``parameters.binary_data_size`` is set, in the order of ``inputs``. An output is answered in
binary when the request asks for it (``outputs[i].parameters.binary_data`` or the request's
``parameters.binary_data_output``); the response then has the same form, with
``binary_data_size`` on each binary output. This is what ``tritonclient.http`` sends and
expects by default, and what Triton, KServe and MLServer call the ``binary_tensor_data``
extension.

Raw bytes are the tensor's elements flattened in row-major order, little-endian, with no
padding; ``BOOL`` is one byte per element and each ``BYTES`` element is a 4-byte
little-endian length followed by that many bytes. gRPC's ``raw_input_contents`` /
``raw_output_contents`` use the same layout, so the gRPC adapter uses the same functions.

Everything here is pure: bytes and JSON documents in, arrays and bytes out. A refusal is a
``BinaryDataError`` whose message names the tensor and the fix; the adapters answer it with
400 (HTTP) or INVALID_ARGUMENT (gRPC).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

Array = npt.NDArray[Any]

HEADER_LENGTH = "inference-header-content-length"
EXTENSION = "binary_tensor_data"
BINARY_SIZE = "binary_data_size"

# Fixed-size datatypes: numpy's little-endian dtype of each.
FIXED_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
RAW_DATATYPES = sorted([*FIXED_DTYPES, "BYTES"])
_LENGTH = struct.Struct("<I")


class BinaryDataError(ValueError):
    """Binary tensor data the server cannot take; the message names the tensor and the fix."""


# --------------------------------------------------------------------------------------------
# Raw tensor bytes


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def decode_raw(datatype: str, raw: bytes, shape: Sequence[int], where: str) -> Array:
    """The flat array of a tensor's raw bytes: numbers as their own dtype, ``BYTES`` as str.

    The byte count must be exactly what ``shape`` and ``datatype`` call for; ``BYTES``
    elements must be UTF-8 (a scikit-learn model takes text, not arbitrary bytes).
    """
    count = element_count(shape)
    if datatype == "BYTES":
        return _decode_bytes_elements(raw, count, where)
    dtype = FIXED_DTYPES.get(datatype)
    if dtype is None:
        raise BinaryDataError(
            f"{where}: datatype {datatype!r} cannot be sent as binary data; use one of "
            f"{RAW_DATATYPES}"
        )
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise BinaryDataError(
            f"{where} declares shape {list(shape)} of {datatype} ({count} values, {expected} "
            f"bytes) but its binary data holds {len(raw)} bytes"
        )
    if datatype == "BOOL":
        flags: Array = np.frombuffer(raw, dtype=np.uint8) != 0
        return flags
    return np.frombuffer(raw, dtype=dtype)


def _decode_bytes_elements(raw: bytes, count: int, where: str) -> Array:
    if count * 4 > len(raw):  # checked before allocating: a shape is cheap to declare
        raise BinaryDataError(
            f"{where} (BYTES) declares {count} elements but its binary data holds only "
            f"{len(raw)} bytes; each element is a 4-byte little-endian length followed by its "
            "bytes"
        )
    values = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise BinaryDataError(
                f"{where} (BYTES) declares {count} elements but its binary data ends after "
                f"{i}; each element is a 4-byte little-endian length followed by its bytes"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BinaryDataError(
                f"{where} (BYTES) element {i} declares {length} bytes but only "
                f"{len(raw) - offset} remain in its binary data"
            )
        try:
            values[i] = str(view[offset : offset + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise BinaryDataError(
                f"{where} (BYTES) element {i} is not UTF-8 text: {exc.reason}"
            ) from exc
        offset += length
    if offset != len(raw):
        raise BinaryDataError(
            f"{where} (BYTES) declares {count} elements but its binary data holds "
            f"{len(raw) - offset} bytes more"
        )
    return values


def encode_raw(values: Array, datatype: str) -> bytes:
    """A tensor's raw bytes in the protocol's layout (``datatype`` as ``output_datatype`` says)."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in values.ravel().tolist():
            encoded = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(_LENGTH.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    return np.ascontiguousarray(values, dtype=FIXED_DTYPES[datatype]).tobytes()


# --------------------------------------------------------------------------------------------
# The HTTP form: a JSON header, then the binary sections


def header_length(text: str | None, body_size: int) -> int | None:
    """The value of ``Inference-Header-Content-Length``, checked against the body's size."""
    if text is None:
        return None
    try:
        length = int(text.strip())
    except ValueError:
        length = -1
    if length < 0:
        raise BinaryDataError(
            f"Inference-Header-Content-Length is {text!r}; it must be the byte length of the "
            "JSON header at the start of the body (a non-negative integer)"
        )
    if length > body_size:
        raise BinaryDataError(
            f"Inference-Header-Content-Length is {length} but the body has only {body_size} bytes"
        )
    return length


def _binary_size(tensor: dict[str, Any], where: str) -> int | None:
    parameters = tensor.get("parameters")
    if not isinstance(parameters, dict) or BINARY_SIZE not in parameters:
        return None
    size = parameters[BINARY_SIZE]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BinaryDataError(
            f"{where}.parameters.binary_data_size must be a non-negative integer, got {size!r}"
        )
    return size


def _shape(tensor: dict[str, Any], where: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BinaryDataError(f"{where}.shape must be a list of non-negative integers")
    return shape


def attach_binary_inputs(document: dict[str, Any], tail: bytes | None) -> None:
    """Put each binary input's decoded array in its ``data``, in place.

    ``tail`` is the body after the JSON header (``None`` when the request had no
    ``Inference-Header-Content-Length``). Every byte of it must belong to an input.
    """
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        if tail:
            raise BinaryDataError("the request has binary data but no 'inputs' list declaring it")
        return
    offset = 0
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            continue  # the data plane names the problem
        where = f"inputs[{index}]"
        size = _binary_size(tensor, where)
        if size is None:
            continue
        name = tensor.get("name")
        if isinstance(name, str) and name:
            where = f"input {name!r}"
        if tail is None:
            raise BinaryDataError(
                f"{where} has parameters.binary_data_size but the request has no "
                "Inference-Header-Content-Length header: send the JSON header's byte length in "
                "it, followed by the binary data"
            )
        if "data" in tensor:
            raise BinaryDataError(
                f"{where} has both 'data' and parameters.binary_data_size; send one of them"
            )
        if offset + size > len(tail):
            raise BinaryDataError(
                f"{where} declares binary_data_size {size} but only {len(tail) - offset} bytes "
                "of binary data remain after the JSON header"
            )
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str):
            raise BinaryDataError(f"{where}.datatype must be one of {RAW_DATATYPES}")
        tensor["data"] = decode_raw(
            datatype, tail[offset : offset + size], _shape(tensor, where), where
        )
        offset += size
    if tail is not None and offset != len(tail):
        raise BinaryDataError(
            f"the body has {len(tail) - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )


def binary_outputs(document: dict[str, Any], names: Sequence[str]) -> set[str]:
    """The outputs (of ``names``, the ones answered) the client wants as binary data."""
    parameters = document.get("parameters")
    default = bool(isinstance(parameters, dict) and parameters.get("binary_data_output") is True)
    asked: dict[str, bool] = {}
    outputs = document.get("outputs")
    if isinstance(outputs, list):
        for output in outputs:
            if not isinstance(output, dict):
                continue
            output_parameters = output.get("parameters")
            if isinstance(output_parameters, dict) and "binary_data" in output_parameters:
                asked[str(output.get("name"))] = output_parameters["binary_data"] is True
    return {name for name in names if asked.get(name, default)}


def encode_response(
    document: dict[str, Any], raw_outputs: dict[str, bytes]
) -> tuple[bytes, int | None]:
    """The response body and the byte length of its JSON header (``None``: all JSON).

    ``document`` is the response document; each output named in ``raw_outputs`` has no
    ``data`` there, and gets ``binary_data_size``: its bytes follow the JSON header, in the
    order of ``outputs``.
    """
    if not raw_outputs:
        return _dumps(document), None
    sections: list[bytes] = []
    for output in document["outputs"]:
        raw = raw_outputs.get(output["name"])
        if raw is None:
            continue
        output["parameters"] = {**output.get("parameters", {}), BINARY_SIZE: len(raw)}
        sections.append(raw)
    header = _dumps(document)
    return b"".join([header, *sections]), len(header)


def _dumps(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
