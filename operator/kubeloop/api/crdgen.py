"""Generate the CustomResourceDefinitions in ``crds/`` from the pydantic models.

The models are the single source of truth; this module turns their JSON schemas into
*structural* OpenAPI v3 schemas as the API server requires them: every ``$ref`` inlined, no
``anyOf``/``oneOf``/``allOf`` (``Optional[X]`` becomes an optional ``X``), every node typed or
explicitly free-form, OpenAPI 3.0 spellings of the JSON Schema keywords pydantic writes.

    python -m kubeloop.api.crdgen            print all CRDs (multi-document YAML)
    python -m kubeloop.api.crdgen --write    write crds/<group>_<plural>.yaml and the Helm
                                             chart's copy (charts/kubeloop/templates/crds/)
    python -m kubeloop.api.crdgen --check    exit 1 when either differs from the models
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubeloop.api import driftpolicy, modeldeployment, trainingrun
from kubeloop.api.common import GROUP, VERSION, cel

HEADER = (
    "# Generated from operator/kubeloop/api by `make crds` "
    "(python -m kubeloop.api.crdgen --write). Do not edit.\n"
)
READY_JSON_PATH = '.status.conditions[?(@.type=="Ready")].status'

# Keywords of the OpenAPI v3 subset the API server accepts in a structural schema.
ALLOWED_KEYWORDS = frozenset(
    {
        "type", "format", "description", "properties", "required", "items",
        "additionalProperties", "enum", "default", "nullable", "pattern",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
        "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    }
)  # fmt: skip
DROPPED_KEYWORDS = frozenset({"title", "examples"})


class SchemaError(ValueError):
    """A model whose schema cannot be expressed as a structural CRD schema."""


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get``."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0
    format: str | None = None

    def to_crd(self) -> dict[str, Any]:
        """The ``additionalPrinterColumns`` entry."""
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        if self.format:
            column["format"] = self.format
        return column


def _ready() -> PrinterColumn:
    return PrinterColumn("Ready", READY_JSON_PATH, description="The Ready condition's status.")


def _message() -> PrinterColumn:
    return PrinterColumn("Message", ".status.message", description="What is happening, in words.")


def _age() -> PrinterColumn:
    return PrinterColumn("Age", ".metadata.creationTimestamp", type="date")


@dataclass(frozen=True)
class KindInfo:
    """Everything about one kind that the models do not say themselves."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: tuple[PrinterColumn, ...]
    spec_rules: tuple[dict[str, str], ...] = ()
    scale: bool = False
    categories: tuple[str, ...] = field(default=("kubeloop",))

    @property
    def singular(self) -> str:
        """Lowercase kind, as in ``kubectl get trainingrun``."""
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        """``<plural>.<group>``."""
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        """File under crds/, as controller-gen names it: ``<group>_<plural>.yaml``."""
        return f"{GROUP}_{self.plural}.yaml"


def _doc(module: Any) -> str:
    return str(module.__doc__ or "")


