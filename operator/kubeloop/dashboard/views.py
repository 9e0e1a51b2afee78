"""What each dashboard page shows, computed from the API objects (pure: no I/O).

Every function takes plain JSON objects as the API server returns them and gives plain JSON
the page renders as it is, so what the page shows is decided (and unit-tested) here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from kubeloop.api.driftpolicy import DEFAULT_MIN_LABELS, DEFAULT_TOLERANCE
from kubeloop.decide.model_source import describe_previous
from kubeloop.drift.charts import FeatureVerdict, ScorePoint, feature_histogram, score_timeline
from kubeloop.drift.performance import LOWER_IS_BETTER
from kubeloop.drift.profile import PREDICTION_FEATURE, Profile

JsonObject = dict[str, Any]

WEIGHT_HISTORY_LIMIT = 500
"""Weight points kept per ModelDeployment while the dashboard runs."""

FEATURE_BIN_SAMPLE = "kubeloop_serve_feature_bin_total"
"""The model server's per-feature bin counter (the live side of drift)."""


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def model_name_of_run(run: Mapping[str, Any]) -> str:
    return str(((run.get("spec") or {}).get("model") or {}).get("name") or run["metadata"]["name"])


def served_tracks(
    deployments: Iterable[Mapping[str, Any]], namespace: str, sha256: str
) -> list[JsonObject]:
    """The ModelDeployment tracks in ``namespace`` that serve the artifact ``sha256``."""
    tracks = []
    for md in deployments:
        md_namespace, md_name = _meta(md)
        if md_namespace != namespace:
            continue
        weight = int(_status(md).get("canaryWeight") or 0)
        for track, share in (("stable", 100 - weight), ("canary", weight)):
            if (_status(md).get(track) or {}).get("sha256") == sha256:
                tracks.append({"deployment": md_name, "track": track, "weight": share})
    return tracks


def run_summary(run: Mapping[str, Any], deployments: Sequence[Mapping[str, Any]]) -> JsonObject:
    """One TrainingRun as a lineage row: data → run → artifact → tracks serving it."""
    namespace, name = _meta(run)
    status = _status(run)
    model = status.get("model") or {}
    spec = run.get("spec") or {}
    failure = status.get("lastFailure") or {}
    sha256 = model.get("sha256") or ""
    return {
        "namespace": namespace,
        "name": name,
        "created": run["metadata"].get("creationTimestamp", ""),
        "phase": status.get("phase") or "Pending",
        "message": status.get("message") or "",
        "dataSource": ((spec.get("data") or {}).get("source")) or "",
        "dataFingerprint": model.get("dataFingerprint") or "",
        "metric": ((spec.get("evaluation") or {}).get("metric")) or "",
        "metrics": dict(model.get("metrics") or {}),
        "championMetrics": dict(model.get("championMetrics") or {}),
        "gates": [dict(g) for g in model.get("gates") or []],
        "failure": {"reason": failure.get("reason", ""), "message": failure.get("message", "")}
        if failure
        else None,
        "sha256": sha256,
        "uri": model.get("uri") or "",
        "servedBy": served_tracks(deployments, namespace, sha256) if sha256 else [],
        "trials": len(status.get("trials") or []),
        "driftPolicy": (run["metadata"].get("labels") or {}).get("kubeloop.io/driftpolicy", ""),
        "retrainReason": (run["metadata"].get("labels") or {}).get(
            "kubeloop.io/retrain-reason", ""
        ),
    }


def models_view(
    runs: Sequence[Mapping[str, Any]], deployments: Sequence[Mapping[str, Any]]
) -> list[JsonObject]:
    """Every model (namespace, spec.model.name) with its runs oldest first, grouped by the data
    fingerprint they were trained on, and the deployments that serve one of its artifacts."""
    models: dict[tuple[str, str], JsonObject] = {}
    for run in sorted(
        runs, key=lambda r: (r["metadata"].get("creationTimestamp", ""), r["metadata"]["name"])
    ):
        namespace, _ = _meta(run)
        key = (namespace, model_name_of_run(run))
        entry = models.setdefault(
            key, {"namespace": namespace, "name": key[1], "runs": [], "deployments": []}
        )
        entry["runs"].append(run_summary(run, deployments))
    for entry in models.values():
        served = {(t["deployment"], t["track"]) for r in entry["runs"] for t in r["servedBy"]}
        by_run = {r["name"] for r in entry["runs"]}
        for md in deployments:
            md_namespace, md_name = _meta(md)
            ref = ((md.get("spec") or {}).get("model") or {}).get("trainingRunRef") or {}
            if md_namespace == entry["namespace"] and (
                any(d == md_name for d, _ in served) or ref.get("name") in by_run
            ):
                entry["deployments"].append(md_name)
    return sorted(models.values(), key=lambda m: (m["namespace"], m["name"]))


