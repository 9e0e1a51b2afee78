"""The trainer's spec reading and its termination-message result (the operator's contract)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import orjson
import pytest

from kubeloop.training.result import (
    EXIT_CODES,
    TERMINATION_MESSAGE_LIMIT,
    Gate,
    TrainingResult,
    ValidationFailure,
    parse_result,
    render_result,
)
from kubeloop.training.spec import SpecError, SweepSpec, parse_spec, parse_spec_text

SPEC_YAML = """
model: {name: churn, estimator: sklearn.ensemble.RandomForestClassifier, params: {n_estimators: 10}, task: classification}
data:
  source: sklearn://breast_cancer
  categoricalFeatures: []
  split: {testFraction: 0.25, seed: 7}
  someFutureField: true
validation: {expectedColumns: {target: int}, minRows: 100, maxMissingFraction: 0.05, minClassFraction: 0.01}
evaluation: {metric: f1, threshold: 0.9, compareTo: champion, minImprovement: 0.01}
sweep: {grid: {n_estimators: [50, 100], max_depth: [3, 5, null]}, parallelism: 2}
output: {storageUri: "file:///models"}
resources: {limits: {cpu: "1"}}
"""


def test_spec_reads_camel_case_and_ignores_unknown_keys() -> None:
    spec = parse_spec_text(SPEC_YAML)
    assert spec.data.split.test_fraction == 0.25
    assert spec.data.split.seed == 7
    assert spec.validation.max_missing_fraction == 0.05
    assert spec.evaluation.compare_to == "champion"
    assert spec.evaluation.min_improvement == 0.01
    assert spec.output.storage_uri == "file:///models"
    assert spec.primary_metric == "f1"


def test_spec_accepts_a_whole_trainingrun_object() -> None:
    spec = parse_spec({"apiVersion": "kubeloop.io/v1alpha1", "kind": "TrainingRun",
                       "spec": orjson.loads(orjson.dumps(parse_spec_text(SPEC_YAML).model_dump(by_alias=True)))})
    assert spec.model.name == "churn"


def test_default_metric_follows_the_task() -> None:
    base = {"data": {"source": "sklearn://iris"}}
    assert parse_spec({**base, "model": {"name": "m", "estimator": "sklearn.x.Y", "task": "classification"}}).primary_metric == "accuracy"
    assert parse_spec({**base, "model": {"name": "m", "estimator": "sklearn.x.Y", "task": "regression"}}).primary_metric == "rmse"


@pytest.mark.parametrize(
    ("patch", "names"),
    [
        ({"model": {"name": "m", "estimator": "sklearn.x.Y", "task": "clustering"}}, "model.task"),
        ({"model": {"name": "a/b", "estimator": "sklearn.x.Y", "task": "regression"}}, "model.name"),
        ({"data": {"source": "sklearn://iris", "split": {"testFraction": 1.5}}}, "data.split.testFraction"),
        ({"evaluation": {"metric": "rmse"}}, "evaluation.metric"),
        ({"sweep": {"grid": {"max_depth": []}}}, "sweep.grid"),
    ],
)
def test_spec_errors_name_the_field(patch: dict[str, object], names: str) -> None:
    document: dict[str, object] = {
        "model": {"name": "m", "estimator": "sklearn.x.Y", "task": "classification"},
        "data": {"source": "sklearn://iris"},
        **patch,
    }
    with pytest.raises(SpecError) as caught:
        parse_spec(document)
    assert names in str(caught.value)


def test_sweep_order_is_product_over_sorted_keys() -> None:
    grid = {"n_estimators": [50, 100], "max_depth": [3, 5, None]}
    combos = SweepSpec(grid=grid).combinations()
    expected = [
        {"max_depth": d, "n_estimators": n}
        for d, n in itertools.product(grid["max_depth"], grid["n_estimators"])
    ]
    assert combos == expected
    assert combos[1] == {"max_depth": 3, "n_estimators": 100}


def _result(**fields: object) -> TrainingResult:
    base: dict[str, object] = {
        "status": "GateFailed", "exit_code": EXIT_CODES["GateFailed"], "reason": "GateFailed",
        "uri": "s3://models/churn/run-1/model.skops", "sha256": "ab" * 32, "metric": "f1",
        "metrics": {"f1": 0.8, "accuracy": 0.9}, "champion_metrics": {"f1": 0.85},
        "gates": [Gate(name="minImprovement", passed=False, metric="f1", value=0.8,
                       required=0.85, message="not enough")],
        "data_fingerprint": "sha256:" + "cd" * 32, "trial": 3, "params": {"n_estimators": 10},
        "message": "gate(s) failed",
    }
    base.update(fields)
    return TrainingResult.model_validate(base)


def test_result_round_trips_through_the_wire_form() -> None:
    result = _result()
    payload = render_result(result)
    wire = orjson.loads(payload)
    assert wire["exitCode"] == 3 and wire["championMetrics"] == {"f1": 0.85}
    assert wire["dataFingerprint"].startswith("sha256:")
    parsed = parse_result(payload)
    assert parsed == result
    assert [g.name for g in parsed.failed_gates] == ["minImprovement"]


def test_parse_result_tolerates_fields_it_does_not_know() -> None:
    wire = orjson.loads(render_result(_result()))
    wire["someNewField"] = {"x": 1}
    assert parse_result(orjson.dumps(wire)).sha256 == "ab" * 32


@pytest.mark.parametrize("size", [10, 200, 5000])
def test_result_is_trimmed_under_the_termination_message_limit(size: int) -> None:
    failures = [
        ValidationFailure(column=f"column_{i}", rule="range", observed={"min": -i}, expected={"min": 0},
                          message=f"column 'column_{i}' has values below 0 " + "x" * 40)
        for i in range(size)
    ]
    result = _result(status="DataValidationFailed", exit_code=2, failures=failures,
                     message="data validation failed " + "y" * (size * 10),
                     params={f"p{i}": "v" * 30 for i in range(size)})
    payload = render_result(result)
    assert len(payload) < TERMINATION_MESSAGE_LIMIT
    parsed = parse_result(payload)
    # What the operator acts on survives any trimming.
    assert (parsed.status, parsed.exit_code, parsed.sha256, parsed.uri) == (
        "DataValidationFailed", 2, "ab" * 32, "s3://models/churn/run-1/model.skops")
    untrimmed = len(orjson.dumps(result.model_dump(mode="json", by_alias=True)))
    assert parsed.trimmed == (untrimmed >= TERMINATION_MESSAGE_LIMIT)


def test_result_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, kubeloop.training.result as r; "
        "heavy = [m for m in ('sklearn', 'pandas', 'skops', 'pyarrow', 'scipy') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_spec_reads_the_resource_spelling_and_nulls() -> None:
    spec = parse_spec({
        "model": {"name": "m", "estimator": "sklearn.tree.DecisionTreeClassifier", "params": None,
                  "task": "classification"},
        "data": {"source": "sklearn://iris", "split": None, "features": None, "categoricalFeatures": None},
        "validation": {"classBalance": {"minFraction": 0.2}, "minClassFraction": 0.1, "ranges": None},
        "evaluation": None,
        "sweep": {"grid": {"max_depth": [2, None, 4], "criterion": ["gini", "entropy"]}, "maxTrials": 4},
        "output": None,
    })
    assert spec.model.params == {}
    assert spec.data.split.test_fraction == 0.2 and spec.data.features is None
    assert spec.validation.smallest_class_fraction == 0.2  # the stricter of the two spellings
    assert spec.evaluation.compare_to == "none"
    assert spec.sweep is not None
    assert spec.sweep.combinations() == [
        {"criterion": "gini", "max_depth": 2}, {"criterion": "gini", "max_depth": None},
        {"criterion": "gini", "max_depth": 4}, {"criterion": "entropy", "max_depth": 2},
    ]