KIND_INFOS: tuple[KindInfo, ...] = (
    KindInfo(
        kind=trainingrun.KIND,
        plural=trainingrun.PLURAL,
        short_names=("tr",),
        spec=trainingrun.TrainingRunSpec,
        status=trainingrun.TrainingRunStatus,
        description=_doc(trainingrun),
        spec_rules=(cel("self == oldSelf", trainingrun.IMMUTABLE_MESSAGE),),
        columns=(
            PrinterColumn("Model", ".spec.model.name", description="The model's lineage name."),
            PrinterColumn("Phase", ".status.phase", description="Where the run is."),
            PrinterColumn("Metric", ".status.primaryMetric", description="The deciding metric."),
            _ready(),
            _message(),
            _age(),
            PrinterColumn("Job", ".status.jobName", priority=1, description="Training Job."),
            PrinterColumn(
                "Estimator", ".spec.model.estimator", priority=1, description="Estimator class."
            ),
            PrinterColumn("Data", ".spec.data.source", priority=1, description="Dataset URI."),
            PrinterColumn(
                "Sha256", ".status.model.sha256", priority=1, description="Model file digest."
            ),
            PrinterColumn(
                "MLflow-Run", ".status.mlflow.runId", priority=1, description="MLflow run id."
            ),
        ),
    ),
    KindInfo(
        kind=modeldeployment.KIND,
        plural=modeldeployment.PLURAL,
        short_names=("md",),
        spec=modeldeployment.ModelDeploymentSpec,
        status=modeldeployment.ModelDeploymentStatus,
        description=_doc(modeldeployment),
        scale=True,
        columns=(
            PrinterColumn("Phase", ".status.phase", description="Healthy, Progressing..."),
            PrinterColumn("Stable", ".status.stable.revision", description="Stable model."),
            PrinterColumn("Canary", ".status.canary.revision", description="Canary model."),
            PrinterColumn(
                "Weight",
                ".status.canaryWeight",
                type="integer",
                description="Percent of traffic on the canary.",
            ),
            PrinterColumn(
                "Step", ".status.currentStep", type="integer", description="Rollout step."
            ),
            _ready(),
            _message(),
            _age(),
            PrinterColumn(
                "Replicas",
                ".status.replicas",
                type="integer",
                priority=1,
                description="Stable pods.",
            ),
            PrinterColumn(
                "Available",
                ".status.readyReplicas",
                type="integer",
                priority=1,
                description="Ready stable pods.",
            ),
            PrinterColumn(
                "Paused",
                ".spec.paused",
                type="boolean",
                priority=1,
                description="Rollout paused.",
            ),
            PrinterColumn(
                "Stable-Sha256",
                ".status.stable.sha256",
                priority=1,
                description="Stable model file digest.",
            ),
            PrinterColumn(
                "Previous",
                ".status.previous.revision",
                priority=1,
                description="Model before the last promotion (for undo).",
            ),
        ),
    ),
    KindInfo(
        kind=driftpolicy.KIND,
        plural=driftpolicy.PLURAL,
        short_names=("dp",),
        spec=driftpolicy.DriftPolicySpec,
        status=driftpolicy.DriftPolicyStatus,
        description=_doc(driftpolicy),
        columns=(
            PrinterColumn("Target", ".spec.targetRef.name", description="Watched deployment."),
            PrinterColumn(
                "Drifted", ".status.drifted", type="boolean", description="Last verdict."
            ),
            PrinterColumn(
                "Retrains",
                ".status.retrainCount",
                type="integer",
                description="TrainingRuns created.",
            ),
            PrinterColumn(
                "LastCheck", ".status.lastCheckTime", type="date", description="Last check."
            ),
            _ready(),
            _message(),
            _age(),
            PrinterColumn(
                "Share",
                ".status.driftedShare",
                type="number",
                priority=1,
                description="Share of drifted features.",
            ),
            PrinterColumn(
                "LastRetrain",
                ".status.lastRetrain.name",
                priority=1,
                description="Latest TrainingRun created.",
            ),
            PrinterColumn(
                "Schedule", ".spec.schedule", priority=1, description="Retrain schedule."
            ),
        ),
    ),
)


# -- schema conversion --------------------------------------------------------------------------


