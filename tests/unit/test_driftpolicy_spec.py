"""What a DriftPolicy's tests, thresholds, alpha and window mean, and which settings are refused.

Tables over the pure parts (no cluster): the spec becomes the statistics' configuration
(:func:`drift_config`), a real report on real numbers decides per feature which test ran, what
it was compared with and whether it drifted; settings nothing would read are refused by the
API model (the CRD's CEL rules carry the same text, tests/integration/test_crds.py applies them
on a real API server) or, where only the reference profile tells, by :func:`invalid_spec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from kubeloop.api.driftpolicy import DriftPolicySpec, FeatureScore, ignored_settings
from kubeloop.decide.driftpolicy import drift_config, invalid_spec, verdict_from_report
from kubeloop.drift.defaults import AUTO_TESTS, DEFAULT_ALPHA, DEFAULT_THRESHOLDS, SMALL_SAMPLE_MAX
from kubeloop.drift.profile import PREDICTION_FEATURE, Profile, build_profile
from kubeloop.drift.report import counts_from_samples, drift_report

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = yaml.safe_load((REPO / "examples" / "quickstart" / "driftpolicy.yaml").read_text())[
    "spec"
]
LIVE_PROMETHEUS = {"live": {"prometheusUrl": "http://prometheus:9090"}}


def spec(**fields: Any) -> dict[str, Any]:
    return {"targetRef": {"name": "m"}, "source": {"live": {}}, **fields}


def reference_profile() -> Profile:
    rng = np.random.default_rng(3)
    return build_profile(
        {"age": rng.normal(40, 10, 20000), "city": rng.choice(["a", "b", "c"], 20000)},
        categorical=["city"],
        prediction=rng.choice(["yes", "no"], 20000),
        prediction_kind="categorical",
    )


PROFILE = reference_profile()


def checked(
    policy_spec: dict[str, Any],
    rows: int,
    age_shift: float = 0.0,
    city_p: tuple[float, ...] = (1 / 3,) * 3,
    yes_share: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Status scores per feature after a real report over ``rows`` current values."""
    rng = np.random.default_rng(11)
    current = {
        "age": rng.normal(40 + age_shift, 10, rows),
        "city": rng.choice(["a", "b", "c"], rows, p=list(city_p)),
        PREDICTION_FEATURE: rng.choice(["yes", "no"], rows, p=[yes_share, 1 - yes_share]),
    }
    report = drift_report(PROFILE, counts_from_samples(PROFILE, current), drift_config(policy_spec))
    scores = {s["feature"]: s for s in verdict_from_report(report).scores}
    for score in scores.values():
        FeatureScore.model_validate(score)  # what the status takes
    return scores


SMALL, LARGE = 200, 5000
assert SMALL <= SMALL_SAMPLE_MAX < LARGE

