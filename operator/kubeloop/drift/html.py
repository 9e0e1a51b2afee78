"""The drift report as one self-contained HTML file (``kubeloop drift --html report.html``).

Inline CSS and inline SVG (:mod:`kubeloop.drift.charts`): no script, no stylesheet, font or
image from anywhere, so the file opens offline and can be attached to a ticket. Pure: from a
:class:`~kubeloop.drift.report.DriftReport`, the binned reference and current counts of each
feature (:class:`FeatureBins`) and a few words about where the data came from, to text.

The figures are the report's, as ``kubeloop drift --report`` writes them, and sit in the DOM as
``data-*`` attributes (``repr`` of the floats, so they read back exactly):

* ``<section id="summary">``: ``data-drifted``, ``data-share``, ``data-drift-share``,
  ``data-mode``, ``data-sample-size``, ``data-prediction-drifted``; its ``<li>`` under
  ``#drifted-features`` name the drifted features;
* one ``<tr class="feature">`` per tested feature (the prediction last): ``data-feature``,
  ``data-kind``, ``data-test``, ``data-score``, ``data-p-value``, ``data-threshold``,
  ``data-drifted``, ``data-sample-size``, ``data-reference-size``;
* one chart per feature, with the attributes :mod:`kubeloop.drift.charts` documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from kubeloop.drift.charts import FeatureVerdict, feature_histogram, prediction_histogram
from kubeloop.drift.profile import PREDICTION_FEATURE, FeatureProfile
from kubeloop.drift.report import DriftReport, FeatureDrift


@dataclass(frozen=True)
class FeatureBins:
    """One feature's reference bins (a profile entry) and the current counts over them."""

    reference: FeatureProfile
    current_counts: Sequence[int]


@dataclass(frozen=True)
class ReportContext:
    """Where the compared data came from, for the report's header (all text, all optional)."""

    title: str = "Drift report"
    data: str | None = None
    reference: str | None = None
    generated_at: str | None = None
    window: str | None = None
    notes: list[str] = field(default_factory=list)


_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #1f2933; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 .5rem; }
.verdict { display: inline-block; padding: .15rem .6rem; border-radius: .8rem; color: #fff;
           font-weight: 600; }