def _description(text: str) -> str:
    """Docstring text as ``kubectl explain`` shows it: lines of a paragraph joined, bullets
    kept on their own lines, reST double backticks made single."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    rendered = []
    for paragraph in paragraphs:
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        out = ""
        for line in lines:
            if not out:
                out = line
            elif line.startswith(("* ", "- ")):
                out += "\n" + line
            else:
                out += " " + line
        rendered.append(out)
    return "\n\n".join(rendered).replace("``", "`")


def _merge(inner: dict[str, Any], outer: dict[str, Any]) -> dict[str, Any]:
    """A referenced or unioned schema with the referring node's own keys on top; CEL rules of
    both are kept."""
    merged = {**inner, **outer}
    rules = [*inner.get("x-kubernetes-validations", []), *outer.get("x-kubernetes-validations", [])]
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _resolve(node: dict[str, Any], defs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Inline ``$ref``/single ``allOf`` and drop the null branch of ``Optional``."""
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        node = _merge(_resolve(defs[name], defs, path), node)
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"{path}: allOf with {len(parts)} schemas is not structural")
        node = _merge(_resolve(parts[0], defs, path), node)
    for union in ("anyOf", "oneOf"):
        if union in node:
            branches = [b for b in node.pop(union) if b.get("type") != "null"]
            if len(branches) != 1:
                raise SchemaError(
                    f"{path}: a union of {len(branches)} types is not structural; "
                    "use one type and a CEL rule"
                )
            node = _merge(_resolve(branches[0], defs, path), node)
            if node.get("default", 0) is None:
                del node["default"]
    return node


def _structural(
    node: Mapping[str, Any], defs: Mapping[str, Any], path: str, in_status: bool
) -> dict[str, Any]:
    """Convert one schema node (recursively) to the API server's structural form."""
    node = _resolve(dict(node), defs, path)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED_KEYWORDS:
            continue
        if key == "description":
            out[key] = _description(value)
        elif key == "properties":
            out[key] = {
                name: _structural(child, defs, f"{path}.{name}", in_status)
                for name, child in value.items()
            }
        elif key == "items":
            out[key] = _structural(value, defs, f"{path}[]", in_status)
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = _structural(value, defs, f"{path}.*", in_status)
            # False: pruning (and kubectl's strict field validation) already refuse unknown
            # fields, and a structural schema may not combine it with properties.
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema's numeric form -> OpenAPI 3.0's boolean form.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "default":
            # Status is written only by the operator; defaults there would invent state.
            if not in_status and value is not None:
                out[key] = value
        elif key in ALLOWED_KEYWORDS:
            out[key] = copy.deepcopy(value)
        else:
            raise SchemaError(f"{path}: keyword {key!r} is not allowed in a CRD schema")

    if "properties" in out:
        out.setdefault("type", "object")
    free_form = out.get("x-kubernetes-preserve-unknown-fields") or out.get(
        "x-kubernetes-int-or-string"
    )
    if "type" not in out and not free_form:
        if set(out) <= {"description", "default", "nullable"}:
            # `Any`: a value of any JSON type, kept as written.
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            raise SchemaError(f"{path}: schema node has no type: {sorted(out)}")
    if "type" in out and out["type"] not in {
        "object",
        "array",
        "string",
        "integer",
        "number",
        "boolean",
    }:
        raise SchemaError(f"{path}: unsupported type {out['type']!r}")
    if out.get("type") == "object" and "additionalProperties" in out and "properties" in out:
        raise SchemaError(f"{path}: an object cannot have both properties and a value schema")
    return out


def openapi_schema(model: type[BaseModel], path: str, in_status: bool = False) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, as a CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs, path, in_status)


def crd(info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = openapi_schema(info.spec, "spec")
    if info.spec_rules:
        spec_schema["x-kubernetes-validations"] = [
            *info.spec_rules,
            *spec_schema.get("x-kubernetes-validations", []),
        ]
    status_schema = openapi_schema(info.status, "status", in_status=True)
    root = {
        "type": "object",
        "description": _description(info.description),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation "
                "of an object: kubeloop.io/v1alpha1.",
            },
            "kind": {
                "type": "string",
                "description": f"Kind is the REST resource this object represents: {info.kind}.",
            },
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    subresources: dict[str, Any] = {"status": {}}
    if info.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.crd_name,
            "labels": {"app.kubernetes.io/part-of": "kubeloop"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": list(info.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": [c.to_crd() for c in info.columns],
                }
            ],
        },
    }


