"""The chart's notifications block: rendered into KUBELOOP_NOTIFICATIONS that the operator's
own settings parse, sink URLs mounted from Secrets (never in the pod spec), bad values refused
by values.schema.json naming the value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_chart_support import helm, one, render, template_args

from kubeloop.config import OperatorConfig

VALUES = {
    "notifications": {
        "sinks": {
            "ml-events": {
                "type": "cloudevents",
                "mode": "binary",
                "urlSecret": {"name": "kubeloop-notifications", "key": "ml-events"},
            },
            "team-slack": {
                "type": "slack",
                "urlSecret": {"name": "kubeloop-notifications", "key": "team-slack"},
            },
            "in-cluster": {
                "type": "cloudevents",
                "url": "http://events.observability.svc/kubeloop",
            },
        },
        "subscriptions": {"*": ["ml-events"], "rollout.aborted": ["ml-events", "team-slack"]},
        "source": "//prod-eu",
        "maxAttempts": 3,
        "timeoutSeconds": 2.5,
    }
}


def _pod(tmp_path: Path, values: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = one(render(tmp_path, values), "Deployment")["spec"]["template"]["spec"]
    return spec


def test_sinks_render_into_the_operator_setting_and_secrets_into_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = _pod(tmp_path, VALUES)
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    monkeypatch.setenv("KUBELOOP_NOTIFICATIONS", env["KUBELOOP_NOTIFICATIONS"])
    settings = OperatorConfig().notifications
    assert settings.sinks["ml-events"].url_file == "/etc/kubeloop/notifications/ml-events/url"
    assert settings.sinks["ml-events"].mode == "binary" and settings.sinks["ml-events"].url == ""
    assert settings.sinks["team-slack"].type == "slack"
    assert settings.sinks["in-cluster"].url == "http://events.observability.svc/kubeloop"
    assert settings.subscriptions == {
        "*": ["ml-events"],
        "rollout.aborted": ["ml-events", "team-slack"],
    }
    assert (
        settings.source,
        settings.max_attempts,
        settings.timeout_seconds,
        settings.queue_size,
    ) == ("//prod-eu", 3, 2.5, 1000)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["notify-ml-events"] == {
        "name": "notify-ml-events",
        "mountPath": "/etc/kubeloop/notifications/ml-events",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["notify-team-slack"]["secret"] == {
        "secretName": "kubeloop-notifications",
        "items": [{"key": "team-slack", "path": "url"}],
    }
    assert "notify-in-cluster" not in volumes
    assert "hooks.slack.com" not in json.dumps(pod)


def test_no_sinks_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pod = _pod(tmp_path, {})
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    monkeypatch.setenv("KUBELOOP_NOTIFICATIONS", env["KUBELOOP_NOTIFICATIONS"])
    assert OperatorConfig().notifications.sinks == {}
    assert not [v for v in pod["volumes"] if v["name"].startswith("notify-")]


@pytest.mark.parametrize(
    ("sink", "named"),
    [
        ({"type": "sms", "url": "http://x"}, "/notifications/sinks/a/type"),
        ({"type": "slack"}, "/notifications/sinks/a"),
        ({"type": "slack", "url": "ftp://x"}, "/notifications/sinks/a"),
        ({"type": "slack", "urlSecret": {"name": "s"}}, "/notifications/sinks/a/urlSecret"),
    ],
)
def test_bad_sinks_are_refused_naming_the_value(
    tmp_path: Path, sink: dict[str, Any], named: str
) -> None:
    values = {"notifications": {"sinks": {"a": sink}}}
    proc = helm(*template_args(values, values_file=tmp_path / "bad.json"), check=False)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert named in proc.stderr, proc.stderr


def test_an_unknown_trigger_is_refused(tmp_path: Path) -> None:
    values = {"notifications": {"subscriptions": {"rollout.done": []}}}
    proc = helm(*template_args(values, values_file=tmp_path / "bad.json"), check=False)
    assert proc.returncode != 0 and "/notifications/subscriptions" in proc.stderr, proc.stderr


def test_a_sink_name_that_is_no_dns_label_is_refused(tmp_path: Path) -> None:
    values = {"notifications": {"sinks": {"Team_Slack": {"type": "slack", "url": "https://x"}}}}
    proc = helm(*template_args(values, values_file=tmp_path / "bad.json"), check=False)
    assert proc.returncode != 0 and "/notifications/sinks" in proc.stderr and "Team_Slack" in proc.stderr, proc.stderr
