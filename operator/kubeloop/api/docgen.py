"""Generate the field reference of docs/<kind>.md from the CRDs (themselves generated from the
pydantic models), so the docs list every field with the same words ``kubectl explain`` prints.

Each page keeps its hand-written parts; only the block between the two markers below is
replaced:

    python -m kubeloop.api.docgen            print the references
    python -m kubeloop.api.docgen --write    rewrite the blocks in docs/
    python -m kubeloop.api.docgen --check    exit 1 when a block differs from the models
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeloop.api import crdgen

BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (python -m kubeloop.api.docgen --write) -->"
END = "<!-- END GENERATED FIELD REFERENCE -->"


@dataclass(frozen=True)
class Field:
    """One row of the reference."""

    path: str
    type: str
    required: bool
    default: str
    constraints: str
    description: str


def _type_of(node: Mapping[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
        return "any"
    kind = str(node.get("type", "any"))
    if kind == "array":
        return f"[]{_type_of(node.get('items') or {})}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    if node.get("format"):
        return f"{kind} ({node['format']})"
    return kind


def _constraints(node: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, word in (("minimum", ">="), ("maximum", "<=")):
        if key in node:
            exclusive = node.get("exclusiveMinimum" if key == "minimum" else "exclusiveMaximum")
            parts.append(f"{word.rstrip('=') if exclusive else word} {node[key]}")
    for key, word in (
        ("minLength", "min length"), ("maxLength", "max length"),
        ("minItems", "min items"), ("maxItems", "max items"),
        ("maxProperties", "max entries"),
    ):  # fmt: skip
        if key in node:
            parts.append(f"{word} {node[key]}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    for rule in node.get("x-kubernetes-validations") or []:
        parts.append(f"rule: {rule['message']}")
    return "; ".join(parts)


def fields(node: Mapping[str, Any], path: str, required: bool = False) -> Iterator[Field]:
    """Every field under ``node`` in document order, depth first."""
    default = node.get("default")
    yield Field(
        path=path,
        type=_type_of(node),
        required=required,
        default="" if default is None else f"`{_inline(default)}`",
        constraints=_constraints(node),
        description=str(node.get("description", "")),
    )
    required_names = set(node.get("required") or [])
    for name, child in (node.get("properties") or {}).items():
        yield from fields(child, f"{path}.{name}", name in required_names)
    items = node.get("items")
    if isinstance(items, dict) and items.get("properties"):
        for name, child in items["properties"].items():
            yield from fields(child, f"{path}[].{name}", name in set(items.get("required") or []))
    values = node.get("additionalProperties")
    if isinstance(values, dict) and values.get("properties"):
        for name, child in values["properties"].items():
            yield from fields(child, f"{path}.<key>.{name}", name in set(values.get("required") or []))


def _inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n\n", "<br><br>").replace("\n", "<br>").strip()


def table(rows: Sequence[Field]) -> str:
    """A Markdown table of fields."""
    lines = [
        "| Field | Type | Required | Default | Validation | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| `{row.path}` | {_cell(row.type)} | {'yes' if row.required else ''} "
            f"| {_cell(row.default)} | {_cell(row.constraints)} | {_cell(row.description)} |"
        )
    return "\n".join(lines)


def reference(info: crdgen.KindInfo) -> str:
    """The generated block of one kind's page: spec and status, every field."""
    crd = crdgen.crd(info)
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    spec_rows = list(fields(root["properties"]["spec"], "spec", True))[1:]
    status_rows = list(fields(root["properties"]["status"], "status"))[1:]
    columns = "\n".join(
        f"| {c['name']} | `{c['jsonPath']}` | {'wide' if c.get('priority') else ''} "
        f"| {_cell(c.get('description', ''))} |"
        for c in version["additionalPrinterColumns"]
    )
    spec_rules = "\n".join(
        f"- {rule['message']}"
        for rule in root["properties"]["spec"].get("x-kubernetes-validations") or []
    )
    parts = [
        BEGIN,
        "",
        f"`apiVersion: {crd['spec']['group']}/{version['name']}`, `kind: {info.kind}`, "
        f"short name{'s' if len(info.short_names) > 1 else ''} "
        f"{', '.join(f'`{s}`' for s in info.short_names)}, category "
        f"{', '.join(f'`{c}`' for c in info.categories)}. "
        f"Subresources: {', '.join(sorted(version['subresources']))}.",
        "",
        "### `kubectl get` columns",
        "",
        "| Column | From | Shown | Meaning |",
        "| --- | --- | --- | --- |",
        columns,
        "",
    ]
    if spec_rules:
        parts += ["### Rules on the whole spec", "", spec_rules, ""]
    parts += [
        "### spec",
        "",
        table(spec_rows),
        "",
        "### status (written by the operator)",
        "",
        table(status_rows),
        "",
        END,
    ]
    return "\n".join(parts)


def page_name(info: crdgen.KindInfo) -> str:
    """docs/<kind lowercased>.md."""
    return f"{info.singular}.md"


def default_directory() -> Path:
    """docs/ of the source checkout this module lives in."""
    return Path(__file__).resolve().parents[3] / "docs"


def render_page(current: str, info: crdgen.KindInfo) -> str:
    """The page with its generated block replaced (appended when the markers are missing)."""
    block = reference(info)
    if BEGIN in current and END in current:
        head, _, rest = current.partition(BEGIN)
        _, _, tail = rest.partition(END)
        return head + block + tail
    return current.rstrip("\n") + "\n\n## Field reference\n\n" + block + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check the field references."""
    parser = argparse.ArgumentParser(
        prog="python -m kubeloop.api.docgen",
        description="Generate the field reference blocks of docs/<kind>.md.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the blocks in --dir")
    mode.add_argument("--check", action="store_true", help="exit 1 if a block is out of date")
    parser.add_argument("--dir", type=Path, default=None, help="default: the checkout's docs/")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    directory: Path = args.dir or default_directory()
    stale = []
    for info in crdgen.KIND_INFOS:
        page = directory / page_name(info)
        if not (args.write or args.check):
            sys.stdout.write(f"## {info.kind}\n\n{reference(info)}\n\n")
            continue
        current = page.read_text() if page.is_file() else f"# {info.kind}\n"
        wanted = render_page(current, info)
        if args.write:
            if wanted != current:
                page.parent.mkdir(parents=True, exist_ok=True)
                page.write_text(wanted)
                print(f"wrote {page}")
        elif wanted != current:
            stale.append(str(page))
    if stale:
        print(
            f"{', '.join(stale)}: field reference out of date; run "
            "`python -m kubeloop.api.docgen --write`",
            file=sys.stderr,
        )
        return 1
    if args.check:
        print(f"{directory}: field references up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
