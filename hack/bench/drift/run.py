#!/usr/bin/env python3
"""Drift benchmark: kubeloop.drift against Evidently, alibi-detect and plain scipy, in one run.

The same 1,000,000 x 20 reference and current tables (16 numerical, 4 categorical columns; 5
columns shifted) go to every tool, each in its own process and virtualenv; the full per-feature
report is timed inside the process (``compute``: KS + PSI per numerical column and chi-squared
per categorical column for kubeloop and scipy; KS/chi-squared for the others), wall time and peak
RSS from outside (``os.wait4``). Repeats interleave the tools and the medians give the ratios.

    python hack/bench/drift/run.py --setup            # create the peers' virtualenvs once
    python hack/bench/drift/run.py                    # 1M rows, 3 repeats -> results.{json,md}
    python hack/bench/drift/run.py --rows 100000 --repeats 1 --tools kubeloop,scipy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KUBELOOP_CACHE", Path.home() / ".cache" / "kubeloop"))
VENVS = CACHE / "bench-venvs"

NUMERICAL = [f"num_{i}" for i in range(16)]
CATEGORICAL = [f"cat_{i}" for i in range(4)]
SHIFTED = ["num_1", "num_6", "num_11", "num_14", "cat_2"]
REFERENCE_MIX = [0.4, 0.3, 0.2, 0.1]
SHIFTED_MIX = [0.25, 0.25, 0.25, 0.25]

# tool -> (virtualenv name or None for this interpreter, peer script + arguments, requirements)
TOOLS: dict[str, tuple[str | None, list[str], list[str]]] = {
    "kubeloop": (None, ["kubeloop_peer.py", "1"], []),
    "kubeloop-2threads": (None, ["kubeloop_peer.py", "2"], []),
    # Not a drift tool: sorting both samples of every numerical column, the floor of exact KS.
    "sort-floor": (None, ["sort_floor_peer.py"], []),
    "scipy": ("drift-scipy", ["scipy_peer.py"], ["numpy", "scipy", "pyarrow"]),
    # alibi-detect 0.13 pins numpy<2; pyarrow 20+ needs numpy 2.
    "alibi-detect": ("drift-alibi", ["alibi_peer.py"], ["alibi-detect==0.13.0", "pyarrow<20"]),
    # Evidently 0.7 does not support pandas 3 yet.
    "evidently": (
        "drift-evidently",
        ["evidently_peer.py"],
        ["evidently==0.7.23", "pandas<3", "pyarrow"],
    ),
}
DEFAULT_TOOLS = ["kubeloop", "sort-floor", "scipy", "alibi-detect", "evidently"]
DATA_FORMAT = 2  # bump to regenerate cached tables
BASELINE = "kubeloop"


def make_tables(rows: int, data_dir: Path) -> None:
    """Write reference.parquet, current.parquet and meta.json (cached per row count)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta_path = data_dir / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("rows") == rows and meta.get("format") == DATA_FORMAT:
            return
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, seed, shifted in (("reference", 1, False), ("current", 2, True)):
        rng = np.random.default_rng(seed)
        columns: dict[str, np.ndarray] = {}
        for i, column in enumerate(NUMERICAL):
            scale = 1.0 + i
            # Half a standard deviation: a modest shift every tool should see.
            shift = 0.5 * scale if shifted and column in SHIFTED else 0.0
            if i % 4 == 3:
                columns[column] = np.exp(rng.normal(shift / scale, 1.0, rows)) * scale
            else:
                columns[column] = rng.normal(10.0 * i + shift, scale, rows)
        for column in CATEGORICAL:
            mix = SHIFTED_MIX if shifted and column in SHIFTED else REFERENCE_MIX
            columns[column] = rng.choice(4, size=rows, p=mix).astype(np.int64)
        # Uncompressed: decoding is not what is measured, and every tool reads the same file.
        pq.write_table(pa.table(columns), data_dir / f"{name}.parquet", compression="none")
    meta = {
        "format": DATA_FORMAT,
        "rows": rows,
        "numerical": NUMERICAL,
        "categorical": CATEGORICAL,
        "shifted": SHIFTED,
    }
    meta_path.write_text(json.dumps(meta, indent=2))


