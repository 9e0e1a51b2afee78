"""What the docs tell users to run or apply, extracted, and the checks that need no cluster.

Sources: every fenced block of README.md, docs/*.md and charts/kubeloop/README.md, every YAML
file under examples/ (and the PromQL in its comments), the chart's Grafana dashboard and any
PrometheusRule the chart renders. Each piece becomes an :class:`Item`:

- ``manifest``: a YAML document with apiVersion and kind (the API server judges it: the
  integration test creates it with ``--dry-run=server``);
- ``fragment``: a YAML block without kind. It is checked only when labelled, right above its
  fence: ``<!-- docs-test: fragment <Kind>.spec -->`` merges it into the quickstart example of
  that kind and that whole object goes to the API server; ``<!-- docs-test: chart values -->``
  renders the chart with it (helm, values.schema.json); ``<!-- docs-test: prometheus config
  -->`` goes through ``promtool check config``;
- ``promql``: a query; parsed by the real ``promtool`` and every series it selects must be one
  the operator or the model server exports (or a standard Kubernetes/Prometheus series listed
  here), with labels those series carry;
- ``metric``: a ``kubeloop_...`` name in an inline code span of the docs: it must exist;
- ``command``: one shell command of a sh/bash/console block, checked by what it runs (the
  real argparse parsers of ``kubeloop`` and ``kubectl kubeloop``, the chart and its
  values.schema.json for ``helm``, the Makefile for ``make``, the repository for paths).

A block can be skipped only with a reason: a label ``<!-- docs-test: skip <reason> -->``, or
one of the reasons this module states (text diagrams, unlabelled fragments, commands no
checker here understands). Every skip is counted and shown with its reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeloop"
QUICKSTART = REPO / "examples" / "quickstart"

SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
YAML_LANGUAGES = {"yaml", "yml"}
PROMQL_LANGUAGES = {"promql"}
TEXT_LANGUAGES = {"", "text", "mermaid"}
LABEL = re.compile(r"<!--\s*docs-test:\s*(?P<label>.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")

# Labels Prometheus adds when it scrapes a target (kubernetes_sd relabelling, the usual
# ServiceMonitor); a query may select or group by them though no exporter sets them.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "service", "container", "node"}
# Series that are not Kubeloop's but that a doc may query, by name -> labels.
STANDARD_SERIES: dict[str, set[str]] = {
    "up": set(),
    "kube_pod_container_status_restarts_total": {"container"},
    "container_memory_working_set_bytes": {"container"},
    "container_cpu_usage_seconds_total": {"container"},
}
# Template placeholders of custom analysis queries (analysis/prometheus.py fills them in).
QUERY_PLACEHOLDERS = {"namespace": "ns", "name": "breast-cancer", "track": "canary"}
QUICKSTART_OF_KIND = {
    "TrainingRun": QUICKSTART / "trainingrun.yaml",
    "ModelDeployment": QUICKSTART / "modeldeployment.yaml",
    "DriftPolicy": QUICKSTART / "driftpolicy.yaml",
}


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), CHART / "README.md"]


def example_files() -> list[Path]:
    """YAML files users apply: examples/ and the manifests the docs keep beside them."""
    return sorted([*(REPO / "examples").rglob("*.yaml"), *(REPO / "docs").rglob("*.yaml")])


def relative(path: Path) -> str:
    return str(path.resolve().relative_to(REPO))


# -- extraction ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file."""

    source: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    label: str = ""


def markdown_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the docs-test label right above it."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        label = ""
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and (found := LABEL.search(lines[before])):
            label = found["label"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].lstrip().startswith(fence):
            body.append(lines[j][len(opening["indent"]) :])
            j += 1
        blocks.append(Block(relative(path), i + 1, opening["lang"].lower(), "\n".join(body), label))
        i = j + 1
    return blocks


@dataclass(frozen=True)
class Item:
    """One thing the docs say that can be checked."""

    kind: str  # manifest | fragment | promql | metric | command | text
    where: str  # file:line
    text: str
    data: Any = None
    label: str = ""


