"""``kubectl kubeloop``: read and steer TrainingRuns, ModelDeployments and DriftPolicies.

Every command is a thin write of what the operator already understands (spec fields and
one-shot request annotations documented in the API), so the plugin needs no more RBAC than
``kubectl patch`` on the same objects, and anything it does can also be done by hand.

The command line reads like kubectl's: ``-n/--namespace``, ``--context`` and ``--kubeconfig``
may come before or after the subcommand, and an object is named ``md/NAME``, ``md NAME``,
``modeldeployment/NAME`` or just ``NAME`` when the command implies the kind.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from urllib3.exceptions import HTTPError as TransportError

from kubeloop import __version__
from kubeloop.api.driftpolicy import RETRAIN_ANNOTATION
from kubeloop.api.modeldeployment import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    PROMOTE_FULL_ANNOTATION,
    RETRY_ANNOTATION,
)
from kubeloop.controllers.kube import KINDS, Kube, NotFound
from kubeloop.dashboard.views import performance_view
from kubeloop.decide.model_source import describe_previous, undo_patch
from kubeloop.registry import tags
from kubeloop.resources.serving import OWNER_LABEL, SERVER_CONTAINER, TRACK_LABEL
from kubeloop.resources.trainingjob import TRAINER_CONTAINER

PROG = "kubectl kubeloop"
DESCRIPTION = "Read and steer Kubeloop's TrainingRuns, ModelDeployments and DriftPolicies."
GROUP = "kubeloop.io"

# kind -> the words that name it on the command line (short name first), as in the CRDs.
KIND_WORDS: dict[str, tuple[str, ...]] = {
    "TrainingRun": ("tr", "trainingrun", "trainingruns"),
    "ModelDeployment": ("md", "modeldeployment", "modeldeployments"),
    "DriftPolicy": ("dp", "driftpolicy", "driftpolicies"),
}
KIND_ALIASES: dict[str, str] = {word: kind for kind, words in KIND_WORDS.items() for word in words}
SHORT_NAMES: dict[str, str] = {kind: words[0] for kind, words in KIND_WORDS.items()}
ACCEPTED_KINDS = "; ".join(" | ".join(words) for words in KIND_WORDS.values())

# Labels the Helm chart puts on the operator's Deployment (charts/kubeloop/templates/_helpers.tpl).
OPERATOR_SELECTOR = "app.kubernetes.io/part-of=kubeloop,app.kubernetes.io/component=operator"
VERSION_LABEL = "app.kubernetes.io/version"


class UsageError(Exception):
    """A mistake the user can fix; the message says how."""


@dataclass(frozen=True)
class ObjectRef:
    """One Kubeloop object named on the command line."""

    kind: str
    name: str

    @property
    def word(self) -> str:
        """How kubectl names the kind in messages: ``modeldeployment``."""
        return self.kind.lower()

    def __str__(self) -> str:
        return f"{SHORT_NAMES[self.kind]}/{self.name}"


def kind_of(word: str) -> str | None:
    """``md``, ``ModelDeployments`` or ``modeldeployments.kubeloop.io`` -> ``ModelDeployment``."""
    word = word.lower().removesuffix(f".{GROUP}")
    return KIND_ALIASES.get(word)


def _ref_forms(allowed: Sequence[str], implied: str | None) -> str:
    forms = [f"{SHORT_NAMES[kind]}/NAME" for kind in allowed]
    forms += [f"{SHORT_NAMES[kind]} NAME" for kind in allowed]
    if implied:
        forms.append("NAME")
    return ", ".join(forms)


def parse_ref(
    words: Sequence[str], allowed: Sequence[str] = tuple(KIND_WORDS), implied: str | None = None
) -> ObjectRef:
    """``["md/churn"]``, ``["md", "churn"]`` or ``["churn"]`` (when the command implies the
    kind) -> ObjectRef("ModelDeployment", "churn"); a UsageError naming the accepted forms otherwise."""
    forms = _ref_forms(allowed, implied)
    if len(words) == 2:
        kind_text, name = words
    elif len(words) == 1 and "/" in words[0]:
        kind_text, _, name = words[0].partition("/")
    elif len(words) == 1 and implied and kind_of(words[0]) is None:
        return ObjectRef(implied, words[0])
    else:
        raise UsageError(f"{' '.join(words)!r} does not name one object: use {forms}")
    kind = kind_of(kind_text)
    if kind is None:
        raise UsageError(f"unknown kind {kind_text!r}: use {forms} (kinds: {ACCEPTED_KINDS})")
    if not name or "/" in name:
        raise UsageError(f"{' '.join(words)!r} has no object name: use {forms}")
    if kind not in allowed:
        raise UsageError(f"this command works on {', '.join(allowed)}, not {kind}: use {forms}")
    return ObjectRef(kind, name)


def request_token() -> str:
    """A fresh value for a one-shot request annotation (the operator acts once per value)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


