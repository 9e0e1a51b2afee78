"""Which drift test a feature gets and what decides it: the rules, stated once.

Two kinds of test, judged in two different units, so they are configured apart:

* distance tests (``psi``, ``wasserstein``, ``jensenshannon``) give a score; a feature drifted
  when its score is at or above the test's **threshold**;
* hypothesis tests (``ks``, ``chi2``) give a p-value (corrected across features); a feature
  drifted when it is below **alpha**, the significance level.

``auto`` picks by sample size (:func:`auto_test`). Everything here is plain data and text, so
the API models (and through them the CRD and its docs) quote the same numbers the statistics
use. No numpy: the API layer imports this module.
"""

from __future__ import annotations

from typing import Final, Literal

TestName = Literal["ks", "chi2", "psi", "wasserstein", "jensenshannon"]
DistanceTest = Literal["psi", "wasserstein", "jensenshannon"]
Kind = Literal["numerical", "categorical"]

P_VALUE_TESTS: Final[frozenset[str]] = frozenset({"ks", "chi2"})
DISTANCE_TESTS: Final[frozenset[str]] = frozenset({"psi", "wasserstein", "jensenshannon"})
NUMERICAL_TESTS: Final[frozenset[str]] = frozenset({"ks", "psi", "wasserstein", "jensenshannon"})
CATEGORICAL_TESTS: Final[frozenset[str]] = frozenset({"chi2", "psi", "jensenshannon"})

DEFAULT_THRESHOLDS: Final[dict[str, float]] = {
    "psi": 0.2,
    "wasserstein": 0.1,
    "jensenshannon": 0.1,
}
"""Score thresholds of the distance tests: drifted when score >= threshold."""
DEFAULT_ALPHA: Final = 0.05
"""Significance of the hypothesis tests: drifted when the corrected p-value < alpha."""
SMALL_SAMPLE_MAX: Final = 1000
"""``auto``: at most this many current values get a hypothesis test, more get a distance."""

AUTO_TESTS: Final[dict[str, tuple[str, str]]] = {
    "numerical": ("ks", "wasserstein"),
    "categorical": ("chi2", "jensenshannon"),
}
"""``auto``'s (small sample, large sample) test per feature kind."""

AUTO_RULE: Final = (
    f"auto picks by the feature's current sample size: at most {SMALL_SAMPLE_MAX:,} values get "
    "a hypothesis test (ks for numbers, chi2 for categories), more get a distance (wasserstein "
    "for numbers, jensenshannon for categories), because with many values every hypothesis "
    "test flags differences too small to matter"
)


def auto_test(kind: str, sample_size: int) -> str:
    """The test ``auto`` gives a feature of ``kind`` with ``sample_size`` current values."""
    small, large = AUTO_TESTS[kind]
    return small if sample_size <= SMALL_SAMPLE_MAX else large


def possible_tests(kind: str, setting: str) -> frozenset[str]:
    """Every test a feature of ``kind`` can get under the setting ``auto`` or a test name."""
    return frozenset(AUTO_TESTS[kind]) if setting == "auto" else frozenset({setting})