.verdict.drifted { background: #c62828; } .verdict.stable { background: #2e7d32; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.summary dt { color: #52606d; } dl.summary dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #e4e7eb; }
th { background: #f5f7fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.feature.drifted td:first-child { border-left: 4px solid #c62828; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr));
          gap: 1rem; }
figure { margin: 0; border: 1px solid #e4e7eb; border-radius: 6px; padding: .5rem; }
figure svg { width: 100%; height: auto; display: block; }
footer { margin-top: 2rem; color: #7b8794; font-size: 12px; }
"""


def render_html(
    report: DriftReport,
    bins: Mapping[str, FeatureBins],
    context: ReportContext | None = None,
) -> str:
    """The whole report page. ``bins`` maps a feature name (``__prediction__`` for the
    prediction) to its bins; a tested feature without bins gets its table row and no chart."""
    context = context or ReportContext()
    rows = [*report.features, *([report.prediction] if report.prediction else [])]
    verdict_class = "drifted" if report.drifted else "stable"
    verdict_text = "Drifted" if report.drifted else "No drift"
    tested = len(report.features)
    summary_attrs = {
        "id": "summary",
        "data-drifted": _bool(report.drifted),
        "data-share": repr(float(report.share)),
        "data-drift-share": repr(float(report.drift_share)),
        "data-mode": report.mode,
        "data-sample-size": str(report.sample_size),
        "data-prediction-drifted": _bool(report.prediction_drifted),
        "data-tested-features": str(tested),
    }
    facts: list[tuple[str, str]] = [
        (
            "Verdict",
            f"{len(report.drifted_features)} of {tested} features drifted (share "
            f"{report.share:.2f}; the model counts as drifted at {report.drift_share:g})",
        ),
    ]
    if report.prediction is not None:
        facts.append(("Prediction", "drifted" if report.prediction_drifted else "no drift"))
    facts.append(("Mode", _mode_text(report.mode)))
    facts.append(("Current values", f"{report.sample_size:,} (largest over the features)"))
    if context.data:
        facts.append(("Data", context.data))
    if context.reference:
        facts.append(("Reference", context.reference))
    if context.window:
        facts.append(("Window", context.window))
    if context.generated_at:
        facts.append(("Checked at", context.generated_at))

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No network, ever: the page may only use what is inside it.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{escape(context.title)}: {verdict_text.lower()}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>{escape(context.title)}</h1>",
        f'<p><span class="verdict {verdict_class}">{verdict_text}</span></p></header>',
        f'<section{_attrs(summary_attrs)}><h2>Summary</h2><dl class="summary">',
    ]
    for term, value in facts:
        out.append(f"<dt>{escape(term)}</dt><dd>{escape(value)}</dd>")
    out.append("</dl>")
    out.append('<p>Drifted features:</p><ul id="drifted-features">')
    out += [f"<li>{escape(name)}</li>" for name in report.drifted_features]
    if not report.drifted_features:
        out.append('<li class="none">none</li>')
    out.append("</ul>")
    for note in context.notes:
        out.append(f'<p class="note">{escape(note)}</p>')
    out.append("</section>")

    out.append('<section id="features"><h2>Features</h2><table><thead><tr>')
    for header in (
        "Feature",
        "Kind",
        "Test",
        "Score",
        "p-value (corrected)",
        "Limit",
        "Drifted",
        "Current",
        "Reference",
    ):
        out.append(f'<th scope="col">{header}</th>')
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append(_feature_row(row))
    out.append("</tbody></table>")
    if report.skipped:
        out.append('<p>Not tested:</p><ul id="skipped">')
        out += [
            f'<li data-feature="{escape(s.feature, quote=True)}">{escape(s.feature)}: '
            f"{escape(s.reason)}</li>"
            for s in report.skipped
        ]
        out.append("</ul>")
    out.append("</section>")

    out.append('<section id="charts"><h2>Reference and current distributions</h2>')
    out.append(
        "<p>Share of values per bin (numerical features, the reference profile's quantile bins; "
        "a bin holds the values above its lower edge up to and including its upper edge) or "
        "per category (values the reference never had fall in <code>__other__</code>). "
        "Missing values are not counted.</p>"
    )
    out.append('<div class="charts">')
    for index, row in enumerate(rows):
        feature_bins = bins.get(row.feature)
        if feature_bins is None:
            continue
        verdict = FeatureVerdict.from_feature_drift(row)
        chart_id = f"chart-{index}"
        draw = prediction_histogram if row.feature == PREDICTION_FEATURE else feature_histogram
        svg = draw(feature_bins.reference, feature_bins.current_counts, verdict, chart_id=chart_id)
        out.append(f'<figure id="figure-{index}">{svg}</figure>')
    out.append("</div></section>")
    out.append(
        "<footer>Written by <code>kubeloop drift</code>. Scores: psi, wasserstein (in reference "
        "standard deviations) and jensenshannon drift at or above their threshold; ks and chi2 "
        "when the Benjamini-Hochberg corrected p-value is below alpha.</footer>"
    )
    out.append("</body></html>\n")
    return "".join(out)


def _feature_row(row: FeatureDrift) -> str:
    verdict = FeatureVerdict.from_feature_drift(row)
    attrs = {
        "class": "feature drifted" if row.drifted else "feature",
        "data-feature": row.feature,
        "data-kind": row.kind,
        "data-test": row.test,
        "data-score": repr(float(row.score)),
        "data-threshold": repr(float(row.threshold)),
        "data-drifted": _bool(row.drifted),
        "data-sample-size": str(row.sample_size),
        "data-reference-size": str(row.reference_size),
    }
    if verdict.p_value is not None:
        attrs["data-p-value"] = repr(float(verdict.p_value))
    name = "prediction" if row.feature == PREDICTION_FEATURE else row.feature
    limit = f"{'alpha' if verdict.uses_p_value else 'threshold'} {row.threshold:g}"
    cells = [
        f'<th scope="row">{escape(name)}</th>',
        f"<td>{escape(row.kind)}</td>",
        f"<td>{escape(row.test)}</td>",
        f'<td class="num">{row.score:.4g}</td>',
        f'<td class="num">{"-" if verdict.p_value is None else f"{verdict.p_value:.3g}"}</td>',
        f"<td>{escape(limit)}</td>",
        f"<td>{'yes' if row.drifted else 'no'}</td>",
        f'<td class="num">{row.sample_size:,}</td>',
        f'<td class="num">{row.reference_size:,}</td>',
    ]
    return f"<tr{_attrs(attrs)}>{''.join(cells)}</tr>"


def _mode_text(mode: str) -> str:
    if mode == "binned":
        return "binned: current values counted over the reference profile's bins"
    return "exact: current values compared with the reference data value by value"


def _attrs(attrs: Mapping[str, str]) -> str:
    return "".join(f' {key}="{escape(value, quote=True)}"' for key, value in attrs.items())


def _bool(value: bool) -> str:
    return "true" if value else "false"
