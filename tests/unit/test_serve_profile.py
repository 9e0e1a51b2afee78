"""``GET /profile`` of a real ``kubeloop serve``: the reference profile the operator's live drift
checks compare with (kubeloop.controllers.profiles), read by the operator's own parser."""

from __future__ import annotations

from pathlib import Path

import httpx
from serve_fixtures import StoredModel, free_port, serving, store_model
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from kubeloop.controllers.profiles import parse_served_profile
from kubeloop.drift.profile import Profile


def _iris_model(directory: Path) -> StoredModel:
    iris = load_iris()
    return store_model(directory, LogisticRegression(max_iter=500), iris.data, iris.target,
                       list(iris.feature_names), classification=True)  # fmt: skip


def test_the_server_answers_the_profile_beside_its_verified_model(tmp_path: Path) -> None:
    model = _iris_model(tmp_path / "model")
    written = Profile.from_json_bytes((model.directory / "profile.json").read_bytes())
    with serving(model, tmp_path / "logs") as server:
        answer = httpx.get(server.url + "/profile", timeout=10)
    assert answer.status_code == 200
    served = parse_served_profile(answer.content)
    assert served.model_sha256 == model.sha256
    assert served.profile == written


def test_without_a_profile_the_answer_says_so(tmp_path: Path) -> None:
    model = _iris_model(tmp_path / "model")
    (model.directory / "profile.json").unlink()
    with serving(model, tmp_path / "logs") as server:
        served = parse_served_profile(httpx.get(server.url + "/profile", timeout=10).content)
    assert served.model_sha256 == model.sha256
    assert served.profile is None


def test_with_a_metrics_port_the_profile_is_served_there_only(tmp_path: Path) -> None:
    model = _iris_model(tmp_path / "model")
    metrics_port = free_port()
    with serving(model, tmp_path / "logs", env={"KUBELOOP_SERVE_METRICS_PORT": str(metrics_port)}) as server:
        on_metrics_port = httpx.get(f"http://127.0.0.1:{metrics_port}/profile", timeout=10)
        on_main_port = httpx.get(server.url + "/profile", timeout=10)
    assert parse_served_profile(on_metrics_port.content).model_sha256 == model.sha256
    assert on_main_port.status_code == 404
