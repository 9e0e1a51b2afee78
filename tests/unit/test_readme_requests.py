"""The README's copy-paste inference requests work against the quickstart model.

The README's ``curl`` commands are taken from the README itself (tests/unit/docs_blocks.py),
the model is trained by ``kubeloop.training`` from examples/quickstart/trainingrun.yaml's own
spec, and it is served by a real ``kubeloop serve`` process named like the quickstart
ModelDeployment, on a real socket. Each request's path, headers and body go to that server
unchanged; only ``localhost:8080`` (the README's port-forward to the Service) becomes the
test server's address.

What this does not prove: the port-forward and the Service themselves (the e2e tests reach
the servers through Service DNS and the pod proxy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from docs_blocks import QUICKSTART, REPO, Item, all_items
from serve_fixtures import StoredModel, serving

from kubeloop.training.artifacts import load_model
from kubeloop.training.spec import parse_spec
from kubeloop.training.trainer import TrainingRequest, run_training

FORWARDED = "localhost:8080"


def readme_curls() -> list[Item]:
    return [
        item
        for item in all_items()
        if item.kind == "command" and item.where.startswith("README.md:")
        and isinstance(item.data, list) and item.data[0] == "curl"
    ]


def request_of(argv: list[str]) -> tuple[str, dict[str, str], str]:
    """(path, headers, body) of a ``curl URL -H ... -d ...`` command line."""
    url, body, headers = "", "", {}
    i = 1
    while i < len(argv):
        token = argv[i]
        if token in {"-d", "--data", "--data-raw"}:
            body, i = argv[i + 1], i + 2
        elif token in {"-H", "--header"}:
            name, _, value = argv[i + 1].partition(":")
            headers[name.strip()] = value.strip()
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            url, i = token, i + 1
    assert url.startswith(FORWARDED + "/"), f"the README's requests go to the port-forward {FORWARDED}: {url}"
    return url.removeprefix(FORWARDED), headers, body


@pytest.fixture(scope="module")
def quickstart_model(tmp_path_factory: pytest.TempPathFactory) -> StoredModel:
    """The quickstart TrainingRun's model, trained by the trainer's own code path."""
    root = tmp_path_factory.mktemp("quickstart")
    run = yaml.safe_load((QUICKSTART / "trainingrun.yaml").read_text())
    outcome = run_training(
        TrainingRequest(spec=parse_spec(run["spec"]), run_name=run["metadata"]["name"],
                        storage_uri=f"file://{root}/models")
    )  # fmt: skip
    assert outcome.result.status == "Succeeded", outcome.result.message
    assert outcome.result.uri and outcome.result.sha256
    estimator = load_model(outcome.result.uri, outcome.result.sha256)
    return StoredModel(
        directory=Path(outcome.result.uri.removeprefix("file://")).parent,
        sha256=outcome.result.sha256,
        estimator=estimator,
        features=None,  # type: ignore[arg-type]
        feature_names=[str(n) for n in estimator.feature_names_in_],
        target=None,  # type: ignore[arg-type]
    )


def test_the_readme_forwards_to_the_quickstart_service() -> None:
    deployment = yaml.safe_load((QUICKSTART / "modeldeployment.yaml").read_text())
    readme = (REPO / "README.md").read_text()
    name, port = deployment["metadata"]["name"], deployment["spec"]["server"]["port"]
    assert f"kubectl port-forward svc/{name} 8080:{port}" in readme
    assert all(f"/v2/models/{name}/" in i.text or "/predict" in i.text for i in readme_curls())


def test_the_readme_requests_get_answers_from_the_quickstart_model(
    quickstart_model: StoredModel, tmp_path: Path
) -> None:
    curls = readme_curls()
    paths = sorted(request_of(item.data)[0] for item in curls)
    # Both protocols: an extractor that found nothing (or one of them) would pass otherwise.
    assert paths == ["/predict", "/v2/models/breast-cancer/infer"], paths
    answers: dict[str, Any] = {}
    with serving(quickstart_model, tmp_path, "--model-name", "breast-cancer") as server:
        for item in curls:
            path, headers, body = request_of(item.data)
            response = httpx.post(server.url + path, content=body, headers=headers, timeout=30)
            assert response.status_code == 200, f"{item.where}: {response.status_code} {response.text}"
            answers[path] = response.json()
    # The README says: the first row of the data, class 0 (malignant).
    v2 = answers["/v2/models/breast-cancer/infer"]
    assert v2["model_name"] == "breast-cancer"
    assert v2["outputs"][0]["data"] == [0]
    assert answers["/predict"]["predictions"] == [0]
