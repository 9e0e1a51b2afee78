"""docs/ stays true to the code: the field references are regenerated and compared, links
resolve, every exported metric is documented (and nothing else is), the RBAC table matches the
chart, and every reason the troubleshooting page names is one the code can write."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from test_chart_dashboard import exported_series
from test_chart_support import REPO, by_kind, render

from kubeloop.api import crdgen, docgen
from kubeloop.api.conditions import Reason

DOCS = REPO / "docs"
PAGES = ("architecture", "trainingrun", "modeldeployment", "driftpolicy", "metrics", "security", "troubleshooting")


def test_every_page_exists() -> None:
    for page in PAGES:
        assert (DOCS / f"{page}.md").is_file(), page


def test_field_references_are_generated_and_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert docgen.main(["--check"]) == 0, capsys.readouterr().err


def test_a_stale_reference_is_caught_and_rewritten(tmp_path: Path) -> None:
    for page in ("trainingrun", "modeldeployment", "driftpolicy"):
        (tmp_path / f"{page}.md").write_text((DOCS / f"{page}.md").read_text())
    page = tmp_path / "trainingrun.md"
    page.write_text(page.read_text().replace("| `spec.model.task` |", "| `spec.model.tasks` |"))
    assert docgen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert docgen.main(["--write", "--dir", str(tmp_path)]) == 0
    assert page.read_text() == (DOCS / "trainingrun.md").read_text()


def test_every_spec_and_status_field_is_in_the_reference() -> None:
    for info in crdgen.KIND_INFOS:
        text = (DOCS / docgen.page_name(info)).read_text()
        root = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for top in ("spec", "status"):
            for row in list(docgen.fields(root["properties"][top], top))[1:]:
                assert f"| `{row.path}` |" in text, f"{info.kind}: {row.path} missing"
        # The hand-written part says what the generated part cannot.
        head = text.split(docgen.BEGIN)[0]
        assert len(head.split()) > 300, f"{info.kind}: the page needs its semantics, not only fields"


def test_relative_links_resolve() -> None:
    for page in DOCS.glob("*.md"):
        prose = re.sub(r"`[^`\n]*`", "", page.read_text())  # code spans hold regexes, not links
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", prose):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_metrics_page_documents_exactly_the_exported_series() -> None:
    text = (DOCS / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(kubeloop_\w+)`", text, flags=re.MULTILINE))
    series = exported_series()
    families = set()
    for name in series:
        base = re.sub(r"_(bucket|sum|count|created)$", "", name)
        if f"{base}_bucket" in series:
            families.add(base)  # histogram: documented by its family name
        elif not name.endswith("_created"):
            families.add(name)
    assert documented == families, (
        f"undocumented: {sorted(families - documented)}; documented but not exported: "
        f"{sorted(documented - families)}"
    )


def test_security_page_lists_every_rbac_rule_of_the_chart(tmp_path: Path) -> None:
    text = (DOCS / "security.md").read_text()
    table = {
        (group.strip("`"), resource): verbs
        for group, resources, verbs in re.findall(r"^\| ([^|]+) \| ([^|]+) \| ([^|]+) \|", text, flags=re.MULTILINE)
        for resource in re.findall(r"`([^`]+)`", resources)
    }
    docs = render(tmp_path, {"replicaCount": 2}) + render(tmp_path, {"watchNamespaces": ["a"], "replicaCount": 2})
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            group = rule["apiGroups"][0] or "core"
            for resource in rule["resources"]:
                key = (group, resource)
                if key not in table and resource.endswith("/status"):
                    key = (group, "*/status")
                assert key in table, f"security.md does not explain {group} {resource}"
                for verb in rule["verbs"]:
                    assert verb in table[key], f"security.md: {group} {resource} lacks {verb}"


def _reasons_in_code() -> set[str]:
    reasons = {value for name, value in vars(Reason).items() if name.isupper() and isinstance(value, str)}
    for module in ("kubeloop.decide.trainingrun", "kubeloop.decide.modeldeployment", "kubeloop.decide.driftpolicy", "kubeloop.training.result"):
        for name, value in vars(importlib.import_module(module)).items():
            if name.startswith("REASON_") and isinstance(value, str):
                reasons.add(value)
    return reasons


def test_troubleshooting_names_only_real_reasons() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    named = set()
    for cell in re.findall(r"^\| ([^|]+) \|", text, flags=re.MULTILINE):
        named |= {word for word in re.findall(r"`([A-Z][A-Za-z]+)`", cell)}
    assert len(named) > 25
    unknown = named - _reasons_in_code()
    assert not unknown, f"troubleshooting.md names reasons no code writes: {sorted(unknown)}"


def test_troubleshooting_covers_every_trainingrun_failure() -> None:
    from kubeloop.training.result import EXIT_CODES

    text = (DOCS / "troubleshooting.md").read_text()
    for reason in set(EXIT_CODES) - {"Succeeded", "TrainingFailed"}:
        assert f"`{reason}`" in text, reason
    # Every reason a failed run's condition can carry from the trainer (decide.trainingrun).
    from kubeloop.decide.trainingrun import TRAINER_FAILURE_HINTS

    for reason in TRAINER_FAILURE_HINTS:
        assert f"`{reason}`" in text, reason
