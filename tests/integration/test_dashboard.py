"""``kubectl kubeloop dashboard`` in real Chromium, against the real API server.

Given trained runs (the trainer really ran), a sweep, and a ModelDeployment the running operator
rolls out in paused steps, the dashboard process (the plugin, with the test's kubeconfig) shows
every page from what the API server holds: the Models page's lineage figures equal the
TrainingRuns' status, a rollout step change appears on the open page without a reload, the
page's Promote and Abort buttons move the rollout, the Runs page charts the sweep's trials with
the winner marked. A read-only identity sees the API server's refusal when it presses a button.
A canary measured by real analysis rounds shows them as status.analysis holds them; a policy
judging labelled traffic shows live vs reference accuracy, the limit and the verdict.
Throughout, no request leaves 127.0.0.1 and the page logs no console error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import test_modeldeployment_analysis as analysis
import yaml
from dashboard_browser import CHROMIUM, DashboardProcess, Recorder, chromium_page, screenshot, texts
from harness import OperatorProcess, install_crds, wait_for
from kubernetes import client
from test_modeldeployment_analysis import Stored, rollout_md, stack
from test_plugin import md_status, train
from test_trainingrun_controller import (
    MANUAL_KUBELET,
    play_kubelet_terminate,
    run_trainer_locally,
    trainer_pods,
    trainingrun,
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (hack/setup installs it)"
)
GROUP, VERSION = "kubeloop.io", "v1alpha1"
STEPS = [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}, {"pause": {}}]


@pytest.fixture
def operator(
    kubeconfig_path: str, kubectl: Any, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    install_crds(kubectl)
    process = OperatorProcess(
        kubeconfig_path,
        namespace,
        tmp_path / "operator.log",
        env={
            "KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET),
            "KUBELOOP_ROLLOUT_TICK_SECONDS": "1",
        },
    )
    process.start()
    yield process
    process.stop()
    print(process.log_tail(30))


def run_sweep(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> dict[str, Any]:
    """A sweep of three trials, each trained for real; the operator picks the winner."""
    run = trainingrun("cancer-sweep", sweep={"grid": {"C": [1e-05, 0.001, 1.0]}, "parallelism": 3})
    with ThreadPoolExecutor(3) as pool:  # the trials train at once, as an Indexed Job's pods would
        trials = {i: pool.submit(run_trainer_locally, run, tmp_path / "sweep", i) for i in range(3)}
        messages = {i: trial.result() for i, trial in trials.items()}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", run)
    pods = wait_for(
        lambda: (p := trainer_pods(core, namespace, "cancer-sweep")) and len(p) == 3 and p,
        90,
        what="3 trial pods",
    )
    for pod in pods:
        message, code = messages[
            int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        ]
        play_kubelet_terminate(core, namespace, pod, message, code)
    return wait_for(
        lambda: (
            (
                r := custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "trainingruns", "cancer-sweep"
                )
            )
            .get("status", {})
            .get("phase")
            == "Succeeded"
            and r
        ),
        90,
        what="sweep Succeeded",
    )


def no_leaks(recorder: Recorder, dashboard: DashboardProcess) -> None:
    assert recorder.requests, "the page made no request at all"
    assert recorder.foreign_requests(dashboard.port) == []
    assert recorder.errors == []


def test_dashboard_shows_the_loop_and_steers_a_rollout(
    kube_api: Any, kubeconfig_path: str, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    # A run whose data fails validation: the trainer really refuses it (exit 2), naming the rule
    # (it runs meanwhile).
    refused = trainingrun("cancer-bad", validation={"minRows": 100000})
    refusal = ThreadPoolExecutor(1).submit(run_trainer_locally, refused, tmp_path / "cancer-bad")
    first = train(custom, core, namespace, "cancer-1", tmp_path)
    second = train(
        custom,
        core,
        namespace,
        "cancer-2",
        tmp_path,
        model={
            "name": "cancer",
            "estimator": "sklearn.ensemble.RandomForestClassifier",
            "params": {"n_estimators": 20, "random_state": 0},
            "task": "classification",
        },
    )
    sweep = run_sweep(custom, core, namespace, tmp_path)
    message, code = refusal.result()
    assert code == 2, message
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", refused)
    pod = wait_for(
        lambda: next(iter(trainer_pods(core, namespace, "cancer-bad")), None),
        60,
        what="cancer-bad pod",
    )
    play_kubelet_terminate(core, namespace, pod, message, code)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": "cancer"},
            "spec": {
                "model": {"trainingRunRef": {"name": "cancer-1"}},
                "replicas": 4,
                "rollout": {"steps": STEPS},
            },
        },
    )
    wait_for(lambda: md_status(custom, namespace).get("phase") == "Healthy", 90, what="Healthy")

    dashboard = DashboardProcess(kubeconfig_path, tmp_path / "dashboard.log", "-n", namespace)
    recorder = Recorder()
    try:
        with chromium_page(recorder) as page:
            # Models: every run's lineage, figures as the API objects hold them.
            page.goto(f"{dashboard.url}/#/models")
            page.wait_for_selector(f'[data-model="{namespace}/cancer"] [data-run="cancer-sweep"]')
            for name in ("cancer-1", "cancer-2", "cancer-sweep"):
                run = custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "trainingruns", name
                )
                model = run["status"]["model"]
                row = page.locator(f'[data-run="{name}"]')
                assert row.locator("[data-sha256]").get_attribute("data-sha256") == model["sha256"]
                assert (
                    row.locator("[data-fingerprint]").get_attribute("data-fingerprint")
                    == model["dataFingerprint"]
                )
                assert (
                    float(row.locator("[data-metric]").get_attribute("data-value") or "nan")
                    == model["metrics"]["accuracy"]
                )
                assert row.locator("[data-phase]").inner_text() == "Succeeded"
                gates = {g["name"]: g["passed"] for g in model.get("gates") or []}
                assert {
                    el.get_attribute("data-gate"): "✓" in el.inner_text()
                    for el in row.locator("[data-gate]").all()
                } == gates
            failed = wait_for(
                lambda: (
                    (
                        r := custom.get_namespaced_custom_object(
                            GROUP, VERSION, namespace, "trainingruns", "cancer-bad"
                        )
                    )
                    .get("status", {})
                    .get("phase")
                    == "Failed"
                    and r["status"]
                ),
                60,
                what="cancer-bad Failed",
            )
            failure = page.locator('[data-run="cancer-bad"] [data-failure]')
            failure.wait_for()
            assert (
                failure.get_attribute("data-failure")
                == failed["lastFailure"]["reason"]
                == "DataValidationFailed"
            )
            assert (
                failure.inner_text() == f"DataValidationFailed: {failed['lastFailure']['message']}"
            )
            assert (
                page.locator('[data-run="cancer-1"] [data-served]').get_attribute("data-served")
                == "cancer/stable"
            )
            assert page.locator('[data-run="cancer-2"] [data-served]').count() == 0
            screenshot(page, "models", tmp_path)

            # Rollout: opened while Healthy; the model change and its first steps arrive live.
            page.goto(f"{dashboard.url}/#/rollout/{namespace}/cancer")
            page.wait_for_selector('[data-track="stable"]')
            page.evaluate("window.__notReloaded = true")
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "modeldeployments",
                "cancer",
                {"spec": {"model": {"trainingRunRef": {"name": "cancer-2"}}}},
            )
            wait_for(
                lambda: (
                    md_status(custom, namespace).get("currentStep") == 1
                    and md_status(custom, namespace).get("canaryWeight") == 25
                ),
                90,
                what="paused at 25%",
            )
            page.wait_for_selector('ol.steps li.current[data-step="1"]')
            page.wait_for_selector('[data-track="canary"] [data-weight="25"]')
            assert page.evaluate("window.__notReloaded") is True
            status = md_status(custom, namespace)
            assert (
                page.locator('[data-track="canary"] [data-sha256]').get_attribute("data-sha256")
                == status["canary"]["sha256"]
                == second
            )
            assert (
                page.locator('[data-track="stable"] [data-weight]').get_attribute("data-weight")
                == "75"
            )
            assert texts(page, "ol.steps li.done") == ["0. setWeight 25%"]

            # Promote from the page: the rollout moves on to the next pause at 75 %.
            page.click('[data-action="promote"]')
            page.wait_for_selector("#action-result.ok")
            assert "promote requested (kubeloop.io/promote=" in page.inner_text("#action-result")
            wait_for(
                lambda: (
                    md_status(custom, namespace).get("currentStep") == 3
                    and md_status(custom, namespace).get("canaryWeight") == 75
                ),
                90,
                what="promoted to 75%",
            )
            page.wait_for_selector('ol.steps li.current[data-step="3"]')
            page.wait_for_selector('[data-track="canary"] [data-weight="75"]')

            # Weights over time, as the watch saw them while the page was open: 0 -> 25 -> 75 %.
            def canary_weights() -> list[str]:
                drawn = [
                    p.get_attribute("data-canary") or ""
                    for p in page.locator("svg.weights .point").all()
                ]
                return [w for i, w in enumerate(drawn) if i == 0 or drawn[i - 1] != w]

            wait_for(
                lambda: canary_weights()[-3:] == ["0", "25", "75"],
                30,
                what="weights over time 0 -> 25 -> 75",
            )
            assert page.locator("svg.weights .point").last.get_attribute("data-step") == "3"
            screenshot(page, "rollout", tmp_path)

            # Abort from the page: all traffic back to stable, Degraded.
            page.click('[data-action="abort"]')
            wait_for(
                lambda: (
                    (s := md_status(custom, namespace)).get("phase") == "Degraded"
                    and s.get("canaryWeight") == 0
                ),
                60,
                what="aborted",
            )
            page.wait_for_selector('h1 [data-phase="Degraded"]')
            assert md_status(custom, namespace)["stable"]["sha256"] == first

            # Retry, Pause and Resume from the page, as the plugin's commands do them.
            page.click('[data-action="retry"]')
            wait_for(
                lambda: (
                    md_status(custom, namespace).get("canaryWeight") == 25
                    and md_status(custom, namespace).get("phase") != "Degraded"
                ),
                60,
                what="retried at 25%",
            )
            page.wait_for_selector('ol.steps li.current[data-step="1"]')
            page.click('[data-action="pause"]')
            wait_for(
                lambda: (
                    custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, "modeldeployments", "cancer"
                    )["spec"].get("paused")
                    is True
                ),
                30,
                what="spec.paused",
            )
            page.click(
                '[data-action="resume"]'
            )  # the button turns into Resume once the watch sees it
            wait_for(
                lambda: (
                    custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, "modeldeployments", "cancer"
                    )["spec"].get("paused")
                    is False
                ),
                30,
                what="resumed",
            )
            assert page.evaluate("window.__notReloaded") is True

            # Runs: the sweep's trials by parameter, the winner marked.
            page.goto(f"{dashboard.url}/#/runs/{namespace}/cancer-sweep")
            page.wait_for_selector("svg.sweep .trial")
            trials = {t["index"]: t["metrics"]["accuracy"] for t in sweep["status"]["trials"]}
            drawn = {
                int(g.get_attribute("data-index") or -1): float(
                    g.get_attribute("data-value") or "nan"
                )
                for g in page.locator("svg.sweep .trial").all()
            }
            assert drawn == trials
            assert page.locator("svg.sweep .trial.best").get_attribute("data-index") == str(
                sweep["status"]["bestTrial"]
            )
            assert page.locator("svg.sweep").get_attribute("data-parameter") == "C"
            screenshot(page, "runs", tmp_path)
        no_leaks(recorder, dashboard)
    finally:
        dashboard.stop()


def read_only_kubeconfig(
    kube_api: Any, kubeconfig_path: str, namespace: str, tmp_path: Path
) -> Path:
    """A ServiceAccount that may get, list and watch Kubeloop's kinds (no patch), as a kubeconfig."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "viewer"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "kubeloop-viewer"},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["trainingruns", "modeldeployments", "driftpolicies"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "kubeloop-viewer"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "kubeloop-viewer",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token(
        "viewer", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    config = yaml.safe_load(Path(kubeconfig_path).read_text())
    config["users"] = [{"name": "viewer", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "viewer"
    path = tmp_path / "kubeconfig-viewer"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_read_only_user_sees_the_api_server_s_refusal(
    kube_api: Any, kubectl: Any, kubeconfig_path: str, namespace: str, tmp_path: Path
) -> None:
    install_crds(kubectl)
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "modeldeployments",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": "cancer"},
            "spec": {
                "model": {"trainingRunRef": {"name": "cancer-1"}},
                "replicas": 1,
                "rollout": {"steps": STEPS},
            },
        },
    )
    viewer = read_only_kubeconfig(kube_api, kubeconfig_path, namespace, tmp_path)
    dashboard = DashboardProcess(str(viewer), tmp_path / "dashboard.log", "-n", namespace)
    recorder = Recorder()
    try:
        with chromium_page(recorder) as page:
            page.goto(f"{dashboard.url}/#/rollout/{namespace}/cancer")
            page.wait_for_selector('[data-action="pause"]')
            # A change by someone else (here the admin) reaches the open page through the watch:
            # API write -> watch event -> server-sent event -> DOM, timed.
            started = time.monotonic()
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "modeldeployments", "cancer", {"spec": {"paused": True}}
            )
            page.wait_for_selector('[data-action="resume"]')
            print(f"DASHBOARD-LIVE patch to DOM {1000 * (time.monotonic() - started):.0f} ms")
            for action in ("promote", "abort"):
                page.click(f'[data-action="{action}"]')
                page.wait_for_selector("#action-result.error")
                assert page.inner_text("#action-result") == (
                    f'error: from server (Forbidden): modeldeployments.kubeloop.io "cancer" is forbidden: User '
                    f'"system:serviceaccount:{namespace}:viewer" cannot patch resource "modeldeployments" in API group '
                    f'"kubeloop.io" in the namespace "{namespace}"'
                )
            md = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "modeldeployments", "cancer"
            )
            assert not (md["metadata"].get("annotations") or {})
            assert "Traceback" not in dashboard.log.read_text()
        no_leaks(recorder, dashboard)
    finally:
        dashboard.stop()

    # With -A the same identity may list nothing cluster-wide: the page says so, kind by kind,
    # in the API server's words.
    everywhere = DashboardProcess(str(viewer), tmp_path / "dashboard-all.log", "-A")
    recorder = Recorder()
    try:
        with chromium_page(recorder) as page:
            page.goto(f"{everywhere.url}/#/rollouts")
            page.wait_for_selector("#errors div")
            assert texts(page, "#errors div") == [
                f"cannot list {plural}: from server (Forbidden): {plural}.kubeloop.io is forbidden: User "
                f'"system:serviceaccount:{namespace}:viewer" cannot list resource "{plural}" in API group '
                '"kubeloop.io" at the cluster scope'
                for plural in ("trainingruns", "modeldeployments", "driftpolicies")
            ]
            assert page.inner_text("#scope") == "all namespaces"
        no_leaks(recorder, everywhere)
    finally:
        everywhere.stop()


