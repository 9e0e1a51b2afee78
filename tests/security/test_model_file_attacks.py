"""Attack: a model.skops that runs the attacker's code when it is loaded (issue 13, "model files").

The crafted file is a working fitted LogisticRegression with one extra attribute. That
attribute is an object whose ``__reduce__`` is ``(its own class, args)``, and whose class says
it is ``sklearn.utils._testing.check_output`` (or ``numpy.testing._private.utils.runstring``):
skops writes it as a reduce node (``ConstructorFromReduceNode``), which on load *calls*
``<module>.<name>(*args)``. ``sklearn.utils._testing.check_output`` is
``subprocess.check_output`` re-exported, ``runstring`` is ``exec``; the old policy trusted every
name under ``sklearn.``, ``numpy.`` and ``scipy.``, so both ran at load.

Each payload runs twice. Against the old prefix rule, reproduced here in three lines, skops
loads the file and the payload writes its marker file: the attack is real and the test cannot
pass vacuously. Against the real policy (``kubeloop.trust.model_types``) every reader refuses
it and names the type, and the marker is never written: ``load_trusted``, a real
``kubeloop serve`` process (1 worker and 2 workers, exit code 4) and the trainer's champion
load in ``kubeloop train``. ``kubeloop drift`` reads profiles and data, never a model file, so
it has no model load to attack.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import skops.io
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kubeloop.runtime.train import main as train_main
from kubeloop.training.result import REASON_CHAMPION_UNAVAILABLE, parse_result
from kubeloop.trust.model_types import UntrustedModelTypesError, load_trusted

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from serve_fixtures import SERVE_COMMAND, free_port

OLD_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")
REFUSED_BY_SERVER = 4  # kubeloop serve: the model is unusable (untrusted types included)


class _Payload:
    """Serialised by skops as a reduce node: load calls ``<module>.<name>(*args)``."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return (type(self), self.args)


def _disguised(module: str, name: str, *args: Any) -> _Payload:
    """A payload whose class claims to be ``module.name``, as it will read in the file."""
    cls = type(name, (_Payload,), {"__module__": module, "__qualname__": name})
    payload: _Payload = cls(*args)
    return payload


@dataclass(frozen=True)
class Attack:
    type_name: str
    make: Callable[[Path], _Payload]


ATTACKS = {
    "check_output": Attack(
        "sklearn.utils._testing.check_output",
        lambda marker: _disguised(
            "sklearn.utils._testing", "check_output", ["sh", "-c", f"echo pwned > {marker}"]
        ),
    ),
    "runstring": Attack(
        "numpy.testing._private.utils.runstring",
        lambda marker: _disguised(
            "numpy.testing._private.utils",
            "runstring",
            f"open({str(marker)!r}, 'w').write('pwned')",
            {},
        ),
    ),
}


def load_with_old_policy(model_bytes: bytes) -> Any:
    """The policy before issue 13: trust every name under sklearn., numpy. and scipy."""
    needed = skops.io.get_untrusted_types(data=model_bytes)
    trusted = [t for t in needed if t.startswith(OLD_TRUSTED_PREFIXES)]
    return skops.io.loads(model_bytes, trusted=trusted)


@pytest.fixture(scope="module")
def cancer() -> tuple[Any, np.ndarray]:
    data = load_breast_cancer(as_frame=True)
    return data.data, data.target.to_numpy()


def fitted_model(cancer: tuple[Any, np.ndarray]) -> Any:
    features, target = cancer
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(features, target)


