"""``kubectl kubeloop``: read and steer TrainingRuns, ModelDeployments and DriftPolicies.

Every command is a thin write of what the operator already understands (spec fields and
one-shot request annotations documented in the API), so the plugin needs no more RBAC than
``kubectl patch`` on the same objects, and anything it does can also be done by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kubeloop.api.driftpolicy import RETRAIN_ANNOTATION
from kubeloop.api.modeldeployment import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    PROMOTE_FULL_ANNOTATION,
    RETRY_ANNOTATION,
)
from kubeloop.controllers.kube import Kube, NotFound

KIND_ALIASES = {
    "tr": "TrainingRun", "trainingrun": "TrainingRun", "trainingruns": "TrainingRun",
    "md": "ModelDeployment", "modeldeployment": "ModelDeployment", "modeldeployments": "ModelDeployment",
    "dp": "DriftPolicy", "driftpolicy": "DriftPolicy", "driftpolicies": "DriftPolicy",
}


class UsageError(Exception):
    """A mistake the user can fix; the message says how."""


def parse_ref(ref: str, allowed: Sequence[str] | None = None) -> tuple[str, str]:
    """``md/churn`` -> ("ModelDeployment", "churn"), with a helpful error otherwise."""
    kind_text, _, name = ref.partition("/")
    kind = KIND_ALIASES.get(kind_text.lower())
    if not name or kind is None:
        raise UsageError(f"{ref!r} is not KIND/NAME: use tr/NAME, md/NAME or dp/NAME")
    if allowed and kind not in allowed:
        shorts = ", ".join(f"{k}" for k in allowed)
        raise UsageError(f"this command works on {shorts}, not {kind}")
    return kind, name


def request_token() -> str:
    """A fresh value for a one-shot request annotation (the operator acts once per value)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


# --- rendering ---------------------------------------------------------------------------------


def _conditions_table(status: Mapping[str, Any]) -> Table:
    table = Table("condition", "status", "reason", "message", title="Conditions", title_justify="left")
    for c in status.get("conditions") or []:
        style = "green" if c.get("status") == "True" else "yellow"
        table.add_row(c.get("type", ""), Text(c.get("status", ""), style=style), c.get("reason", ""), c.get("message", ""))
    return table


def _header(obj: Mapping[str, Any]) -> Text:
    status = obj.get("status") or {}
    phase = status.get("phase") or ("Drifted" if status.get("drifted") else "-")
    style = {"Succeeded": "green", "Healthy": "green", "Failed": "red", "Degraded": "red"}.get(phase, "cyan")
    text = Text(f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}  ", style="bold")
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
    info.add_row("started / finished", f"{status.get('startTime', '-')} / {status.get('completionTime', '-')}")
    parts.append(info)
    if model:
        metrics = Table("metric", "challenger", "champion", title="Evaluation (same holdout)", title_justify="left")
        champion = model.get("championMetrics") or {}
        for name, value in sorted((model.get("metrics") or {}).items()):
            metrics.add_row(name, f"{value:.4f}", f"{champion[name]:.4f}" if name in champion else "-")
        parts.append(metrics)
    if status.get("trials"):
        trials = Table("trial", "phase", "params", "metrics", title="Sweep", title_justify="left")
        for trial in status["trials"]:
            best = " *" if trial.get("index") == status.get("bestTrial") else ""
            trials.add_row(f"{trial['index']}{best}", trial.get("phase", ""), str(trial.get("params", {})), str(trial.get("metrics", {})))
        parts.append(trials)
    parts.append(_lineage_of_run(kube, run))
    parts.append(_conditions_table(status))
    return Group(*parts)


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
    lineage.add_row("data", f"{run['spec']['data']['source']}  fingerprint {str(model.get('dataFingerprint', '-'))[:16]}")
    lineage.add_row("run", run["metadata"]["name"])
    lineage.add_row("artifact", f"{model.get('uri', '-')}  sha256 {str(model.get('sha256', '-'))[:16]}")
    served = _serving_deployments(kube, run["metadata"]["namespace"], model["sha256"]) if model.get("sha256") else []
    lineage.add_row("served by", ", ".join(served) or "-")
    return lineage