# --- drift: the reference profile beside the live counters, through the pod proxy -----------------


def test_drift_page_draws_the_profile_beside_the_live_counts(
    kube_api: Any, kubeconfig_path: str, kubectl: Any, namespace: str, tmp_path: Path
) -> None:
    import threading

    import httpx
    from harness import Server, free_port, route_pods_to_host
    from test_closed_loop import (
        FEATURES,
        LocalKubelet,
        run_spec,
        serve_champion,
        status_of,
        synthetic,
    )

    from kubeloop.analysis.scrape import parse_metrics
    from kubeloop.training.data import make_synthetic

    install_crds(kubectl)
    operator = OperatorProcess(
        kubeconfig_path,
        namespace,
        tmp_path / "operator.log",
        env={
            "KUBELOOP_POD_LABELS": json.dumps(MANUAL_KUBELET),
            "KUBELOOP_DEFAULT_STORAGE_URI": f"file://{tmp_path}/models",
            "KUBELOOP_ROLLOUT_TICK_SECONDS": "1",
        },
    )
    operator.start()
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    kubelet = LocalKubelet(core, namespace, tmp_path)
    kubelet.start()
    server = dashboard = None
    traffic_stop = threading.Event()
    try:
        # Given a champion trained for real and served here for real (its pod's address points
        # here, so the API server's pod proxy reaches this server).
        port = free_port()
        stable = serve_champion(custom, namespace, {"replicas": 1, "server": {"port": port}})
        server = Server(
            stable["uri"],
            stable["sha256"],
            "stable",
            tmp_path / "serve.log",
            "loop",
            host="0.0.0.0",
            port=port,
        )
        server.wait_ready()
        wait_for(
            lambda: route_pods_to_host(
                core, namespace, "kubeloop.io/modeldeployment=loop,kubeloop.io/track=stable"
            ),
            60,
            1,
            "stable pod routed here",
        )

        # When shifted traffic arrives and the policy (scraping through the pod proxy) drifts.
        rows = (
            make_synthetic(rows=600, features=FEATURES, seed=9, shift=2.0)
            .drop(columns=["target"])
            .to_dict(orient="records")
        )

        def send() -> None:
            with httpx.Client(timeout=5) as http:
                i = 0
                while not traffic_stop.is_set():
                    http.post(
                        f"{server.url}/predict", json={"instances": rows[i % 600 : i % 600 + 20]}
                    )
                    i += 20
                    traffic_stop.wait(0.05)

        threading.Thread(target=send, daemon=True).start()
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "driftpolicies",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DriftPolicy",
                "metadata": {"name": "loop-drift"},
                "spec": {
                    "targetRef": {"name": "loop"},
                    "source": {"live": {}},
                    "interval": "3s",
                    "minSamples": 100,
                    "driftShare": 0.5,
                    "retrain": {
                        "template": {"spec": run_spec(synthetic(2, shift=2.0))},
                        "cooldown": "1h",
                        "autoPromote": False,
                    },
                },
            },
        )
        # A second policy judges the same model by its accuracy on labelled traffic; its first
        # check only records the counters, labels come later.
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "driftpolicies",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DriftPolicy",
                "metadata": {"name": "loop-perf"},
                "spec": {
                    "targetRef": {"name": "loop"},
                    "source": {"live": {}},
                    "interval": "3s",
                    "performance": {"metric": "accuracy", "minLabels": 50, "tolerance": 0.1},
                },
            },
        )
        policy = wait_for(
            lambda: (
                (s := status_of(custom, namespace, "driftpolicies", "loop-drift")).get("drifted")
                and s.get("lastRetrain")
                and s
            ),
            120,
            1,
            "Drifted and retraining",
        )
        traffic_stop.set()
        time.sleep(0.5)  # the last request is answered and counted

        # Then the drift page shows, per feature, the profile's bins beside the live counters.
        profile = httpx.get(f"{server.url}/profile", timeout=10).json()["profile"]
        snapshot = parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)
        live: dict[tuple[str, str], float] = {}
        for (sample, labels), value in snapshot.values.items():
            found = dict(labels)
            if (
                sample == "kubeloop_serve_feature_bin_total"
                and found.get("sha") == stable["sha256"][:12]
            ):
                live[(found["feature"], found["bin"])] = (
                    live.get((found["feature"], found["bin"]), 0) + value
                )
        assert live, "the server counted no traffic"

        dashboard = DashboardProcess(kubeconfig_path, tmp_path / "dashboard.log", "-n", namespace)
        recorder = Recorder()
        with chromium_page(recorder) as page:
            page.goto(f"{dashboard.url}/#/drift/{namespace}/loop-drift")
            page.wait_for_selector("svg.histogram")
            for feature in profile["features"]:
                name = feature["name"]
                chart = page.locator(f'section[data-feature="{name}"] svg.histogram')
                bins = chart.locator("g.bin").all()
                assert [
                    int(b.get_attribute("data-reference-count") or -1) for b in bins
                ] == feature["counts"], name
                labels = [b.get_attribute("data-bin") for b in bins]
                assert [int(b.get_attribute("data-current-count") or -1) for b in bins] == [
                    round(live.get((name, label), 0)) for label in labels
                ], name

            # Each chart's score and verdict are the policy's latest check (checks go on every 3 s,
            # and the page follows them).
            def charts_show_the_latest_check() -> bool:
                scores = {
                    s["feature"]: s
                    for s in status_of(custom, namespace, "driftpolicies", "loop-drift")["scores"]
                }
                shown = {
                    c.get_attribute("data-feature"): (
                        float(c.get_attribute("data-score") or "nan"),
                        c.get_attribute("data-drifted"),
                    )
                    for c in page.locator("svg.histogram").all()
                }
                return shown == {
                    f: (s["score"], "true" if s["drifted"] else "false") for f, s in scores.items()
                }

            wait_for(charts_show_the_latest_check, 30, 1, "charts with the latest check's scores")
            assert page.locator('section[data-feature="__prediction__"] svg.histogram').count() == 1
            page.wait_for_selector(f'[data-retrain="{policy["lastRetrain"]["name"]}"]')
            assert page.inner_text("#verdict") == "drifted"
            screenshot(page, "drift", tmp_path, full_page=False)

            # Performance drift: labels arrive on /feedback, the policy's next check judges them,
            # and its page shows live accuracy beside the reference, the limit and the verdict.
            labelled = make_synthetic(rows=100, features=FEATURES, seed=3)
            instances = labelled.drop(columns=["target"]).to_dict(orient="records")
            feedback = []
            for start in range(0, 100, 20):
                answer = httpx.post(
                    f"{server.url}/predict",
                    json={"instances": instances[start : start + 20]},
                    timeout=10,
                ).json()
                feedback.append(
                    {"id": answer["id"], "labels": labelled["target"][start : start + 20].tolist()}
                )
            httpx.post(f"{server.url}/feedback", json=feedback, timeout=10).raise_for_status()
            judged = wait_for(
                lambda: (
                    (
                        p := status_of(custom, namespace, "driftpolicies", "loop-perf").get(
                            "performance"
                        )
                        or {}
                    ).get("live")
                    is not None
                    and p
                ),
                60,
                1,
                "a performance verdict",
            )
            page.goto(f"{dashboard.url}/#/drift/{namespace}/loop-perf")
            card = page.locator("#performance")
            card.wait_for()

            def card_shows_the_status() -> bool:
                now = status_of(custom, namespace, "driftpolicies", "loop-perf")["performance"]
                figures = {
                    k: card.locator(f"[data-{k}]").get_attribute(f"data-{k}")
                    for k in ("live", "reference", "limit", "labels")
                }
                verdict = "degraded" if now["degraded"] else "healthy"
                return (
                    all(figures[k] and float(figures[k] or "nan") == float(now[k]) for k in figures)
                    and card.locator("#performance-verdict").inner_text() == verdict
                )

            wait_for(card_shows_the_status, 30, 1, "the performance card equal to the status")
            assert judged["labels"] >= 50 and card.get_attribute("data-metric") == "accuracy"
        no_leaks(recorder, dashboard)
    finally:
        traffic_stop.set()
        kubelet.stop.set()
        for process in (dashboard, server):
            if process is not None:
                process.stop()
        operator.stop()
        print(operator.log_tail(30))


