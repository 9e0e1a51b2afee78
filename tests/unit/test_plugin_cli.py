"""``kubectl kubeloop``'s command line, without a cluster: what it reads from argv and a
kubeconfig, and how it prints a server-side Table. What it does against an API server is in
tests/integration/test_plugin.py; logs on real pods in tests/e2e/test_plugin_logs.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeloop.plugin import (
    COMMANDS,
    ObjectRef,
    UsageError,
    build_parser,
    context_namespace,
    human_age,
    list_kinds,
    main,
    parse_args,
    parse_ref,
    render_list,
)

# Each connection flag, placed before the command, after the object, and between the kind and
# the name: all read the same, as kubectl reads them.
FLAG_POSITIONS = [
    (["-n", "ml", "status", "md", "churn"], "namespace", "ml"),
    (["status", "md", "churn", "-n", "ml"], "namespace", "ml"),
    (["status", "md", "-n", "ml", "churn"], "namespace", "ml"),
    (["--namespace=ml", "status", "md/churn"], "namespace", "ml"),
    (["status", "md/churn", "--namespace", "ml"], "namespace", "ml"),
    (["--context", "prod", "status", "md/churn"], "context", "prod"),
    (["status", "md/churn", "--context", "prod"], "context", "prod"),
    (["status", "md", "--context", "prod", "churn"], "context", "prod"),
    (["--kubeconfig", "/k", "status", "md/churn"], "kubeconfig", "/k"),
    (["status", "md/churn", "--kubeconfig", "/k"], "kubeconfig", "/k"),
    (["status", "md", "--kubeconfig=/k", "churn"], "kubeconfig", "/k"),
]


@pytest.mark.parametrize(("argv", "flag", "value"), FLAG_POSITIONS)
def test_connection_flags_read_the_same_before_or_after_the_command(argv: list[str], flag: str, value: str) -> None:
    args = parse_args(argv)
    assert getattr(args, flag) == value
    assert parse_ref(args.object) == ObjectRef("ModelDeployment", "churn")
    for other in {"namespace", "context", "kubeconfig"} - {flag}:
        assert getattr(args, other) is None


def test_a_flag_given_twice_keeps_the_last_and_one_before_the_command_survives_the_subcommand() -> None:
    assert parse_args(["-n", "a", "status", "md/x", "-n", "b"]).namespace == "b"
    # The subcommand's own copy defaults to SUPPRESS, so it cannot overwrite "a" with None.
    args = parse_args(["-n", "a", "--context", "c", "promote", "x", "--full"])
    assert (args.namespace, args.context, args.full) == ("a", "c", True)


@pytest.mark.parametrize(("words", "allowed", "implied", "expected"), [
    (["md/churn"], None, None, ("ModelDeployment", "churn")),
    (["md", "churn"], None, None, ("ModelDeployment", "churn")),
    (["modeldeployment/churn"], None, None, ("ModelDeployment", "churn")),
    (["ModelDeployments", "churn"], None, None, ("ModelDeployment", "churn")),
    (["modeldeployments.kubeloop.io/churn"], None, None, ("ModelDeployment", "churn")),
    (["tr/churn-1"], None, None, ("TrainingRun", "churn-1")),
    (["trainingruns", "churn-1"], None, None, ("TrainingRun", "churn-1")),
    (["dp/churn"], None, None, ("DriftPolicy", "churn")),
    (["driftpolicies", "churn"], None, None, ("DriftPolicy", "churn")),
    (["churn"], ("ModelDeployment",), "ModelDeployment", ("ModelDeployment", "churn")),
    (["churn"], ("DriftPolicy",), "DriftPolicy", ("DriftPolicy", "churn")),
])
def test_object_forms(words: list[str], allowed: tuple[str, ...] | None, implied: str | None,
                      expected: tuple[str, str]) -> None:
    ref = parse_ref(words, allowed, implied) if allowed else parse_ref(words)
    assert (ref.kind, ref.name) == expected


@pytest.mark.parametrize(("words", "allowed", "implied", "says"), [
    (["deploy/churn"], None, None, "unknown kind 'deploy'"),
    (["deploy", "churn"], None, None, "unknown kind 'deploy'"),
    (["churn"], None, None, "does not name one object"),  # status: no kind implied
    (["md"], ("ModelDeployment",), "ModelDeployment", "does not name one object"),  # a kind, no name
    (["md/"], None, None, "has no object name"),
    (["tr/churn-1"], ("ModelDeployment",), "ModelDeployment", "works on ModelDeployment, not TrainingRun"),
])
def test_bad_objects_say_which_forms_are_accepted(words: list[str], allowed: tuple[str, ...] | None,
                                                  implied: str | None, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_ref(words, allowed, implied) if allowed else parse_ref(words)
    message = str(caught.value)
    assert says in message
    assert "md/NAME" in message and "md NAME" in message


def test_every_command_parses_with_its_documented_object_forms() -> None:
    for name, command in COMMANDS.items():
        if not command.kinds:
            continue
        short = {"ModelDeployment": "md", "TrainingRun": "tr", "DriftPolicy": "dp"}[command.kinds[0]]
        for argv in ([name, f"{short}/x"], [name, short, "x"], *([[name, "x"]] if command.implied else [])):
            args = parse_args(argv)
            assert parse_ref(args.object, command.kinds, command.implied).name == "x"


def test_too_many_words_or_unknown_options_exit_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status", "md", "x", "y"], ["promote", "md/x", "--fulll"], ["list", "-o", "yaml"], ["nope"]):
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        assert exited.value.code == 2
        assert "usage: kubectl kubeloop" in capsys.readouterr().err


def test_build_parser_is_the_parser_parse_args_uses() -> None:
    assert build_parser().prog == "kubectl kubeloop"
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(COMMANDS)  # type: ignore[union-attr]


def test_list_kinds() -> None:
    assert list_kinds("all") == ["TrainingRun", "ModelDeployment", "DriftPolicy"]
    assert list_kinds("md") == list_kinds("modeldeployments") == ["ModelDeployment"]
    with pytest.raises(UsageError, match="unknown kind 'pods': use all, tr"):
        list_kinds("pods")


def write_kubeconfig(path: Path, current: str, contexts: dict[str, str | None]) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": name, "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})}}
                     for name, ns in contexts.items()],
    }))
    return str(path)


def test_namespace_defaults_to_the_context_s_then_default(tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", "dev", {"dev": "ml-dev", "prod": "ml-prod", "bare": None})
    assert context_namespace(config, None) == "ml-dev"
    assert context_namespace(config, "prod") == "ml-prod"
    assert context_namespace(config, "bare") == "default"
    assert context_namespace(str(tmp_path / "missing"), None) == "default"


def test_version_client_needs_no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["version", "--client"]) == 0
    assert capsys.readouterr().out == "Client Version: 0.1.0\n"


def test_a_bad_object_is_told_before_any_cluster_is_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The kubeconfig points at a closed port: reaching for it would fail differently.
    config = write_kubeconfig(tmp_path / "config", "dev", {"dev": "ml"})
    assert main(["--kubeconfig", config, "status", "deploy/churn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown kind 'deploy'") and "Traceback" not in err


def test_follow_and_previous_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_kubeconfig(tmp_path / "config", "dev", {"dev": "ml"})
    assert main(["--kubeconfig", config, "logs", "-f", "-p", "tr/churn-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --follow streams the running container")


def test_no_kubeconfig_and_no_server_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--kubeconfig", str(tmp_path / "missing"), "list"]) == 1
    assert capsys.readouterr().err == f"error: kubeconfig ({tmp_path / 'missing'}): {tmp_path / 'missing'}: no such file\n"
    config = write_kubeconfig(tmp_path / "config", "dev", {"dev": "ml"})
    assert main(["--kubeconfig", config, "status", "md/churn"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the API server") and err.count("\n") == 1


def test_human_age() -> None:
    assert [human_age(s) for s in (-3, 5, 119, 120, 7199, 7200, 172799, 172800, 9 * 86400)] == [
        "0s", "5s", "119s", "2m", "119m", "2h", "47h", "2d", "9d"]


NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def md_table(*rows: tuple[str, str, str | None, int | None]) -> dict[str, Any]:
    """The shape the API server answers for ``as=Table`` (columns from the CRD's printer columns)."""
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "columnDefinitions": [
            {"name": "Name", "type": "string", "priority": 0},
            {"name": "Phase", "type": "string", "priority": 0},
            {"name": "Weight", "type": "integer", "priority": 0},
            {"name": "Age", "type": "date", "priority": 0},
            {"name": "Replicas", "type": "integer", "priority": 1},
        ],
        "rows": [{"cells": [name, phase, weight, "2026-12-06T11:00:00Z", 2],
                  "object": {"metadata": {"name": name, "namespace": namespace}}}
                 for namespace, name, phase, weight in rows],
    }