def setup_venvs(tools: list[str]) -> None:
    """Create each peer's virtualenv (skipped when it already imports)."""
    for tool in tools:
        venv, _script, requirements = TOOLS[tool]
        if venv is None:
            continue
        python = VENVS / venv / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENVS / venv)], check=True)
        print(f"installing {tool}: {' '.join(requirements)}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)


def interpreter(tool: str) -> Path:
    venv = TOOLS[tool][0]
    return Path(sys.executable) if venv is None else VENVS / venv / "bin" / "python"


def versions(tool: str) -> dict[str, str]:
    packages = {
        "kubeloop": ["numpy", "scipy"],
        "kubeloop-2threads": ["numpy", "scipy"],
        "sort-floor": ["numpy"],
        "scipy": ["numpy", "scipy"],
        "alibi-detect": ["alibi-detect", "numpy", "scipy"],
        "evidently": ["evidently", "pandas", "numpy", "scipy"],
    }[tool]
    code = (
        "import json, importlib.metadata as m; "
        f"print(json.dumps({{p: m.version(p) for p in {packages!r}}}))"
    )
    out = subprocess.run([str(interpreter(tool)), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()[-300:]}


def run_peer(tool: str, data_dir: Path, timeout: float) -> dict[str, Any]:
    """Run one peer; its JSON result plus wall time and peak RSS measured from outside."""
    python = interpreter(tool)
    if not python.exists():
        return {"tool": tool, "error": f"no virtualenv at {python.parent.parent}; run --setup"}
    env = {**os.environ, "DO_NOT_TRACK": "1", "PYTHONHASHSEED": "0"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(python), str(HERE / "peers" / TOOLS[tool][1][0]), str(data_dir), *TOOLS[tool][1][1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = started + timeout
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix every peer run so far).
    stdout_chunks: list[bytes] = []
    import threading

    def drain(stream: Any, sink: list[bytes]) -> None:
        sink.append(stream.read())

    stderr_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=drain, args=(process.stdout, stdout_chunks)),
        threading.Thread(target=drain, args=(process.stderr, stderr_chunks)),
    ]
    for reader in readers:
        reader.start()
    status, usage = 0, None
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.02)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    stdout = b"".join(stdout_chunks).decode()
    stderr = b"".join(stderr_chunks).decode()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {
            "tool": tool,
            "error": f"exit {process.returncode} after {wall:.1f}s: {stderr.strip()[-1500:]}",
        }
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = wall
    result["peak_rss_mib_outside"] = usage.ru_maxrss / 1024 if usage else None
    return result


