"""The docs checker itself (tests/unit/docs_blocks.py): it finds the blocks, and each check
refuses what it exists to refuse. The checks over the real docs run in
tests/integration/test_docs_blocks.py, against the API server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docs_blocks import (
    Block,
    Item,
    block_items,
    chart_schema,
    check_command,
    check_promql,
    exported_series,
    fragment_target,
    markdown_blocks,
    merged_into_quickstart,
    promtool,
    shell_commands,
)

SERIES = exported_series()
needs_promtool = pytest.mark.skipif(promtool() is None, reason="promtool (Debian package prometheus) not installed")


def test_blocks_come_with_their_line_language_and_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import docs_blocks

    monkeypatch.setattr(docs_blocks, "REPO", tmp_path)
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n<!-- docs-test: fragment ModelDeployment.spec -->\n```yaml\nreplicas: 3\n```\n\n"
        "text\n\n```sh\nmake test\n```\n"
    )
    blocks = markdown_blocks(page)
    assert [(b.line, b.lang, b.label) for b in blocks] == [
        (4, "yaml", "fragment ModelDeployment.spec"), (10, "sh", ""),
    ]  # fmt: skip
    [fragment] = list(block_items(blocks[0]))
    assert (fragment.kind, fragment.where, fragment.data) == ("fragment", "page.md:5", {"replicas": 3})
    assert fragment_target(fragment) == ("ModelDeployment", "spec")
    assert merged_into_quickstart(fragment)["spec"]["replicas"] == 3


def test_shell_lines_are_split_into_commands() -> None:
    block = Block("x.md", 1, "sh", "A=1 make demo  # comment\nhelm install k charts/kubeloop \\\n  -n ns\nkubectl get tr | head ; make test & echo\n")
    commands = [item.data for item in shell_commands(block)]
    assert commands == [
        ["A=1", "make", "demo"], ["helm", "install", "k", "charts/kubeloop", "-n", "ns"],
        ["kubectl", "get", "tr"], ["head"], ["make", "test"], ["echo"],
    ]  # fmt: skip
    console = Block("x.md", 1, "console", "$ make test\n3 passed\n")
    assert [item.data for item in shell_commands(console)] == [["make", "test"]]


@needs_promtool
@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        # The quickstart's query before issue 20: neither the series nor the label exist.
        ('histogram_quantile(0.95, sum(rate(kubeloop_request_duration_seconds_bucket{deployment="x"}[2m])) by (le))',
         "kubeloop_request_duration_seconds_bucket is not a series"),
        ('sum(rate(kubeloop_serve_request_duration_seconds_bucket{deployment="x"}[2m]))', "no label 'deployment'"),
        ("sum by (policy) (rate(kubeloop_serve_requests_total[5m]))", "no series inside carries 'policy'"),
        ("sum by (model (rate(kubeloop_serve_requests_total[5m]))", "promtool"),
    ],
)  # fmt: skip
def test_promql_that_selects_nothing_real_is_refused(query: str, complaint: str) -> None:
    outcome = check_promql(Item("promql", "x", query), SERIES)
    assert outcome.status == "failed" and complaint in outcome.detail, outcome.detail


@needs_promtool
def test_promql_on_exported_series_with_placeholders_passes() -> None:
    query = (
        'histogram_quantile(0.95, sum(rate(kubeloop_serve_request_duration_seconds_bucket'
        '{namespace="{{namespace}}",model="{{name}}",track="{{track}}"}[2m])) by (le))'
    )
    assert check_promql(Item("promql", "x", query), SERIES).status == "checked"


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("kubectl kubeloop promot md/x", "invalid choice"),
        ("kubeloop serve --model-urii x", "unrecognized arguments"),
        ("kubeloop traim", "no command"),
        ("make tset", "no Makefile target"),
        ("helm install k charts/kubeloop --set image.repo=x", "not in charts/kubeloop/values.schema.json"),
        ("helm install k charts/nope", "not a chart directory"),
        ("kubectl apply -f examples/quickstart/nope.yaml", "no such path"),
        ("kubectl get trainingrunz", "knows no resource"),
    ],
)
def test_commands_the_real_parsers_refuse_are_refused(line: str, complaint: str) -> None:
    [item] = list(shell_commands(Block("x.md", 1, "sh", line)))
    outcome = check_command(item, {"trainingruns", "tr"}, chart_schema())
    assert outcome.status == "failed" and complaint in outcome.detail, outcome.detail


def test_commands_the_real_parsers_accept_pass() -> None:
    lines = "kubectl kubeloop status md/x\nkubeloop serve --model-uri /m --port 8080\nmake test\nkubectl get tr\n"
    outcomes = [check_command(i, {"trainingruns", "tr"}, chart_schema()) for i in shell_commands(Block("x.md", 1, "sh", lines))]
    assert [o.status for o in outcomes] == ["checked"] * 4, outcomes


def test_every_measured_figure_in_the_readme_names_its_results_file() -> None:
    # Issue 20: figures only from committed results files. Each row of the Measured table links
    # the results files its figures are copied from, and those files exist.
    from docs_blocks import REPO

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Measured", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    assert len(rows) >= 4, rows
    for row in rows:
        links = re.findall(r"\]\(([^)]+)\)", row.rsplit("|", 2)[-2])
        assert links, f"no results file named in: {row[:80]}"
        for link in links:
            assert link.endswith(("results.md", "demo-results.md")) and (REPO / link).is_file(), link
