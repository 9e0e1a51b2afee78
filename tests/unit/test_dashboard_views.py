"""The dashboard's pages as data (kubeloop.dashboard.views), and its HTTP guards on a real socket
(the Host check, the write token, the assets shipped in the package). The pages in real Chromium
against a real API server: tests/integration/test_dashboard.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kubeloop.dashboard import views
from kubeloop.dashboard.server import Dashboard, DashboardServer, Store
from kubeloop.drift.profile import FeatureProfile, Profile


def run(
    name: str,
    model: str = "churn",
    sha: str = "",
    created: str = "2026-01-01T00:00:00Z",
    **status: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": name, "creationTimestamp": created},
        "spec": {
            "model": {"name": model},
            "data": {"source": "file:///d.csv"},
            "evaluation": {"metric": "accuracy"},
        },
        "status": {
            "phase": "Succeeded",
            "model": {"sha256": sha, "metrics": {"accuracy": 0.9}},
            **status,
        }
        if sha
        else status,
    }


def md(
    name: str, stable: str, canary: str = "", weight: int = 0, step: int | None = None, **spec: Any
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": "Progressing" if canary else "Healthy",
        "stable": {"sha256": stable},
    }
    if canary:
        status |= {"canary": {"sha256": canary}, "canaryWeight": weight, "currentStep": step}
    return {
        "metadata": {"namespace": "ml", "name": name},
        "spec": {"model": {}, **spec},
        "status": status,
    }


def test_models_group_runs_by_model_with_the_tracks_serving_each_artifact() -> None:
    runs = [
        run("churn-2", sha="b" * 64, created="2026-01-02T00:00:00Z"),
        run("churn-1", sha="a" * 64),
        run("fraud-1", model="fraud", sha="c" * 64),
        run("churn-3", created="2026-01-03T00:00:00Z"),
    ]
    shown = views.models_view(runs, [md("churn", "a" * 64, "b" * 64, weight=25, step=1)])
    assert [(m["name"], [r["name"] for r in m["runs"]]) for m in shown] == [
        ("churn", ["churn-1", "churn-2", "churn-3"]),
        ("fraud", ["fraud-1"]),
    ]
    churn = shown[0]
    assert churn["runs"][0]["servedBy"] == [
        {"deployment": "churn", "track": "stable", "weight": 75}
    ]
    assert churn["runs"][1]["servedBy"] == [
        {"deployment": "churn", "track": "canary", "weight": 25}
    ]
    assert churn["runs"][2]["servedBy"] == [] and churn["runs"][2]["phase"] == "Pending"
    assert churn["deployments"] == ["churn"] and shown[1]["deployments"] == []


@pytest.mark.parametrize(
    ("phase", "canary", "step", "states"),
    [
        ("Healthy", False, None, ["done", "done", "done"]),
        ("Progressing", True, 0, ["current", "", ""]),
        ("Progressing", True, 1, ["done", "current", ""]),
        ("Degraded", False, None, ["", "", ""]),
    ],
)
def test_rollout_steps_mark_the_current_one(
    phase: str, canary: bool, step: int | None, states: list[str]
) -> None:
    steps = [{"setWeight": 25}, {"pause": {}}, {"pause": {"duration": "5m"}}]
    obj = md("churn", "a", "b" if canary else "", weight=25, step=step, rollout={"steps": steps})
    obj["status"]["phase"] = phase
    shown = views.rollout_view(obj)
    assert [s["state"] for s in shown["steps"]] == states
    assert [s["text"] for s in shown["steps"]] == [
        "setWeight 25%",
        "pause until promoted",
        "pause 5m",
    ]
    assert [(t["track"], t["weight"]) for t in shown["tracks"]] == (
        [("stable", 75), ("canary", 25)] if canary else [("stable", 100)]
    )


def test_weight_history_keeps_changes_only_and_is_bounded() -> None:
    history: list[dict[str, Any]] = []
    for i, (weight, step) in enumerate([(0, 0), (0, 0), (25, 1), (25, 1), (75, 3)]):
        views.add_weight_point(
            history, views.weight_point(md("m", "a", "b", weight, step), f"t{i}")
        )
    assert [(p["canary"], p["stable"], p["step"]) for p in history] == [
        (0, 100, 0),
        (25, 75, 1),
        (75, 25, 3),
    ]
    for i in range(10):
        views.add_weight_point(
            history, {"time": str(i), "stable": i, "canary": 100 - i, "step": i}, limit=4
        )
    assert len(history) == 4 and history[-1]["step"] == 9


def test_a_sweep_marks_its_winner_and_the_varying_parameter() -> None:
    sweep = run(
        "s",
        sha="a" * 64,
        trials=[
            {
                "index": 1,
                "params": {"C": 1.0, "penalty": "l2"},
                "metrics": {"accuracy": 0.95},
                "phase": "Succeeded",
            },
            {
                "index": 0,
                "params": {"C": 0.1, "penalty": "l2"},
                "metrics": {"accuracy": 0.91},
                "phase": "Succeeded",
            },
        ],
        bestTrial=1,
    )
    sweep["spec"]["sweep"] = {"grid": {"C": [0.1, 1.0], "penalty": ["l2"]}}
    shown = views.runs_view(sweep)
    assert [(t["index"], t["value"], t["best"]) for t in shown["trials"]] == [
        (0, 0.91, False),
        (1, 0.95, True),
    ]
    assert shown["parameters"] == ["C"] and shown["metric"] == "accuracy"


def test_drift_puts_live_counts_in_the_profile_s_bins_and_draws_them() -> None:
    profile = Profile(
        rows=60,
        features=[
            FeatureProfile(name="age", kind="numerical", edges=[30.0, 50.0], counts=[10, 20, 30]),
            FeatureProfile(
                name="plan", kind="categorical", categories=["a", "b"], counts=[5, 5, 0]
            ),
        ],
        prediction=FeatureProfile(
            name="__prediction__", kind="categorical", categories=["0", "1"], counts=[7, 3, 0]
        ),
    )
    samples = [
        ("kubeloop_serve_feature_bin_total", {"sha": "abc", "feature": "age", "bin": "2"}, 4.0),
        (
            "kubeloop_serve_feature_bin_total",
            {"sha": "abc", "feature": "age", "bin": "2"},
            3.0,
        ),  # a second pod
        (
            "kubeloop_serve_feature_bin_total",
            {"sha": "abc", "feature": "age", "bin": "missing"},
            9.0,
        ),
        ("kubeloop_serve_feature_bin_total", {"sha": "old", "feature": "age", "bin": "0"}, 99.0),
        (
            "kubeloop_serve_feature_bin_total",
            {"sha": "abc", "feature": "plan", "bin": "__other__"},
            2.0,
        ),
        ("kubeloop_serve_requests_total", {"sha": "abc"}, 5.0),
    ]
    live = views.live_bin_counts(samples, "abc")
    assert live == {"age": {"2": 7.0}, "plan": {"__other__": 2.0}}
    policy = {
        "metadata": {"namespace": "ml", "name": "p"},
        "spec": {"targetRef": {"name": "churn"}},
        "status": {
            "lastCheckTime": "2026-01-01T00:00:00Z",
            "drifted": True,
            "scores": [
                {"feature": "age", "test": "psi", "score": 0.31, "threshold": 0.2, "drifted": True},
                {
                    "feature": "plan",
                    "test": "chi2",
                    "score": 4.2,
                    "alpha": 0.05,
                    "pValue": 0.01,
                    "drifted": True,
                },
            ],
        },
    }
    history: list[dict[str, Any]] = []
    assert views.add_score_points(history, views.score_point(policy))
    assert not views.add_score_points(history, views.score_point(policy))  # the same check twice
    shown = views.drift_view(policy, profile, live, [], history)
    assert [f["name"] for f in shown["features"]] == ["age", "plan", "__prediction__"]
    age, plan, prediction = shown["features"]
    assert [(b["text"], b["reference"], b["live"]) for b in age["bins"]] == [
        ("<= 30", 10, 0),
        ("(30, 50]", 20, 0),
        ("> 50", 30, 7),
    ]
    assert [(b["label"], b["live"]) for b in plan["bins"]] == [("a", 0), ("b", 0), ("__other__", 2)]
    assert 'data-score="0.31"' in age["chart"] and 'data-drifted="true"' in age["chart"]
    assert 'data-p-value="0.01"' in plan["chart"] and 'data-limit="alpha"' in plan["chart"]
    assert "not tested" in prediction["chart"] and prediction["timeline"] is None
    assert 'data-points="1"' in age["timeline"]


@pytest.fixture
def served() -> Iterator[DashboardServer]:
    dashboard = Dashboard(kube=None, namespace="ml")  # type: ignore[arg-type]  # no call reaches the cluster
    server = DashboardServer(dashboard, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    dashboard.stop.set()
    server.shutdown()
    server.server_close()


def test_the_page_and_its_assets_come_from_the_package_with_a_strict_policy(
    served: DashboardServer,
) -> None:
    page = httpx.get(served.url, timeout=5)
    assert page.status_code == 200 and served.dashboard.token in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset, kind in (
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        answer = httpx.get(f"{served.url}static/{asset}", timeout=5)
        assert (
            answer.status_code == 200 and answer.headers["content-type"] == kind and answer.content
        )
    assert (
        "http" not in httpx.get(f"{served.url}static/app.css", timeout=5).text
    )  # nothing from elsewhere
    assert httpx.get(f"{served.url}static/../server.py", timeout=5).status_code == 404


def test_another_host_name_and_a_write_without_the_token_are_refused(
    served: DashboardServer,
) -> None:
    rebound = httpx.get(
        served.url, headers={"Host": f"evil.example:{served.server_address[1]}"}, timeout=5
    )
    assert rebound.status_code == 421
    action = {"command": "abort", "namespace": "ml", "name": "churn"}
    anonymous = httpx.post(f"{served.url}api/action", json=action, timeout=5)
    assert anonymous.status_code == 403 and "X-Kubeloop-Token" in anonymous.json()["error"]
    token = {"X-Kubeloop-Token": served.dashboard.token}
    unknown = httpx.post(
        f"{served.url}api/action", json={**action, "command": "delete"}, headers=token, timeout=5
    )
    assert unknown.status_code == 400 and "promote, abort" in unknown.json()["error"]
    elsewhere = httpx.post(
        f"{served.url}api/action", json={**action, "namespace": "other"}, headers=token, timeout=5
    )
    assert elsewhere.status_code == 400 and "namespace other" in elsewhere.json()["error"]


def test_the_store_bumps_its_version_on_every_change() -> None:
    store = Store("ml", clock=lambda: "t")
    assert store.wait_newer(0, 0.01) == 0
    store.replace("ModelDeployment", [md("churn", "a")])
    store.apply("ModelDeployment", "MODIFIED", md("churn", "a", "b", 25, 1))
    store.apply("TrainingRun", "ADDED", run("churn-1", sha="a" * 64))
    assert store.wait_newer(0, 0.01) == 3
    snapshot = store.snapshot()
    assert [p["canary"] for p in snapshot["rollouts"][0]["weights"]] == [0, 25]
    assert not snapshot["synced"]  # DriftPolicies not listed yet
    store.apply("ModelDeployment", "DELETED", md("churn", "a"))
    assert store.snapshot()["rollouts"] == []


def test_the_plugin_parses_the_dashboard_command() -> None:
    from kubeloop.plugin import parse_args

    args = parse_args(["dashboard", "-A", "--port", "0", "--no-open"])
    assert (args.command, args.all_namespaces, args.port, args.no_open) == (
        "dashboard",
        True,
        0,
        True,
    )
    defaults = parse_args(["-n", "ml", "dashboard"])
    assert (defaults.namespace, defaults.all_namespaces, defaults.port, defaults.no_open) == (
        "ml",
        False,
        3100,
        False,
    )


def test_a_port_in_use_is_an_error_naming_the_flag(served: DashboardServer) -> None:
    from kubeloop.dashboard.server import serve_dashboard
    from kubeloop.plugin import CommandFailed

    with pytest.raises(
        CommandFailed,
        match=rf"port {served.server_address[1]} on 127.0.0.1 is in use: choose another with --port",
    ):
        serve_dashboard(None, "ml", port=served.server_address[1], open_browser=False)  # type: ignore[arg-type]


def test_analysis_rounds_keep_their_values_bounds_and_verdicts() -> None:
    obj = md(
        "churn",
        "a",
        "b",
        weight=25,
        step=1,
        rollout={"steps": [{"setWeight": 25}, {"analysis": {}}]},
    )
    obj["status"]["analysis"] = {
        "runs": [
            {
                "name": "error-rate",
                "value": 0.01,
                "max": 0.05,
                "passed": True,
                "step": 1,
                "time": "t1",
            },
            {
                "name": "latency-p99",
                "value": None,
                "max": 0.5,
                "passed": False,
                "step": 1,
                "time": "t2",
                "message": "no data",
            },
        ]
    }
    shown = views.rollout_view(obj)
    assert [
        (a["name"], a["value"], a["min"], a["max"], a["passed"], a["message"])
        for a in shown["analysis"]
    ] == [
        ("error-rate", 0.01, None, 0.05, True, ""),
        ("latency-p99", None, None, 0.5, False, "no data"),
    ]
    assert shown["steps"][1]["text"] == "analysis"


def performance_policy(performance: dict[str, Any] | None, metric: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": "perf"},
        "spec": {
            "targetRef": {"name": "churn"},
            "performance": {"metric": metric, "minLabels": 50, "tolerance": 0.1},
        },
        "status": {"performance": performance} if performance is not None else {},
    }


@pytest.mark.parametrize(
    ("metric", "performance", "verdict", "lower_is_better"),
    [
        ("accuracy", None, "no check yet", False),
        (
            "accuracy",
            {"metric": "accuracy", "labels": 12},
            "no verdict: 12 labels, fewer than minLabels=50",
            False,
        ),
        (
            "accuracy",
            {
                "metric": "accuracy",
                "labels": 400,
                "live": 0.71,
                "reference": 0.93,
                "limit": 0.837,
                "degraded": True,
            },
            "degraded",
            False,
        ),
        (
            "rmse",
            {
                "metric": "rmse",
                "labels": 80,
                "live": 1.9,
                "reference": 2.0,
                "limit": 2.2,
                "degraded": False,
            },
            "healthy",
            True,
        ),
    ],
)
def test_performance_drift_shows_live_beside_reference_with_the_limit_and_verdict(
    metric: str, performance: dict[str, Any] | None, verdict: str, lower_is_better: bool
) -> None:
    shown = views.drift_view(performance_policy(performance, metric), None, {})["performance"]
    assert shown["verdict"] == verdict
    assert shown["metric"] == metric and shown["lowerIsBetter"] is lower_is_better
    assert (shown["minLabels"], shown["tolerance"]) == (50, 0.1)
    for field in ("live", "reference", "limit", "labels", "degraded"):
        assert shown[field] == (performance or {}).get(field)


def test_a_policy_watching_inputs_has_no_performance_and_links_its_reports() -> None:
    uri = "file:///models/churn/churn-7/drift/daily/1764028800/report.html"
    policy = {
        "metadata": {"namespace": "ml", "name": "daily"},
        "spec": {"targetRef": {"name": "churn"}, "source": {"dataset": {"uri": "s3://b/x.csv"}}},
        "status": {
            "report": uri,
            "history": [
                {"time": "t0", "drifted": False, "samples": 10},
                {"time": "t1", "drifted": True, "samples": 10, "report": uri},
            ],
        },
    }
    shown = views.drift_view(policy, None, {})
    assert shown["performance"] is None
    assert shown["report"] == uri
    assert [h["report"] for h in shown["history"]] == ["", uri]
    policy["status"]["report"] = "javascript:alert(1)"  # status is writable by others: no link
    assert views.drift_view(policy, None, {})["report"] == ""


def test_kubectl_kubeloop_status_prints_a_policy_s_performance_and_its_report() -> None:
    from rich.console import Console

    from kubeloop.plugin import render_driftpolicy

    policy = performance_policy(
        {
            "metric": "accuracy",
            "labels": 400,
            "live": 0.71,
            "reference": 0.93,
            "limit": 0.837,
            "degraded": True,
        },
        "accuracy",
    )
    policy["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    policy["kind"] = "DriftPolicy"
    policy["status"]["report"] = "file:///models/r/report.html"
    console = Console(width=160, record=True, color_system=None)
    console.print(render_driftpolicy(None, policy))  # type: ignore[arg-type]  # reads no API
    text = console.export_text()
    assert "Performance (labelled traffic)" in text
    row = next(line for line in text.splitlines() if "accuracy" in line and "0.71" in line)
    assert all(v in row for v in ("0.93", "0.837", "400", "degraded")), row
    assert "HTML report" in text and "file:///models/r/report.html" in text
    plain = performance_policy(None, "accuracy")
    del plain["spec"]["performance"]
    plain["kind"], plain["metadata"]["creationTimestamp"] = "DriftPolicy", "2026-01-01T00:00:00Z"
    console = Console(width=160, record=True, color_system=None)
    console.print(render_driftpolicy(None, plain))  # type: ignore[arg-type]
    assert "Performance" not in console.export_text()