# (spec, feature, current values, test it gets, status field compared, value of that limit)
CHOICES = [
    # No tests at all: auto, by sample size.
    ({}, "age", SMALL, "ks", "alpha", DEFAULT_ALPHA),
    ({}, "age", LARGE, "wasserstein", "threshold", DEFAULT_THRESHOLDS["wasserstein"]),
    ({}, "city", SMALL, "chi2", "alpha", DEFAULT_ALPHA),
    ({}, "city", LARGE, "jensenshannon", "threshold", DEFAULT_THRESHOLDS["jensenshannon"]),
    # Only numerical set: categorical stays auto (it used to become psi silently).
    ({"tests": {"numerical": "ks"}}, "age", LARGE, "ks", "alpha", DEFAULT_ALPHA),
    ({"tests": {"numerical": "ks"}}, "city", LARGE, "jensenshannon", "threshold", 0.1),
    ({"tests": {"numerical": "ks"}}, "city", SMALL, "chi2", "alpha", DEFAULT_ALPHA),
    # A score threshold only moves its own test; alpha only moves ks and chi2.
    (
        {"tests": {"numerical": "psi"}, "thresholds": {"psi": 0.3}},
        "age",
        SMALL,
        "psi",
        "threshold",
        0.3,
    ),
    ({"thresholds": {"wasserstein": 0.4}}, "age", LARGE, "wasserstein", "threshold", 0.4),
    ({"thresholds": {"wasserstein": 0.4}}, "age", SMALL, "ks", "alpha", DEFAULT_ALPHA),
    ({"alpha": {"default": 0.2}}, "age", SMALL, "ks", "alpha", 0.2),
    ({"alpha": {"default": 0.2}}, "age", LARGE, "wasserstein", "threshold", 0.1),
    (
        {"alpha": {"default": 0.2}, "thresholds": {"jensenshannon": 0.05}},
        "city",
        LARGE,
        "jensenshannon",
        "threshold",
        0.05,
    ),
    # Per feature, in auto mode: the score threshold and the alpha of one feature coexist.
    (
        {"thresholds": {"features": {"age": 0.5}}, "alpha": {"features": {"age": 0.01}}},
        "age",
        LARGE,
        "wasserstein",
        "threshold",
        0.5,
    ),
    (
        {"thresholds": {"features": {"age": 0.5}}, "alpha": {"features": {"age": 0.01}}},
        "age",
        SMALL,
        "ks",
        "alpha",
        0.01,
    ),
    # The quickstart keeps what its numbers meant before the split: psi >= 0.2 for numbers,
    # chi2 at alpha 0.2 for categories, the prediction (a category here) at alpha 0.1.
    (QUICKSTART, "age", SMALL, "psi", "threshold", 0.2),
    (QUICKSTART, "age", LARGE, "psi", "threshold", 0.2),
    (QUICKSTART, "city", LARGE, "chi2", "alpha", 0.2),
    (QUICKSTART, PREDICTION_FEATURE, LARGE, "chi2", "alpha", 0.1),
]


@pytest.mark.parametrize(("policy_spec", "feature", "rows", "test", "field", "limit"), CHOICES)
def test_which_test_and_which_limit(
    policy_spec: dict[str, Any], feature: str, rows: int, test: str, field: str, limit: float
) -> None:
    score = checked(policy_spec, rows)[feature]
    assert (score["test"], score[field]) == (test, limit)
    other = {"alpha": "threshold", "threshold": "alpha"}[field]
    assert other not in score, "a feature is judged by a threshold or by alpha, never both"
    assert ("pValue" in score) == (field == "alpha")


def test_auto_picks_what_the_docs_say() -> None:
    for kind, feature in (("numerical", "age"), ("categorical", "city")):
        small, large = AUTO_TESTS[kind]
        assert checked({}, SMALL_SAMPLE_MAX)[feature]["test"] == small
        assert checked({}, SMALL_SAMPLE_MAX + 1)[feature]["test"] == large


# (spec, current data, feature, drifted?). The same numbers judged under each rule, so a
# flip shows which limit decided.
VERDICTS = [
    # psi of a 0.25 sd shift on 5,000 values is about 0.07: below psi's 0.2, above 0.05.
    ({"tests": {"numerical": "psi"}}, {"age_shift": 2.5}, "age", False),
    ({"tests": {"numerical": "psi"}, "thresholds": {"psi": 0.05}}, {"age_shift": 2.5}, "age", True),
    # ks on 200 values, a 0.2 sd shift: p is about 0.03, so alpha decides...
    ({"tests": {"numerical": "ks"}}, {"age_shift": 2.0}, "age", True),
    ({"tests": {"numerical": "ks"}, "alpha": {"default": 0.01}}, {"age_shift": 2.0}, "age", False),
    # ...and without a shift p is about 0.8: undrifted even at alpha 0.5.
    ({"tests": {"numerical": "ks"}, "alpha": {"default": 0.5}}, {}, "age", False),
    # alpha never touches a distance: wasserstein of 0.25 sd is >= 0.1 whatever alpha says.
    ({"alpha": {"default": 1e-9}}, {"age_shift": 2.5}, "age", True),
    ({"thresholds": {"wasserstein": 0.5}}, {"age_shift": 2.5}, "age", False),
    # Categories: chi2 on 200 rows with one city gone is drifted; jensenshannon on 5,000 too.
    ({"tests": {"categorical": "chi2"}}, {"city_p": (0.5, 0.5, 0.0)}, "city", True),
    ({}, {"city_p": (0.5, 0.5, 0.0)}, "city", True),
    ({"thresholds": {"jensenshannon": 0.9}}, {"city_p": (0.5, 0.5, 0.0)}, "city", False),
]


