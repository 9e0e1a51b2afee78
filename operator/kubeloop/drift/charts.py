"""Drift charts as inline SVG: pure functions from a profile and a verdict to markup.

Three views, used by ``kubeloop drift --html`` and ``kubectl kubeloop dashboard``:

* :func:`feature_histogram` — one feature's reference distribution over the profile's bins
  (numerical) or categories (categorical, ending with ``__other__``) beside the current
  window's counts, both as proportions, captioned with the test, score, threshold or alpha and
  the verdict;
* :func:`prediction_histogram` — the same for the model's output (``__prediction__``);
* :func:`score_timeline` — one feature's score (or p-value) over successive checks, with the
  threshold drawn across.

The markup needs no script, stylesheet, font or image from anywhere: it can be pasted into a
self-contained HTML file. Every text is escaped (feature and category names come from
someone's data). Each chart is ``role="img"`` with a ``<title>`` and ``<desc>``, and carries
its figures as ``data-*`` attributes (exact ``repr`` of the floats), so tests and tools read
the numbers from the DOM instead of from pixels:

* the ``<svg>``: ``data-feature``, ``data-kind``, ``data-test``, ``data-score``,
  ``data-p-value``, ``data-threshold``, ``data-drifted`` (``true``/``false``), ``data-limit``
  (``threshold`` or ``alpha``), ``data-reference-total``, ``data-current-total``;
* one ``<g class="bin">`` per bin: ``data-bin`` (the label the model servers export),
  ``data-range`` (numerical), ``data-reference-count``, ``data-current-count``,
  ``data-reference-proportion``, ``data-current-proportion``;
* one ``<circle class="point">`` per check of a timeline: ``data-time``, ``data-value``,
  ``data-drifted``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from kubeloop.drift.defaults import P_VALUE_TESTS
from kubeloop.drift.profile import PREDICTION_FEATURE, FeatureProfile
from kubeloop.drift.report import FeatureDrift

REFERENCE_COLOUR = "#5b7083"
CURRENT_COLOUR = "#e07b24"
DRIFTED_COLOUR = "#c62828"
STABLE_COLOUR = "#2e7d32"
MAX_LABEL_CHARS = 16
MAX_HEADING_CHARS = 44

_WIDTH = 640
_HEIGHT = 260
_LEFT = 48
_RIGHT = 12
_TOP = 52
_BOTTOM = 64


@dataclass(frozen=True)
class FeatureVerdict:
    """What a chart says about one feature: the test, its result and the limit it was held to.

    ``threshold`` is the score threshold of a distance test, or alpha of ``ks``/``chi2``
    (then ``p_value`` is the corrected p-value that was compared with it).
    """

    test: str
    score: float
    threshold: float
    drifted: bool
    p_value: float | None = None

    @classmethod
    def from_feature_drift(cls, feature: FeatureDrift) -> FeatureVerdict:
        p_value = (
            feature.p_value_adjusted if feature.p_value_adjusted is not None else feature.p_value
        )
        return cls(
            test=feature.test,
            score=feature.score,
            threshold=feature.threshold,
            drifted=feature.drifted,
            p_value=p_value,
        )

    @property
    def uses_p_value(self) -> bool:
        return self.test in P_VALUE_TESTS

    def sentence(self) -> str:
        """The verdict in words, e.g. ``psi 0.31 >= threshold 0.2: drifted``."""
        outcome = "drifted" if self.drifted else "no drift"
        if self.uses_p_value and self.p_value is not None:
            sign = "<" if self.drifted else ">="
            return (
                f"{self.test} statistic {_fmt(self.score)}, p-value {_fmt(self.p_value)} "
                f"{sign} alpha {_fmt(self.threshold)}: {outcome}"
            )
        sign = ">=" if self.drifted else "<"
        return f"{self.test} {_fmt(self.score)} {sign} threshold {_fmt(self.threshold)}: {outcome}"


@dataclass(frozen=True)
class ScorePoint:
    """One check in a timeline: when, the value compared, and the verdict."""

    time: datetime
    value: float
    drifted: bool


def feature_histogram(
    reference: FeatureProfile,
    current_counts: Sequence[int],
    verdict: FeatureVerdict | FeatureDrift | None = None,
    *,
    title: str | None = None,
    chart_id: str | None = None,
) -> str:
    """SVG of ``reference``'s bins beside ``current_counts`` (same bins, same order).

    ``current_counts`` is what :func:`kubeloop.drift.report.counts_from_samples` or
    :func:`~kubeloop.drift.report.counts_from_bin_labels` return for the feature.
    """
    if len(current_counts) != len(reference.counts):
        raise ValueError(
            f"feature {reference.name!r}: {len(current_counts)} current counts for "
            f"{len(reference.counts)} bins ({', '.join(reference.bin_labels)})"
        )
    if isinstance(verdict, FeatureDrift):
        verdict = FeatureVerdict.from_feature_drift(verdict)
    ident = chart_id or _chart_id("hist", reference.name)
    labels = reference.bin_labels
    ranges = _bin_ranges(reference)
    ref_total = sum(reference.counts)
    cur_total = sum(int(c) for c in current_counts)
    ref_props = [_proportion(c, ref_total) for c in reference.counts]
    cur_props = [_proportion(int(c), cur_total) for c in current_counts]
    top = max([*ref_props, *cur_props, 0.0]) or 1.0
    top = _nice_ceiling(top)

    heading = title or (
        "Prediction (model output)" if reference.name == PREDICTION_FEATURE else reference.name
    )
    caption = verdict.sentence() if verdict else "not tested"
    description = (
        f"{reference.kind} feature {reference.name}: reference ({ref_total} values) and current "
        f"({cur_total} values) share of values per "
        f"{'category' if reference.kind == 'categorical' else 'bin'}; {caption}."
    )

    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(labels)
    bar = max(slot * 0.4, 0.5)
    parts = [
        _svg_open(
            ident, heading, description, _chart_attrs(reference, verdict, ref_total, cur_total)
        ),
        _heading(heading, verdict),
        _y_axis(top, plot_h, percent=True),
    ]
    label_every = max(1, math.ceil(len(labels) / 24))
    for i, label in enumerate(labels):
        x = _LEFT + i * slot
        ref_h = plot_h * ref_props[i] / top
        cur_h = plot_h * cur_props[i] / top
        shown = ranges[i] if reference.kind == "numerical" else label
        tip = (
            f"{shown}: reference {reference.counts[i]} ({ref_props[i]:.1%}), "
            f"current {int(current_counts[i])} ({cur_props[i]:.1%})"
        )
        attrs = {
            "class": "bin",
            "data-bin": label,
            "data-reference-count": str(reference.counts[i]),
            "data-current-count": str(int(current_counts[i])),
            "data-reference-proportion": repr(ref_props[i]),
            "data-current-proportion": repr(cur_props[i]),
        }
        if reference.kind == "numerical":
            attrs["data-range"] = ranges[i]
        parts.append(f"<g{_attrs(attrs)}><title>{escape(tip)}</title>")
        base = _TOP + plot_h
        parts.append(
            f'<rect class="reference" x="{_n(x + slot * 0.1)}" y="{_n(base - ref_h)}" '
            f'width="{_n(bar)}" height="{_n(ref_h)}" fill="{REFERENCE_COLOUR}"/>'
        )
        parts.append(
            f'<rect class="current" x="{_n(x + slot * 0.1 + bar)}" y="{_n(base - cur_h)}" '
            f'width="{_n(bar)}" height="{_n(cur_h)}" fill="{CURRENT_COLOUR}"/>'
        )
        if i % label_every == 0:
            lx, ly = x + slot / 2, base + 12
            parts.append(
                f'<text x="{_n(lx)}" y="{_n(ly)}" font-size="10" text-anchor="end" '
                f'transform="rotate(-35 {_n(lx)} {_n(ly)})">{escape(_short_label(shown))}</text>'
            )
        parts.append("</g>")
    parts.append(_legend())
    parts.append("</svg>")
    return "".join(parts)


def prediction_histogram(
    reference: FeatureProfile,
    current_counts: Sequence[int],
    verdict: FeatureVerdict | FeatureDrift | None = None,
    *,
    chart_id: str | None = None,
) -> str:
    """The prediction-drift view: :func:`feature_histogram` of the model's output."""
    return feature_histogram(
        reference,
        current_counts,
        verdict,
        title="Prediction (model output)",
        chart_id=chart_id or _chart_id("prediction", reference.name),
    )