def yaml_documents(text: str, source: str, first_line: int) -> Iterator[Item]:
    """Each YAML document of ``text`` as a manifest or a fragment, with the line it starts on."""
    offset = 0
    chunk: list[str] = []
    for number, line in enumerate([*text.splitlines(), "---"]):
        if line.strip() == "---":
            body = "\n".join(chunk)
            if body.strip():
                document = yaml.safe_load(body)
                if isinstance(document, dict) and document:
                    kind = "manifest" if {"apiVersion", "kind"} <= set(document) else "fragment"
                    yield Item(kind, f"{source}:{first_line + offset}", body, document)
            chunk, offset = [], number + 1
        else:
            chunk.append(line)


def promql_expressions(text: str, where_line: Callable[[int], str]) -> Iterator[Item]:
    """The queries of a promql block: runs of lines between comments and blank lines."""
    current: list[str] = []
    start = 0
    for number, line in enumerate([*text.splitlines(), ""]):
        if line.strip() and not line.lstrip().startswith("#"):
            if not current:
                start = number
            current.append(line)
        elif current:
            yield Item("promql", where_line(start), "\n".join(current))
            current = []


def shell_commands(block: Block) -> Iterator[Item]:
    """Each command of a shell block: continuations joined, comments and prompts dropped, split
    at ``;``, ``|``, ``&&``, ``||`` and ``&``."""
    raw = block.text.splitlines()
    number = 0
    while number < len(raw):
        start = number
        line = raw[number]
        while line.rstrip().endswith("\\") and number + 1 < len(raw):
            number += 1
            line = line.rstrip()[:-1] + " " + raw[number]
        number += 1
        if block.lang == "console":
            if not line.lstrip().startswith("$ "):
                continue  # output, not a command
            line = line.lstrip()[2:]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if SUBSTITUTION_WITH_OPERATORS.search(line):
            where = f"{block.source}:{block.line + 1 + start}"
            yield Item("command", where, line, {"skip": "a $(...) command substitution holding a pipe or list: not split here"})
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";|&")
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as error:
            yield Item("command", f"{block.source}:{block.line + 1 + start}", line, {"error": str(error)})
            continue
        argv: list[str] = []
        for token in [*tokens, ";"]:
            if token and set(token) <= set(";|&"):
                if argv:
                    yield Item("command", f"{block.source}:{block.line + 1 + start}", line, argv)
                argv = []
            else:
                argv.append(token)


SUBSTITUTION_WITH_OPERATORS = re.compile(r"\$\([^)]*[|;&][^)]*\)")
INLINE_METRIC = re.compile(r"`[^`\n]*?\b(kubeloop_[a-z0-9_]+)")


def inline_metric_names(path: Path) -> Iterator[Item]:
    """``kubeloop_...`` series named in inline code spans (outside fenced blocks)."""
    in_fence = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        opening = FENCE.match(line)
        if opening:
            in_fence = "" if in_fence and line.lstrip().startswith(in_fence) else opening["fence"]
            continue
        if in_fence:
            continue
        for name in INLINE_METRIC.findall(line):
            yield Item("metric", f"{relative(path)}:{number}", name)


COMMENTED_QUERY = re.compile(r"^\s*#\s*(?:-\s*)?query:\s*(?P<query>.+?)\s*$")


def yaml_file_items(path: Path) -> Iterator[Item]:
    """The documents of a YAML file, the queries in them and the queries in its comments."""
    text = path.read_text()
    for item in yaml_documents(text, relative(path), 1):
        yield item
        yield from manifest_queries(item)
    for number, line in enumerate(text.splitlines(), start=1):
        if found := COMMENTED_QUERY.match(line):
            yield Item("promql", f"{relative(path)}:{number}", found["query"], label="in a comment")


def manifest_queries(item: Item) -> Iterator[Item]:
    """PromQL inside a manifest: analysis metrics' ``query`` and PrometheusRule ``expr``."""

    def visit(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"query", "expr"} and isinstance(value, str):
                    yield value
                else:
                    yield from visit(value)
        elif isinstance(node, list):
            for value in node:
                yield from visit(value)

    document = item.data
    if item.kind == "fragment":
        for query in visit(document):
            yield Item("promql", item.where, query, label="in a YAML fragment")
    elif item.kind == "manifest" and (
        document.get("apiVersion", "").startswith("kubeloop.io/") or document.get("kind") == "PrometheusRule"
    ):
        for query in visit(document.get("spec") or {}):
            yield Item("promql", item.where, query, label=f"in {document['kind']}")