def test_render_list_one_kind_in_one_namespace() -> None:
    table = md_table(("ml", "churn", "Healthy", 0), ("ml", "fraud", None, None))
    # kube-apiserver renders a CRD's date column as an age itself: it is shown as sent.
    table["rows"][1]["cells"][3] = "2m12s"
    shown = render_list([("ModelDeployment", table)], all_namespaces=False, wide=False, now=NOW)
    assert shown.splitlines() == [
        "NAME    PHASE     WEIGHT   AGE",
        "churn   Healthy   0        60m",
        "fraud   <none>    <none>   2m12s",
    ]


def test_render_list_all_namespaces_wide_and_several_kinds() -> None:
    empty_tr = {"columnDefinitions": [{"name": "Name", "type": "string"}], "rows": []}
    shown = render_list([("TrainingRun", empty_tr), ("ModelDeployment", md_table(("a", "churn", "Healthy", 25)))],
                        all_namespaces=True, wide=True, now=NOW)
    assert shown.splitlines() == [
        "NAMESPACE   NAME       PHASE     WEIGHT   AGE   REPLICAS",
        "a           md/churn   Healthy   25       60m   2",
    ]
    assert render_list([("TrainingRun", empty_tr)], all_namespaces=False, wide=False, now=NOW) == ""