def summarise(runs: dict[str, list[dict[str, Any]]], shifted: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for tool, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            summary[tool] = {"error": results[0]["error"] if results else "not run"}
            continue
        summary[tool] = {
            "compute_s": statistics.median(r["compute_s"] for r in ok),
            "wall_s": statistics.median(r["wall_s"] for r in ok),
            "peak_rss_mib": statistics.median(r["peak_rss_mib_outside"] for r in ok),
            "compute_runs_s": [round(r["compute_s"], 3) for r in ok],
            "phases_s": {k: round(v, 3) for k, v in ok[-1]["phases"].items()},
            # Median of every phase over the runs (Evidently's `convert` next to `compute`).
            "phase_medians_s": {
                phase: statistics.median(r["phases"][phase] for r in ok)
                for phase in ok[-1]["phases"]
                if all(phase in r["phases"] for r in ok)
            },
            "drifted": ok[-1]["drifted"],
            "drifted_bh": ok[-1]["drifted_bh"],
            "verdict_matches_truth": None
            if ok[-1].get("floor")
            else ok[-1]["drifted"] == sorted(shifted),
            "bh_verdict_matches_truth": None
            if ok[-1].get("floor")
            else ok[-1]["drifted_bh"] == sorted(shifted),
            "runs": len(ok),
        }
    base = summary.get(BASELINE, {})
    if "compute_s" in base:
        for row in summary.values():
            if "compute_s" in row:
                row["compute_ratio"] = row["compute_s"] / base["compute_s"]
                row["wall_ratio"] = row["wall_s"] / base["wall_s"]
                row["memory_ratio"] = row["peak_rss_mib"] / base["peak_rss_mib"]
    return summary


def agreement(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Largest differences of the per-feature numbers between kubeloop and each peer, per test."""
    last = {t: next((r for r in reversed(rs) if "error" not in r), None) for t, rs in runs.items()}
    ours = last.get(BASELINE)
    out: dict[str, Any] = {}
    if ours is None:
        return out
    for tool, theirs in last.items():
        if tool == BASELINE or theirs is None or theirs.get("floor"):
            continue
        row: dict[str, float] = {}
        for name, mine in ours["features"].items():
            other = theirs["features"].get(name)
            if other is None:
                continue
            for key in ("statistic", "p", "psi"):
                if mine.get(key) is None or other.get(key) is None:
                    continue
                label = f"{mine['test']} {key}"
                absolute = abs(mine[key] - other[key])
                relative = absolute / abs(other[key]) if other[key] else absolute
                row[f"{label} abs"] = max(row.get(f"{label} abs", 0.0), absolute)
                row[f"{label} rel"] = max(row.get(f"{label} rel", 0.0), relative)
        out[tool] = row
    return out


def _verdict(matches: bool | None, drifted: list[str]) -> str:
    if matches is None:
        return "-"
    return "yes" if matches else "no: " + ", ".join(drifted)


def _conversion_lines(summary: dict[str, Any]) -> list[str]:
    """For a tool that converts the data into its own dataset type first (Evidently), its
    statistics and that conversion side by side: `compute` in the table is the statistics."""
    base = summary.get(BASELINE, {}).get("compute_s")
    lines = []
    for tool, row in summary.items():
        phases = row.get("phase_medians_s", {})
        if "convert" not in phases or not base:
            continue
        convert, compute = phases["convert"], row["compute_s"]
        lines.append(
            f"{tool}: statistics (`compute`) {compute:.3f} s = {compute / base:.1f}x kubeloop; "
            f"its dataset conversion before them (`Dataset.from_pandas` of both frames) "
            f"{convert:.3f} s; both together {convert + compute:.3f} s = "
            f"{(convert + compute) / base:.1f}x kubeloop (medians)."
        )
    return [*lines, ""] if lines else []


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    s = report["summary"]
    lines = [
        "# Drift benchmark results",
        "",
        f"Generated by `hack/bench/drift/run.py` on {report['when']} at commit "
        f"{report['commit']} ({report['machine']}).",
        f"{report['rows']:,} rows x 20 columns (16 numerical, 4 categorical) reference vs current; "
        f"shifted: {', '.join(report['shifted'])}. Medians of {report['repeats']} interleaved "
        "repeats; ratios are peer / kubeloop (higher = kubeloop faster or smaller).",
        "",
        "| tool | compute s | ratio | wall s | ratio | peak RSS MiB | ratio | verdict = truth | "
        "with BH |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for tool, row in s.items():
        if "error" in row:
            lines.append(f"| {tool} | error: {row['error'][:200]} |||||||")
            continue
        lines.append(
            f"| {tool} | {row['compute_s']:.3f} | {row.get('compute_ratio', float('nan')):.1f}x "
            f"| {row['wall_s']:.2f} | {row.get('wall_ratio', float('nan')):.1f}x "
            f"| {row['peak_rss_mib']:.0f} | {row.get('memory_ratio', float('nan')):.2f}x "
            f"| {_verdict(row['verdict_matches_truth'], row['drifted'])} "
            f"| {_verdict(row['bh_verdict_matches_truth'], row['drifted_bh'])} |"
        )
    lines += [
        "",
        "compute = the per-feature report inside the process (data already in memory); wall = "
        "the whole process (interpreter start, imports, reading the Parquet files, report); "
        "peak RSS from `os.wait4`.",
        "",
        *_conversion_lines(s),
        "Per-run compute times (s): "
        + "; ".join(
            f"{t} {r.get('compute_runs_s')}" for t, r in s.items() if "compute_runs_s" in r
        ),
        "",
        "Numbers against kubeloop, largest difference over the columns (abs = absolute, rel = "
        "relative to the peer's value):",
        "",
        *(
            f"- {tool}: " + ", ".join(f"{k} {v:.1e}" for k, v in row.items())
            for tool, row in report["agreement"].items()
        ),
        "",
        "Versions: " + "; ".join(f"{t} {v}" for t, v in report["versions"].items()),
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tools", default=",".join(DEFAULT_TOOLS), help=f"comma-separated from {', '.join(TOOLS)}"
    )
    parser.add_argument("--setup", action="store_true", help="create the peers' virtualenvs")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per peer run")
    parser.add_argument("--out", type=Path, default=HERE, help="directory for results.{json,md}")
    args = parser.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tools {unknown}; known: {', '.join(TOOLS)}")
    if args.setup:
        setup_venvs(tools)
        return 0

    data_dir = CACHE / "bench-data" / f"drift-{args.rows}"
    make_tables(args.rows, data_dir)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    for repeat in range(args.repeats):
        # Rotate the order so no tool always runs first (cold page cache) or last.
        order = tools[repeat % len(tools) :] + tools[: repeat % len(tools)]
        for tool in order:
            result = run_peer(tool, data_dir, args.timeout)
            runs[tool].append(result)
            shown = result.get("error") or (
                f"compute {result['compute_s']:.3f}s wall {result['wall_s']:.2f}s "
                f"rss {result['peak_rss_mib_outside']:.0f} MiB drifted {result['drifted']}"
            )
            print(f"[{repeat + 1}/{args.repeats}] {tool:13s} {shown}", flush=True)

    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit or "unknown",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "rows": args.rows,
        "repeats": args.repeats,
        "shifted": SHIFTED,
        "summary": summarise(runs, SHIFTED),
        "agreement": agreement(runs),
        "versions": {t: versions(t) for t in tools},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=float))
    write_markdown(args.out / "results.md", report)
    print()
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
