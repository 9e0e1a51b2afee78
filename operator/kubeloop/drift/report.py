"""The drift report: which test per feature, its threshold, the multiple-testing correction and
the model-level verdict.

Two entry points over one set of rules:

* :func:`drift_report` (binned) — the reference profile's counts against current counts over
  the same bins. Used for live traffic (the model servers' bin counters) and for a dataset
  checked against ``profile.json``.
* :func:`drift_report_from_samples` (exact) — reference values against current values. Used
  when the reference data itself is at hand (dataset Job, benchmark).

Rules (all overridable through :class:`DriftConfig`):

* Test per feature, when ``auto``: a feature with at most ``smallSampleMax`` (1,000) current
  values gets a hypothesis test (``ks`` numerical, ``chi2`` categorical), a larger one a
  distance (``wasserstein`` normalised by the reference std, numerical; ``jensenshannon``
  categorical). With many values every p-value test flags differences too small to matter, so
  large samples are judged by how far the distribution moved instead (the rule Evidently uses).
* Two units, configured apart (:mod:`kubeloop.drift.defaults`): hypothesis tests drift when
  the corrected p-value is below ``alpha`` (0.05); distances when the score is at or above
  their ``thresholds`` entry: ``psi`` 0.2, ``wasserstein`` 0.1 (in reference standard
  deviations), ``jensenshannon`` 0.1 (base 2). Per feature: ``features.<name>.threshold`` and
  ``features.<name>.alpha``.
* Benjamini-Hochberg over the input features that use p-values (``correction: bh``), so twenty
  features do not make twenty chances of a false alarm. The prediction is one test on its own
  and is not corrected.
* Model-level drift: the share of tested input features that drifted is at least
  ``driftShare`` (default 0.5, as Evidently). The prediction (``__prediction__``) is reported
  as ``predictionDrifted``, not counted in the share.

Everything here is pure: no files, no network, so the operator and the server import it.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubeloop.drift import stats
from kubeloop.drift.defaults import (
    AUTO_TESTS,
    CATEGORICAL_TESTS,
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLDS,
    DISTANCE_TESTS,
    NUMERICAL_TESTS,
    P_VALUE_TESTS,
    SMALL_SAMPLE_MAX,
    DistanceTest,
    Kind,
    TestName,
    possible_tests,
)
from kubeloop.drift.profile import (
    DEFAULT_NUMERIC_BINS,
    PREDICTION_FEATURE,
    FeatureProfile,
    Profile,
    binned_counts_sorted,
    quantile_edges,
)

MISSING_BIN_LABEL = "missing"
"""The model server's extra bin for missing values; drift compares present values only."""
DEFAULT_DRIFT_SHARE = 0.5


