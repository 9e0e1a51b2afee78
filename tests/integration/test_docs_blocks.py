"""Everything the docs tell users to apply or run is checked against the real thing.

Given every fenced block of README.md, docs/*.md and charts/kubeloop/README.md, every YAML
file under examples/ (and the queries in its comments), the chart's dashboard and any
PrometheusRule it renders (extracted by tests/unit/docs_blocks.py):

- manifests are created with ``--dry-run=server`` on the real API server (CRDs installed:
  schema, CEL rules and strict field validation all apply); labelled fragments are merged into
  the quickstart object of their kind first;
- PromQL is parsed by the real ``promtool`` and may select only series the operator and the
  model server export, with labels they carry;
- commands are parsed by the real parsers (``kubeloop``'s runtimes, the ``kubectl kubeloop``
  plugin), ``kubectl`` resource names are looked up in the API server's discovery, ``helm``
  charts and ``--set`` keys in the chart and its values.schema.json, ``make`` targets in the
  Makefile, paths in the repository.

Nothing is skipped silently: each skip carries its reason and the summary (printed) counts
them. The README's inference requests are posted to a real server by
tests/unit/test_readme_requests.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterfixture import unique_name
from harness import install_crds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from docs_blocks import (
    CHART,
    FRAGMENT_LABELS_CHECKED_HERE,
    Ledger,
    Outcome,
    all_items,
    check_pure,
    fragment_target,
    merged_into_quickstart,
)
from test_chart_support import render

CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "StorageClass", "PersistentVolume", "PriorityClass",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}  # fmt: skip


@pytest.fixture(scope="module")
def docs_namespace(kubectl: Any) -> Iterator[str]:
    name = unique_name("docs-blocks", max_len=40)
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def served_resource_names(kubectl: Any) -> set[str]:
    """Every name kubectl accepts for a resource on this API server: plural, short names,
    kind, and categories (``kubectl get kubeloop``)."""
    names: set[str] = set()
    proc = kubectl("api-resources", "-o", "wide", "--no-headers")
    for line in proc.stdout.splitlines():
        # NAME SHORTNAMES APIVERSION NAMESPACED KIND VERBS CATEGORIES; SHORTNAMES may be empty.
        fields = line.split()
        namespaced_at = next(i for i, f in enumerate(fields) if f in {"true", "false"})
        names.add(fields[0])
        for short in fields[1 : namespaced_at - 1]:
            names.update(short.split(","))
        names.add(fields[namespaced_at + 1])  # the kind
        for categories in fields[namespaced_at + 3 :]:  # after the verbs
            names.update(categories.split(","))
    return {n.strip().lower() for n in names if n.strip()}


def monitoring_values() -> dict[str, Any]:
    """Chart values that turn on every ``enabled`` switch under ``metrics`` and ``monitoring``
    (ServiceMonitor, PodMonitor, PrometheusRule), so their queries are rendered too."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def switch_on(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (True if k == "enabled" and isinstance(v, bool) else switch_on(v)) for k, v in node.items()}
        return node

    return {key: switch_on(values[key]) for key in ("metrics", "monitoring") if isinstance(values.get(key), dict)}


def dry_run(kubectl: Any, document: dict[str, Any], namespace: str, directory: Path) -> tuple[bool, str]:
    """Server-side apply with ``--dry-run=server``: what the API server says about it."""
    document = yaml.safe_load(yaml.safe_dump(document))
    note = ""
    if document["kind"] not in CLUSTER_SCOPED:
        given = (document.get("metadata") or {}).get("namespace")
        if given and given != namespace:
            note = f" (its namespace {given!r} replaced by the test namespace)"
        document.setdefault("metadata", {})["namespace"] = namespace
    path = directory / f"{document['kind']}-{document['metadata'].get('name', 'unnamed')}.yaml"
    path.write_text(yaml.safe_dump(document))
    proc = kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=kubeloop-docs-test",
        "-f", str(path), check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return False, (proc.stderr or proc.stdout).strip()
    return True, f"accepted by the API server (dry run){note}"