def rollout_view(md: Mapping[str, Any], weights: Sequence[Mapping[str, Any]] = ()) -> JsonObject:
    """A ModelDeployment's rollout: steps with the current one, both tracks, the weight history
    seen while the dashboard ran, and every analysis round with its verdict."""
    namespace, name = _meta(md)
    status = _status(md)
    spec = md.get("spec") or {}
    steps = ((spec.get("rollout") or {}).get("steps")) or []
    canary = status.get("canary") or {}
    current = status.get("currentStep")
    weight = int(status.get("canaryWeight") or 0)
    rolling = bool(canary)
    step_rows = []
    for index, step in enumerate(steps):
        kind = next(iter(step), "")
        if not rolling:
            state = "done" if status.get("phase") == "Healthy" else ""
        elif current is None or index > int(current):
            state = ""
        else:
            state = "current" if index == int(current) else "done"
        step_rows.append(
            {"index": index, "kind": kind, "text": describe_step(step), "state": state}
        )
    tracks = []
    for track, share in (("stable", 100 - weight if rolling else 100), ("canary", weight)):
        served = status.get(track) or {}
        if served:
            tracks.append(
                {
                    "track": track,
                    "weight": share,
                    "trainingRun": served.get("trainingRun") or "",
                    "sha256": served.get("sha256") or "",
                    "uri": served.get("uri") or "",
                    "revision": served.get("revision") or "",
                    "readyReplicas": int(served.get("readyReplicas") or 0),
                    "replicas": int(served.get("replicas") or 0),
                }
            )
    analysis = [
        {
            "time": r.get("time", ""),
            "name": r.get("name", ""),
            "value": r.get("value"),
            "min": r.get("min"),
            "max": r.get("max"),
            "step": r.get("step"),
            "passed": bool(r.get("passed")),
            "message": r.get("message") or "",
        }
        for r in ((status.get("analysis") or {}).get("runs") or [])
    ]
    conditions = [
        {k: c.get(k, "") for k in ("type", "status", "reason", "message")}
        for c in status.get("conditions") or []
    ]
    previous = status.get("previous") or {}
    return {
        "namespace": namespace,
        "name": name,
        "phase": status.get("phase") or "",
        "message": status.get("message") or "",
        "paused": bool(spec.get("paused")),
        "currentStep": current,
        "canaryWeight": weight if rolling else 0,
        "steps": step_rows,
        "tracks": tracks,
        "weights": list(weights),
        "analysis": analysis,
        "conditions": conditions,
        "previous": describe_previous(previous),
    }


def describe_step(step: Mapping[str, Any]) -> str:
    """``{"setWeight": 25}`` -> ``setWeight 25%``; ``{"pause": {}}`` -> ``pause until promoted``."""
    if "setWeight" in step:
        return f"setWeight {step['setWeight']}%"
    if "pause" in step:
        duration = (step["pause"] or {}).get("duration")
        return f"pause {duration}" if duration else "pause until promoted"
    if "shadow" in step:
        shadow = step["shadow"] or {}
        return f"shadow {shadow.get('percent', 100)}% for {shadow.get('duration', '?')}"
    if "analysis" in step:
        return "analysis"
    kind = next(iter(step), "step")
    return f"{kind} {step[kind]}"


def weight_point(md: Mapping[str, Any], time: str) -> JsonObject:
    """Where a ModelDeployment's traffic goes now, for the weights-over-time chart."""
    status = _status(md)
    weight = int(status.get("canaryWeight") or 0) if status.get("canary") else 0
    return {
        "time": time,
        "stable": 100 - weight,
        "canary": weight,
        "step": status.get("currentStep"),
    }


def add_weight_point(
    history: list[JsonObject], point: JsonObject, limit: int = WEIGHT_HISTORY_LIMIT
) -> bool:
    """Append ``point`` when the weights or step changed since the last one; True if it did."""
    if history and all(history[-1][k] == point[k] for k in ("stable", "canary", "step")):
        return False
    history.append(point)
    del history[:-limit]
    return True