@pytest.mark.parametrize(("policy_spec", "data", "feature", "drifted"), VERDICTS)
def test_drifted_or_not(
    policy_spec: dict[str, Any], data: dict[str, Any], feature: str, drifted: bool
) -> None:
    tests = policy_spec.get("tests") or {}
    explicit_small = "ks" in tests.values() or "chi2" in tests.values()
    rows = SMALL if explicit_small else LARGE
    assert checked(policy_spec, rows, **data)[feature]["drifted"] is drifted


# -- refused: settings nothing would read -------------------------------------------------------

# (spec fields, the fields refused). Empty: accepted.
IGNORED = [
    ({}, []),
    ({"thresholds": {"psi": 0.2}}, ["spec.thresholds.psi"]),  # auto never picks psi
    ({"thresholds": {"wasserstein": 0.1, "jensenshannon": 0.1}}, []),
    (
        {"tests": {"numerical": "psi"}, "thresholds": {"wasserstein": 0.1}},
        ["spec.thresholds.wasserstein"],
    ),
    (
        {"tests": {"numerical": "ks", "categorical": "chi2"}, "thresholds": {"jensenshannon": 0.1}},
        ["spec.thresholds.jensenshannon"],
    ),
    ({"tests": {"numerical": "ks"}, "thresholds": {"jensenshannon": 0.1}}, []),  # categorical auto
    (
        {
            "tests": {"numerical": "ks", "categorical": "chi2"},
            "thresholds": {"features": {"age": 0.3}},
        },
        ["spec.thresholds.features"],
    ),
    (
        {"tests": {"numerical": "psi", "categorical": "psi"}, "alpha": {"default": 0.05}},
        ["spec.alpha"],
    ),
    ({"tests": {"numerical": "psi", "categorical": "psi"}, "alpha": {}}, ["spec.alpha"]),
    (
        {"tests": {"numerical": "psi"}, "alpha": {"default": 0.05}},
        [],
    ),  # categorical auto picks chi2
    ({"window": "1h"}, ["spec.window"]),
    ({"window": "1h", "source": {"dataset": {"uri": "s3://b/today.csv"}}}, ["spec.window"]),
    ({"window": "1h", "source": LIVE_PROMETHEUS}, []),
    (
        {
            "tests": {"numerical": "psi", "categorical": "psi"},
            "thresholds": {"wasserstein": 0.1},
            "alpha": {"default": 0.1},
            "window": "5m",
        },
        ["spec.thresholds.wasserstein", "spec.alpha", "spec.window"],
    ),
]


@pytest.mark.parametrize(("fields", "refused"), IGNORED)
def test_settings_nothing_reads_are_refused_naming_the_field(
    fields: dict[str, Any], refused: list[str]
) -> None:
    wire = spec(**fields)
    assert [field for field, _ in ignored_settings(wire)] == refused
    if refused:
        with pytest.raises(ValidationError) as caught:
            DriftPolicySpec.model_validate(wire)
        for field in refused:
            assert f"{field}: " in str(caught.value)
        assert "remove" in str(caught.value) or "set " in str(caught.value)
    else:
        DriftPolicySpec.model_validate(wire)


def test_the_quickstart_sets_nothing_that_is_ignored() -> None:
    assert ignored_settings(QUICKSTART) == []
    assert invalid_spec(QUICKSTART, PROFILE) is None