def score_timeline(
    feature: str,
    points: Sequence[ScorePoint],
    *,
    test: str,
    threshold: float,
    chart_id: str | None = None,
) -> str:
    """SVG line of one feature's value over successive checks, with the limit drawn across.

    For ``ks``/``chi2`` the values are (corrected) p-values and ``threshold`` is alpha (drift
    below the line); for distances they are scores and drift is at or above the line.
    """
    ident = chart_id or _chart_id("timeline", feature)
    ordered = sorted(points, key=lambda p: p.time)
    uses_p = test in P_VALUE_TESTS
    measure = "p-value" if uses_p else f"{test} score"
    limit = "alpha" if uses_p else "threshold"
    heading = f"{'Prediction (model output)' if feature == PREDICTION_FEATURE else feature}: {measure} over time"
    description = (
        f"{measure} of {feature} in {len(ordered)} checks"
        + (
            f" from {ordered[0].time.isoformat()} to {ordered[-1].time.isoformat()}"
            if ordered
            else ""
        )
        + f"; {limit} {_fmt(threshold)}; drifted in {sum(p.drifted for p in ordered)} of them."
    )
    attrs = {
        "class": "kubeloop-drift-chart timeline",
        "data-feature": feature,
        "data-test": test,
        "data-threshold": repr(float(threshold)),
        "data-limit": limit,
        "data-points": str(len(ordered)),
    }
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    finite = [p.value for p in ordered if math.isfinite(p.value)]
    top = _nice_ceiling(max([*finite, threshold, 0.0]) * 1.1 or 1.0)
    parts = [
        _svg_open(ident, heading, description, attrs),
        f'<text x="{_LEFT}" y="20" font-size="14" font-weight="bold">'
        f"{escape(_short_label(heading, MAX_HEADING_CHARS + 20))}</text>",
        _y_axis(top, plot_h, percent=False),
    ]
    base = _TOP + plot_h
    limit_y = base - plot_h * min(threshold, top) / top
    parts.append(
        f'<line class="limit" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{_n(limit_y)}" '
        f'y2="{_n(limit_y)}" stroke="{DRIFTED_COLOUR}" stroke-dasharray="5 4">'
        f"<title>{escape(f'{limit} {_fmt(threshold)}')}</title></line>"
    )
    if ordered:
        start = ordered[0].time.timestamp()
        span = ordered[-1].time.timestamp() - start or 1.0
        coords: list[tuple[float, float]] = []
        for p in ordered:
            x = _LEFT + plot_w * ((p.time.timestamp() - start) / span if len(ordered) > 1 else 0.5)
            value = p.value if math.isfinite(p.value) else top
            y = base - plot_h * min(max(value, 0.0), top) / top
            coords.append((x, y))
        parts.append(
            '<polyline fill="none" stroke="#37474f" stroke-width="1.5" points="'
            + " ".join(f"{_n(x)},{_n(y)}" for x, y in coords)
            + '"/>'
        )
        for p, (x, y) in zip(ordered, coords, strict=True):
            point_attrs = {
                "class": "point",
                "data-time": p.time.isoformat(),
                "data-value": repr(float(p.value)),
                "data-drifted": _bool(p.drifted),
            }
            colour = DRIFTED_COLOUR if p.drifted else STABLE_COLOUR
            tip = f"{p.time.isoformat()}: {measure} {_fmt(p.value)}{' (drifted)' if p.drifted else ''}"
            parts.append(
                f'<circle{_attrs(point_attrs)} cx="{_n(x)}" cy="{_n(y)}" r="3.5" '
                f'fill="{colour}"><title>{escape(tip)}</title></circle>'
            )
        for p, x in ((ordered[0], coords[0][0]), (ordered[-1], coords[-1][0])):
            parts.append(
                f'<text x="{_n(x)}" y="{base + 16}" font-size="10" text-anchor="middle">'
                f"{escape(p.time.strftime('%Y-%m-%d %H:%M'))}</text>"
            )
    else:
        parts.append(
            f'<text x="{_WIDTH / 2}" y="{_TOP + plot_h / 2}" text-anchor="middle">no checks yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------


def _chart_attrs(
    reference: FeatureProfile, verdict: FeatureVerdict | None, ref_total: int, cur_total: int
) -> dict[str, str]:
    attrs = {
        "class": "kubeloop-drift-chart histogram",
        "data-feature": reference.name,
        "data-kind": reference.kind,
        "data-reference-total": str(ref_total),
        "data-current-total": str(cur_total),
        "data-reference-missing": str(reference.missing),
    }
    if verdict is not None:
        attrs |= {
            "data-test": verdict.test,
            "data-score": repr(float(verdict.score)),
            "data-threshold": repr(float(verdict.threshold)),
            "data-limit": "alpha" if verdict.uses_p_value else "threshold",
            "data-drifted": _bool(verdict.drifted),
        }
        if verdict.p_value is not None:
            attrs["data-p-value"] = repr(float(verdict.p_value))
    return attrs


def _svg_open(ident: str, heading: str, description: str, attrs: dict[str, str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'width="{_WIDTH}" height="{_HEIGHT}" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc" id="{ident}"{_attrs(attrs)} '
        'font-family="system-ui, sans-serif">'
        f'<title id="{ident}-title">{escape(heading)}</title>'
        f'<desc id="{ident}-desc">{escape(description)}</desc>'
    )


def _heading(heading: str, verdict: FeatureVerdict | None) -> str:
    parts = [
        f'<text x="{_LEFT}" y="20" font-size="14" font-weight="bold">'
        f"{escape(_short_label(heading, MAX_HEADING_CHARS))}</text>"
    ]
    if verdict is not None:
        colour = DRIFTED_COLOUR if verdict.drifted else STABLE_COLOUR
        parts.append(
            f'<text class="verdict" x="{_LEFT}" y="38" font-size="11" fill="{colour}">'
            f"{escape(verdict.sentence())}</text>"
        )
    else:
        parts.append(f'<text class="verdict" x="{_LEFT}" y="38" font-size="11">not tested</text>')
    return "".join(parts)


def _y_axis(top: float, plot_h: float, *, percent: bool) -> str:
    base = _TOP + plot_h
    parts = [
        f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_n(base)}" stroke="#90a4ae"/>',
        f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{_n(base)}" y2="{_n(base)}" '
        'stroke="#90a4ae"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        value = top * fraction
        y = base - plot_h * fraction
        text = (
            f"{value:.0%}"
            if percent and top >= 0.1
            else (f"{value:.1%}" if percent else _fmt(value))
        )
        parts.append(
            f'<text x="{_LEFT - 4}" y="{_n(y + 3)}" font-size="10" text-anchor="end">'
            f"{escape(text)}</text>"
        )
    return "".join(parts)


def _legend() -> str:
    x = _WIDTH - _RIGHT - 170
    return (
        f'<g class="legend" font-size="11">'
        f'<rect x="{x}" y="8" width="10" height="10" fill="{REFERENCE_COLOUR}"/>'
        f'<text x="{x + 14}" y="17">reference</text>'
        f'<rect x="{x + 84}" y="8" width="10" height="10" fill="{CURRENT_COLOUR}"/>'
        f'<text x="{x + 98}" y="17">current</text></g>'
    )


def _bin_ranges(reference: FeatureProfile) -> list[str]:
    """Human ranges of the numerical bins (``edges[i-1] < x <= edges[i]``); categories as-is."""
    if reference.kind == "categorical":
        return reference.bin_labels
    edges = reference.edges
    if not edges:
        return ["all values"]
    ranges = [f"<= {_compact(edges[0])}"]
    ranges += [f"({_compact(low)}, {_compact(high)}]" for low, high in itertools.pairwise(edges)]
    ranges.append(f"> {_compact(edges[-1])}")
    return ranges


def _proportion(count: int, total: int) -> float:
    return count / total if total else 0.0


def _nice_ceiling(value: float) -> float:
    """A round axis top at or above ``value`` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-12):
            return step * power
    return 10.0 * power


def _short_label(label: str, limit: int = MAX_LABEL_CHARS) -> str:
    """Shortened for drawing; the full text stays in the <title>s and data-* attributes."""
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def _chart_id(kind: str, name: str) -> str:
    # Feature names are arbitrary text; ids must be unique and safe in a page.
    return f"kl-{kind}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def _attrs(attrs: dict[str, str]) -> str:
    return "".join(f' {key}="{escape(value, quote=True)}"' for key, value in attrs.items())


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _compact(value: float) -> str:
    """A bin edge short enough for an axis label: 3 significant digits, k/M/G above 10,000."""
    magnitude = abs(value)
    for above, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if magnitude >= above:
            return f"{value / unit:.3g}{suffix}"
    return f"{value:.3g}"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _n(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")