def runs_view(run: Mapping[str, Any]) -> JsonObject:
    """A sweep's trials: each combination's parameters and metric, the winner marked, and the
    parameters that vary (the chart's x axes)."""
    namespace, name = _meta(run)
    status = _status(run)
    spec = run.get("spec") or {}
    metric = ((spec.get("evaluation") or {}).get("metric")) or ""
    trials = sorted(status.get("trials") or [], key=lambda t: int(t.get("index", 0)))
    best = status.get("bestTrial")
    rows = [
        {
            "index": int(t.get("index", 0)),
            "phase": t.get("phase", ""),
            "params": dict(t.get("params") or {}),
            "value": (t.get("metrics") or {}).get(metric),
            "metrics": dict(t.get("metrics") or {}),
            "best": best is not None and int(t.get("index", -1)) == int(best),
        }
        for t in trials
    ]
    grid = ((spec.get("sweep") or {}).get("grid")) or {}
    varying = [p for p in grid if len({repr(r["params"].get(p)) for r in rows}) > 1] or list(grid)
    return {
        "namespace": namespace,
        "name": name,
        "model": model_name_of_run(run),
        "phase": status.get("phase") or "Pending",
        "metric": metric,
        "bestTrial": best,
        "parameters": varying,
        "trials": rows,
    }


def live_bin_counts(
    samples: Iterable[tuple[str, Mapping[str, str], float]], sha: str
) -> dict[str, dict[str, float]]:
    """``{feature: {bin: count}}`` summed over pods from parsed ``/metrics`` samples (name,
    labels, value) of the model whose short sha256 is ``sha``; missing values have no bin."""
    grouped: dict[str, dict[str, float]] = {}
    for name, labels, value in samples:
        if name != FEATURE_BIN_SAMPLE or labels.get("sha") != sha or labels.get("bin") == "missing":
            continue
        bins = grouped.setdefault(labels.get("feature", ""), {})
        bins[labels.get("bin", "")] = bins.get(labels.get("bin", ""), 0.0) + value
    return grouped


def score_point(policy: Mapping[str, Any]) -> list[JsonObject]:
    """The last check's per-feature scores as timeline points (the status keeps only the last
    check's scores; the dashboard keeps them over time while it runs)."""
    status = _status(policy)
    time = status.get("lastCheckTime")
    if not time:
        return []
    return [
        {
            "time": time,
            "feature": s["feature"],
            "test": s.get("test", ""),
            # ks and chi2 are judged by their p-value against alpha, the distances by score.
            "value": s.get("pValue") if s.get("alpha") is not None else s.get("score"),
            "limit": s.get("alpha") if s.get("alpha") is not None else s.get("threshold"),
            "drifted": bool(s.get("drifted")),
        }
        for s in status.get("scores") or []
        if s.get("feature")
    ]


def add_score_points(
    history: list[JsonObject], points: Sequence[JsonObject], limit: int = WEIGHT_HISTORY_LIMIT
) -> bool:
    """Append a check's points unless that check (its time) is recorded already."""
    if not points or any(h["time"] == points[0]["time"] for h in history[-len(points) :]):
        return False
    history.extend(points)
    del history[:-limit]
    return True


def _verdict(score: Mapping[str, Any]) -> FeatureVerdict | None:
    limit = score.get("alpha") if score.get("alpha") is not None else score.get("threshold")
    if score.get("score") is None or limit is None:
        return None
    return FeatureVerdict(
        test=str(score.get("test")),
        score=float(score["score"]),
        threshold=float(limit),
        drifted=bool(score.get("drifted")),
        p_value=score.get("pValue"),
    )


def _timeline(feature: str, points: Sequence[Mapping[str, Any]]) -> str | None:
    mine = [p for p in points if p["feature"] == feature and p.get("value") is not None]
    if not mine or mine[-1].get("limit") is None:
        return None
    return score_timeline(
        feature,
        [
            ScorePoint(
                datetime.fromisoformat(str(p["time"]).replace("Z", "+00:00")),
                float(p["value"]),
                bool(p["drifted"]),
            )
            for p in mine
        ],
        test=str(mine[-1]["test"]),
        threshold=float(mine[-1]["limit"]),
    )


