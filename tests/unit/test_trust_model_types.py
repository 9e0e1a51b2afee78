"""Which type names a model file may make the reader construct (kubeloop.trust.model_types).

One table: a name as skops writes it (``<module>.<qualified name>``), whether it is trusted,
and a phrase the reason must contain, so a refusal says *why* in the user's words.
"""

from __future__ import annotations

import sys

import pytest

from kubeloop.trust.model_types import VETTED_TYPES, decide, decide_type

SKLEARN = ("sklearn",)

# name, estimator packages, trusted, a phrase of the reason
TABLE: list[tuple[str, tuple[str, ...], bool, str]] = [
    # scikit-learn estimator classes, named where they are defined
    ("sklearn.linear_model._logistic.LogisticRegression", SKLEARN, True, "estimator class"),
    ("sklearn.ensemble._forest.RandomForestClassifier", SKLEARN, True, "estimator class"),
    ("sklearn.pipeline.Pipeline", SKLEARN, True, "estimator class"),
    ("sklearn.compose._column_transformer.ColumnTransformer", SKLEARN, True, "estimator class"),
    ("sklearn.preprocessing._encoders.OneHotEncoder", SKLEARN, True, "estimator class"),
    # the vetted helper types, each with its reason
    *[(name, SKLEARN, True, why[:30]) for name, why in sorted(VETTED_TYPES.items())],
    # functions under the package: calling them is running them
    ("sklearn.utils._testing.check_output", SKLEARN, False, "a function, not a class"),
    ("sklearn.utils._testing.assert_allclose", SKLEARN, False, "not a class"),
    # outside the estimator packages, whatever they are
    ("numpy.testing._private.utils.runstring", SKLEARN, False, "outside the estimator packages"),
    ("numpy.memmap", SKLEARN, False, "outside the estimator packages"),
    ("builtins.eval", SKLEARN, False, "outside the estimator packages"),
    ("os.system", SKLEARN, False, "outside the estimator packages"),
    ("subprocess.check_output", SKLEARN, False, "outside the estimator packages"),
    # a package boundary, not a string prefix
    ("sklearn_evil.X", SKLEARN, False, "outside the estimator packages"),
    ("sklearnx.linear_model.LogisticRegression", SKLEARN, False, "outside"),
    # re-exports: the class is real, but the file must name where it is defined
    ("sklearn.linear_model.LogisticRegression", SKLEARN, False,
     "re-exported: really sklearn.linear_model._logistic.LogisticRegression"),
    # classes under the package that are not estimators
    ("sklearn.cluster._bisect_k_means._BisectingTree", SKLEARN, False,
     "not a scikit-learn estimator"),
    # beside the vetted distance metrics and kernels: the ones that hold a Python callable
    ("sklearn.metrics._dist_metrics.PyFuncDistance64", SKLEARN, False,
     "not a scikit-learn estimator"),
    ("sklearn.gaussian_process.kernels.PairwiseKernel", SKLEARN, False,
     "not a scikit-learn estimator"),
    # names that are not there
    ("sklearn.no_such_module.Thing", SKLEARN, False, "cannot be imported"),
    ("sklearn.linear_model._logistic.NoSuchEstimator", SKLEARN, False, "has no NoSuchEstimator"),
    # names that are not dotted identifiers
    ("sklearn..linear_model._logistic.LogisticRegression", SKLEARN, False, "not a dotted name"),
    ("sklearn.linear_model._logistic..LogisticRegression", SKLEARN, False, "not a dotted name"),
    ("LogisticRegression", SKLEARN, False, "not a dotted name"),
    ("sklearn.linear_model._logistic.Logistic Regression", SKLEARN, False, "not a dotted name"),
    ("", SKLEARN, False, "not a dotted name"),
    # a wider package list still trusts only estimator classes
    ("numpy.memmap", ("sklearn", "numpy"), False, "not a scikit-learn estimator"),
    ("numpy.testing._private.utils.runstring", ("sklearn", "numpy"), False, "not a class"),
    ("builtins.eval", ("sklearn", "builtins"), False, "not a class"),
    # the packages may be written as prefixes: "sklearn.", "sklearn.*"
    ("sklearn.linear_model._logistic.LogisticRegression", ("sklearn.",), True, "estimator class"),
    ("sklearn.linear_model._logistic.LogisticRegression", ("sklearn.*",), True, "estimator class"),
    ("sklearn_evil.X", ("sklearn.",), False, "outside the estimator packages"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "packages", "trusted", "reason"), TABLE)
def test_decide_type(name: str, packages: tuple[str, ...], trusted: bool, reason: str) -> None:
    decision = decide_type(name, packages)
    assert (decision.name, decision.trusted) == (name, trusted), decision.reason
    assert reason in decision.reason


def test_a_name_outside_the_packages_is_never_imported() -> None:
    assert decide_type("sklearn_evil.payload.Run").trusted is False
    assert "sklearn_evil" not in sys.modules and "sklearn_evil.payload" not in sys.modules


def test_decide_gives_one_decision_per_name_in_sorted_order() -> None:
    names = ["sklearn.utils._testing.check_output", "numpy.dtype", "numpy.dtype", "os.system"]
    assert [(d.name, d.trusted) for d in decide(names)] == [
        ("numpy.dtype", True),
        ("os.system", False),
        ("sklearn.utils._testing.check_output", False),
    ]