# (spec fields, the start of the message; None: valid) — what only the profile can tell.
PROFILE_RULES = [
    ({"thresholds": {"features": {"age": 0.3}}, "alpha": {"features": {"city": 0.1}}}, None),
    ({"features": ["age", "height"]}, "spec.features: 'height' is not in the reference profile"),
    (
        {"thresholds": {"features": {"agee": 0.3}}},
        "spec.thresholds.features: 'agee' is not in the reference profile",
    ),
    (
        {"alpha": {"features": {"town": 0.1}}},
        "spec.alpha.features: 'town' is not in the reference profile",
    ),
    (
        {"features": ["age"], "thresholds": {"features": {"city": 0.3}}},
        "spec.thresholds.features: 'city' is not checked (spec.features leaves it out)",
    ),
    # The prediction is always checked.
    ({"features": ["age"], "alpha": {"features": {PREDICTION_FEATURE: 0.1}}}, None),
    # The old quickstart's `__prediction__: 0.1` under thresholds, with categorical chi2: the
    # prediction here is a category, so 0.1 was an alpha all along.
    (
        {
            "tests": {"numerical": "psi", "categorical": "chi2"},
            "thresholds": {"features": {PREDICTION_FEATURE: 0.1}},
        },
        "spec.thresholds.features: '__prediction__' is categorical and tests.categorical is chi2",
    ),
    (
        {"tests": {"numerical": "psi"}, "alpha": {"features": {"age": 0.1}}},
        "spec.alpha.features: 'age' is numerical and tests.numerical is psi",
    ),
    ({"tests": {"numerical": "psi"}, "alpha": {"features": {"city": 0.1}}}, None),  # city: auto
    # Spec-only problems come first, for a CRD installed before its rules.
    ({"window": "1h"}, "spec.window: window only applies"),
]


@pytest.mark.parametrize(("fields", "message"), PROFILE_RULES)
def test_settings_the_profile_shows_unused_are_refused(
    fields: dict[str, Any], message: str | None
) -> None:
    problem = invalid_spec(spec(**fields), PROFILE)
    if message is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(message), problem
        assert "remove" in problem or "move" in problem or "set " in problem


def test_field_docs_quote_the_numbers_the_statistics_use() -> None:
    schema = DriftPolicySpec.model_json_schema(by_alias=True)
    text = str(schema)
    for test, threshold in DEFAULT_THRESHOLDS.items():
        assert f"Threshold of {test}" in text and f"default {threshold}" in text
    assert f"default {DEFAULT_ALPHA}" in text
    assert f"at most {SMALL_SAMPLE_MAX:,}" in text


# -- the prose of docs/driftpolicy.md says what the code does -----------------------------------

DOC = (REPO / "docs" / "driftpolicy.md").read_text()


def test_the_docs_table_of_defaults_quotes_the_code() -> None:
    prose = DOC.split("## Field reference")[0]
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[-2].strip()
        for line in prose.splitlines()
        if line.startswith("| `") and ("score ≥" in line or "p-value <" in line)
    }
    expected = {
        **{t: str(v) for t, v in DEFAULT_THRESHOLDS.items()},
        "ks": str(DEFAULT_ALPHA),
        "chi2": str(DEFAULT_ALPHA),
    }
    assert rows == expected
    assert f"at most {SMALL_SAMPLE_MAX:,} current values get a hypothesis test" in prose


def test_the_docs_worked_example_is_a_valid_policy_that_sets_nothing_ignored() -> None:
    block = DOC.split("A worked example")[1].split("```yaml\n")[1].split("```")[0]
    example = yaml.safe_load(block)["spec"]
    DriftPolicySpec.model_validate(example)
    assert ignored_settings(example) == []
    churn = build_profile(
        {"tenure": np.arange(100.0), "plan": np.array(["a", "b"] * 50)},
        categorical=["plan"],
        prediction=np.array(["stay", "leave"] * 50),
        prediction_kind="categorical",
    )
    assert invalid_spec(example, churn) is None
