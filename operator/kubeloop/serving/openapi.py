"""The OpenAPI 3.0 document of the server's HTTP API, generated from code.

The generic document (any model name) is committed as ``openapi.json`` next to this module;
a test regenerates it and fails on any difference. The running server serves a copy whose
``model_name`` parameter is pinned to the model it serves, so clients and fuzzers see the one
valid name. Regenerate with ``python -m kubeloop.serving.openapi --write``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")
DATATYPES = [
    "BOOL",
    "BYTES",
    "FP16",
    "FP32",
    "FP64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "The request was refused; the message names the field and fix.")


def _schemas() -> dict[str, Any]:
    scalar = {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
    # A feature's value in /predict: a number, text (for a model's text features) or null.
    feature_value = {"anyOf": [{"type": "number", "nullable": True}, {"type": "string"}]}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "Parameters": {"type": "object", "additionalProperties": True},
        "RequestInput": {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": DATATYPES},
                "parameters": _ref("Parameters"),
                "data": {
                    "type": "array",
                    "items": {
                        "oneOf": [
                            scalar,
                            {
                                "type": "array",
                                "items": {"oneOf": [{"type": "number"}, {"type": "string"}]},
                            },
                        ]
                    },
                },
            },
        },
        "RequestOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "enum": ["predict", "predict_proba"]},
                "parameters": _ref("Parameters"),
            },
        },
        "InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": _ref("Parameters"),
                "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
                "outputs": {"type": "array", "items": _ref("RequestOutput")},
            },
        },
        "ResponseOutput": {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string", "enum": DATATYPES},
                "data": {"type": "array", "items": scalar},
            },
        },
        "InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs", "id"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": _ref("Parameters"),
                "outputs": {"type": "array", "items": _ref("ResponseOutput")},
            },
        },
        "TensorMetadata": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
                "parameters": _ref("Parameters"),
            },
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "PredictRequest": {
            "type": "object",
            "required": ["instances"],
            "properties": {
                "id": {"type": "string"},
                "probabilities": {"type": "boolean"},
                "instances": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "oneOf": [
                            {"type": "array", "items": feature_value},
                            {"type": "object", "additionalProperties": feature_value},
                        ]
                    },
                },
            },
        },
        "PredictResponse": {
            "type": "object",
            "required": ["predictions", "id"],
            "properties": {
                "id": {"type": "string"},
                "predictions": {"type": "array", "items": scalar},
                "probabilities": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
        "FeedbackItem": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "string", "description": "The id of the prediction's response."},
                "labels": {"type": "array", "items": scalar},
                "label": scalar,
            },
        },
        "FeedbackRequest": {
            "oneOf": [_ref("FeedbackItem"), {"type": "array", "items": _ref("FeedbackItem")}]
        },
        "FeedbackResponse": {
            "type": "object",
            "required": ["matched", "unknown"],
            "properties": {
                "matched": {"type": "array", "items": {"type": "string"}},
                "unknown": {"type": "array", "items": {"type": "string"}},
            },
        },
    }


def openapi_document(model_name: str | None = None) -> dict[str, Any]:
    """The API description; ``model_name`` pins the path parameter to the served model."""
    name_schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if model_name is not None:
        name_schema = {"type": "string", "enum": [model_name]}
    model_name_param = {
        "name": "model_name",
        "in": "path",
        "required": True,
        "schema": name_schema,
    }
    request_id_header = {
        "x-request-id": {
            "description": "The request id (feedback key), also in the body's id.",
            "schema": {"type": "string"},
        }
    }

    def ok(schema: str, description: str) -> dict[str, Any]:
        return _json(_ref(schema), description)

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "kubeloop serve",
            "version": "v2",
            "description": "Open Inference Protocol v2 for a scikit-learn model, plus plain "
            "JSON prediction, delayed-label feedback and Prometheus metrics.",
        },
        "paths": {
            "/v2/health/live": {
                "get": {
                    "operationId": "live",
                    "responses": {"200": {"description": "The process is up."}},
                }
            },
            "/v2/health/ready": {
                "get": {
                    "operationId": "ready",
                    "responses": {
                        "200": {"description": "Ready for traffic."},
                        "503": {"description": "Shutting down: send traffic elsewhere."},
                    },
                }
            },
            "/v2": {
                "get": {
                    "operationId": "serverMetadata",
                    "responses": {"200": ok("ServerMetadata", "Server metadata.")},
                }
            },
            "/v2/models/{model_name}": {
                "get": {
                    "operationId": "modelMetadata",
                    "parameters": [model_name_param],
                    "responses": {"200": ok("ModelMetadata", "Model metadata."), "404": _ERROR},
                }
            },
            "/v2/models/{model_name}/ready": {
                "get": {
                    "operationId": "modelReady",
                    "parameters": [model_name_param],
                    "responses": {
                        "200": {"description": "The model is ready."},
                        "404": _ERROR,
                        "503": {"description": "Shutting down."},
                    },
                }
            },
            "/v2/models/{model_name}/infer": {
                "post": {
                    "operationId": "infer",
                    "parameters": [
                        model_name_param,
                        {
                            "name": "Inference-Header-Content-Length",
                            "in": "header",
                            "required": False,
                            "description": "Binary tensor data extension: the byte length of "
                            "the JSON document at the start of the body; the raw bytes of the "
                            "inputs with parameters.binary_data_size follow it.",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("InferenceRequest")}},
                    },
                    "responses": {
                        "200": {
                            **ok("InferenceResponse", "Inference result."),
                            "headers": request_id_header,
                        },
                        "400": _ERROR,
                        "404": _ERROR,
                    },
                }
            },
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PredictRequest")}},
                    },
                    "responses": {
                        "200": {
                            **ok("PredictResponse", "Predictions, one per instance."),
                            "headers": request_id_header,
                        },
                        "400": _ERROR,
                    },
                }
            },
            "/feedback": {
                "post": {
                    "operationId": "feedback",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("FeedbackRequest")}},
                    },
                    "responses": {
                        "200": ok("FeedbackResponse", "Which ids were matched."),
                        "400": _ERROR,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": _schemas()},
    }


def render(model_name: str | None = None) -> bytes:
    """The document as committed: indented, keys in code order, trailing newline."""
    return orjson.dumps(openapi_document(model_name), option=orjson.OPT_INDENT_2) + b"\n"


def main(argv: list[str] | None = None) -> int:
    """``--write`` regenerates the committed document; otherwise print it."""
    args = sys.argv[1:] if argv is None else argv
    if "--write" in args:
        DOCUMENT_PATH.write_bytes(render())
        print(f"wrote {DOCUMENT_PATH}")
    else:
        sys.stdout.buffer.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