# --- rendering ---------------------------------------------------------------------------------


def _conditions_table(status: Mapping[str, Any]) -> Table:
    table = Table(
        "condition", "status", "reason", "message", title="Conditions", title_justify="left"
    )
    for c in status.get("conditions") or []:
        style = "green" if c.get("status") == "True" else "yellow"
        table.add_row(
            c.get("type", ""),
            Text(c.get("status", ""), style=style),
            c.get("reason", ""),
            c.get("message", ""),
        )
    return table


def _header(obj: Mapping[str, Any]) -> Text:
    status = obj.get("status") or {}
    phase = status.get("phase") or ("Drifted" if status.get("drifted") else "-")
    style = {"Succeeded": "green", "Healthy": "green", "Failed": "red", "Degraded": "red"}.get(
        phase, "cyan"
    )
    text = Text(
        f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}  ", style="bold"
    )
    text.append(phase, style=style)
    if status.get("message"):
        text.append(f"  {status['message']}")
    return text


def render_trainingrun(kube: Kube, run: Mapping[str, Any]) -> Group:
    status = run.get("status") or {}
    model = status.get("model") or {}
    spec = run["spec"]
    parts: list[Any] = [_header(run)]
    info = Table.grid(padding=(0, 2))
    info.add_row("estimator", spec["model"]["estimator"])
    info.add_row("job", status.get("jobName", "-"))
    info.add_row(
        "started / finished",
        f"{status.get('startTime', '-')} / {status.get('completionTime', '-')}",
    )
    parts.append(info)
    if model:
        metrics = Table(
            "metric",
            "challenger",
            "champion",
            title="Evaluation (same holdout)",
            title_justify="left",
        )
        champion = model.get("championMetrics") or {}
        for name, value in sorted((model.get("metrics") or {}).items()):
            metrics.add_row(
                name, f"{value:.4f}", f"{champion[name]:.4f}" if name in champion else "-"
            )
        parts.append(metrics)
    if status.get("trials"):
        trials = Table("trial", "phase", "params", "metrics", title="Sweep", title_justify="left")
        for trial in status["trials"]:
            best = " *" if trial.get("index") == status.get("bestTrial") else ""
            trials.add_row(
                f"{trial['index']}{best}",
                trial.get("phase", ""),
                str(trial.get("params", {})),
                str(trial.get("metrics", {})),
            )
        parts.append(trials)
    mlflow = mlflow_of_run(run)
    if mlflow is not None:
        parts.append(mlflow)
    parts.append(_lineage_of_run(kube, run))
    parts.append(_conditions_table(status))
    return Group(*parts)


def mlflow_of_run(run: Mapping[str, Any]) -> Table | None:
    """The run in MLflow (status.mlflow) and the champion it was judged against (None:
    neither). Pure, for `status` and `watch`."""
    status = run.get("status") or {}
    mlflow = status.get("mlflow") or {}
    champion = status.get("champion") or {}
    if not mlflow and not champion:
        return None
    table = Table.grid(padding=(0, 2))
    table.add_row(Text("MLflow", style="bold"), "")
    if mlflow:
        chosen = ((run.get("spec") or {}).get("tracking") or {}).get("experimentName")
        experiment = str(mlflow.get("experimentId", "-"))
        table.add_row("experiment", f"{experiment}  ({chosen})" if chosen else experiment)
        table.add_row("run id", str(mlflow.get("runId", "-")))
        if mlflow.get("registeredModel"):
            version = mlflow.get("modelVersion", "-")
            table.add_row("model version", f"{mlflow['registeredModel']} version {version}")
        table.add_row("finished", "yes" if mlflow.get("finished") else "no (retried)")
    if champion:
        table.add_row(
            "champion",
            f"{champion.get('source', '-')}  sha256 {str(champion.get('sha256', '-'))[:16]}",
        )
    return table


def registry_of_deployment(md: Mapping[str, Any]) -> Table | None:
    """What spec.model.registry resolved to and the aliases this deployment set (status.registry;
    None: neither). Pure."""
    registry = (md.get("status") or {}).get("registry") or {}
    if not registry:
        return None
    table = Table.grid(padding=(0, 2))
    table.add_row(Text("MLflow registry", style="bold"), "")
    if registry.get("source"):
        table.add_row(
            "source",
            f"{registry['source']}  ->  version {registry.get('version', '-')}",
        )
        table.add_row(
            "resolved",
            f"{registry.get('uri', '-')}  sha256 {str(registry.get('sha256', '-'))[:16]}",
        )
    aliases = registry.get("aliases") or {}
    if aliases:
        moved = [
            f"{alias} -> version {aliases[alias]}"
            for alias in (tags.CHAMPION, tags.CHALLENGER)
            if aliases.get(alias)
        ]
        table.add_row(f"aliases of {aliases.get('model', '-')}", ", ".join(moved) or "-")
    return table