class _CamelModel(BaseModel):
    """camelCase on the wire (like the CRDs), snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class FeatureSettings(_CamelModel):
    """Per-feature override of the test, its score threshold and/or its alpha."""

    test: TestName | None = None
    threshold: float | None = Field(
        default=None, gt=0, description="Score threshold, when the feature gets a distance test."
    )
    alpha: float | None = Field(
        default=None, gt=0, lt=1, description="Significance, when it gets ks or chi2."
    )

    @model_validator(mode="after")
    def _limit_fits_the_test(self) -> FeatureSettings:
        # A limit the named test never reads would be silently ignored.
        if self.test in P_VALUE_TESTS and self.threshold is not None:
            raise ValueError(
                f"threshold is a score threshold and {self.test} is judged by alpha: "
                "set alpha instead"
            )
        if self.test in DISTANCE_TESTS and self.alpha is not None:
            raise ValueError(
                f"alpha is for ks and chi2 and {self.test} is judged by a score threshold: "
                "set threshold instead"
            )
        return self


class DriftConfig(_CamelModel):
    """How features are tested and when the model counts as drifted (all fields optional)."""

    numerical_test: Literal["auto", "ks", "psi", "wasserstein", "jensenshannon"] = "auto"
    categorical_test: Literal["auto", "chi2", "psi", "jensenshannon"] = "auto"
    thresholds: dict[DistanceTest, float] = Field(
        default_factory=dict,
        description="Score threshold per distance test (drifted when score >= it).",
    )
    alpha: float = Field(
        default=DEFAULT_ALPHA,
        gt=0,
        lt=1,
        description="Significance of ks and chi2 (drifted when the corrected p-value < it).",
    )
    features: dict[str, FeatureSettings] = Field(
        default_factory=dict, description="Test, threshold and alpha per feature name."
    )
    drift_share: float = Field(default=DEFAULT_DRIFT_SHARE, gt=0, le=1)
    small_sample_max: int = Field(default=SMALL_SAMPLE_MAX, ge=0)
    correction: Literal["bh", "none"] = "bh"
    chi2_method: stats.ChiSquaredMethod = "contingency"
    psi_epsilon: float = Field(default=stats.PSI_EPSILON, gt=0, lt=1)
    n_bins: int = Field(
        default=DEFAULT_NUMERIC_BINS, ge=1, description="Quantile bins (exact mode)."
    )
    extra_scores: list[TestName] = Field(
        default_factory=list,
        description="Tests also computed and reported per feature, without a say in the verdict.",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds_positive(cls, value: dict[str, float]) -> dict[str, float]:
        for test, threshold in value.items():
            if threshold <= 0:
                raise ValueError(
                    f"thresholds.{test}: a score threshold must be positive, got {threshold}"
                )
        return value

    def threshold_for(self, feature: str, test: str) -> float:
        """What ``feature``'s result under ``test`` is compared with: alpha for ks and chi2
        (drifted when p < it), the score threshold for the distances (drifted when score >= it).
        """
        override = self.features.get(feature)
        if test in P_VALUE_TESTS:
            if override is not None and override.alpha is not None:
                return override.alpha
            return self.alpha
        if override is not None and override.threshold is not None:
            return override.threshold
        for configured_test, threshold in self.thresholds.items():
            if configured_test == test:
                return threshold
        return DEFAULT_THRESHOLDS[test]

    def test_for(self, feature: str, kind: Kind, sample_size: int) -> str:
        """The test ``feature`` gets, after per-feature overrides and the sample-size rule."""
        override = self.features.get(feature)
        if override is not None and override.test is not None:
            test: str = override.test
        else:
            test = self.numerical_test if kind == "numerical" else self.categorical_test
        if test == "auto":
            small, large = AUTO_TESTS[kind]
            test = small if sample_size <= self.small_sample_max else large
        allowed = NUMERICAL_TESTS if kind == "numerical" else CATEGORICAL_TESTS
        if test not in allowed:
            raise ValueError(
                f"feature {feature!r} is {kind}; test {test!r} does not apply to it "
                f"(use one of {', '.join(sorted(allowed))})"
            )
        return test


@dataclass(frozen=True)
class UnusedFeatureSetting:
    """A per-feature threshold or alpha that no check would read, and why."""

    feature: str
    setting: Literal["threshold", "alpha"]
    cause: Literal["unknown", "unchecked", "wrong_kind"]
    kind: Kind | None = None  # wrong_kind: the feature's type...
    test: str = ""  # ...and its test setting (auto or a test name)


def unused_feature_settings(
    config: DriftConfig, profile: Profile, checked: Collection[str]
) -> list[UnusedFeatureSetting]:
    """Per-feature settings of ``config`` that a check against ``profile`` would never read: a
    name the profile lacks, a feature not among ``checked`` (the prediction always is), or a
    limit of the other kind than every test the feature can get (a score threshold where only
    ks/chi2 can run, an alpha where only a distance can)."""
    kinds: dict[str, Kind] = {f.name: f.kind for f in profile.all_features()}
    unused: list[UnusedFeatureSetting] = []
    for name, settings in config.features.items():
        limits: tuple[tuple[Literal["threshold", "alpha"], float | None, frozenset[str]], ...] = (
            ("threshold", settings.threshold, DISTANCE_TESTS),
            ("alpha", settings.alpha, P_VALUE_TESTS),
        )
        for setting, value, family in limits:
            if value is None:
                continue
            if name not in kinds:
                unused.append(UnusedFeatureSetting(name, setting, "unknown"))
            elif name not in checked and name != PREDICTION_FEATURE:
                unused.append(UnusedFeatureSetting(name, setting, "unchecked"))
            else:
                kind = kinds[name]
                test = settings.test or (
                    config.numerical_test if kind == "numerical" else config.categorical_test
                )
                if not possible_tests(kind, test) & family:
                    unused.append(UnusedFeatureSetting(name, setting, "wrong_kind", kind, test))
    return unused


class FeatureDrift(_CamelModel):
    """One feature's verdict."""

    feature: str
    kind: Kind
    test: TestName
    score: float = Field(description="The test's statistic (PSI, distance, KS D or chi-squared).")
    p_value: float | None = Field(default=None, description="Raw p-value of a hypothesis test.")
    p_value_adjusted: float | None = Field(
        default=None, description="After Benjamini-Hochberg across features (the one compared)."
    )
    threshold: float
    drifted: bool
    sample_size: int = Field(description="Current values compared (missing values left out).")
    reference_size: int
    scores: dict[str, float] = Field(
        default_factory=dict, description="Extra statistics requested by extraScores."
    )


