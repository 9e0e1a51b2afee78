"""``kubeloop drift --html``: one self-contained page, opened in real Chromium with the network
blocked; every figure read from the DOM equals ``kubeloop drift --report``'s JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from browser import OfflinePage
from kubeloop.drift.profile import PREDICTION_FEATURE, Profile, build_profile, numeric_profile
from kubeloop.drift.report import counts_from_samples
from kubeloop.drift.result import EXIT_CHECKED
from kubeloop.runtime.drift import main

ROWS = 1500
HOSTILE = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "drift-report.png"


def _table(seed: int, shifted: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(40 + (8 if shifted else 0), 12, ROWS)
    age[::50] = np.nan
    return pd.DataFrame(
        {
            "age": age,
            "income": rng.lognormal(10, 0.5, ROWS),
            "plan": rng.choice(
                ["basic", "plus", "pro", *(["enterprise"] if shifted else [])],
                ROWS,
                p=[0.2, 0.3, 0.3, 0.2] if shifted else [0.6, 0.3, 0.1],
            ),
            HOSTILE: rng.integers(0, 5, ROWS),
            "score": rng.uniform(0, 1, ROWS) ** (3 if shifted else 1),
        }
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drift-html")
    reference = _table(1, shifted=False)
    features = ["age", "income", "plan", HOSTILE]
    profile = build_profile(
        {name: reference[name].to_numpy() for name in features},
        categorical=["plan"],
        prediction=reference["score"].to_numpy(),
        n_bins=10,
    )
    paths = {
        "profile": root / "profile.json",
        "reference": root / "reference.parquet",
        "shifted": root / "shifted.csv",
        "log": root / "termination-log",
    }
    paths["profile"].write_bytes(profile.to_json_bytes())
    reference.to_parquet(paths["reference"])
    _table(2, shifted=True).to_csv(paths["shifted"], index=False)
    return paths


def _run(files: dict[str, Path], out: Path, *extra: str) -> tuple[dict[str, Any], Path]:
    html, report = out / "report.html", out / "report.json"
    code = main(
        [
            "--data", str(files["shifted"]),
            "--prediction-column", "score",
            "--termination-log", str(files["log"]),
            "--report", str(report),
            "--html", str(html),
            *extra,
        ]
    )  # fmt: skip
    assert code == EXIT_CHECKED
    return json.loads(report.read_text()), html


def _dom_figures(page: OfflinePage) -> dict[str, Any]:
    """Everything the page states as data, read back by the browser."""
    figures: dict[str, Any] = page.evaluate(
        """() => {
        const data = (el) => Object.assign({}, el.dataset);
        return {
          summary: data(document.querySelector('#summary')),
          driftedFeatures: [...document.querySelectorAll('#drifted-features li:not(.none)')]
            .map((li) => li.textContent),
          rows: [...document.querySelectorAll('tr.feature')].map(data),
          charts: [...document.querySelectorAll('svg.histogram')].map((svg) => ({
            ...data(svg),
            visible: svg.getBoundingClientRect().width > 0,
            bins: [...svg.querySelectorAll('g.bin')].map(data),
          })),
          scripts: document.querySelectorAll('script').length,
          images: document.querySelectorAll('img').length,
        };
      }"""
    )
    return figures


def _assert_rows_equal_json(figures: dict[str, Any], report: dict[str, Any]) -> None:
    summary = figures["summary"]
    assert summary["drifted"] == str(report["drifted"]).lower()
    assert float(summary["share"]) == report["share"]
    assert float(summary["driftShare"]) == report["driftShare"]
    assert int(summary["sampleSize"]) == report["sampleSize"]
    assert summary["mode"] == report["mode"]
    assert summary["predictionDrifted"] == str(report["predictionDrifted"]).lower()
    assert figures["driftedFeatures"] == report["driftedFeatures"]
    expected = [*report["features"], report["prediction"]]
    assert [row["feature"] for row in figures["rows"]] == [f["feature"] for f in expected]
    for row, feature in zip(figures["rows"], expected, strict=True):
        p_value = feature["pValueAdjusted"] if feature["pValueAdjusted"] is not None else None
        p_value = p_value if p_value is not None else feature["pValue"]
        assert row["test"] == feature["test"]
        assert float(row["score"]) == feature["score"]
        assert float(row["threshold"]) == feature["threshold"]
        assert row["drifted"] == str(feature["drifted"]).lower()
        assert int(row["sampleSize"]) == feature["sampleSize"]
        assert int(row["referenceSize"]) == feature["referenceSize"]
        assert (float(row["pValue"]) if "pValue" in row else None) == p_value
    # Each feature's chart is there, visible, and says the same verdict.
    charts = {chart["feature"]: chart for chart in figures["charts"]}
    assert list(charts) == [f["feature"] for f in expected]
    for feature in expected:
        chart = charts[feature["feature"]]
        assert chart["visible"]
        assert float(chart["score"]) == feature["score"]
        assert float(chart["threshold"]) == feature["threshold"]
        assert chart["drifted"] == str(feature["drifted"]).lower()


def test_binned_report_in_chromium_equals_the_json(
    files: dict[str, Path], tmp_path: Path, offline_browser_page: OfflinePage
) -> None:
    report, html = _run(files, tmp_path, "--profile", str(files["profile"]))
    page = offline_browser_page
    page.goto(html.as_uri())
    figures = _dom_figures(page)

    assert report["drifted"] is True and report["predictionDrifted"] is True
    _assert_rows_equal_json(figures, report)
    # The bars are the profile's bins and the CSV's counts over them.
    profile = Profile.from_json_bytes(files["profile"].read_bytes())
    shifted = pd.read_csv(files["shifted"])
    columns = {name: shifted[name].to_numpy() for name in ["age", "income", HOSTILE]}
    columns["plan"] = shifted["plan"].astype(object).to_numpy()
    columns[PREDICTION_FEATURE] = shifted["score"].to_numpy()
    counts = counts_from_samples(profile, columns)
    for chart in figures["charts"]:
        reference = profile.feature(chart["feature"])
        assert [b["bin"] for b in chart["bins"]] == reference.bin_labels
        assert [int(b["referenceCount"]) for b in chart["bins"]] == reference.counts
        assert [int(b["currentCount"]) for b in chart["bins"]] == counts[chart["feature"]]
    plan = next(c for c in figures["charts"] if c["feature"] == "plan")
    assert plan["bins"][-1]["bin"] == "__other__" and int(plan["bins"][-1]["currentCount"]) > 0

    # Offline and inert: nothing requested, nothing logged, the hostile column name is text.
    assert page.blocked == []
    assert page.errors == []
    assert figures["scripts"] == 0 and figures["images"] == 0
    assert page.get_by_role("rowheader", name=HOSTILE).is_visible()

    path = tmp_path / "drift-report.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("KUBELOOP_UPDATE_SCREENSHOTS"):
        shutil.copyfile(path, SCREENSHOT)


def test_exact_report_charts_the_bins_its_psi_used(
    files: dict[str, Path], tmp_path: Path, offline_browser_page: OfflinePage
) -> None:
    config = '{"numericalTest": "psi", "categoricalTest": "chi2", "nBins": 8}'
    report, html = _run(
        files, tmp_path, "--reference", str(files["reference"]), "--config", config,
        "--title", "Churn: yesterday vs training",
    )  # fmt: skip
    page = offline_browser_page
    page.goto(html.as_uri())
    figures = _dom_figures(page)
    _assert_rows_equal_json(figures, report)
    assert report["mode"] == "exact"
    assert page.title() == "Churn: yesterday vs training: drifted"
    # Exact mode draws the reference data's own quantile bins, the ones the PSI was taken over.
    reference = pd.read_parquet(files["reference"])
    age = numeric_profile("age", reference["age"].to_numpy(), n_bins=8)
    chart = next(c for c in figures["charts"] if c["feature"] == "age")
    assert [int(b["referenceCount"]) for b in chart["bins"]] == age.counts
    assert page.blocked == [] and page.errors == []


def test_a_page_that_cannot_be_written_does_not_fail_the_check(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    code = main(
        [
            "--data", str(files["shifted"]), "--profile", str(files["profile"]),
            "--termination-log", str(files["log"]), "--html", str(blocker / "report.html"),
        ]
    )  # fmt: skip
    assert code == EXIT_CHECKED
    assert json.loads(files["log"].read_bytes())["status"] == "Checked"
    err = capsys.readouterr().err
    assert "--html" in err and "was not written" in err