def _serving_deployments(kube: Kube, namespace: str, sha256: str) -> list[str]:
    served = []
    for md in kube.list("ModelDeployment", namespace):
        md_status = md.get("status") or {}
        for track in ("stable", "canary"):
            if (md_status.get(track) or {}).get("sha256") == sha256:
                served.append(f"{md['metadata']['name']} ({track})")
    return served


def _lineage_of_run(kube: Kube, run: Mapping[str, Any]) -> Table:
    status = run.get("status") or {}
    model = status.get("model") or {}
    lineage = Table.grid(padding=(0, 2))
    lineage.add_row(Text("Lineage", style="bold"), "")
    lineage.add_row(
        "data",
        f"{run['spec']['data']['source']}  fingerprint {str(model.get('dataFingerprint', '-'))[:16]}",
    )
    lineage.add_row("run", run["metadata"]["name"])
    lineage.add_row(
        "artifact", f"{model.get('uri', '-')}  sha256 {str(model.get('sha256', '-'))[:16]}"
    )
    served = (
        _serving_deployments(kube, run["metadata"]["namespace"], model["sha256"])
        if model.get("sha256")
        else []
    )
    lineage.add_row("served by", ", ".join(served) or "-")
    return lineage


def render_modeldeployment(kube: Kube, md: Mapping[str, Any]) -> Group:
    status = md.get("status") or {}
    spec = md["spec"]
    parts: list[Any] = [_header(md)]
    tracks = Table(
        "track", "revision", "sha256", "ready", "weight", title="Models", title_justify="left"
    )
    weight = int(status.get("canaryWeight") or 0)
    for track, share in (("stable", 100 - weight), ("canary", weight)):
        served = status.get(track) or {}
        if served:
            tracks.add_row(
                track,
                served.get("revision", "-"),
                str(served.get("sha256", ""))[:12],
                f"{served.get('readyReplicas', 0)}/{served.get('replicas', 0)}",
                f"{share}%",
            )
    parts.append(tracks)
    steps = (spec.get("rollout") or {}).get("steps") or []
    if steps and status.get("canary"):
        current = int(status.get("currentStep") or 0)
        plan = Table("#", "step", "", title="Rollout", title_justify="left")
        for index, step in enumerate(steps):
            mark = "<- now" if index == current else ("done" if index < current else "")
            plan.add_row(str(index), ", ".join(f"{k} {v}" for k, v in step.items()), mark)
        parts.append(plan)
    runs = ((status.get("analysis") or {}).get("runs") or [])[-10:]
    if runs:
        analysis = Table(
            "time", "metric", "value", "bounds", "result", title="Analysis", title_justify="left"
        )
        for run in runs:
            bounds = f"[{run.get('min', '-')}, {run.get('max', '-')}]"
            verdict = (
                Text("pass", style="green")
                if run.get("passed")
                else Text(f"FAIL {run.get('message', '')}", style="red")
            )
            analysis.add_row(
                run.get("time", ""), run["name"], str(run.get("value", "-")), bounds, verdict
            )
        parts.append(analysis)
    stable = status.get("stable") or {}
    lineage = Table.grid(padding=(0, 2))
    lineage.add_row(Text("Lineage", style="bold"), "")
    if stable.get("trainingRun"):
        run = kube.get_or_none("TrainingRun", md["metadata"]["namespace"], stable["trainingRun"])
        model = ((run or {}).get("status") or {}).get("model") or {}
        if run is not None:
            lineage.add_row(
                "data",
                f"{run['spec']['data']['source']}  fingerprint {str(model.get('dataFingerprint', '-'))[:16]}",
            )
        lineage.add_row("run", stable["trainingRun"])
    lineage.add_row(
        "artifact", f"{stable.get('uri', '-')}  sha256 {str(stable.get('sha256', '-'))[:16]}"
    )
    previous = status.get("previous") or {}
    lineage.add_row("previous (undo)", describe_previous(previous) or "-")
    parts.append(lineage)
    registry = registry_of_deployment(md)
    if registry is not None:
        parts.append(registry)
    parts.append(_conditions_table(status))
    return Group(*parts)


def performance_table(dp: Mapping[str, Any]) -> Table:
    """A performance policy's last check: live metric beside reference and limit, and why."""
    shown = performance_view(dp) or {}
    table = Table(
        "metric",
        "live",
        "reference",
        "limit",
        "labels",
        "verdict",
        title="Performance (labelled traffic)",
        title_justify="left",
    )
    degraded = shown.get("degraded")
    style = "red" if degraded else "green" if degraded is False else "yellow"

    def figure(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}"

    table.add_row(
        str(shown.get("metric", "")),
        figure(shown.get("live")),
        figure(shown.get("reference")),
        figure(shown.get("limit")),
        "-" if shown.get("labels") is None else str(shown["labels"]),
        Text(str(shown.get("verdict", "")), style=style),
    )
    return table


