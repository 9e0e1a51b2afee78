"""Benchmark: `kubeloop train` against a bare fit+predict script on the same data.

Both run as subprocesses, interleaved (the order alternates every repetition so drift in the
machine's load hits both alike), on one synthetic parquet table, with the same estimator and
params and one native thread each. Reported: wall time of each, the ratio trainer/bare per
repetition (median), the trainer's phase timings (from its report.json) and the bare
script's, so the overhead is attributed to validation, fingerprint, profile, serialisation,
writing and start-up.

    python hack/bench/train/run.py                  # 200k rows, 5 repetitions, HGB
    python hack/bench/train/run.py --reps 3 --rows 50000 --estimator rf

Writes results.json and results.md next to this file (or --out DIR). Target: overhead <= 15 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET_OVERHEAD = 0.15
ESTIMATORS = {
    "hgb": ("sklearn.ensemble.HistGradientBoostingClassifier",
            {"max_iter": 100, "early_stopping": False, "random_state": 0}),
    "rf": ("sklearn.ensemble.RandomForestClassifier",
           {"n_estimators": 50, "n_jobs": 1, "random_state": 0}),
}
# Phases of the trainer that the bare script does too, the rest is overhead.
SHARED_PHASES = ("load", "split", "fit")


def _single_thread_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    env.pop("JOB_COMPLETION_INDEX", None)
    return env


def _trainer_command() -> list[str]:
    """The ``kubeloop`` console script of this interpreter, as the image's entry point runs it.

    Not ``shutil.which("kubeloop")``: on a pyenv machine that is a bash shim that runs
    ``pyenv exec`` (~0.1 CPU-s, ~0.15 s wall per run), which the bare script, started with
    ``sys.executable``, does not pay and no container has.
    """
    script = Path(sysconfig.get_path("scripts")) / "kubeloop"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "train"]
    return [sys.executable, "-c",
            "import sys; from kubeloop.cli import main; main(['train', *sys.argv[1:]])"]


def _timed_run(command: list[str], env: dict[str, str], timeout: float) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the child) and stdout of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if completed.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({completed.returncode}):\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}")
    return wall, cpu, completed.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), nargs="+", default=["hgb", "rf"],
                        help="one or more; default: both")
    parser.add_argument("--timeout", type=float, default=600.0, help="per subprocess, seconds")
    parser.add_argument("--no-like-for-like", dest="like_for_like", action="store_false",
                        help="skip the third run per repetition: the bare script with the "
                             "trainer's exit-time gc.freeze (see bare_fit_predict.py)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    from kubeloop.training.data import make_synthetic

    env = _single_thread_env()
    work = Path(tempfile.mkdtemp(prefix="kubeloop-bench-train-"))
    summaries = []
    try:
        data_path = work / "data.parquet"
        make_synthetic(rows=args.rows, features=args.features, seed=1).to_parquet(data_path)
        for key in args.estimator:
            print(f"== {key}: {ESTIMATORS[key][0]} {json.dumps(ESTIMATORS[key][1])}", flush=True)
            pairs = _measure(key, data_path, work / key, env, args)
            summaries.append(_summarise(pairs, args, *ESTIMATORS[key]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summaries, indent=2) + "\n")
    markdown = _markdown_all(summaries)
    (args.out / "results.md").write_text(markdown)
    print(markdown)
    return 0


def _measure(key: str, data_path: Path, work: Path, env: dict[str, str],
             args: argparse.Namespace) -> list[dict[str, Any]]:
    estimator, params = ESTIMATORS[key]
    work.mkdir(parents=True)
    spec = {
        "model": {"name": "bench", "estimator": estimator, "params": params,
                  "task": "classification"},
        "data": {"source": str(data_path), "target": "target",
                 "split": {"testFraction": 0.2, "seed": 42}},
        "validation": {"minRows": 1000, "maxMissingFraction": 0.0, "minClassFraction": 0.05},
        "evaluation": {"metric": "accuracy"},
    }
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    bare = [sys.executable, str(HERE / "bare_fit_predict.py"), str(data_path), key,
            json.dumps(params)]
    commands = {"bare": bare, "bareFrozenExit": [*bare, "--freeze-gc-at-exit"]}
    sides = ["bare", "trainer", *(["bareFrozenExit"] if args.like_for_like else [])]
    pairs: list[dict[str, Any]] = []
    for rep in range(args.reps + 1):  # repetition 0 warms caches and is discarded
        run_name = f"rep-{rep}"
        trainer = [*_trainer_command(), "--spec", str(spec_path), "--run-name", run_name,
                   "--storage-uri", str(work / "models"), "--quiet",
                   "--termination-log", str(work / f"{run_name}.termination")]
        # Every side goes first equally often (two sides: alternate; three: rotate).
        order = sides[rep % len(sides):] + sides[:rep % len(sides)]
        walls: dict[str, float] = {}
        cpus: dict[str, float] = {}
        outs: dict[str, str] = {}
        for who in order:
            wall, cpu, outs[who] = _timed_run(commands.get(who, trainer), env, args.timeout)
            walls[who] = wall
            cpus[who] = cpu
        bare_out = outs["bare"]
        report = json.loads((work / "models" / "bench" / run_name / "report.json").read_text())
        bare_result = json.loads(bare_out.strip().splitlines()[-1])
        pair = {
            "rep": rep, "order": list(order), "trainerWall": walls["trainer"],
            "bareWall": walls["bare"], "ratio": walls["trainer"] / walls["bare"],
            "trainerCpu": cpus["trainer"], "bareCpu": cpus["bare"],
            "cpuRatio": cpus["trainer"] / cpus["bare"],
            "trainerTimings": report["timings"], "bareTimings": bare_result["timings"],
            "trainerCpuTimings": report["cpuTimings"],
            "bareCpuTimings": bare_result["cpuTimings"],
            "trainerAccuracy": report["evaluation"]["metrics"]["accuracy"],
            "bareAccuracy": bare_result["accuracy"],
        }
        if "bareFrozenExit" in walls:
            pair |= {
                "bareFrozenExitWall": walls["bareFrozenExit"],
                "bareFrozenExitCpu": cpus["bareFrozenExit"],
                "ratioLikeForLike": walls["trainer"] / walls["bareFrozenExit"],
                "cpuRatioLikeForLike": cpus["trainer"] / cpus["bareFrozenExit"],
            }
        print(f"rep {rep}{' (warm-up, discarded)' if rep == 0 else ''}: trainer "
              f"{walls['trainer']:.2f}s  bare {walls['bare']:.2f}s  ratio {pair['ratio']:.3f}"
              f"  (CPU {cpus['trainer']:.2f}s / {cpus['bare']:.2f}s = {pair['cpuRatio']:.3f})"
              + (f"; like-for-like bare {walls['bareFrozenExit']:.2f}s, ratio "
                 f"{pair['ratioLikeForLike']:.3f}, CPU {pair['cpuRatioLikeForLike']:.3f}"
                 if "bareFrozenExit" in walls else ""),
              flush=True)
        if rep > 0:
            pairs.append(pair)
    return pairs


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _summarise(pairs: list[dict[str, Any]], args: argparse.Namespace, estimator: str,
               params: dict[str, Any]) -> dict[str, Any]:
    trainer_phases = sorted({k for p in pairs for k in p["trainerTimings"]})
    bare_phases = sorted({k for p in pairs for k in p["bareTimings"]})
    trainer_median = {k: _median([p["trainerTimings"].get(k, 0.0) for p in pairs]) for k in trainer_phases}
    bare_median = {k: _median([p["bareTimings"].get(k, 0.0) for p in pairs]) for k in bare_phases}
    # Start-up: interpreter + imports + spec parsing, i.e. wall time outside the timed phases.
    trainer_startup = _median([p["trainerWall"] - sum(p["trainerTimings"].values()) for p in pairs])
    bare_startup = _median([p["bareWall"] - sum(p["bareTimings"].values()) + p["bareTimings"]["import"]
                            for p in pairs])
    trainer_cpu = {k: _median([p["trainerCpuTimings"].get(k, 0.0) for p in pairs])
                   for k in sorted({k for p in pairs for k in p["trainerCpuTimings"]})}
    bare_cpu = {k: _median([p["bareCpuTimings"].get(k, 0.0) for p in pairs])
                for k in sorted({k for p in pairs for k in p["bareCpuTimings"]})}
    # CPU outside the timed phases: interpreter start, imports, spec parsing.
    trainer_cpu["startup (outside phases)"] = _median([
        p["trainerCpu"] - sum(v for k, v in p["trainerCpuTimings"].items() if k != "process")
        for p in pairs])
    bare_cpu["startup (interpreter + imports)"] = _median([
        p["bareCpu"] - sum(v for k, v in p["bareCpuTimings"].items() if k != "import")
        for p in pairs])
    ratios = [p["ratio"] for p in pairs]
    median_ratio = _median(ratios)
    like_for_like = None
    if pairs and all("ratioLikeForLike" in p for p in pairs):
        lfl = [p["ratioLikeForLike"] for p in pairs]
        like_for_like = {
            "peer": "bare script that also freezes gc at exit (bare_fit_predict.py "
                    "--freeze-gc-at-exit), as the trainer does",
            "bareWallMedian": _median([p["bareFrozenExitWall"] for p in pairs]),
            "bareCpuMedian": _median([p["bareFrozenExitCpu"] for p in pairs]),
            "ratioMedian": _median(lfl),
            "ratioMin": min(lfl),
            "ratioMax": max(lfl),
            "cpuRatioMedian": _median([p["cpuRatioLikeForLike"] for p in pairs]),
            "meetsTarget": _median(lfl) - 1.0 <= TARGET_OVERHEAD,
        }
    return {
        "benchmark": "kubeloop train vs bare fit+predict",
        "rows": args.rows, "features": args.features, "repetitions": len(pairs),
        "estimator": estimator, "params": params, "threads": 1,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg": list(os.getloadavg())},
        "trainerWallMedian": _median([p["trainerWall"] for p in pairs]),
        "bareWallMedian": _median([p["bareWall"] for p in pairs]),
        "ratioMedian": median_ratio,
        "ratioMin": min(ratios) if ratios else 0.0,
        "ratioMax": max(ratios) if ratios else 0.0,
        "ratioOfMedians": _median([p["trainerWall"] for p in pairs]) / max(_median([p["bareWall"] for p in pairs]), 1e-9),
        "cpuRatioMedian": _median([p["cpuRatio"] for p in pairs]),
        "trainerCpuMedian": _median([p["trainerCpu"] for p in pairs]),
        "bareCpuMedian": _median([p["bareCpu"] for p in pairs]),
        "overheadMedian": median_ratio - 1.0,
        "targetOverhead": TARGET_OVERHEAD,
        "meetsTarget": median_ratio - 1.0 <= TARGET_OVERHEAD,
        "sameAccuracy": all(abs(p["trainerAccuracy"] - p["bareAccuracy"]) < 1e-12 for p in pairs),
        "trainerPhasesMedian": {**trainer_median, "startup (outside phases)": trainer_startup},
        "barePhasesMedian": {**bare_median, "startup (interpreter + imports)": bare_startup},
        "trainerCpuPhasesMedian": trainer_cpu,
        "bareCpuPhasesMedian": bare_cpu,
        "likeForLike": like_for_like,
        "pairs": pairs,
    }


def _markdown_all(summaries: list[dict[str, Any]]) -> str:
    head = ["# `kubeloop train` vs a bare fit+predict script", "",
            "| estimator | wall ratio (median) | CPU ratio (median) | overhead target 15 % "
            "| like for like: wall / CPU ratio, target |",
            "|---|---:|---:|---|---|"]
    for summary in summaries:
        lfl = summary.get("likeForLike")
        head.append(
            f"| `{summary['estimator'].rsplit('.', 1)[1]}` | {summary['ratioMedian']:.3f} | "
            f"{summary['cpuRatioMedian']:.3f} | {'met' if summary['meetsTarget'] else 'NOT met'} "
            "(wall) | "
            + (f"{lfl['ratioMedian']:.3f} / {lfl['cpuRatioMedian']:.3f}, "
               f"{'met' if lfl['meetsTarget'] else 'NOT met'} |" if lfl else "not measured |"))
    return "\n".join(head) + "\n\n" + "\n".join(_markdown(s) for s in summaries)


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"## {summary['estimator'].rsplit('.', 1)[1]}",
        "",
        f"{summary['rows']:,} rows x {summary['features']} features (synthetic, parquet), "
        f"`{summary['estimator']}` {json.dumps(summary['params'])}, one native thread each, "
        f"{summary['repetitions']} interleaved repetitions after one discarded warm-up; "
        f"{summary['machine']['cpus']} CPUs shared with other work (load average at the end "
        f"{', '.join(f'{x:.1f}' for x in summary['machine']['loadavg'])}).",
        "",
        "| | median wall (s) |",
        "|---|---:|",
        f"| kubeloop train | {summary['trainerWallMedian']:.2f} |",
        f"| bare fit+predict | {summary['bareWallMedian']:.2f} |",
        f"| **ratio trainer / bare (median of per-repetition ratios)** | **{summary['ratioMedian']:.3f}** |",
        f"| ratio range | {summary['ratioMin']:.3f} - {summary['ratioMax']:.3f} |",
        f"| ratio of medians | {summary['ratioOfMedians']:.3f} |",
        f"| CPU seconds (user+sys), trainer / bare | {summary['trainerCpuMedian']:.2f} / "
        f"{summary['bareCpuMedian']:.2f} |",
        f"| CPU-time ratio (median per repetition; less sensitive to other load) | "
        f"{summary['cpuRatioMedian']:.3f} |",
        "",
        f"Overhead {summary['overheadMedian']:+.1%} against a target of <= "
        f"{summary['targetOverhead']:.0%}: **{'met' if summary['meetsTarget'] else 'NOT met'}**. "
        f"Same holdout accuracy in both: {'yes' if summary['sameAccuracy'] else 'NO'}.",
        "",
    ]
    lfl = summary.get("likeForLike")
    if lfl:
        lines += [
            f"Like for like, against the {lfl['peer']}: median {lfl['bareWallMedian']:.2f} s, "
            f"{lfl['bareCpuMedian']:.2f} CPU-s; wall ratio **{lfl['ratioMedian']:.3f}** "
            f"(range {lfl['ratioMin']:.3f} - {lfl['ratioMax']:.3f}), CPU ratio "
            f"**{lfl['cpuRatioMedian']:.3f}**: target "
            f"**{'met' if lfl['meetsTarget'] else 'NOT met'}** (wall).",
            "",
        ]
    lines += [
        "### Where the time goes (medians, seconds)",
        "",
        "| phase | trainer wall | bare wall | trainer CPU | bare CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    trainer = summary["trainerPhasesMedian"]
    bare = summary["barePhasesMedian"]
    trainer_cpu = summary["trainerCpuPhasesMedian"]
    bare_cpu = summary["bareCpuPhasesMedian"]
    pairs = [("startup (outside phases)", "startup (interpreter + imports)"), ("load", "load"),
             ("validate", None), ("fingerprint", None), ("split", "split"), ("fit", "fit"),
             ("evaluate", "predict"), ("profile", None), ("serialise", None), ("write", None),
             ("writeReport", None)]
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    for trainer_key, bare_key in pairs:
        label = trainer_key if bare_key in (None, trainer_key) else f"{trainer_key} / {bare_key}"
        if trainer_key.startswith("startup"):
            # Whatever is outside the timed phases: interpreter start, imports, teardown.
            label = "outside the phases: start-up, imports (bare) and interpreter exit"
        lines.append(
            f"| {label} | {cell(trainer.get(trainer_key))} | "
            f"{cell(bare.get(bare_key) if bare_key else None)} | "
            f"{cell(trainer_cpu.get(trainer_key))} | "
            f"{cell(bare_cpu.get(bare_key) if bare_key else None)} |"
        )
    lines += ["", "Trainer `evaluate` = predict_proba on the holdout, labels from it, all four metrics; "
              "bare `predict` = predict only. Trainer `serialise` = import skops.io (without its walk "
              "through every scikit-learn module: kubeloop.runtime.skops_io) + dump + sha256.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