@pytest.fixture(scope="module")
def ledger(kubectl: Any, docs_namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    install_crds(kubectl)
    directory = tmp_path_factory.mktemp("docs-blocks")
    chart_manifests = render(directory, monitoring_values())
    items = all_items(chart_manifests)
    result = check_pure(items, resources=served_resource_names(kubectl))
    for index, outcome in enumerate(result.outcomes):
        # `kubectl create <type> ...` (namespaces, secrets): the real kubectl and API server
        # judge the command itself, as a server-side dry run in the test namespace.
        argv = outcome.item.data
        if outcome.item.kind == "command" and isinstance(argv, list) and argv[:2] == ["kubectl", "create"] and "-f" not in argv:
            proc = kubectl(*argv[1:], "--dry-run=server", "-n", docs_namespace, "-o", "name", check=False)
            ok = proc.returncode == 0
            detail = "kubectl runs it as a server-side dry run" if ok else f"kubectl: {(proc.stderr or proc.stdout).strip()}"
            result.outcomes[index] = Outcome(outcome.item, "checked" if ok else "failed", detail)
    for item in items:
        if item.kind == "manifest":
            ok, detail = dry_run(kubectl, item.data, docs_namespace, directory)
            result.outcomes.append(Outcome(item, "checked" if ok else "failed", detail))
        elif item.kind == "fragment" and item.label not in FRAGMENT_LABELS_CHECKED_HERE:
            if fragment_target(item) is None:
                result.add(item, "skipped", "a YAML fragment without a label (`<!-- docs-test: fragment <Kind>.spec -->`, `chart values` or `prometheus config`): nothing says what it is part of")
                continue
            ok, detail = dry_run(kubectl, merged_into_quickstart(item), docs_namespace, directory)
            result.outcomes.append(Outcome(item, "checked" if ok else "failed", detail + f", merged into the quickstart {fragment_target(item)}"))
    return result


def failures(ledger: Ledger, *kinds: str) -> list[str]:
    return [f"{o.item.where}: {o.detail}" for o in ledger.of("failed") if o.item.kind in kinds]


def test_manifests_in_docs_and_examples_are_accepted_by_the_api_server(ledger: Ledger) -> None:
    checked = [o for o in ledger.of("checked") if o.item.kind == "manifest"]
    # The three quickstart files at least: an extractor that found nothing would pass.
    assert len(checked) + len(failures(ledger, "manifest")) >= 3
    problems = failures(ledger, "manifest", "fragment")
    assert not problems, "\n".join(problems)


def test_promql_parses_and_selects_only_exported_series(ledger: Ledger) -> None:
    promql = [o for o in ledger.outcomes if o.item.kind == "promql"]
    assert any(o.item.where.startswith("examples/") for o in promql), "the quickstart's query was not found"
    assert any(o.item.where.startswith("docs/metrics.md") for o in promql)
    if list((CHART / "templates").glob("prometheusrule*.yaml")):
        assert any(o.item.where.startswith("chart PrometheusRule") for o in promql), "the chart's alerts were not rendered"
    problems = failures(ledger, "promql", "metric")
    assert not problems, "\n".join(problems)


def test_commands_parse_with_the_real_parsers(ledger: Ledger) -> None:
    commands = [o for o in ledger.outcomes if o.item.kind == "command"]
    assert any(o.status == "checked" and "plugin" in o.detail for o in commands)
    problems = failures(ledger, "command")
    assert not problems, "\n".join(problems)


def test_every_block_is_checked_or_skipped_for_a_stated_reason(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print("\n" + ledger.summary())
    assert all(o.detail for o in ledger.of("skipped")), "a skip without a reason"
    assert len(ledger.of("checked")) > 3 * len(ledger.of("skipped"))
