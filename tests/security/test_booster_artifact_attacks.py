"""Attack: an XGBoost/LightGBM model.skops that smuggles a pickle or points its reader elsewhere.

An honest booster artifact is a skops zip with the wrapper (no booster), a manifest
``kubeloop/boosters.json`` and the booster in its framework's own format
(:mod:`kubeloop.trust.boosters`). The crafted files keep the sha256 contract (the attacker
writes model.sha256 too, as anyone who can write the model can) and try instead:

* a **pickled booster entry**: ``kubeloop/booster-0.ubj`` is a pickle whose ``__reduce__`` runs
  Python (``exec``) and writes a marker file - both with the ``0x80`` protocol mark and as a
  protocol-0 pickle without it. A reader that restores boosters the way pickle-based model
  stores do (``pickle.loads`` on the entry, reproduced in one line below) runs it: the attack
  is real. Kubeloop's reader refuses it before any parser sees it: ``load_trusted``, a real
  ``kubeloop serve`` (exit 4) and the trainer's champion load; the marker is never written.
* a **booster inside the skops part**: the wrapper's ``_Booster`` stored by skops as an
  ``xgboost.core.Booster`` object, and a wrapper carrying a reduce payload
  (``sklearn.utils._testing.check_output``, i.e. ``subprocess.check_output``). Trusting every
  name under the booster packages (as the estimator-prefix rule would) loads the first and
  runs the second; the real policy names the refused type and loads neither.
* a **manifest pointing elsewhere**: entry names outside ``kubeloop/booster-<n>.<ubj|txt>``
  (``schema.json``, ``../model.sha256``, an absolute path), a format that is not the type's,
  an unlisted type, a path that leads to another step, extra keys, duplicated or missing or
  unnamed entries, a wrapper no entry fills. Each is refused with a message naming it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import skops.io
import xgboost
from sklearn.datasets import load_breast_cancer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kubeloop.runtime.train import main as train_main
from kubeloop.training.artifacts import dump_model
from kubeloop.training.result import REASON_CHAMPION_UNAVAILABLE, parse_result
from kubeloop.trust.boosters import MANIFEST_ENTRY, BoosterArtifactError
from kubeloop.trust.model_types import UntrustedModelTypesError, load_trusted

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from serve_fixtures import SERVE_COMMAND, free_port

REFUSED_BY_SERVER = 4
ENTRY = "kubeloop/booster-0.ubj"


class _Exec:
    """Pickled as ``exec(source)``: what an attacker puts in a pickle."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.source,))


def pickle_payload(marker: Path, protocol: int) -> bytes:
    return pickle.dumps(_Exec(f"open({str(marker)!r}, 'w').write('pwned')"), protocol=protocol)


def load_unpickling_boosters(model_bytes: bytes) -> Any:
    """A weakened reader: skops for the wrapper, ``pickle.loads`` for the booster entry."""
    archive = zipfile.ZipFile(io.BytesIO(model_bytes))
    manifest = orjson.loads(archive.read(MANIFEST_ENTRY))
    model = skops.io.loads(model_bytes, trusted=skops.io.get_untrusted_types(data=model_bytes))
    model._Booster = pickle.loads(archive.read(manifest["boosters"][0]["entry"]))
    return model


@pytest.fixture(scope="module")
def cancer() -> tuple[Any, np.ndarray]:
    data = load_breast_cancer(as_frame=True)
    return data.data, data.target.to_numpy()


@pytest.fixture(scope="module")
def fitted(cancer: tuple[Any, np.ndarray]) -> Any:
    features, target = cancer
    return make_pipeline(StandardScaler(), xgboost.XGBClassifier(n_estimators=10)).fit(
        features, target
    )


@pytest.fixture(scope="module")
def honest(fitted: Any) -> bytes:
    return dump_model(fitted)


def rewrite(
    payload: bytes,
    replace: dict[str, bytes] | None = None,
    add: list[tuple[str, bytes]] | None = None,
    drop: tuple[str, ...] = (),
) -> bytes:
    """The zip with entries replaced, dropped or (possibly duplicate) entries added."""
    source = zipfile.ZipFile(io.BytesIO(payload))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            if name in drop:
                continue
            target.writestr(name, (replace or {}).get(name, source.read(name)))
        for name, content in add or []:
            target.writestr(name, content)
    return out.getvalue()