def render_modeldeployment(kube: Kube, md: Mapping[str, Any]) -> Group:
    status = md.get("status") or {}
    spec = md["spec"]
    parts: list[Any] = [_header(md)]
    tracks = Table("track", "revision", "sha256", "ready", "weight", title="Models", title_justify="left")
    weight = int(status.get("canaryWeight") or 0)
    for track, share in (("stable", 100 - weight), ("canary", weight)):
        served = status.get(track) or {}
        if served:
            tracks.add_row(track, served.get("revision", "-"), str(served.get("sha256", ""))[:12],
                           f"{served.get('readyReplicas', 0)}/{served.get('replicas', 0)}", f"{share}%")
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
        analysis = Table("time", "metric", "value", "bounds", "result", title="Analysis", title_justify="left")
        for run in runs:
            bounds = f"[{run.get('min', '-')}, {run.get('max', '-')}]"
            verdict = Text("pass", style="green") if run.get("passed") else Text(f"FAIL {run.get('message', '')}", style="red")
            analysis.add_row(run.get("time", ""), run["name"], str(run.get("value", "-")), bounds, verdict)
        parts.append(analysis)
    stable = status.get("stable") or {}
    lineage = Table.grid(padding=(0, 2))
    lineage.add_row(Text("Lineage", style="bold"), "")
    if stable.get("trainingRun"):
        run = kube.get_or_none("TrainingRun", md["metadata"]["namespace"], stable["trainingRun"])
        model = ((run or {}).get("status") or {}).get("model") or {}
        if run is not None:
            lineage.add_row("data", f"{run['spec']['data']['source']}  fingerprint {str(model.get('dataFingerprint', '-'))[:16]}")
        lineage.add_row("run", stable["trainingRun"])
    lineage.add_row("artifact", f"{stable.get('uri', '-')}  sha256 {str(stable.get('sha256', '-'))[:16]}")
    previous = status.get("previous") or {}
    lineage.add_row("previous (undo)", previous.get("trainingRun") or str(previous.get("sha256", "-"))[:16])
    parts.append(lineage)
    parts.append(_conditions_table(status))
    return Group(*parts)


def render_driftpolicy(kube: Kube, dp: Mapping[str, Any]) -> Group:
    status = dp.get("status") or {}
    parts: list[Any] = [_header(dp)]
    info = Table.grid(padding=(0, 2))
    info.add_row("target", f"md/{dp['spec']['targetRef']['name']}")
    info.add_row("last check / next", f"{status.get('lastCheckTime', '-')} / {status.get('nextCheckTime', '-')}")
    info.add_row("samples", str(status.get("samples", "-")))
    info.add_row("drifted", f"{status.get('drifted', '-')}  share {status.get('driftedShare', '-')}")
    last = status.get("lastRetrain") or {}
    info.add_row("retrains", f"{status.get('retrainCount', 0)} (last: {last.get('name', '-')} {last.get('reason', '')} {last.get('outcome', '')})")
    if status.get("nextScheduleTime"):
        info.add_row("next scheduled retrain", status["nextScheduleTime"])
    parts.append(info)
    scores = Table("feature", "test", "score", "threshold", "p-value", "drifted", title="Drift scores", title_justify="left")
    for score in status.get("scores") or []:
        drifted = Text("yes", style="red") if score.get("drifted") else Text("no", style="green")
        p_value = score.get("pValue")
        scores.add_row(score["feature"], score["test"], f"{score['score']:.4f}", str(score["threshold"]),
                       f"{p_value:.3g}" if p_value is not None else "-", drifted)
    parts.append(scores)
    parts.append(_conditions_table(status))
    return Group(*parts)


RENDERERS: dict[str, Callable[[Kube, Mapping[str, Any]], Group]] = {
    "TrainingRun": render_trainingrun,
    "ModelDeployment": render_modeldeployment,
    "DriftPolicy": render_driftpolicy,
}


# --- commands ----------------------------------------------------------------------------------


def annotate(kube: Kube, kind: str, namespace: str, name: str, annotation: str) -> str:
    token = request_token()
    kube.patch(kind, namespace, name, {"metadata": {"annotations": {annotation: token}}})
    return token


def undo(kube: Kube, namespace: str, name: str) -> str:
    md = kube.get("ModelDeployment", namespace, name)
    previous = (md.get("status") or {}).get("previous") or {}
    if previous.get("trainingRun"):
        model: dict[str, Any] = {"trainingRunRef": {"name": previous["trainingRun"]}, "storageUri": None, "sha256": None}
        what = f"TrainingRun {previous['trainingRun']}"
    elif previous.get("uri") and previous.get("sha256"):
        model = {"trainingRunRef": None, "storageUri": previous["uri"], "sha256": previous["sha256"]}
        what = f"{previous['uri']} (sha256 {previous['sha256'][:12]})"
    else:
        raise UsageError(f"md/{name} has no previous model in status.previous: nothing to undo to")
    kube.patch("ModelDeployment", namespace, name, {"spec": {"model": model}})
    return what


