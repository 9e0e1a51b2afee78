"""Durations, quantities, URIs and the wire helpers."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from kubeloop.api.common import (
    DATA_SCHEMES,
    DURATION_PATTERN,
    DataUri,
    Duration,
    OutputUri,
    Quantity,
    StorageUri,
    format_duration,
    parse_duration,
)
from kubeloop.api.modeldeployment import ModelDeploymentSpec, ModelSource
from kubeloop.api.trainingrun import TrainingRun
from kubeloop.api.wire import InvalidResource, from_wire, to_wire


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", timedelta(0)),
        ("30s", timedelta(seconds=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("2h45m30s", timedelta(hours=2, minutes=45, seconds=30)),
        ("90s", timedelta(minutes=1, seconds=30)),
        ("1m1ms", timedelta(minutes=1, milliseconds=1)),
        ("36h", timedelta(days=1, hours=12)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    # The CRD's pattern and the parser agree on what a duration is.
    assert re.fullmatch(DURATION_PATTERN, text)
    assert TypeAdapter(Duration).validate_python(text) == text


@pytest.mark.parametrize(
    "text", ["", "5", "1d", "-5m", "5 m", "m", "1h30", "1.h", "1H", "5min", " 5m", "5m\n", "1w"]
)
def test_invalid_durations_are_refused_with_the_units_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"ms, s, m, h"):
        parse_duration(text)
    with pytest.raises(ValidationError, match="is not a duration"):
        TypeAdapter(Duration).validate_python(text)


@pytest.mark.parametrize("seconds", [0, 1, 59, 60, 61, 3599, 3600, 5400, 86400, 90061])
def test_format_duration_round_trips(seconds: int) -> None:
    span = timedelta(seconds=seconds)
    assert parse_duration(format_duration(span)) == span


def test_format_duration_is_the_short_form() -> None:
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert format_duration(timedelta(0)) == "0s"
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@pytest.mark.parametrize(
    ("given", "stored"),
    [(2, "2"), ("500m", "500m"), ("4Gi", "4Gi"), ("1.5", "1.5"), ("1e3", "1e3"), ("0", "0")],
)
def test_quantities(given: Any, stored: str) -> None:
    assert TypeAdapter(Quantity).validate_python(given) == stored


@pytest.mark.parametrize("given", [0.5, True, "lots", "1GB", "", "-", None])
def test_bad_quantities_say_how_to_write_one(given: Any) -> None:
    with pytest.raises(ValidationError, match="quantity"):
        TypeAdapter(Quantity).validate_python(given)


@pytest.mark.parametrize(
    ("uri", "storage", "output", "data"),
    [
        ("s3://bucket/models/m.skops", True, True, True),
        ("gs://bucket/m.skops", True, True, True),
        ("file:///var/models/m.skops", True, True, True),
        ("pvc://models/breast-cancer/m.skops", True, True, True),
        ("https://example.com/m.skops", True, False, True),
        ("http://minio:9000/m.skops", True, False, True),
        ("sklearn://breast_cancer", False, False, True),
        ("ftp://example.com/m.skops", False, False, False),
        ("s3:/bucket", False, False, False),
        ("/var/models/m.skops", False, False, False),
        ("s3://", False, False, False),
        ("s3://bucket/with space", False, False, False),
    ],
)
def test_uri_schemes(uri: str, storage: bool, output: bool, data: bool) -> None:
    for kind, accepted in ((StorageUri, storage), (OutputUri, output), (DataUri, data)):
        adapter: TypeAdapter[str] = TypeAdapter(kind)
        if accepted:
            assert adapter.validate_python(uri) == uri
        else:
            with pytest.raises(ValidationError, match="it must start with"):
                adapter.validate_python(uri)
    assert "sklearn" in DATA_SCHEMES


# -- wire -----------------------------------------------------------------------------------------


def test_to_wire_is_camel_case_without_empty_fields() -> None:
    spec = ModelDeploymentSpec(model=ModelSource(storage_uri="s3://b/m.skops", sha256="ab" * 32))
    wire = to_wire(spec)
    assert wire == {
        "model": {"storageUri": "s3://b/m.skops", "sha256": "ab" * 32},
        "replicas": 1,
        "paused": False,
    }


def test_from_wire_round_trips_and_accepts_snake_case_from_python() -> None:
    document = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r1", "namespace": "ns", "generation": 3},
        "spec": {
            "model": {"name": "m", "estimator": "sklearn.linear_model.Ridge", "task": "regression"},
            "data": {"source": "sklearn://diabetes"},
            "evaluation": {"metric": "r2", "threshold": 0.3},
        },
        "status": {
            "phase": "Succeeded",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                            "lastTransitionTime": "2025-03-01T12:00:00Z"}],
            "model": {"metrics": {"r2": 0.41}, "sha256": "0" * 64},
        },
    }
    run = from_wire("TrainingRun", document)
    assert isinstance(run, TrainingRun)
    assert run.spec.evaluation is not None and run.spec.evaluation.threshold == 0.3
    assert run.spec.primary_metric() == "r2"
    wire = to_wire(run)
    assert wire["status"]["conditions"][0]["lastTransitionTime"] == "2025-03-01T12:00:00Z"
    assert wire["spec"]["data"] == {"source": "sklearn://diabetes"}
    assert from_wire("TrainingRun", wire) == run


def test_from_wire_names_every_offending_field() -> None:
    with pytest.raises(InvalidResource) as caught:
        from_wire("ModelDeployment", {
            "spec": {
                "model": {"trainingRunRef": {"name": "r1"}, "storageUri": "s3://b/m"},
                "replicas": -1,
                "rollout": {"steps": [{"setWeight": 20}, {"setWeight": 140}]},
                "extra": True,
            }
        })
    problems = caught.value.problems
    assert any(p.startswith("spec.model: set exactly one of trainingRunRef") for p in problems)
    assert any(p.startswith("spec.replicas:") for p in problems)
    assert any(p.startswith("spec.rollout.steps[1].setWeight:") for p in problems)
    assert any(p.startswith("spec.extra: Extra inputs") for p in problems)
    assert "Value error" not in str(caught.value)


def test_from_wire_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="expected one of DriftPolicy, ModelDeployment"):
        from_wire("Deployment", {})