def block_items(block: Block) -> Iterator[Item]:
    """What one Markdown block holds, or a text item when it holds nothing to check."""
    where = f"{block.source}:{block.line}"
    if block.label.startswith("skip"):
        yield Item("text", where, block.text, label=block.label)
    elif block.lang in YAML_LANGUAGES:
        for item in yaml_documents(block.text, block.source, block.line + 1):
            item = Item(item.kind, item.where, item.text, item.data, block.label)
            yield item
            yield from manifest_queries(item)
    elif block.lang in PROMQL_LANGUAGES:
        yield from promql_expressions(block.text, lambda n: f"{block.source}:{block.line + 1 + n}")
    elif block.lang in SHELL_LANGUAGES:
        yield from shell_commands(block)
    else:
        yield Item("text", where, block.text, label=f"a ```{block.lang or ''} block: text, not run")


def dashboard_queries() -> Iterator[Item]:
    for path in sorted((CHART / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard.get("panels", []):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield Item("promql", f"{relative(path)} panel {panel.get('title')!r}", target["expr"])


def all_items(chart_manifests: Iterable[Mapping[str, Any]] = ()) -> list[Item]:
    """Every item of the docs, the examples and the chart's monitoring queries."""
    items: list[Item] = []
    for path in doc_files():
        for block in markdown_blocks(path):
            items.extend(block_items(block))
        items.extend(inline_metric_names(path))
    for path in example_files():
        items.extend(yaml_file_items(path))
    items.extend(dashboard_queries())
    for manifest in chart_manifests:
        if manifest.get("kind") == "PrometheusRule":
            where = f"chart PrometheusRule {manifest['metadata']['name']}"
            items.extend(manifest_queries(Item("manifest", where, "", manifest)))
    return items


# -- outcomes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    item: Item
    status: str  # checked | skipped | failed
    detail: str = ""


@dataclass
class Ledger:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, item: Item, status: str, detail: str = "") -> None:
        self.outcomes.append(Outcome(item, status, detail))

    def of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def summary(self) -> str:
        kinds = sorted({o.item.kind for o in self.outcomes})
        lines = ["docs blocks: " + ", ".join(
            f"{len(self.of(s))} {s}" for s in ("checked", "skipped", "failed")
        )]
        for kind in kinds:
            counts = {s: sum(1 for o in self.outcomes if o.item.kind == kind and o.status == s)
                      for s in ("checked", "skipped", "failed")}
            lines.append(f"  {kind}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        reasons: dict[str, int] = {}
        for outcome in self.of("skipped"):
            reasons[outcome.detail] = reasons.get(outcome.detail, 0) + 1
        lines += [f"  skipped ({n}): {reason}" for reason, n in sorted(reasons.items())]
        lines += [f"  FAILED {o.item.where}: {o.detail}" for o in self.of("failed")]
        return "\n".join(lines)


# -- PromQL -------------------------------------------------------------------------------------


def exported_series() -> dict[str, set[str]]:
    """Sample name -> label names, of everything the operator and the model server export
    (the dashboard test's collector: the metric objects themselves, not a list kept by hand),
    plus each family's own name (docs name histograms by it)."""
    from test_chart_dashboard import exported_series as samples

    from kubeloop.controllers import metrics as operator_metrics
    from kubeloop.serving.metrics import MetricLabels, ServeMetrics

    series = dict(samples())
    families: list[Any] = list(vars(operator_metrics).values())
    families += list(vars(ServeMetrics(MetricLabels("m", "0123456789ab", "stable"))).values())
    for metric in families:
        if hasattr(metric, "_labelnames") and hasattr(metric, "_name"):
            series.setdefault(metric._name, set(metric._labelnames))
    return series


def fill_placeholders(query: str) -> str:
    """A query as Prometheus would receive it: analysis placeholders and Grafana variables
    replaced by sample values."""
    for key, value in QUERY_PLACEHOLDERS.items():
        query = re.sub(r"\{\{\s*" + key + r"\s*\}\}", value, query)
    query = re.sub(r"\$__(rate_)?interval\b", "5m", query)
    query = re.sub(r"\$\{?(\w+)(:\w+)?\}?", r"\1", query)
    return query


def promtool() -> str | None:
    return shutil.which("promtool")


def promtool_problem(query: str) -> str | None:
    """promtool's parse error for the query (a one-rule rules file), or None."""
    binary = promtool()
    if binary is None:
        return "promtool is not installed (Debian package prometheus; hack/setup installs it)"
    with tempfile.TemporaryDirectory() as directory:
        rules = Path(directory) / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": [{"record": "docs:query", "expr": query}]}]}))
        proc = subprocess.run([binary, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        return None
    message = (proc.stderr + proc.stdout).strip().splitlines()
    return "promtool: " + " ".join(line.strip() for line in message if "could not parse" in line or "error" in line.lower())


def promql_problems(query: str, series: Mapping[str, set[str]]) -> list[str]:
    """Series a query selects that nobody exports, and labels those series do not carry."""
    import promql_parser

    expression = promql_parser.parse(query)
    problems: list[str] = []

    def selectors(node: Any) -> list[Any]:
        found: list[Any] = []
        promql_parser.walk(node, lambda n: found.append(n) if isinstance(n, promql_parser.VectorSelector) else None)
        return found

    def labels_of(selector: Any) -> set[str] | None:
        name = selector.name
        if name in series:
            return series[name] | TARGET_LABELS
        if name in STANDARD_SERIES:
            return STANDARD_SERIES[name] | TARGET_LABELS
        return None

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            known = labels_of(node)
            if not node.name:
                problems.append(f"{node}: selects by labels only; name the series")
            elif known is None:
                problems.append(f"{node.name} is not a series Kubeloop exports (nor a standard one listed)")
            else:
                for matcher in node.matchers.matchers:
                    if matcher.name not in known:
                        problems.append(f"{node.name} has no label {matcher.name!r} (it has {sorted(known - TARGET_LABELS)})")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            inner = [labels_of(s) for s in selectors(node.expr)]
            available = set.union(*[k for k in inner if k is not None]) if any(k is not None for k in inner) else None
            if available is not None:
                for label in node.modifier.labels:
                    if label not in available:
                        problems.append(f"{node.op} by/without ({label}): no series inside carries {label!r}")

    promql_parser.walk(expression, visit)
    return problems


def check_promql(item: Item, series: Mapping[str, set[str]]) -> Outcome:
    query = fill_placeholders(item.text)
    parse_error = promtool_problem(query)
    if parse_error:
        return Outcome(item, "failed", f"{parse_error} in {item.text!r}")
    problems = promql_problems(query, series)
    if problems:
        return Outcome(item, "failed", "; ".join(problems) + f" in {item.text!r}")
    return Outcome(item, "checked", "promtool parses it; every series and label is exported")


def check_metric_name(item: Item, series: Mapping[str, set[str]]) -> Outcome:
    if item.text in series:
        return Outcome(item, "checked", "exported")
    return Outcome(item, "failed", f"`{item.text}` is named in the docs but no code exports it")


# -- commands -----------------------------------------------------------------------------------


def _parse_with(parser: argparse.ArgumentParser | Callable[[list[str]], Any], args: list[str]) -> str | None:
    """argparse's complaint about ``args``, or None when the parser (or the command's own
    parse function) accepts them."""
    parse = parser.parse_args if isinstance(parser, argparse.ArgumentParser) else parser
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parse(args)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else f"exit {exit_.code}"
    except Exception as error:  # the runtimes' UsageParser raises its own error
        return f"{type(error).__name__}: {error}"
    return None


def kubeloop_parser(subcommand: str) -> argparse.ArgumentParser | None:
    from kubeloop.cli import SUBCOMMANDS

    module = importlib.import_module(SUBCOMMANDS[subcommand][0])
    build = getattr(module, "build_parser", None)
    return build() if callable(build) else None


def plugin_parser() -> argparse.ArgumentParser | Callable[[list[str]], Any]:
    """What reads ``kubectl kubeloop``'s command line: the plugin's ``parse_args`` (argparse
    plus kubectl's word order) where it has one, else its argparse parser."""
    from kubeloop import plugin

    parse = getattr(plugin, "parse_args", None)
    if callable(parse):
        return parse  # type: ignore[no-any-return]
    parser: argparse.ArgumentParser = plugin.build_parser()
    return parser


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE)}


def schema_has_path(schema: Mapping[str, Any], dotted: str) -> bool:
    """Whether values.schema.json describes ``a.b.c`` (or lets its parent hold any key)."""
    node: Mapping[str, Any] = schema
    for part in re.split(r"\.(?![^\[]*\])", dotted):
        part = re.sub(r"\[\d+\]$", "", part)
        properties = node.get("properties") or {}
        if part in properties:
            node = properties[part]
            if node.get("type") == "array" and isinstance(node.get("items"), dict):
                node = node["items"] if dotted.endswith("]") else node
            continue
        if node.get("additionalProperties") not in (None, False):
            extra = node["additionalProperties"]
            node = extra if isinstance(extra, dict) else {}
            continue
        return False
    return True


def set_keys(value: str) -> list[str]:
    """The keys of a ``--set`` value (``a.b=1,c.d={x,y}``)."""
    keys = []
    depth = 0
    current = ""
    for char in value + ",":
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == "," and depth == 0:
            if "=" in current:
                keys.append(current.split("=", 1)[0])
            current = ""
        else:
            current += char
    return keys


HELM_FLAGS_WITH_VALUE = {
    "-n", "--namespace", "--set", "--set-string", "--set-json", "--set-file", "-f", "--values",
    "--version", "--timeout", "--kube-context", "--kubeconfig", "--description", "--post-renderer",
}  # fmt: skip


def check_helm(argv: list[str], chart_schema: Mapping[str, Any]) -> tuple[str, str]:
    verb = argv[1] if len(argv) > 1 else ""
    if verb not in {"install", "upgrade", "template"}:
        return "skipped", f"helm {verb}: only install, upgrade and template are checked"
    positionals: list[str] = []
    set_values: list[str] = []
    value_files: list[str] = []
    rest = argv[2:]
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-"):
            name, _, inline = token.partition("=")
            if name in HELM_FLAGS_WITH_VALUE:
                value = inline if inline else (rest[i + 1] if i + 1 < len(rest) else "")
                i += 0 if inline else 1
                if name in {"--set", "--set-string", "--set-json", "--set-file"}:
                    set_values.append(value)
                elif name in {"-f", "--values"}:
                    value_files.append(value)
        else:
            positionals.append(token)
        i += 1
    if len(positionals) != 2:
        return "failed", f"helm {verb} wants a release name and a chart, got {positionals}"
    chart = REPO / positionals[1]
    if not (chart / "Chart.yaml").is_file():
        return "failed", f"chart {positionals[1]!r} is not a chart directory of this repository"
    unknown = [k for v in set_values for k in set_keys(v) if not schema_has_path(chart_schema, k)]
    if unknown:
        return "failed", f"--set keys not in {relative(chart)}/values.schema.json: {unknown}"
    missing = [f for f in value_files if not (REPO / f).is_file()]
    if missing:
        return "failed", f"values files missing: {missing}"
    # The real helm renders it with the same flags: its own values.schema.json validation.
    from test_chart_support import tool

    flags = [a for a in argv[2:] if a not in HELM_UPGRADE_ONLY_FLAGS]
    proc = subprocess.run([tool("helm"), "template", *flags], cwd=REPO, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return "failed", f"helm template with these flags fails: {proc.stderr.strip()}"
    return "checked", f"helm renders the chart with these flags ({sum(len(set_keys(v)) for v in set_values)} --set keys, all in values.schema.json)"


HELM_UPGRADE_ONLY_FLAGS = {"--install", "--atomic", "--force", "--reuse-values", "--reset-values", "--cleanup-on-fail"}
KUBECTL_GLOBAL_WITH_VALUE = {"-n", "--namespace", "--context", "--kubeconfig", "-l", "--selector", "-o", "--output"}
KUBECTL_RESOURCE_VERBS = {"get", "describe", "delete", "scale", "annotate", "label", "patch", "edit", "explain", "wait", "logs", "port-forward", "rollout"}


def kubectl_positionals(args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("-"):
            name, _, inline = token.partition("=")
            if name in KUBECTL_GLOBAL_WITH_VALUE and not inline:
                i += 1
        else:
            out.append(token)
        i += 1
    return out


def check_kubectl(argv: list[str], resources: set[str] | None) -> tuple[str, str]:
    args = argv[1:]
    positionals = kubectl_positionals(args)
    if not positionals:
        return "failed", "kubectl without a command"
    verb = positionals[0]
    if verb == "kubeloop":
        at = args.index("kubeloop")
        problem = _parse_with(plugin_parser(), args[at + 1 :])
        if problem:
            return "failed", f"kubectl kubeloop: {problem}"
        return "checked", "parsed by the plugin's own parser"
    if verb in {"apply", "create"} and ("-f" in args or any(a.startswith("--filename") for a in args)):
        paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a in {"-f", "--filename"}]
        missing = [p for p in paths if "://" not in p and not (REPO / p).exists()]
        if missing:
            return "failed", f"kubectl {verb} -f: no such path in the repository: {missing}"
        return "checked", "the applied paths exist (their manifests are dry-run on their own)"
    if verb in KUBECTL_RESOURCE_VERBS and len(positionals) > 1:
        if resources is None:
            return "skipped", "kubectl resource names are checked against a real API server only"
        target = positionals[1]
        kind = target.split("/", 1)[0].split(".", 1)[0] if verb != "explain" else target.split(".", 1)[0]
        if verb == "logs" and "/" not in target:
            return "checked", "kubectl logs of a pod name"
        if verb == "rollout":
            kind = positionals[2].split("/", 1)[0] if len(positionals) > 2 else ""
        if kind.lower() not in resources:
            return "failed", f"kubectl {verb}: the API server knows no resource {kind!r}"
        return "checked", f"{kind!r} is a resource (or category) the API server serves"
    return "skipped", f"kubectl {verb}: no checker for this verb"


def check_command(item: Item, resources: set[str] | None, chart_schema: Mapping[str, Any]) -> Outcome:
    if isinstance(item.data, dict) and "skip" in item.data:
        return Outcome(item, "skipped", item.data["skip"])
    if isinstance(item.data, dict):
        return Outcome(item, "failed", f"not valid shell: {item.data['error']}")
    argv = list(item.data)
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]  # environment assignments before the command
    if not argv:
        return Outcome(item, "skipped", "an environment assignment, nothing to run")
    program = argv[0]
    if program == "kubeloop":
        from kubeloop.cli import SUBCOMMANDS

        if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
            return Outcome(item, "failed", f"kubeloop has no command {argv[1:2]}; it has {sorted(SUBCOMMANDS)}")
        parser = kubeloop_parser(argv[1])
        if parser is None:
            return Outcome(item, "skipped", f"kubeloop {argv[1]} exposes no build_parser()")
        problem = _parse_with(parser, argv[2:])
        return Outcome(item, "failed", f"kubeloop {argv[1]}: {problem}") if problem else Outcome(item, "checked", "parsed by the CLI's parser")
    if program == "kubectl":
        status, detail = check_kubectl(argv, resources)
        return Outcome(item, status, detail)
    if program == "helm":
        status, detail = check_helm(argv, chart_schema)
        return Outcome(item, status, detail)
    if program == "make":
        targets = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
        unknown = sorted(set(targets) - makefile_targets())
        if unknown:
            return Outcome(item, "failed", f"no Makefile target {unknown}")
        return Outcome(item, "checked", "Makefile targets exist")
    if program == "curl":
        if item.where.startswith("README.md:"):
            return Outcome(item, "skipped", "README requests are posted to a real `kubeloop serve` by tests/unit/test_readme_requests.py")
        return Outcome(item, "skipped", "curl needs a running server: not checked here")
    if program in {"python", "python3"} and argv[1:2] == ["-m"] and len(argv) > 2:
        import importlib.util

        found = importlib.util.find_spec(argv[2])
        return Outcome(item, "checked", f"module {argv[2]} exists") if found else Outcome(item, "failed", f"no module {argv[2]}")
    if program in {"python", "python3"} and len(argv) > 1 and argv[1].endswith(".py"):
        path = REPO / argv[1]
        return Outcome(item, "checked", "script exists") if path.is_file() else Outcome(item, "failed", f"no script {argv[1]}")
    if "/" in program and not program.startswith(("/", "$", "~")):
        path = REPO / program
        return Outcome(item, "checked", "script exists") if path.is_file() else Outcome(item, "failed", f"no script {program}")
    if program == "pip" and argv[1:2] == ["install"]:
        local = [a for a in argv[2:] if a.startswith((".", "/")) or a.startswith("'.") or a.startswith('".')]
        for spec in local:
            path = REPO / re.sub(r"\[.*\]$", "", spec.strip("'\""))
            if not (path / "pyproject.toml").is_file():
                return Outcome(item, "failed", f"pip install {spec}: no pyproject.toml there")
        return Outcome(item, "checked", "installs this repository") if local else Outcome(item, "skipped", "pip install of a registry package")
    if program in {"docker", "podman"} and argv[1:2] == ["build"]:
        context = next((a for a in reversed(argv[2:]) if not a.startswith("-")), ".")
        if not (REPO / context / "Dockerfile").is_file():
            return Outcome(item, "failed", f"{program} build {context}: no Dockerfile there")
        return Outcome(item, "checked", "the build context has a Dockerfile")
    return Outcome(item, "skipped", f"{program}: no checker for this program")


def chart_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def check_pure(items: Iterable[Item], resources: set[str] | None = None) -> Ledger:
    """Every check that needs no cluster; manifests and fragments are left to the caller."""
    ledger = Ledger()
    series = exported_series()
    schema = chart_schema()
    for item in items:
        if item.kind == "promql":
            ledger.outcomes.append(check_promql(item, series))
        elif item.kind == "metric":
            ledger.outcomes.append(check_metric_name(item, series))
        elif item.kind == "command":
            ledger.outcomes.append(check_command(item, resources, schema))
        elif item.kind == "text":
            ledger.add(item, "skipped", item.label or "text")
        elif item.kind == "fragment" and item.label == PROMETHEUS_CONFIG_LABEL:
            ledger.outcomes.append(check_prometheus_config(item))
        elif item.kind == "fragment" and item.label == CHART_VALUES_LABEL:
            ledger.outcomes.append(check_chart_values(item))
    return ledger


def fragment_target(item: Item) -> tuple[str, str] | None:
    """(Kind, dotted path) of a fragment's label ``fragment <Kind>[.spec[.field...]]``, or
    None; an empty path means the fragment's keys are the object's top-level keys."""
    found = re.fullmatch(r"fragment\s+(\w+)(?:\.(spec(?:\.\w+)*))?", item.label)
    if not found or found[1] not in QUICKSTART_OF_KIND:
        return None
    return found[1], found[2] or ""


def merged_into_quickstart(item: Item) -> dict[str, Any]:
    """The quickstart object of the fragment's kind with the fragment's keys set at its path."""
    target = fragment_target(item)
    assert target is not None
    kind, path = target
    document: dict[str, Any] = yaml.safe_load(QUICKSTART_OF_KIND[kind].read_text())
    node = document
    for part in path.split(".") if path else []:
        node = node.setdefault(part, {})
    node.update(item.data)
    return document


PROMETHEUS_CONFIG_LABEL = "prometheus config"
CHART_VALUES_LABEL = "chart values"
FRAGMENT_LABELS_CHECKED_HERE = {PROMETHEUS_CONFIG_LABEL, CHART_VALUES_LABEL}


def check_chart_values(item: Item) -> Outcome:
    """Chart values (a values.yaml excerpt) rendered by the real helm: values.schema.json and
    the templates judge them."""
    from test_chart_support import tool

    with tempfile.TemporaryDirectory() as directory:
        values = Path(directory) / "values.yaml"
        values.write_text(yaml.safe_dump(item.data))
        proc = subprocess.run([tool("helm"), "template", "kubeloop", str(CHART), "-f", str(values)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    if proc.returncode != 0:
        return Outcome(item, "failed", "helm template: " + " ".join(proc.stderr.split()))
    return Outcome(item, "checked", "helm renders the chart with these values")


def check_prometheus_config(item: Item) -> Outcome:
    """A Prometheus configuration (or its ``scrape_configs`` part) through ``promtool check
    config``."""
    binary = promtool()
    if binary is None:
        return Outcome(item, "failed", "promtool is not installed (Debian package prometheus)")
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "prometheus.yml"
        config.write_text(yaml.safe_dump(item.data))
        proc = subprocess.run([binary, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    said = " ".join((proc.stderr + proc.stdout).split())
    if proc.returncode != 0 and "kubernetes_sd_configs not found" in said:
        # Debian builds promtool without Kubernetes service discovery: it cannot judge this.
        return Outcome(item, "skipped", "this promtool (Debian's build) has no Kubernetes service discovery, so it cannot check a kubernetes_sd_configs config")
    if proc.returncode != 0:
        return Outcome(item, "failed", "promtool check config: " + said)
    return Outcome(item, "checked", "promtool check config accepts it")


if __name__ == "__main__":  # a look without a cluster: python tests/unit/docs_blocks.py
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    print(check_pure(all_items()).summary())
