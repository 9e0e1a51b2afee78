"""Artifacts: atomic writes, checksums, and skops loading that trusts only allowed types."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from threadpoolctl import threadpool_limits

from kubeloop.training.artifacts import (
    ArtifactIntegrityError,
    StorageError,
    UntrustedArtifactError,
    dump_model,
    join_uri,
    load_model,
    read_bytes,
    sha256_hex,
    write_atomic,
)
from kubeloop.training.data import load_table


@pytest.fixture(autouse=True)
def _one_thread_per_native_pool() -> Iterator[None]:
    # Two shared cores: OpenMP/BLAS pools spinning against other jobs make small fits crawl.
    with threadpool_limits(limits=1):
        yield



def test_atomic_write_leaves_only_the_final_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "report.json"
    write_atomic(f"file://{target}", b"first")
    write_atomic(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["report.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.skops"
    write_atomic(str(target), b"old model")
    # A directory where the temp file would go makes the write fail midway.
    with pytest.raises(StorageError, match=str(tmp_path)):
        write_atomic(str(tmp_path / "model.skops" / "child"), b"x")
    assert target.read_bytes() == b"old model"
    assert sorted(os.listdir(tmp_path)) == ["model.skops"]


def test_join_uri() -> None:
    assert join_uri("s3://bucket/models/", "churn", "/run-1/") == "s3://bucket/models/churn/run-1"
    assert join_uri("/mnt/models", "m") == "/mnt/models/m"


@pytest.fixture
def fitted() -> tuple[Any, Any]:
    frame = load_table("sklearn://breast_cancer").frame
    features = frame.drop(columns="target")
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(features, frame["target"])
    return model, features


def test_saved_and_reloaded_model_predicts_identically(tmp_path: Path, fitted: tuple[Any, Any]) -> None:
    model, features = fitted
    payload = dump_model(model)
    uri = f"file://{tmp_path}/model.skops"
    write_atomic(uri, payload)
    digest = hashlib.sha256((tmp_path / "model.skops").read_bytes()).hexdigest()
    assert sha256_hex(payload) == digest
    reloaded = load_model(uri, digest)
    np.testing.assert_array_equal(reloaded.predict(features), model.predict(features))
    np.testing.assert_array_equal(reloaded.predict_proba(features), model.predict_proba(features))
    # A run directory works as well as the file itself.
    assert load_model(str(tmp_path), "sha256:" + digest).n_iter_ == model.n_iter_


def test_a_changed_byte_is_refused(tmp_path: Path, fitted: tuple[Any, Any]) -> None:
    payload = bytearray(dump_model(fitted[0]))
    digest = sha256_hex(bytes(payload))
    payload[len(payload) // 2] ^= 0xFF
    (tmp_path / "model.skops").write_bytes(bytes(payload))
    with pytest.raises(ArtifactIntegrityError, match=digest):
        load_model(str(tmp_path / "model.skops"), digest)


class HandMadeClassifier(ClassifierMixin, BaseEstimator):
    """A type outside every allowed prefix, as an attacker's artifact would carry."""

    def fit(self, features: Any, labels: Any) -> HandMadeClassifier:
        self.classes_ = np.unique(labels)
        return self

    def predict(self, features: Any) -> Any:
        return np.full(len(features), self.classes_[0])


def test_types_outside_the_allowed_prefixes_are_refused(tmp_path: Path) -> None:
    frame = load_table("sklearn://iris").frame
    model = HandMadeClassifier().fit(frame.drop(columns="target"), frame["target"])
    payload = dump_model(model)
    with pytest.raises(UntrustedArtifactError, match="HandMadeClassifier"):
        load_model(str(_write(tmp_path, payload)), sha256_hex(payload))
    # Trusted only when an operator widens the list on purpose.
    allowed = ("sklearn.", "numpy.", HandMadeClassifier.__module__)
    loaded = load_model(str(_write(tmp_path, payload)), sha256_hex(payload), allowed)
    assert type(loaded).__name__ == "HandMadeClassifier"


def test_forest_needs_only_sklearn_and_numpy_types(tmp_path: Path) -> None:
    frame = load_table("sklearn://wine").frame
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(frame.drop(columns="target"), frame["target"])
    payload = dump_model(model)
    reloaded = load_model(str(_write(tmp_path, payload)), sha256_hex(payload))
    np.testing.assert_array_equal(reloaded.predict(frame.drop(columns="target")),
                                  model.predict(frame.drop(columns="target")))


def test_reading_a_missing_artifact_names_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        read_bytes(str(tmp_path / "nothing.skops"))


def _write(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "model.skops"
    path.write_bytes(payload)
    return path