def with_manifest(payload: bytes, **changes: Any) -> bytes:
    manifest = orjson.loads(zipfile.ZipFile(io.BytesIO(payload)).read(MANIFEST_ENTRY))
    manifest["boosters"][0].update(changes)
    return rewrite(payload, replace={MANIFEST_ENTRY: orjson.dumps(manifest)})


def write_run(directory: Path, payload: bytes) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.skops").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    (directory / "model.sha256").write_text(f"{digest}  model.skops\n")
    return digest


# -- a pickled booster entry ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 5], ids=["protocol-0 (no 0x80 mark)", "protocol-5"])
def test_a_pickled_booster_runs_under_an_unpickling_reader_and_is_refused_by_kubeloop(
    protocol: int, honest: bytes, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    crafted = rewrite(honest, replace={ENTRY: pickle_payload(marker, protocol)})

    # Given a reader that unpickles booster entries, when it loads the file, the payload ran.
    load_unpickling_boosters(crafted)
    assert marker.read_text() == "pwned"
    marker.unlink()

    with pytest.raises(BoosterArtifactError, match=r"booster-0\.ubj.*(pickle|not XGBoost)"):
        load_trusted(crafted)
    assert not marker.exists()


def test_kubeloop_serve_exits_4_on_a_pickled_booster(honest: bytes, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    digest = write_run(
        tmp_path / "run-1", rewrite(honest, replace={ENTRY: pickle_payload(marker, 5)})
    )
    result = subprocess.run(
        [*SERVE_COMMAND, "--model-uri", str(tmp_path / "run-1"), "--sha256", digest,
         "--host", "127.0.0.1", "--port", str(free_port()), "--workers", "2"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == REFUSED_BY_SERVER, result.stderr
    assert "refusing to serve" in result.stderr and "is a pickle" in result.stderr
    assert not marker.exists()


def _train_against(tmp_path: Path, champion: Path, sha256: str) -> tuple[int, Any]:
    spec = {
        "model": {"name": "cancer", "estimator": "lightgbm.LGBMClassifier",
                  "params": {"n_estimators": 10, "verbose": -1}, "task": "classification"},
        "data": {"source": "sklearn://breast_cancer", "split": {"testFraction": 0.3, "seed": 11}},
        "evaluation": {"metric": "accuracy"},
    }  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec_file = tmp_path / "spec.json"
    spec_file.write_bytes(orjson.dumps(spec))
    termination = tmp_path / "termination"
    code = train_main(
        ["--spec", str(spec_file), "--run-name", "run-2", "--storage-uri",
         f"file://{tmp_path}/models", "--champion-uri", f"file://{champion}",
         "--champion-sha256", sha256, "--termination-log", str(termination), "--quiet"],
        env={},
    )  # fmt: skip
    return code, parse_result(termination.read_bytes())


def test_kubeloop_train_scores_an_honest_booster_champion_and_refuses_a_pickled_one(
    honest: bytes, tmp_path: Path
) -> None:
    digest = write_run(tmp_path / "honest", honest)
    code, result = _train_against(tmp_path / "a", tmp_path / "honest" / "model.skops", digest)
    assert (code, result.status) == (0, "Succeeded"), result.message
    assert result.champion_metrics is not None and result.champion_metrics["accuracy"] > 0.9

    marker = tmp_path / "MARKER"
    crafted = rewrite(honest, replace={ENTRY: pickle_payload(marker, 5)})
    digest = write_run(tmp_path / "crafted", crafted)
    code, result = _train_against(tmp_path / "b", tmp_path / "crafted" / "model.skops", digest)
    assert (code, result.status, result.reason) == (
        4,
        "TrainingFailed",
        REASON_CHAMPION_UNAVAILABLE,
    )
    assert "is a pickle" in result.message
    assert not marker.exists()


# -- a booster or a payload inside the skops part -------------------------------------------


def test_a_booster_object_in_the_skops_part_loads_only_under_a_prefix_rule(
    fitted: Any, cancer: tuple[Any, np.ndarray]
) -> None:
    features, _ = cancer
    wrapper = copy.copy(fitted.steps[-1][1])  # the wrapper with its Booster, stored by skops
    crafted = skops.io.dumps(make_pipeline(fitted.steps[0][1], wrapper))
    needed = skops.io.get_untrusted_types(data=crafted)
    assert "xgboost.core.Booster" in needed

    # Given every name under the booster packages trusted, the booster comes from skops.
    weak = skops.io.loads(crafted, trusted=needed)
    np.testing.assert_array_equal(weak.predict(features), fitted.predict(features))

    with pytest.raises(UntrustedModelTypesError) as refused:
        load_trusted(crafted)
    assert "xgboost.core.Booster" in [name for name, _ in refused.value.refused]


def test_a_reduce_payload_inside_the_booster_wrapper_is_refused(
    honest: bytes, fitted: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    payload_class = type(
        "check_output", (), {"__module__": "sklearn.utils._testing", "__qualname__": "check_output"}
    )
    payload_class.__reduce__ = lambda self: (type(self), (["sh", "-c", f"echo pwned > {marker}"],))
    wrapper = copy.copy(fitted.steps[-1][1])
    del wrapper.__dict__["_Booster"]
    wrapper.calibration_note = payload_class()
    skops_part = skops.io.dumps(make_pipeline(fitted.steps[0][1], wrapper))
    archive = zipfile.ZipFile(io.BytesIO(honest))
    crafted = rewrite(skops_part, add=[(n, archive.read(n)) for n in (MANIFEST_ENTRY, ENTRY)])
    # Under the old prefix rule the payload runs.
    needed = skops.io.get_untrusted_types(data=crafted)
    skops.io.loads(crafted, trusted=needed)
    assert marker.read_text().strip() == "pwned"
    marker.unlink()

    with pytest.raises(UntrustedModelTypesError, match=r"sklearn\.utils\._testing\.check_output"):
        load_trusted(crafted)
    assert not marker.exists()


# -- a manifest pointing elsewhere --------------------------------------------------------


def _cases(honest: bytes) -> dict[str, tuple[bytes, str]]:
    archive = zipfile.ZipFile(io.BytesIO(honest))
    native = archive.read(ENTRY)
    lightgbm_text = b"tree\nversion=v4\n"
    return {
        "entry is schema.json": (with_manifest(honest, entry="schema.json"), "schema.json"),
        "entry climbs out": (with_manifest(honest, entry="../model.sha256"), "model.sha256"),
        "entry is absolute": (with_manifest(honest, entry="/etc/passwd"), "/etc/passwd"),
        "entry in the other format": (
            rewrite(with_manifest(honest, entry="kubeloop/booster-0.txt"),
                    add=[("kubeloop/booster-0.txt", lightgbm_text)]),
            "booster-<n>.ubj"),
        "unlisted type": (with_manifest(honest, type="xgboost.sklearn.XGBRanker"), "XGBRanker"),
        "pickle loader asked for": (with_manifest(honest, loader="pickle"), "nothing else"),
        "path to the scaler": (with_manifest(honest, path=[0]), "StandardScaler"),
        "path out of range": (with_manifest(honest, path=[7]), "leads to nothing"),
        "entry missing": (rewrite(honest, drop=(ENTRY,)), "is not in model.skops"),
        "entry twice": (rewrite(honest, add=[(ENTRY, native)]), "more than once"),
        "unnamed entry": (rewrite(honest, add=[("kubeloop/booster-1.ubj", native)]),
                          "does not name"),
        "no manifest, booster entry": (rewrite(honest, drop=(MANIFEST_ENTRY,)),
                                       "no kubeloop/boosters.json"),
        "no manifest, no entry": (rewrite(honest, drop=(MANIFEST_ENTRY, ENTRY)),
                                  "without a booster entry"),
        "not this format": (rewrite(honest, replace={MANIFEST_ENTRY: b'{"format": "x"}'}),
                            "kubeloop.boosters/v1"),
    }  # fmt: skip


CASE_NAMES = [
    "entry is schema.json", "entry climbs out", "entry is absolute", "entry in the other format",
    "unlisted type", "pickle loader asked for", "path to the scaler", "path out of range",
    "entry missing", "entry twice", "unnamed entry", "no manifest, booster entry",
    "no manifest, no entry", "not this format",
]  # fmt: skip


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the "entry twice" case, on purpose
@pytest.mark.parametrize("case", CASE_NAMES)
def test_a_manifest_pointing_elsewhere_is_refused_naming_the_problem(
    case: str, honest: bytes, fitted: Any, cancer: tuple[Any, np.ndarray]
) -> None:
    crafted, named = _cases(honest)[case]
    with pytest.raises(BoosterArtifactError) as refused:
        load_trusted(crafted)
    assert named in str(refused.value)
    # The honest file around each crafted one loads and predicts.
    features, _ = cancer
    np.testing.assert_array_equal(load_trusted(honest).predict(features), fitted.predict(features))