def render(document: Mapping[str, Any]) -> str:
    """Deterministic YAML: sorted keys, no anchors, the generated-file header."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    body = yaml.dump(
        dict(document),
        Dumper=_NoAliases,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
    return HEADER + body


def generate() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    return {info.file_name: render(crd(info)) for info in KIND_INFOS}


def default_directory() -> Path:
    """crds/ of the source checkout this module lives in, else ./crds."""
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "crds"
    return Path.cwd() / "crds"


# -- the Helm chart's copy ------------------------------------------------------------------------

CHART_HEADER = (
    "# Generated from operator/kubeloop/api by `make crds` "
    "(python -m kubeloop.api.crdgen --write). Do not edit.\n"
    "# The chart's copy of crds/: behind `crds.install`, and kept on `helm uninstall` so deleting\n"
    "# a release never deletes every TrainingRun, ModelDeployment and DriftPolicy with it.\n"
)


def chart_template(document: Mapping[str, Any]) -> str:
    """One CRD as a Helm template: switched by ``crds.install``, annotated
    ``helm.sh/resource-policy: keep``, and with ``{{`` escaped so Helm prints it literally."""
    document = copy.deepcopy(dict(document))
    document["metadata"].setdefault("annotations", {})["helm.sh/resource-policy"] = "keep"
    body = render(document).removeprefix(HEADER).replace("{{", '{{ "{{" }}')
    return "{{- if .Values.crds.install }}\n" + CHART_HEADER + body + "{{- end }}\n"


def generate_chart() -> dict[str, str]:
    """File name -> Helm template text of every CRD (the chart's ``templates/crds/``)."""
    return {info.file_name: chart_template(crd(info)) for info in KIND_INFOS}


def default_chart_directory() -> Path:
    """charts/kubeloop/templates/crds of the source checkout this module lives in."""
    return Path(__file__).resolve().parents[3] / "charts" / "kubeloop" / "templates" / "crds"


def differences(directory: Path, generated: Mapping[str, str]) -> list[str]:
    """Human-readable differences between ``directory`` and freshly generated files."""
    problems = []
    for name, text in sorted(generated.items()):
        target = directory / name
        if not target.is_file():
            problems.append(f"{target}: missing")
            continue
        current = target.read_text()
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(target), "generated", lineterm="", n=1
            )
            problems.append("\n".join(list(diff)[:40]))
    for stray in sorted(directory.glob(f"{GROUP}_*.yaml")):
        if stray.name not in generated:
            problems.append(f"{stray}: no longer generated (delete it)")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``kubeloop crds``: print, write or check the generated CRDs."""
    parser = argparse.ArgumentParser(
        prog="kubeloop crds", description="Generate Kubeloop's CRDs from the API models."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the files into --dir")
    mode.add_argument("--check", action="store_true", help="exit 1 if --dir is out of date")
    parser.add_argument("--dir", type=Path, default=None, help="default: the checkout's crds/")
    parser.add_argument(
        "--chart-dir", type=Path, default=None,
        help="the chart's CRD templates (default: the checkout's charts/kubeloop/templates/crds "
        "when --dir is not given; with --dir only, the chart is left alone)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    try:
        generated = generate()
        chart = generate_chart()
    except SchemaError as error:
        print(f"kubeloop crds: {error}", file=sys.stderr)
        return 1
    directory: Path = args.dir or default_directory()
    targets = [(directory, generated)]
    chart_directory = args.chart_dir or (None if args.dir else default_chart_directory())
    if chart_directory is not None:
        targets.append((chart_directory, chart))
    if args.write:
        for target, files in targets:
            target.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (target / name).write_text(text)
                print(f"wrote {target / name}")
        return 0
    if args.check:
        stale = False
        for target, files in targets:
            problems = differences(target, files)
            if problems:
                stale = True
                print("\n".join(problems), file=sys.stderr)
                print(f"kubeloop crds: {target} is out of date; run `make crds`", file=sys.stderr)
            else:
                print(f"{target}: up to date ({len(files)} CRDs)")
        return 1 if stale else 0
    sys.stdout.write("---\n".join(text.removeprefix(HEADER) for text in generated.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
