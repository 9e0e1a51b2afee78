"""`kubectl kubeloop status` shows MLflow (issue 17): a TrainingRun's MLflow run and the champion
it was judged against, a ModelDeployment's registry source, resolved version and aliases."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from kubeloop.plugin import mlflow_of_run, registry_of_deployment

SHA = "0123456789abcdef" * 4


def text(table: Table | None) -> str:
    assert table is not None
    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    # One space between cells: the grid pads columns to the widest label.
    return "\n".join(" ".join(line.split()) for line in console.export_text().splitlines())


def test_a_tracked_run_shows_its_mlflow_run_version_and_registry_champion() -> None:
    run: dict[str, Any] = {
        "spec": {"tracking": {"experimentName": "churn-experiments"}},
        "status": {
            "mlflow": {
                "experimentId": "7",
                "runId": "4f1c2a9e",
                "registeredModel": "churn",
                "modelVersion": "4",
                "finished": True,
            },
            "champion": {
                "uri": "file:///m/model.skops",
                "sha256": SHA,
                "source": "MLflow churn@champion (version 3)",
            },
        },
    }
    shown = text(mlflow_of_run(run))
    assert "experiment 7 (churn-experiments)" in shown
    assert "run id 4f1c2a9e" in shown
    assert "model version churn version 4" in shown
    assert "MLflow churn@champion (version 3) sha256 0123456789abcdef" in shown


def test_a_run_whose_mlflow_update_is_pending_says_so() -> None:
    run = {"spec": {}, "status": {"mlflow": {"experimentId": "7", "runId": "ab"}}}
    shown = text(mlflow_of_run(run))
    assert "no (retried)" in shown and "model version" not in shown


def test_an_untracked_run_shows_no_mlflow_section() -> None:
    assert mlflow_of_run({"spec": {}, "status": {"phase": "Succeeded"}}) is None


def test_a_registry_deployment_shows_source_version_and_aliases() -> None:
    md = {
        "status": {
            "registry": {
                "source": "churn@champion",
                "version": "3",
                "uri": "file:///m/model.skops",
                "sha256": SHA,
                "aliases": {"model": "churn", "champion": "3", "challenger": "4"},
            }
        }
    }
    shown = text(registry_of_deployment(md))
    assert "churn@champion -> version 3" in shown
    assert "file:///m/model.skops sha256 0123456789abcdef" in shown
    assert "aliases of churn champion -> version 3, challenger -> version 4" in shown


def test_a_run_backed_deployment_shows_only_the_aliases_it_moved() -> None:
    md = {"status": {"registry": {"aliases": {"model": "churn", "champion": "2"}}}}
    shown = text(registry_of_deployment(md))
    assert "source" not in shown
    assert "aliases of churn champion -> version 2" in shown
    assert registry_of_deployment({"status": {}}) is None