def render_driftpolicy(kube: Kube, dp: Mapping[str, Any]) -> Group:
    status = dp.get("status") or {}
    parts: list[Any] = [_header(dp)]
    info = Table.grid(padding=(0, 2))
    info.add_row("target", f"md/{dp['spec']['targetRef']['name']}")
    info.add_row(
        "last check / next",
        f"{status.get('lastCheckTime', '-')} / {status.get('nextCheckTime', '-')}",
    )
    info.add_row("samples", str(status.get("samples", "-")))
    info.add_row(
        "drifted", f"{status.get('drifted', '-')}  share {status.get('driftedShare', '-')}"
    )
    last = status.get("lastRetrain") or {}
    info.add_row(
        "retrains",
        f"{status.get('retrainCount', 0)} (last: {last.get('name', '-')} {last.get('reason', '')} {last.get('outcome', '')})",
    )
    if status.get("nextScheduleTime"):
        info.add_row("next scheduled retrain", status["nextScheduleTime"])
    if status.get("report"):
        info.add_row("HTML report", status["report"])
    parts.append(info)
    if (dp.get("spec") or {}).get("performance") is not None:
        parts.append(performance_table(dp))
    scores = Table(
        "feature",
        "test",
        "score",
        "p-value",
        "drifted when",
        "drifted",
        title="Drift scores",
        title_justify="left",
    )
    for score in status.get("scores") or []:
        drifted = Text("yes", style="red") if score.get("drifted") else Text("no", style="green")
        p_value = score.get("pValue")
        # ks and chi2 are judged by alpha (p-value below it), the distances by a score threshold.
        rule = (
            f"p < {score['alpha']}"
            if score.get("alpha") is not None
            else f"score >= {score.get('threshold', '-')}"
        )
        scores.add_row(
            score["feature"],
            score["test"],
            f"{score['score']:.4f}",
            f"{p_value:.3g}" if p_value is not None else "-",
            rule,
            drifted,
        )
    parts.append(scores)
    parts.append(_conditions_table(status))
    return Group(*parts)


RENDERERS: dict[str, Callable[[Kube, Mapping[str, Any]], Group]] = {
    "TrainingRun": render_trainingrun,
    "ModelDeployment": render_modeldeployment,
    "DriftPolicy": render_driftpolicy,
}


# --- commands ----------------------------------------------------------------------------------


class CommandFailed(Exception):
    """The cluster answered no (not found, no pods, nothing to undo); the message says what."""


def not_found(ref: ObjectRef, namespace: str, error: NotFound) -> CommandFailed:
    """Tell a missing object from a missing CRD: the API server answers 404 for both."""
    if f'"{ref.name}" not found' in str(error):
        return CommandFailed(f"{ref.word} {ref.name} not found in namespace {namespace}")
    return no_crd(ref.kind, error)


def no_crd(kind: str, error: NotFound) -> CommandFailed:
    return CommandFailed(
        f"the API server does not serve {KINDS[kind].plural}.{GROUP}: are Kubeloop's CRDs "
        f"installed? ({str(error).strip()})"
    )


def get_object(kube: Kube, ref: ObjectRef, namespace: str) -> dict[str, Any]:
    try:
        return kube.get(ref.kind, namespace, ref.name)
    except NotFound as error:
        raise not_found(ref, namespace, error) from None


def patch_object(kube: Kube, ref: ObjectRef, namespace: str, patch: dict[str, Any]) -> None:
    try:
        kube.patch(ref.kind, namespace, ref.name, patch)
    except NotFound as error:
        raise not_found(ref, namespace, error) from None


def annotate(kube: Kube, ref: ObjectRef, namespace: str, annotation: str) -> str:
    token = request_token()
    patch_object(kube, ref, namespace, {"metadata": {"annotations": {annotation: token}}})
    return token


def undo(kube: Kube, ref: ObjectRef, namespace: str) -> str:
    md = get_object(kube, ref, namespace)
    found = undo_patch(md)
    if found is None:
        raise CommandFailed(f"{ref} has no previous model in status.previous: nothing to undo to")
    patch_object(kube, ref, namespace, found.patch)
    return found.what


# --- list --------------------------------------------------------------------------------------

# Ask the API server for its Table rendering: the CRDs' printer columns, as `kubectl get` shows.
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def list_kinds(word: str) -> list[str]:
    if word.lower() == "all":
        return list(KIND_WORDS)
    kind = kind_of(word)
    if kind is None:
        raise UsageError(f"unknown kind {word!r}: use all, {ACCEPTED_KINDS}")
    return [kind]