def drift_view(
    policy: Mapping[str, Any],
    profile: Profile | None,
    live: Mapping[str, Mapping[str, float]],
    runs: Sequence[Mapping[str, Any]] = (),
    score_history: Sequence[Mapping[str, Any]] = (),
) -> JsonObject:
    """Per feature (the prediction last): the reference histogram beside the live counts, the
    score and threshold of the last check, its scores over time (``score_history``: points of
    :func:`score_point`); the verdicts over time and the retrains they caused. Charts are SVG
    from :mod:`kubeloop.drift.charts`, the same as ``kubeloop drift --html``."""
    namespace, name = _meta(policy)
    status = _status(policy)
    scores = {s["feature"]: s for s in status.get("scores") or []}
    features = []
    names = [f.name for f in profile.all_features()] if profile else list(scores)
    names = sorted(names, key=lambda n: (n == PREDICTION_FEATURE, names.index(n)))
    for feature_name in names:
        score = scores.get(feature_name) or {}
        entry: JsonObject = {
            "name": feature_name,
            "label": "prediction" if feature_name == PREDICTION_FEATURE else feature_name,
            "test": score.get("test"),
            "score": score.get("score"),
            "threshold": score.get("threshold"),
            "alpha": score.get("alpha"),
            "pValue": score.get("pValue"),
            "drifted": score.get("drifted"),
            "kind": None,
            "bins": [],
            "chart": None,
            "timeline": _timeline(feature_name, score_history),
        }
        if profile is not None:
            feature = profile.feature(feature_name)
            labels = feature.bin_labels
            live_bins = live.get(feature_name) or {}
            entry["kind"] = feature.kind
            entry["bins"] = [
                {
                    "label": label,
                    "text": _bin_text(feature.kind, feature.edges, i, label),
                    "reference": int(feature.counts[i]),
                    "live": round(live_bins.get(label, 0.0)),
                }
                for i, label in enumerate(labels)
            ]
            entry["chart"] = feature_histogram(
                feature, [b["live"] for b in entry["bins"]], _verdict(score)
            )
        features.append(entry)
    history = [
        {
            **{k: h.get(k) for k in ("time", "drifted", "driftedShare", "samples", "retrain")},
            "report": report_link(h.get("report")),
        }
        for h in status.get("history") or []
    ]
    retrains = [
        run_summary(r, ())
        for r in sorted(runs, key=lambda r: r["metadata"].get("creationTimestamp", ""))
        if (r["metadata"].get("labels") or {}).get("kubeloop.io/driftpolicy") == name
        and r["metadata"].get("namespace") == namespace
    ]
    return {
        "namespace": namespace,
        "name": name,
        "target": ((policy.get("spec") or {}).get("targetRef") or {}).get("name", ""),
        "drifted": status.get("drifted"),
        "driftedShare": status.get("driftedShare"),
        "samples": status.get("samples"),
        "lastCheckTime": status.get("lastCheckTime"),
        "message": status.get("message") or "",
        "report": report_link(status.get("report")),
        "performance": performance_view(policy),
        "features": features,
        "history": history,
        "retrains": retrains,
        "lastRetrain": status.get("lastRetrain"),
    }


REPORT_SCHEMES = ("file://", "pvc://", "s3://", "gs://", "https://", "http://")
"""Schemes a drift report may be linked with (a javascript: or data: URI is not a link)."""


def report_link(uri: Any) -> str:
    """A status' report URI when it is one the page may link, else ``""``."""
    text = str(uri or "")
    return text if text.lower().startswith(REPORT_SCHEMES) else ""


def performance_view(policy: Mapping[str, Any]) -> JsonObject | None:
    """A policy with ``spec.performance``: its last check's live metric beside the reference,
    the worst value still accepted, the labels behind it and the verdict in words. None for a
    policy that watches its inputs."""
    spec = (policy.get("spec") or {}).get("performance")
    if spec is None:
        return None
    performance = _status(policy).get("performance") or {}
    metric = str(performance.get("metric") or spec.get("metric") or "")
    degraded = performance.get("degraded")
    min_labels = spec.get("minLabels", DEFAULT_MIN_LABELS)
    if degraded is None:
        labels = performance.get("labels")
        verdict = (
            "no check yet"
            if not performance
            else f"no verdict: {labels} labels, fewer than minLabels={min_labels}"
        )
    else:
        verdict = "degraded" if degraded else "healthy"
    return {
        "metric": metric,
        "lowerIsBetter": metric in LOWER_IS_BETTER,
        "live": performance.get("live"),
        "reference": performance.get("reference"),
        "limit": performance.get("limit"),
        "labels": performance.get("labels"),
        "minLabels": min_labels,
        "tolerance": spec.get("tolerance", DEFAULT_TOLERANCE),
        "degraded": degraded,
        "verdict": verdict,
    }


def _bin_text(kind: str, edges: Sequence[float], index: int, label: str) -> str:
    """A bin in words: ``<= 1.5``, ``(1.5, 3]``, ``> 3`` for numbers; the category itself."""
    if kind == "categorical":
        return "other" if label == "__other__" else label
    if not edges:
        return "all"
    if index == 0:
        return f"<= {edges[0]:.4g}"
    if index == len(edges):
        return f"> {edges[-1]:.4g}"
    return f"({edges[index - 1]:.4g}, {edges[index]:.4g}]"