# The analysis test's fixtures: the same tiny models, servers and Prometheus port.
data, models, prometheus_port = analysis.data, analysis.models, analysis.prometheus_port


@pytest.fixture
def analysis_operator(
    kubeconfig_path: str, namespace: str, tmp_path: Path, crds: None, prometheus_port: int
) -> Iterator[OperatorProcess]:
    """The operator as test_modeldeployment_analysis runs it: it may query the test's Prometheus."""
    process = OperatorProcess(
        kubeconfig_path,
        namespace,
        tmp_path / "operator.log",
        env={
            "KUBELOOP_RUNTIME_IMAGE": "kubeloop:test",
            "KUBELOOP_ROLLOUT_TICK_SECONDS": "1",
            "KUBELOOP_ALLOWED_PROMETHEUS_URLS": f"http://127.0.0.1:{prometheus_port}",
        },
    )
    process.start()
    yield process
    process.stop()
    print(process.log_tail(30))


def test_rollout_page_shows_each_analysis_round_as_the_status_holds_it(
    tmp_path: Path,
    models: dict[str, Stored],
    data: Any,
    kube_api: Any,
    kubeconfig_path: str,
    namespace: str,
    analysis_operator: OperatorProcess,
    prometheus_port: int,
) -> None:
    """Given a canary measured by real analysis rounds (real model servers, real Prometheus),
    the open Rollout page's analysis table (metric, value, verdict, newest first) equals
    status.analysis.runs as the API server holds it, and follows new rounds without a reload."""
    custom = client.CustomObjectsApi(kube_api)

    def status() -> dict[str, Any]:
        md = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeldeployments", "churn"
        )
        return md.get("status") or {}

    def api_rounds() -> list[tuple[str, float | None, bool]]:
        runs = (status().get("analysis") or {}).get("runs") or []
        return [(r["name"], r.get("value"), bool(r.get("passed"))) for r in reversed(runs)]

    with stack(tmp_path, models, "healthy", data[0], namespace, port=prometheus_port) as (url, _):
        # setWeight 50, one analysis round, then wait for a person: the rounds stay on show.
        steps = [{"setWeight": 50}, {"analysis": {"count": 1, "interval": "2s"}}, {"pause": {}}]
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "modeldeployments", rollout_md(models["stable"], steps, url)
        )
        wait_for(lambda: status().get("phase") == "Healthy", 90, what="Healthy")
        good = models["healthy"]
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "modeldeployments",
            "churn",
            {"spec": {"model": {"storageUri": f"file://{good.directory}", "sha256": good.sha256}}},
        )
        dashboard = DashboardProcess(kubeconfig_path, tmp_path / "dashboard.log", "-n", namespace)
        recorder = Recorder()
        try:
            with chromium_page(recorder) as page:
                page.goto(f"{dashboard.url}/#/rollout/{namespace}/churn")
                page.wait_for_selector("#tracks")
                # The first round arrives while the page is open (server-sent events).
                page.wait_for_selector("#analysis tr[data-analysis]", timeout=90_000)
                last_status: dict[str, Any] = {}

                def measured_then_paused() -> bool:
                    # Settled either way: the round passed and the rollout waits at the pause
                    # step, or Prometheus had too little traffic yet, the round was
                    # inconclusive and the rollout paused on it (seen once in a CI rehearsal).
                    # The page must equal the status in both; the names are checked below.
                    last_status.clear()
                    last_status.update(status())
                    paused_on_round = (last_status.get("analysis") or {}).get("pausedInconclusive")
                    return bool(api_rounds()) and (
                        last_status.get("currentStep") == 2 or bool(paused_on_round)
                    )

                try:
                    wait_for(measured_then_paused, 150, what="an analysis round, then a pause")
                except AssertionError as timed_out:
                    raise AssertionError(f"{timed_out}; status: {last_status}") from None

                def page_rounds() -> list[tuple[str, float | None, bool]]:
                    rounds = []
                    for row in page.locator("#analysis tbody tr").all():
                        value = row.locator("[data-value]").get_attribute("data-value")
                        verdict = row.locator(".chip").inner_text()  # what the user reads
                        assert row.get_attribute("data-passed") == str(verdict == "pass").lower()
                        rounds.append(
                            (
                                str(row.get_attribute("data-analysis")),
                                float(value) if value else None,
                                verdict == "pass",
                            )
                        )
                    return rounds

                # Background analysis may add a round between two reads: compare until both
                # sides were read at the same round count.
                seen: list[Any] = []

                def same() -> list[tuple[str, float | None, bool]] | None:
                    seen[:] = [page_rounds(), api_rounds()]
                    return seen[0] if seen[0] == seen[1] else None

                try:
                    shown = wait_for(same, 30, what="page == API")
                except AssertionError:
                    raise AssertionError(f"page {seen[0]} != API {seen[1]}") from None
                assert {name for name, _, _ in shown} >= {"error-rate", "prediction-shift"}
                assert all(passed for _, value, passed in shown if value is not None)
                # The verdict column says it in words, one chip per round.
                assert page.locator("#analysis tbody tr .chip").count() == len(shown)
                no_leaks(recorder, dashboard)
        finally:
            dashboard.stop()