def crafted_file(directory: Path, attack: Attack, cancer: tuple[Any, np.ndarray]) -> tuple[Path, Path, str]:
    """A run directory holding the crafted model.skops; its marker path and sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / "MARKER"
    model = fitted_model(cancer)
    model.steps[-1][1].calibration_note = attack.make(marker)  # the one extra attribute
    payload = skops.io.dumps(model)
    (directory / "model.skops").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    (directory / "model.sha256").write_text(f"{digest}  model.skops\n")
    return directory / "model.skops", marker, digest


def _schema_nodes(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "__loader__" in node:
            found.append(node)
        for value in node.values():
            found.extend(_schema_nodes(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_schema_nodes(value))
    return found


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_the_crafted_file_is_a_reduce_node_that_runs_under_the_old_policy(
    name: str, cancer: tuple[Any, np.ndarray], tmp_path: Path
) -> None:
    attack = ATTACKS[name]
    path, marker, _ = crafted_file(tmp_path, attack, cancer)
    schema = json.loads(zipfile.ZipFile(io.BytesIO(path.read_bytes())).read("schema.json"))
    reduce_nodes = [
        n for n in _schema_nodes(schema) if f"{n['__module__']}.{n['__class__']}" == attack.type_name
    ]
    assert [n["__loader__"] for n in reduce_nodes] == ["ConstructorFromReduceNode"]
    assert skops.io.get_untrusted_types(data=path.read_bytes()) == [attack.type_name]

    # Given the old prefix rule, when the file is loaded, then the payload ran.
    assert not marker.exists()
    model = load_with_old_policy(path.read_bytes())
    assert marker.read_text().strip() == "pwned"
    features, _ = cancer
    assert model.predict(features.iloc[:5]).shape == (5,)  # and the model still works


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_load_trusted_refuses_and_names_the_type(
    name: str, cancer: tuple[Any, np.ndarray], tmp_path: Path
) -> None:
    attack = ATTACKS[name]
    path, marker, _ = crafted_file(tmp_path, attack, cancer)
    with pytest.raises(UntrustedModelTypesError) as refused:
        load_trusted(path.read_bytes())
    assert [refused_name for refused_name, _ in refused.value.refused] == [attack.type_name]
    assert attack.type_name in str(refused.value)
    assert not marker.exists()


def test_the_same_model_without_the_attribute_loads(cancer: tuple[Any, np.ndarray]) -> None:
    """The refusal is the payload's: the honest model around it loads under the real policy."""
    features, _ = cancer
    model = fitted_model(cancer)
    loaded = load_trusted(skops.io.dumps(model))
    np.testing.assert_array_equal(loaded.predict(features), model.predict(features))


@pytest.mark.parametrize(("name", "workers"), [("check_output", 1), ("runstring", 1), ("check_output", 2)])
def test_kubeloop_serve_exits_4_naming_the_type(
    name: str, workers: int, cancer: tuple[Any, np.ndarray], tmp_path: Path
) -> None:
    attack = ATTACKS[name]
    path, marker, digest = crafted_file(tmp_path / "run-1", attack, cancer)
    result = subprocess.run(
        [*SERVE_COMMAND, "--model-uri", str(path.parent), "--sha256", digest,
         "--host", "127.0.0.1", "--port", str(free_port()), "--workers", str(workers)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == REFUSED_BY_SERVER, result.stderr
    assert "refusing to serve" in result.stderr
    assert attack.type_name in result.stderr
    assert not marker.exists()


def _train(tmp_path: Path, run: str, champion: Path, sha256: str) -> tuple[int, Any]:
    spec = {
        "model": {"name": "cancer", "estimator": "sklearn.tree.DecisionTreeClassifier",
                  "params": {"max_depth": 3, "random_state": 0}, "task": "classification"},
        "data": {"source": "sklearn://breast_cancer", "split": {"testFraction": 0.3, "seed": 11}},
        "evaluation": {"metric": "accuracy"},
    }  # fmt: skip
    spec_file = tmp_path / f"{run}.json"
    spec_file.write_bytes(orjson.dumps(spec))
    termination = tmp_path / f"{run}.termination"
    code = train_main(
        ["--spec", str(spec_file), "--run-name", run, "--storage-uri", f"file://{tmp_path}/models",
         "--champion-uri", f"file://{champion}", "--champion-sha256", sha256,
         "--termination-log", str(termination), "--quiet"],
        env={},
    )  # fmt: skip
    return code, parse_result(termination.read_bytes())


def test_kubeloop_train_scores_an_honest_champion(
    cancer: tuple[Any, np.ndarray], tmp_path: Path
) -> None:
    """Without the payload the same champion is loaded and scored: the refusal below is real."""
    champion = tmp_path / "champion" / "model.skops"
    champion.parent.mkdir()
    champion.write_bytes(skops.io.dumps(fitted_model(cancer)))
    digest = hashlib.sha256(champion.read_bytes()).hexdigest()
    code, result = _train(tmp_path, "run-honest", champion, digest)
    assert (code, result.status) == (0, "Succeeded"), result.message
    assert result.champion_metrics is not None and result.champion_metrics["accuracy"] > 0.9


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_kubeloop_train_refuses_the_champion(
    name: str, cancer: tuple[Any, np.ndarray], tmp_path: Path
) -> None:
    attack = ATTACKS[name]
    path, marker, digest = crafted_file(tmp_path / "champion", attack, cancer)
    code, result = _train(tmp_path, "run-1", path, digest)
    assert (code, result.status, result.reason) == (4, "TrainingFailed", REASON_CHAMPION_UNAVAILABLE)
    assert attack.type_name in result.message
    assert not marker.exists()