def training_logs(kube: Kube, namespace: str, name: str, tail: int) -> str:
    run = kube.get("TrainingRun", namespace, name)
    pods = kube.list("Pod", namespace, labels={"kubeloop.io/trainingrun": name})
    if not pods:
        job = (run.get("status") or {}).get("jobName", "its Job")
        raise UsageError(f"tr/{name} has no pods (yet, or {job} was cleaned up after ttlSecondsAfterFinished)")
    newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    return kube.request_text(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods/{newest['metadata']['name']}/log",
        query={"container": "trainer", "tailLines": str(tail)},
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl kubeloop", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the kubeconfig's)")
    parser.add_argument("--kubeconfig", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help_ in [
        ("status", "readable view: phase, steps, weights, analysis, drift scores, lineage"),
        ("watch", "live view of status, refreshed every 2 s (Ctrl-C to stop)"),
    ]:
        p = sub.add_parser(command, help=help_)
        p.add_argument("ref", help="tr/NAME, md/NAME or dp/NAME")
    for command, help_ in [
        ("promote", "move a rollout past its current step (--full: skip all remaining steps)"),
        ("abort", "send all traffic back to stable now"),
        ("retry", "restart an aborted rollout from its first step"),
        ("undo", "roll back to the model served before the last promotion"),
        ("pause", "hold a rollout where it is"),
        ("resume", "let a paused rollout go on"),
    ]:
        p = sub.add_parser(command, help=help_)
        p.add_argument("ref", help="md/NAME")
        if command == "promote":
            p.add_argument("--full", action="store_true", help="skip every remaining step")
    p = sub.add_parser("retrain", help="ask a DriftPolicy to retrain now (same path as drift)")
    p.add_argument("ref", help="dp/NAME")
    p = sub.add_parser("logs", help="the training Job's logs")
    p.add_argument("ref", help="tr/NAME")
    p.add_argument("--tail", type=int, default=200)
    return parser


def current_namespace(kubeconfig: str | None) -> str:
    from kubernetes import config as k8s_config

    try:
        _, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        return str((active or {}).get("context", {}).get("namespace") or "default")
    except (k8s_config.ConfigException, OSError):
        return "default"


def run_command(kube: Kube, args: argparse.Namespace, console: Console) -> int:
    namespace: str = args.namespace
    command = args.command
    if command in {"status", "watch"}:
        kind, name = parse_ref(args.ref)

        def view() -> Group:
            return RENDERERS[kind](kube, kube.get(kind, namespace, name))

        if command == "status":
            console.print(view())
            return 0
        try:  # Ctrl-C is how a watch ends, whenever it comes
            with Live(view(), console=console, refresh_per_second=2) as live:
                while True:
                    time.sleep(2)
                    live.update(view())
        except KeyboardInterrupt:
            return 0
    if command == "retrain":
        _, name = parse_ref(args.ref, ["DriftPolicy"])
        token = annotate(kube, "DriftPolicy", namespace, name, RETRAIN_ANNOTATION)
        console.print(f"driftpolicy/{name}: retrain requested ({RETRAIN_ANNOTATION}={token})")
        return 0
    if command == "logs":
        _, name = parse_ref(args.ref, ["TrainingRun"])
        console.print(training_logs(kube, namespace, name, args.tail), markup=False, highlight=False)
        return 0
    _, name = parse_ref(args.ref, ["ModelDeployment"])
    if command == "undo":
        console.print(f"modeldeployment/{name}: rolling back to {undo(kube, namespace, name)}")
    elif command in {"pause", "resume"}:
        kube.patch("ModelDeployment", namespace, name, {"spec": {"paused": command == "pause"}})
        console.print(f"modeldeployment/{name}: {'paused' if command == 'pause' else 'resumed'}")
    else:
        annotation = {
            "promote": PROMOTE_FULL_ANNOTATION if getattr(args, "full", False) else PROMOTE_ANNOTATION,
            "abort": ABORT_ANNOTATION,
            "retry": RETRY_ANNOTATION,
        }[command]
        token = annotate(kube, "ModelDeployment", namespace, name, annotation)
        console.print(f"modeldeployment/{name}: {command} requested ({annotation}={token})")
    return 0


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    console = Console()
    args.namespace = args.namespace or current_namespace(args.kubeconfig)
    try:
        kube = Kube.from_environment(args.kubeconfig)
        return run_command(kube, args, console)
    except UsageError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    except NotFound:
        console.print(f"[red]error:[/red] {args.ref} not found in namespace {args.namespace!r} (try -n NAMESPACE)")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
