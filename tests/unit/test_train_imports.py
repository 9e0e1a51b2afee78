"""The trainer's process set-up: modules it never uses stay unimported, skops still works."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeloop.runtime._absent import AbsentModules, leave_out


@pytest.fixture
def probe_package(tmp_path: Path) -> Iterator[str]:
    """An installed, not yet imported package; the finders added for it are removed after."""
    name = "kubeloop_absent_probe"
    for package in (name, name + "_sibling"):  # the sibling shares the name as a prefix
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "sub.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    before = list(sys.meta_path)
    try:
        yield name
    finally:
        sys.meta_path[:] = before
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m.startswith(name)]:
            del sys.modules[module]


def test_a_left_out_package_and_its_submodules_look_uninstalled(probe_package: str) -> None:
    assert leave_out([probe_package]) == {probe_package}
    with pytest.raises(ModuleNotFoundError) as raised:
        importlib.import_module(f"{probe_package}.sub")
    assert raised.value.name == probe_package  # the parent is imported first
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(probe_package)


def test_leaving_out_twice_adds_no_second_finder(probe_package: str) -> None:
    leave_out([probe_package])
    assert leave_out([probe_package]) == frozenset()
    assert sum(isinstance(f, AbsentModules) and probe_package in f.names
               for f in sys.meta_path) == 1


def test_an_imported_module_cannot_be_left_out(probe_package: str) -> None:
    importlib.import_module(probe_package)
    assert leave_out([probe_package, "pytest"]) == frozenset()  # both already imported
    importlib.import_module(f"{probe_package}.sub")  # still importable


def test_a_module_whose_name_merely_starts_alike_stays_importable(probe_package: str) -> None:
    leave_out([probe_package])
    importlib.import_module(f"{probe_package}_sibling.sub")


_TRUSTED_TABLE_AND_PYTEST = (
    "import json, sys\n"
    "import skops.io as sio\n"
    "from skops.io import _trusted_types\n"
    "from sklearn.linear_model import LogisticRegression\n"
    "model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])\n"
    "payload = sio.dumps(model)\n"
    "assert sio.loads(payload, trusted=[]).predict([[1.0]])[0] == 1\n"
    "print(json.dumps({\n"
    "    'table': {k: v for k, v in sorted(vars(_trusted_types).items()) if k.endswith('_NAMES')},\n"
    "    'pytest': sorted(m for m in sys.modules if m.split('.')[0] in {'pytest', '_pytest'}),\n"
    "}))\n"
)


def _fresh_interpreter(prelude: str) -> dict[str, Any]:
    # A fresh process: in this one pytest is imported already and cannot be left out.
    proc = subprocess.run([sys.executable, "-c", prelude + _TRUSTED_TABLE_AND_PYTEST],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    found: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def test_a_training_process_imports_no_pytest_and_skops_trusts_the_same_types() -> None:
    prepared = _fresh_interpreter(
        "from kubeloop.runtime.train import _prepare_process\n_prepare_process()\n"
    )
    # The usual order without the preparation: pydantic and pandas before scikit-learn.
    usual = _fresh_interpreter("import kubeloop.training.spec, pandas\n")
    assert prepared["pytest"] == []
    assert usual["pytest"] != []  # installed here, so the control does import it
    assert prepared["table"] == usual["table"]
    assert len(prepared["table"]["SCIPY_UFUNC_TYPE_NAMES"]) > 100