class SkippedFeature(_CamelModel):
    """A feature that could not be tested, and why."""

    feature: str
    reason: str


class DriftReport(_CamelModel):
    """Per-feature scores and the model-level verdict."""

    mode: Literal["exact", "binned"]
    features: list[FeatureDrift]
    drifted_features: list[str]
    share: float = Field(description="Drifted input features / tested input features.")
    drift_share: float
    drifted: bool
    prediction: FeatureDrift | None = None
    prediction_drifted: bool = False
    sample_size: int = Field(description="Largest number of current values over the features.")
    skipped: list[SkippedFeature] = Field(default_factory=list)


def benjamini_hochberg(p_values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Benjamini-Hochberg adjusted p-values (as ``scipy.stats.false_discovery_control``).

    Reject at false discovery rate ``q`` where the adjusted p-value is below ``q``.
    """
    ps = np.asarray(p_values, dtype=np.float64)
    if ps.ndim != 1:
        raise ValueError("p-values must be a flat list")
    if ps.size == 0:
        return ps.copy()
    if np.any((ps < 0) | (ps > 1)) or np.any(np.isnan(ps)):
        raise ValueError("p-values must lie between 0 and 1")
    order = np.argsort(ps)
    ranked = ps[order] * (ps.size / np.arange(1, ps.size + 1))
    # A p-value is rejected whenever any larger one is: carry the minimum down from the top.
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty_like(ranked)
    adjusted[order] = ranked
    clipped: npt.NDArray[np.float64] = np.clip(adjusted, 0.0, 1.0)
    return clipped


# --------------------------------------------------------------------------------------------
# One feature's data, in either mode, with the statistics computed lazily and cached.


@dataclass
class _FeatureData:
    name: str
    kind: Kind
    reference_size: int
    sample_size: int
    # exact numerical
    reference_sorted: npt.NDArray[np.float64] | None = None
    current_sorted: npt.NDArray[np.float64] | None = None
    # counts over shared bins (binned mode, categorical, or numerical once binned)
    reference_counts: npt.NDArray[np.int64] | None = None
    current_counts: npt.NDArray[np.int64] | None = None
    edges: npt.NDArray[np.float64] | None = None
    reference_std: float | None = None
    workspace: stats.Workspace | None = None
    _cache: dict[str, stats.StatResult] = field(default_factory=dict)

    def counts(self, n_bins: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        if self.reference_counts is None or self.current_counts is None:
            assert self.reference_sorted is not None and self.current_sorted is not None
            self.edges = quantile_edges(self.reference_sorted, n_bins)
            self.reference_counts = binned_counts_sorted(self.reference_sorted, self.edges)
            self.current_counts = binned_counts_sorted(self.current_sorted, self.edges)
        return self.reference_counts, self.current_counts

    def settle(self, config: DriftConfig) -> None:
        """Compute every statistic the report will ask for, then let go of the samples.

        Exact mode sorts each column into the shared workspace; the next column reuses it, so
        the sorted views are only valid until then.
        """
        for test in self.tests(config):
            self.statistic(test, config)
        self.reference_sorted = self.current_sorted = None

    def tests(self, config: DriftConfig) -> list[str]:
        applicable = NUMERICAL_TESTS if self.kind == "numerical" else CATEGORICAL_TESTS
        chosen = config.test_for(self.name, self.kind, self.sample_size)
        return [chosen, *(t for t in config.extra_scores if t in applicable and t != chosen)]

    def statistic(self, test: str, config: DriftConfig) -> stats.StatResult:
        if test not in self._cache:
            self._cache[test] = self._compute(test, config)
        return self._cache[test]

    def _compute(self, test: str, config: DriftConfig) -> stats.StatResult:
        ref_sorted, cur_sorted = self.reference_sorted, self.current_sorted
        if test == "ks":
            if ref_sorted is not None and cur_sorted is not None:
                return stats.ks_from_samples(
                    ref_sorted, cur_sorted, assume_sorted=True, workspace=self.workspace
                )
            return stats.ks_from_counts(*self.counts(config.n_bins))
        if test == "wasserstein":
            if ref_sorted is not None and cur_sorted is not None:
                distance = stats.wasserstein_from_samples(
                    ref_sorted, cur_sorted, assume_sorted=True
                ).statistic
                std = float(np.std(ref_sorted))
                return stats.StatResult(stats.normalised_wasserstein(distance, std))
            assert self.edges is not None
            binned = stats.wasserstein_from_counts(self.edges, *self.counts(config.n_bins))
            return stats.StatResult(
                stats.normalised_wasserstein(binned.statistic, self.reference_std)
            )
        reference, current = self.counts(config.n_bins)
        if test == "psi":
            return stats.psi_from_counts(reference, current, epsilon=config.psi_epsilon)
        if test == "jensenshannon":
            return stats.jensenshannon_from_counts(reference, current)
        if test == "chi2":
            return stats.chi2_from_counts(reference, current, config.chi2_method)
        raise ValueError(f"unknown test {test!r}")


def _evaluate(
    mode: Literal["exact", "binned"],
    data: Sequence[_FeatureData],
    skipped: list[SkippedFeature],
    config: DriftConfig,
) -> DriftReport:
    """Score every feature, correct the p-values, and reach the verdicts."""
    rows: list[tuple[_FeatureData, str, stats.StatResult]] = []
    for feature in data:
        test = config.test_for(feature.name, feature.kind, feature.sample_size)
        rows.append((feature, test, feature.statistic(test, config)))

    inputs_with_p = [
        i
        for i, (feature, test, _) in enumerate(rows)
        if test in P_VALUE_TESTS and feature.name != PREDICTION_FEATURE
    ]
    adjusted: dict[int, float] = {}
    if inputs_with_p:
        raw = [float(rows[i][2].p_value or 0.0) for i in inputs_with_p]
        corrected = benjamini_hochberg(raw) if config.correction == "bh" else np.asarray(raw)
        adjusted = {i: float(p) for i, p in zip(inputs_with_p, corrected, strict=True)}

    results: list[FeatureDrift] = []
    prediction: FeatureDrift | None = None
    for i, (feature, test, outcome) in enumerate(rows):
        threshold = config.threshold_for(feature.name, test)
        p_adjusted = adjusted.get(i, outcome.p_value)
        if test in P_VALUE_TESTS:
            assert p_adjusted is not None
            drifted = p_adjusted < threshold
        else:
            drifted = outcome.statistic >= threshold
        extra = {
            name: feature.statistic(name, config).statistic
            for name in config.extra_scores
            if name != test
            and name in (NUMERICAL_TESTS if feature.kind == "numerical" else CATEGORICAL_TESTS)
        }
        result = FeatureDrift(
            feature=feature.name,
            kind=feature.kind,
            test=test,
            score=outcome.statistic,
            p_value=outcome.p_value,
            p_value_adjusted=p_adjusted if test in P_VALUE_TESTS else None,
            threshold=threshold,
            drifted=bool(drifted),
            sample_size=feature.sample_size,
            reference_size=feature.reference_size,
            scores=extra,
        )
        if feature.name == PREDICTION_FEATURE:
            prediction = result
        else:
            results.append(result)

    drifted_features = [r.feature for r in results if r.drifted]
    share = len(drifted_features) / len(results) if results else 0.0
    return DriftReport(
        mode=mode,
        features=results,
        drifted_features=drifted_features,
        share=share,
        drift_share=config.drift_share,
        drifted=bool(results) and share >= config.drift_share,
        prediction=prediction,
        prediction_drifted=prediction is not None and prediction.drifted,
        sample_size=max((f.sample_size for f in data), default=0),
        skipped=skipped,
    )


# --------------------------------------------------------------------------------------------
# Binned mode


def drift_report(
    profile: Profile,
    current_counts: Mapping[str, Sequence[int] | npt.NDArray[np.integer]],
    config: DriftConfig | None = None,
) -> DriftReport:
    """Drift of current counts against the reference profile, over the profile's bins.

    ``current_counts`` maps a feature name (or ``__prediction__``) to its counts, one per bin in
    the order of :attr:`FeatureProfile.bin_labels` (see :func:`counts_from_bin_labels` for
    counters keyed by label, and :func:`counts_from_samples` for raw values). Only the features
    given are tested; a feature with no current values is listed under ``skipped``.
    """
    config = config or DriftConfig()
    data: list[_FeatureData] = []
    skipped: list[SkippedFeature] = []
    for name, counts in current_counts.items():
        reference = _profile_feature(profile, name)
        current = np.asarray(counts)
        if current.shape != (len(reference.counts),):
            raise ValueError(
                f"feature {name!r}: got {current.size} counts but the profile has "
                f"{len(reference.counts)} bins ({', '.join(reference.bin_labels)}); "
                "count values over the profile's bins"
            )
        if np.any(current < 0):
            raise ValueError(f"feature {name!r}: counts must not be negative")
        current_total = int(current.sum())
        reference_total = int(sum(reference.counts))
        if reference_total == 0 or current_total == 0:
            side = "reference" if reference_total == 0 else "current"
            skipped.append(SkippedFeature(feature=name, reason=f"no {side} values"))
            continue
        data.append(
            _FeatureData(
                name=name,
                kind=reference.kind,
                reference_size=reference_total,
                sample_size=current_total,
                reference_counts=np.asarray(reference.counts, dtype=np.int64),
                current_counts=current.astype(np.int64),
                edges=np.asarray(reference.edges, dtype=np.float64),
                reference_std=reference.std,
            )
        )
    return _evaluate("binned", data, skipped, config)


def _profile_feature(profile: Profile, name: str) -> FeatureProfile:
    try:
        return profile.feature(name)
    except KeyError:
        known = ", ".join(f.name for f in profile.all_features())
        raise ValueError(
            f"feature {name!r} is not in the reference profile (it has: {known})"
        ) from None


def counts_from_samples(
    profile: Profile, rows: Mapping[str, npt.ArrayLike]
) -> dict[str, list[int]]:
    """Count raw values per column over the profile's bins, ready for :func:`drift_report`.

    ``rows`` maps a column name (or ``__prediction__``) to its values; missing values are not
    counted.
    """
    counts: dict[str, list[int]] = {}
    for name, values in rows.items():
        binned, _missing = _profile_feature(profile, name).bin_counts(values)
        counts[name] = [int(c) for c in binned]
    return counts


def counts_from_bin_labels(
    profile: Profile, labelled: Mapping[str, Mapping[str, float]]
) -> dict[str, list[int]]:
    """Counts keyed by bin label (as the model servers export them) in profile bin order.

    ``labelled[feature][bin_label]`` is a count, e.g. from PromQL
    ``sum by (feature, bin) (increase(kubeloop_serve_feature_bin_total{model="m",
    track="stable"}[1h]))``. ``increase()`` extrapolates to non-integers, so counts are
    rounded; a bin with no series counts 0; the ``missing`` bin is left out.
    """
    counts: dict[str, list[int]] = {}
    for name, by_label in labelled.items():
        feature = _profile_feature(profile, name)
        labels = feature.bin_labels
        position = {label: i for i, label in enumerate(labels)}
        row = [0] * len(labels)
        for label, value in by_label.items():
            if label == MISSING_BIN_LABEL and label not in position:
                continue
            if label not in position:
                raise ValueError(
                    f"feature {name!r}: bin {label!r} is not one of the profile's bins "
                    f"({', '.join(labels)}); was the server started with another profile?"
                )
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"feature {name!r}, bin {label!r}: count {value} is not valid")
            row[position[label]] = round(value)
        counts[name] = row
    return counts


# --------------------------------------------------------------------------------------------
# Exact mode


def _exact_feature(
    name: str,
    reference_values: npt.ArrayLike,
    current_values: npt.ArrayLike,
    is_named_categorical: bool,
    config: DriftConfig,
    workspace: stats.Workspace,
) -> _FeatureData | SkippedFeature:
    """One column of the exact mode, with its statistics computed."""
    ref = np.asarray(reference_values)
    cur = np.asarray(current_values)
    if is_named_categorical or ref.dtype.kind not in "fiu":
        _labels, ref_counts, cur_counts = stats.category_counts(ref, cur)
        feature = _FeatureData(
            name=name,
            kind="categorical",
            reference_size=int(ref_counts.sum()),
            sample_size=int(cur_counts.sum()),
            reference_counts=ref_counts,
            current_counts=cur_counts,
        )
    else:
        if cur.dtype.kind not in "fiub":
            raise ValueError(
                f"column {name!r} is numerical in the reference but not in the current data "
                f"(dtype {cur.dtype}); fix the data or list it as categorical"
            )
        ref_sorted = stats.sorted_sample(ref, workspace=workspace, slot="reference")
        cur_sorted = stats.sorted_sample(cur, workspace=workspace, slot="current")
        feature = _FeatureData(
            name=name,
            kind="numerical",
            reference_size=ref_sorted.size,
            sample_size=cur_sorted.size,
            reference_sorted=ref_sorted,
            current_sorted=cur_sorted,
            workspace=workspace,
        )
    if feature.reference_size == 0 or feature.sample_size == 0:
        side = "reference" if feature.reference_size == 0 else "current"
        return SkippedFeature(feature=name, reason=f"no {side} values")
    feature.settle(config)
    return feature


def drift_report_from_samples(
    reference: Mapping[str, npt.ArrayLike],
    current: Mapping[str, npt.ArrayLike],
    config: DriftConfig | None = None,
    *,
    categorical: Collection[str] = (),
    workers: int = 1,
) -> DriftReport:
    """Drift of current values against reference values, column by column.

    Both mappings must have the same column names (``__prediction__`` for the predictions).
    A column is categorical when named in ``categorical`` or when its values are not numbers;
    numerical columns are binned by the reference's quantiles for PSI and Jensen-Shannon (the
    profile's rule, so both modes give the same PSI). ``workers`` > 1 checks columns on that
    many threads (same results, more memory: two sorted columns per thread).
    """
    config = config or DriftConfig()
    only_reference = sorted(set(reference) - set(current))
    only_current = sorted(set(current) - set(reference))
    if only_reference or only_current:
        raise ValueError(
            "reference and current must have the same columns; "
            + "; ".join(
                part
                for part in (
                    f"only in reference: {', '.join(only_reference)}" if only_reference else "",
                    f"only in current: {', '.join(only_current)}" if only_current else "",
                )
                if part
            )
        )
    names = list(reference)
    if workers <= 1 or len(names) < 2:
        workspace = stats.Workspace()
        outcomes = [
            _exact_feature(
                name, reference[name], current[name], name in categorical, config, workspace
            )
            for name in names
        ]
    else:
        # numpy releases the GIL while sorting and searching, so columns run in parallel; each
        # thread keeps its own workspace.
        local = threading.local()

        def one(name: str) -> _FeatureData | SkippedFeature:
            if not hasattr(local, "workspace"):
                local.workspace = stats.Workspace()
            return _exact_feature(
                name, reference[name], current[name], name in categorical, config, local.workspace
            )

        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(one, names))
    data = [o for o in outcomes if isinstance(o, _FeatureData)]
    skipped = [o for o in outcomes if isinstance(o, SkippedFeature)]
    return _evaluate("exact", data, skipped, config)