def fetch_tables(
    kube: Kube, kinds: Sequence[str], namespace: str | None
) -> list[tuple[str, dict[str, Any]]]:
    """One server-side Table per kind, in ``namespace`` or (None) in every namespace."""
    tables = []
    for kind in kinds:
        try:
            tables.append(
                (kind, kube.request("GET", KINDS[kind].path(namespace), accept=TABLE_ACCEPT))
            )
        except NotFound as error:
            raise no_crd(kind, error) from None
    return tables


def human_age(seconds: float) -> str:
    """kubectl's short ages: 45s, 17m, 5h, 3d."""
    seconds = max(0, int(seconds))
    for unit, size, below in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < below:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


def _cell(value: Any, column: Mapping[str, Any], now: datetime) -> str:
    if value is None or value == "":
        return "<none>"
    if column.get("type") == "date" and isinstance(value, str):
        # The API server renders a CRD's date columns as ages already ("5m"); other servers
        # (aggregated APIs) may send the timestamp itself.
        try:
            started = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        return human_age((now - started).total_seconds())
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _aligned(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def render_list(
    tables: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    all_namespaces: bool,
    wide: bool,
    now: datetime,
) -> str:
    """Server-side Tables -> kubectl-like text: one block per kind that has objects; KIND/NAME
    when several kinds are listed, a NAMESPACE column with -A, the ``-o wide`` columns on request."""
    blocks = []
    for kind, table in tables:
        rows = table.get("rows") or []
        if not rows:
            continue
        columns = [
            (i, c)
            for i, c in enumerate(table["columnDefinitions"])
            if wide or not c.get("priority")
        ]
        header = [c["name"].upper() for _, c in columns]
        lines = []
        for row in rows:
            cells = [_cell(row["cells"][i], c, now) for i, c in columns]
            if len(tables) > 1:
                cells[0] = f"{SHORT_NAMES[kind]}/{cells[0]}"
            if all_namespaces:
                cells.insert(
                    0, str(((row.get("object") or {}).get("metadata") or {}).get("namespace", ""))
                )
            lines.append(cells)
        if all_namespaces:
            header.insert(0, "NAMESPACE")
        blocks.append(_aligned([header, *lines]))
    return "\n\n".join(blocks)


# --- version -----------------------------------------------------------------------------------


def operator_version(kube: Kube) -> str:
    """The version label and image of every operator Deployment the chart installed, or
    "unknown" with the reason (an operator run outside the cluster cannot be seen)."""
    try:
        found = kube.request(
            "GET", KINDS["Deployment"].path(None), query={"labelSelector": OPERATOR_SELECTOR}
        ).get("items", [])
    except ApiException as error:
        return f"unknown (cannot list Deployments: {error.reason})"
    if not found:
        return f"unknown (no Deployment labelled {OPERATOR_SELECTOR} in any namespace)"
    versions = []
    for deployment in found:
        meta = deployment["metadata"]
        containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get(
            "containers"
        ) or []
        images = ", ".join(c.get("image", "?") for c in containers)
        label = (meta.get("labels") or {}).get(VERSION_LABEL) or "unknown"
        versions.append(f"{label} (deployment {meta['namespace']}/{meta['name']}, image {images})")
    return "; ".join(versions)


def show_version(args: argparse.Namespace) -> int:
    print(f"Client Version: {__version__}")
    if args.client:
        return 0
    kube = connect(args.kubeconfig, args.context)
    server = kube.request("GET", "/version")
    print(f"Server Version: {server.get('gitVersion', 'unknown')}")
    print(f"Operator Version: {operator_version(kube)}")
    return 0


# --- logs --------------------------------------------------------------------------------------


def log_sources(
    kube: Kube, ref: ObjectRef, namespace: str, track: str | None
) -> tuple[list[dict[str, Any]], str]:
    """The pods whose logs ``logs`` shows, oldest first, and the container to read."""
    obj = get_object(kube, ref, namespace)
    if ref.kind == "TrainingRun":
        if track:
            raise UsageError(
                "--track is for md/NAME (stable or canary server pods), not a TrainingRun"
            )
        pods = kube.list("Pod", namespace, labels={"kubeloop.io/trainingrun": ref.name})
        if not pods:
            job = (obj.get("status") or {}).get("jobName", "its Job")
            raise CommandFailed(
                f"{ref} has no pods (yet, or {job} was cleaned up after ttlSecondsAfterFinished)"
            )
        container = TRAINER_CONTAINER
    else:
        labels = {OWNER_LABEL: ref.name, **({TRACK_LABEL: track} if track else {})}
        pods = kube.list("Pod", namespace, labels=labels)
        if not pods:
            which = f"{track} " if track else ""
            raise CommandFailed(
                f"{ref} has no {which}server pods (not created yet, or scaled to 0)"
            )
        container = SERVER_CONTAINER
    return sorted(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"])
    ), container


def pod_log(kube: Kube, namespace: str, pod: str, container: str, tail: int, previous: bool) -> str:
    query = {
        "container": container,
        "tailLines": str(tail),
        **({"previous": "true"} if previous else {}),
    }
    try:
        return kube.request_text("GET", KINDS["Pod"].path(namespace, pod, "log"), query=query)
    except ApiException as error:
        if error.status != 400:  # 400: the container has not started (or has no previous run)
            raise
        return f"(no log: {error.reason})\n"


def show_logs(kube: Kube, ref: ObjectRef, args: argparse.Namespace, namespace: str) -> None:
    pods, container = log_sources(kube, ref, namespace, args.track)
    if args.follow:
        follow_logs(kube, namespace, [p["metadata"]["name"] for p in pods], container, args.tail)
        return
    for pod in pods:
        name = pod["metadata"]["name"]
        if len(pods) > 1:
            track = (pod["metadata"].get("labels") or {}).get(TRACK_LABEL)
            print(f"==> pod/{name}{f' ({track})' if track else ''} <==", flush=True)
        text = pod_log(kube, namespace, name, container, args.tail, args.previous)
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()


def _server_message(error: ApiException) -> str:
    """The message of the Status the API server answered with (the official client keeps the body)."""
    try:
        return str(orjson.loads(error.body or b"{}").get("message") or error.reason)
    except (orjson.JSONDecodeError, AttributeError):
        return str(error.reason)


def follow_logs(kube: Kube, namespace: str, pods: Sequence[str], container: str, tail: int) -> None:
    """Stream each pod's log until its container ends, or until Ctrl-C (as ``kubectl logs -f``).
    With several pods the streams run at once and each line starts with ``[pod/NAME]``."""
    core = k8s_client.CoreV1Api(kube.api_client)
    printing = threading.Lock()

    def emit(text: str) -> None:
        with printing:
            sys.stdout.write(text)
            sys.stdout.flush()

    def stream(pod: str) -> None:
        prefix = f"[pod/{pod}] " if len(pods) > 1 else ""
        try:
            # Typed as str by the generated client; with _preload_content=False it is the
            # unread urllib3 response.
            response: Any = core.read_namespaced_pod_log(
                pod,
                namespace,
                container=container,
                follow=True,
                tail_lines=tail,
                _preload_content=False,
            )
        except ApiException as error:
            emit(f"{prefix}(no log: {_server_message(error)})\n")
            return
        try:
            for line in response:  # urllib3 yields whole lines as the chunks arrive
                emit(prefix + line.decode(errors="replace").rstrip("\n") + "\n")
        finally:
            response.release_conn()

    threads = [threading.Thread(target=stream, args=(pod,), daemon=True) for pod in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # join in slices: Ctrl-C reaches the main thread at once
            thread.join(0.2)


# --- the command line --------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    help: str
    kinds: tuple[str, ...] = ()  # the kinds its object may be; () takes no object
    implied: str | None = None  # the kind a bare NAME means


MD, TR, DP = "ModelDeployment", "TrainingRun", "DriftPolicy"
COMMANDS: dict[str, Command] = {
    "list": Command("list Kubeloop objects with their printer columns (kind: tr, md, dp or all)"),
    "status": Command(
        "readable view: phase, steps, weights, analysis, drift scores, lineage", (TR, MD, DP)
    ),
    "watch": Command("live view of status, refreshed every 2 s (Ctrl-C to stop)", (TR, MD, DP)),
    "promote": Command(
        "move a rollout past its current step (--full: skip all remaining steps)", (MD,), MD
    ),
    "abort": Command("send all traffic back to stable now", (MD,), MD),
    "retry": Command("restart an aborted rollout from its first step", (MD,), MD),
    "undo": Command("roll back to the model served before the last promotion", (MD,), MD),
    "pause": Command("hold a rollout where it is", (MD,), MD),
    "resume": Command("let a paused rollout go on", (MD,), MD),
    "retrain": Command("ask a DriftPolicy to retrain now (same path as drift)", (DP,), DP),
    "logs": Command(
        "logs of a TrainingRun's training pods or a ModelDeployment's server pods", (TR, MD)
    ),
    "version": Command("the plugin's version, the API server's and the operator's"),
    "dashboard": Command(
        "web UI on 127.0.0.1: lineage, rollouts, drift, sweeps; live (Ctrl-C to stop)"
    ),
}

EPILOG = """\
objects: md/NAME, md NAME, modeldeployment/NAME, modeldeployments NAME (likewise tr, dp),
or NAME alone where the command implies the kind (promote, abort, retry, undo, pause, resume: md;
retrain: dp). -n/--namespace, --context and --kubeconfig go before or after the command.

examples:
  kubectl kubeloop list -A
  kubectl kubeloop status md/churn -n ml
  kubectl kubeloop -n ml promote churn --full
  kubectl kubeloop logs tr churn-1 --tail 50
  kubectl kubeloop dashboard -A
"""


def _connection_flags(*, on_subcommand: bool) -> argparse.ArgumentParser:
    # On the subcommands the flags default to SUPPRESS: argparse copies a subcommand's defaults
    # over what the main parser read, so `-n ml status ...` would otherwise lose its -n.
    default = argparse.SUPPRESS if on_subcommand else None
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("cluster")
    group.add_argument(
        "-n",
        "--namespace",
        default=default,
        help="namespace (default: the kubeconfig context's, else default)",
    )
    group.add_argument(
        "--context", default=default, help="the kubeconfig context to use (default: current)"
    )
    group.add_argument(
        "--kubeconfig",
        default=default,
        help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)",
    )
    return flags


def build_parser() -> argparse.ArgumentParser:
    """The plugin's argparse parser; :func:`parse_args` is what reads a command line."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_connection_flags(on_subcommand=False)],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    flags = _connection_flags(on_subcommand=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[flags])
        if command.kinds:
            forms = _ref_forms(command.kinds, command.implied)
            p.add_argument("object", metavar="OBJECT", help=forms)
            p.add_argument(
                "name", nargs="?", metavar="NAME", help="the name, when OBJECT is a kind"
            )
        if name == "list":
            p.add_argument(
                "kind", nargs="?", default="all", help="tr, md, dp or all (default: all)"
            )
            p.add_argument(
                "-A", "--all-namespaces", action="store_true", help="list in every namespace"
            )
            p.add_argument("-o", "--output", choices=["wide"], help="wide: every printer column")
        elif name == "promote":
            p.add_argument("--full", action="store_true", help="skip every remaining step")
        elif name == "logs":
            p.add_argument("--tail", type=int, default=200, help="lines per pod (default: 200)")
            p.add_argument(
                "--track", choices=["stable", "canary"], help="md only: one track's server pods"
            )
            p.add_argument(
                "-p",
                "--previous",
                action="store_true",
                help="the previous container's log (after a restart)",
            )
            p.add_argument(
                "-f",
                "--follow",
                action="store_true",
                help="stream new lines until the containers end (Ctrl-C to stop)",
            )
        elif name == "dashboard":
            p.add_argument(
                "-A", "--all-namespaces", action="store_true", help="show every namespace"
            )
            p.add_argument(
                "--port",
                type=int,
                default=3100,
                help="port on 127.0.0.1 (default: 3100; 0: any free port)",
            )
            p.add_argument(
                "--no-open",
                action="store_true",
                help="do not open a browser, only print the address",
            )
        elif name == "version":
            p.add_argument(
                "--client",
                action="store_true",
                help="the plugin's version only (no cluster needed)",
            )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Read a command line as kubectl would; exits 2 with usage on a mistake, like argparse."""
    parser = build_parser()
    args, extras = parser.parse_known_args(list(argv))
    if hasattr(args, "object"):
        # One list of words: ["md/x"] or ["md", "x"]. argparse leaves NAME over when an option
        # sits between it and the kind (`status md -n ml churn`); kubectl reads it, and so do we.
        words = [args.object, *([args.name] if args.name is not None else [])]
        if extras and not any(word.startswith("-") for word in extras):
            words, extras = [*words, *extras], []
        args.object = words
        del args.name
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if hasattr(args, "object") and len(args.object) > 2:
        parser.error(f"{args.command} takes one object, got {' '.join(args.object)!r}")
    return args


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig context in use (``--context`` or the current one), else
    ``default``, as kubectl decides it."""
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (k8s_config.ConfigException, OSError):
        return "default"
    chosen = (
        next((c for c in contexts or [] if c.get("name") == context), None) if context else active
    )
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def connect(kubeconfig: str | None, context: str | None) -> Kube:
    """A client from the kubeconfig (and context); in a pod without one, its ServiceAccount."""
    configuration = k8s_client.Configuration()
    if kubeconfig and not Path(kubeconfig).is_file():
        raise k8s_config.ConfigException(f"{kubeconfig}: no such file")
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except k8s_config.ConfigException:
        if kubeconfig or context:
            raise
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            pass
        else:
            return Kube(k8s_client.ApiClient(configuration))
        raise
    return Kube(k8s_client.ApiClient(configuration))


def object_of(args: argparse.Namespace) -> ObjectRef | None:
    """The object the command line names (checked before any cluster is asked)."""
    command = COMMANDS[args.command]
    if args.command == "list":
        list_kinds(args.kind)
    if args.command == "logs" and args.follow and args.previous:
        raise UsageError(
            "--follow streams the running container and --previous reads an ended one: use one"
        )
    if not command.kinds:
        return None
    return parse_ref(args.object, command.kinds, command.implied)


def run_command(
    kube: Kube, args: argparse.Namespace, namespace: str | None, console: Console
) -> int:
    """``namespace`` is None only for ``list -A`` and ``dashboard -A``."""
    ref = object_of(args)
    if args.command == "list":
        tables = fetch_tables(kube, list_kinds(args.kind), namespace)
        shown = render_list(
            tables,
            all_namespaces=namespace is None,
            wide=args.output == "wide",
            now=datetime.now(UTC),
        )
        if shown:
            print(shown)
        else:
            where = "any namespace" if namespace is None else f"namespace {namespace}"
            print(f"No Kubeloop objects found in {where}.", file=sys.stderr)
        return 0
    if args.command == "dashboard":
        from kubeloop.dashboard.server import serve_dashboard  # the web server only when asked for

        return serve_dashboard(kube, namespace, port=args.port, open_browser=not args.no_open)
    assert namespace is not None and ref is not None
    if args.command in {"status", "watch"}:

        def view() -> Group:
            return RENDERERS[ref.kind](kube, get_object(kube, ref, namespace))

        if args.command == "status":
            console.print(view())
            return 0
        first = view()  # a missing object fails here, before the live view starts
        try:  # Ctrl-C is how a watch ends, whenever it comes
            with Live(first, console=console, refresh_per_second=2) as live:
                while True:
                    time.sleep(2)
                    live.update(view())
        except KeyboardInterrupt:
            return 0
    if args.command == "logs":
        try:  # Ctrl-C is how a followed log ends, whenever it comes
            show_logs(kube, ref, args, namespace)
        except KeyboardInterrupt:
            return 0
    else:
        console.print(steer(kube, args.command, ref, namespace, full=getattr(args, "full", False)))
    return 0


STEERING = ("promote", "abort", "retry", "undo", "pause", "resume", "retrain")
"""The commands that change an object; the dashboard's buttons call :func:`steer` too."""


def steer(kube: Kube, command: str, ref: ObjectRef, namespace: str, *, full: bool = False) -> str:
    """Run one steering command on ``ref``; returns what was done, in one line."""
    if command == "retrain":
        token = annotate(kube, ref, namespace, RETRAIN_ANNOTATION)
        return f"driftpolicy/{ref.name}: retrain requested ({RETRAIN_ANNOTATION}={token})"
    if command == "undo":
        return f"modeldeployment/{ref.name}: rolling back to {undo(kube, ref, namespace)}"
    if command in {"pause", "resume"}:
        patch_object(kube, ref, namespace, {"spec": {"paused": command == "pause"}})
        return f"modeldeployment/{ref.name}: {'paused' if command == 'pause' else 'resumed'}"
    annotation = {
        "promote": PROMOTE_FULL_ANNOTATION if full else PROMOTE_ANNOTATION,
        "abort": ABORT_ANNOTATION,
        "retry": RETRY_ANNOTATION,
    }[command]
    token = annotate(kube, ref, namespace, annotation)
    return f"modeldeployment/{ref.name}: {command} requested ({annotation}={token})"


def server_error_text(error: ApiException) -> str:
    """An API server refusal as kubectl prints it: ``from server (Forbidden): ...``."""
    return f"from server ({SERVER_REASONS.get(error.status, str(error.status))}): {error.reason}"


# The API server's reason phrases, as kubectl prints them: "error: from server (Forbidden): ..."
SERVER_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    405: "MethodNotAllowed",
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def fail(message: str) -> None:
    """An error line on stderr, unwrapped (scripts and tests read it whole)."""
    print(f"error: {message}", file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        object_of(args)  # a mistake on the command line is told before any cluster is asked
        if args.command == "version":
            return show_version(args)
        all_namespaces = getattr(args, "all_namespaces", False)
        namespace = (
            None
            if all_namespaces
            else args.namespace or context_namespace(args.kubeconfig, args.context)
        )
        return run_command(connect(args.kubeconfig, args.context), args, namespace, Console())
    except UsageError as error:
        fail(f"{error}")
        return 2
    except CommandFailed as error:
        fail(f"{error}")
        return 1
    except ApiException as error:
        fail(server_error_text(error))
        return 1
    except k8s_config.ConfigException as error:
        where = args.kubeconfig or "$KUBECONFIG or ~/.kube/config"
        fail(f"kubeconfig ({where}): {error}")
        return 1
    except TransportError as error:
        # urllib3 wraps the cause (refused, unknown host, TLS) in a retry summary; the cause says it.
        fail(f"cannot reach the API server: {getattr(error, 'reason', None) or error}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
