"""KServe's documented custom-model path, serving the benchmark's scikit-learn model.

KServe's scikit-learn runtime is not published on PyPI, so this is the small `kserve.Model`
subclass its docs describe: load in `load()`, answer v2 `InferRequest`s in `predict()`.
Runs inside the KServe virtualenv: python kserve_model.py --model_name rf --model_path ...
"""

from __future__ import annotations

import argparse

import joblib
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.utils import generate_uuid


class SklearnModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:  # type: ignore[no-untyped-def]
        rows = payload.inputs[0].as_numpy()
        result = self.model.predict(rows)  # type: ignore[union-attr]
        output = InferOutput(
            name="predict", shape=list(result.shape), datatype="INT64", data=result.tolist()
        )
        return InferResponse(
            model_name=self.name, infer_outputs=[output], response_id=payload.id or generate_uuid()
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--grpc_port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    model = SklearnModel(args.model_name, args.model_path)
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers).start(
        [model]
    )
