"""Benchmark `kubeloop serve` against MLServer (default, tuned, batching) and KServe, in one run.

Same models (a 100-tree RandomForestClassifier and a LogisticRegression on 20 features,
trained once here and saved in each server's format), same single-row Open Inference
Protocol v2 request, same load generator (wrk, one thread, a Lua POST script) on 127.0.0.1
at concurrency 1, 8 and 64, same worker count for every server; the gRPC rows (ours and
MLServer's) load the same request as a ModelInferRequest with ghz. Reports req/s, p50/p99
latency and peak RSS (summed over each server's processes), and ratios against MLServer's
default and against the best tuned peer. Writes results.json and results.md next to this
file (or --out).

    python hack/bench/serve/run.py                 # full run: 10 s per cell
    python hack/bench/serve/run.py --duration 3    # quick look
    python hack/bench/serve/run.py --models xgb,lgbm --name results-boosters   # the boosters

The boosters (``xgb``: XGBClassifier, ``lgbm``: LGBMClassifier, 100 trees each on the same
data) are served by MLServer's own runtimes (mlserver-xgboost, mlserver-lightgbm) from the
same model files kubeloop stores natively inside model.skops: ``model.ubj`` (XGBoost UBJSON)
and ``model.txt`` (LightGBM's text model).

Peers live in their own virtualenvs under ~/.cache/kubeloop/bench-venvs (created on first
use from PyPI). The machine is shared: run when `uptime` shows little load, and repeat.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KUBELOOP_CACHE", Path.home() / ".cache" / "kubeloop"))
VENVS = CACHE / "bench-venvs"
CONCURRENCY = (1, 8, 64)
MODELS = ("rf", "lr")
BOOSTER_MODELS = ("xgb", "lgbm")
TITLES = {
    "rf": "RandomForestClassifier (100 trees)",
    "lr": "LogisticRegression",
    "xgb": "XGBClassifier (100 trees, max_depth 6)",
    "lgbm": "LGBMClassifier (100 trees, 31 leaves)",
}
# kubeloop-sklearn: our server with --no-fast-paths, i.e. scikit-learn's own predict, to show
# how much comes from batching and the HTTP stack alone.
# kubeloop-binary: the same request with binary tensor data (tritonclient's default form);
# kubeloop-grpc / mlserver-grpc: the Open Inference Protocol over gRPC. mlserver-batching is
# MLServer tuned with its own adaptive batching on (max_batch_size / max_batch_time, the same
# 64 rows / 2 ms as ours): the fair tuned peer; mlserver-grpc is that server over gRPC.
SERVERS = (
    "kubeloop", "kubeloop-binary", "kubeloop-grpc", "kubeloop-sklearn",
    "mlserver-default", "mlserver-tuned", "mlserver-batching", "mlserver-grpc", "kserve",
)  # fmt: skip
TUNED_PEERS = ("mlserver-tuned", "mlserver-batching", "kserve")
GRPC_SERVERS = ("kubeloop-grpc", "mlserver-grpc")
MLSERVER_BATCHING = {"max_batch_size": 64, "max_batch_time": 0.002}
PROTO = HERE.parents[2] / "operator" / "kubeloop" / "serving" / "oip" / "open_inference_grpc.proto"
GHZ_VERSION = "v0.120.0"


def sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def booster_versions() -> list[str]:
    """Our XGBoost and LightGBM, so MLServer's runtimes read the same native files with the
    same libraries (xgboost-cpu: the CPU-only wheel, as in our image)."""
    from importlib.metadata import version

    return [f"xgboost-cpu=={version('xgboost-cpu')}", f"lightgbm=={version('lightgbm')}"]


def venv_packages() -> dict[str, list[str]]:
    # The peers load pickles of our models, so they get the same scikit-learn.
    sk = f"scikit-learn=={sklearn_version()}"
    boost = booster_versions()
    return {
        "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22", sk, *boost],
        "mlserver-tuned": [
            "mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22", "httptools", sk, *boost,
        ],
        "kserve": ["kserve", "joblib", sk, *boost],
    }  # fmt: skip


# MLServer's XGBoost and LightGBM runtimes, installed without their dependencies: they ask for
# the `xgboost` distribution (the CUDA wheel, with NCCL), and `xgboost-cpu` above is the same
# library without the GPU parts.
NO_DEPS_PACKAGES = {
    "mlserver": ["mlserver-xgboost==1.7.1", "mlserver-lightgbm==1.7.1"],
    "mlserver-tuned": ["mlserver-xgboost==1.7.1", "mlserver-lightgbm==1.7.1"],
}


def venv_of(server: str) -> str:
    """The virtualenv a peer runs in."""
    if server == "kserve":
        return "kserve"
    return "mlserver" if server == "mlserver-default" else "mlserver-tuned"


def ensure_venvs(servers: list[str]) -> None:
    """Create the virtualenvs of the peers in ``servers`` (not of the others)."""
    needed = {venv_of(s) for s in servers if not s.startswith("kubeloop")}
    for name, packages in venv_packages().items():
        if name not in needed:
            continue
        python = VENVS / name / "bin" / "python"
        marker = VENVS / name / ".kubeloop-bench"
        no_deps = NO_DEPS_PACKAGES.get(name, [])
        wanted = " ".join([*packages, *(f"--no-deps {p}" for p in no_deps)])
        if python.exists() and marker.exists() and marker.read_text() == wanted:
            continue
        print(f"bench: creating venv {name}: {wanted}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        if no_deps:
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--no-deps", *no_deps], check=True
            )
        marker.write_text(wanted)


# --------------------------------------------------------------------------------------------
# Models


def _estimators(models: list[str]) -> dict[str, object]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    found: dict[str, object] = {}
    if "rf" in models:
        found["rf"] = RandomForestClassifier(n_estimators=100, random_state=0)
    if "lr" in models:
        found["lr"] = LogisticRegression(max_iter=2000)
    if "xgb" in models:
        import xgboost

        found["xgb"] = xgboost.XGBClassifier(n_estimators=100, max_depth=6, random_state=0)
    if "lgbm" in models:
        import lightgbm

        found["lgbm"] = lightgbm.LGBMClassifier(n_estimators=100, random_state=0, verbose=-1)
    return found


def _peer_files(
    name: str, estimator: object, directory: Path
) -> tuple[list[str], dict[str, object]]:
    """The files MLServer loads for this model and its model-settings.json content."""
    if name == "xgb":
        # The booster in XGBoost's UBJSON, as kubeloop stores it (plus the scikit-learn
        # wrapper's attribute XGBModel.save_model adds, so MLServer builds an XGBClassifier).
        estimator.save_model(directory / "model.ubj")  # type: ignore[attr-defined]
        return ["model.ubj"], {"implementation": "mlserver_xgboost.XGBoostModel",
                               "parameters": {"uri": "./model.ubj"}}  # fmt: skip
    if name == "lgbm":
        # LightGBM's text model, the same text kubeloop stores.
        estimator.booster_.save_model(directory / "model.txt")  # type: ignore[attr-defined]
        return ["model.txt"], {"implementation": "mlserver_lightgbm.LightGBMModel",
                               "parameters": {"uri": "./model.txt"}}  # fmt: skip
    return ["model.joblib"], {"implementation": "mlserver_sklearn.SKLearnModel",
                              "parameters": {"uri": "./model.joblib"}}  # fmt: skip


def train(workdir: Path, models: list[str]) -> dict[str, dict[str, str]]:
    """Train the models once; save model.skops (+sha256, profile) and the peers' copies."""
    import joblib
    import numpy as np
    from sklearn.datasets import make_classification

    from kubeloop.drift.profile import build_profile
    from kubeloop.training.artifacts import dump_model

    features, target = make_classification(
        n_samples=5000, n_features=20, n_informative=10, random_state=0
    )
    estimators = _estimators(models)
    out: dict[str, dict[str, str]] = {}
    row = np.random.default_rng(1).normal(size=(1, 20))
    for name, estimator in estimators.items():
        estimator.fit(features, target)  # type: ignore[attr-defined]
        directory = workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        # What the trainer writes: skops, the boosters in their native formats inside it.
        (directory / "model.skops").write_bytes(dump_model(estimator))
        digest = hashlib.sha256((directory / "model.skops").read_bytes()).hexdigest()
        profile = build_profile(
            {f"x{i}": features[:, i] for i in range(20)},
            prediction=estimator.predict(features),
            prediction_kind="categorical",
        )
        (directory / "profile.json").write_bytes(profile.to_json_bytes())
        joblib.dump(estimator, directory / "model.joblib")  # KServe's custom model loads it
        files, settings = _peer_files(name, estimator, directory)
        (directory / "model-settings.json").write_text(json.dumps({"name": name, **settings}))
        out[name] = {
            "dir": str(directory),
            "sha256": digest,
            "expected": str(int(estimator.predict(row)[0])),  # type: ignore[attr-defined]
            "peer_files": ",".join(files),
        }
    body = {
        "inputs": [
            {"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": row[0].tolist()}
        ]
    }
    (workdir / "body.json").write_text(json.dumps(body))
    # The same row as binary tensor data: a JSON header, then the 160 bytes of the row.
    raw = row.astype("<f8").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "input-0", "shape": [1, 20], "datatype": "FP64",
                 "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    (workdir / "body.bin").write_bytes(header + raw)
    (workdir / "body.bin.header-length").write_text(str(len(header)))
    return out


def grpc_request(model: str, workdir: Path) -> Path:
    """The benchmark row as a ModelInferRequest (ghz's JSON form), typed FP64 contents."""
    row = json.loads((workdir / "body.json").read_text())["inputs"][0]["data"]
    path = workdir / f"grpc-{model}.json"
    path.write_text(
        json.dumps(
            {
                "model_name": model,
                "inputs": [
                    {"name": "input-0", "datatype": "FP64", "shape": [1, 20],
                     "contents": {"fp64_contents": row}}
                ],
            }
        )
    )  # fmt: skip
    return path


# --------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    model: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    grpc_port: int = 0

    @property
    def infer_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{self.model}/infer"


def start_server(
    kind: str, model: str, info: dict[str, str], workdir: Path, workers: int
) -> Server:
    port = free_port()
    grpc_port = free_port()
    log = workdir / f"{kind}-{model}.log"
    env = {**os.environ}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cwd = None
    if kind.startswith("kubeloop"):
        # Every kubeloop row serves gRPC too, as ModelDeployment pods do (its RSS counts).
        command = [
            sys.executable, "-c", "from kubeloop.cli import main; main()", "serve",
            "--model-uri", info["dir"], "--sha256", info["sha256"], "--model-name", model,
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--grpc-port", str(grpc_port), "--log-level", "warning",
            *(["--no-fast-paths"] if kind == "kubeloop-sklearn" else []),
        ]  # fmt: skip
    elif kind.startswith("mlserver"):
        venv = venv_of(kind)
        repo = workdir / f"repo-{kind}-{model}"
        shutil.rmtree(repo, ignore_errors=True)
        (repo / model).mkdir(parents=True)
        for file in (*info["peer_files"].split(","), "model-settings.json"):
            shutil.copy(Path(info["dir"]) / file, repo / model / file)
        if kind in ("mlserver-batching", "mlserver-grpc"):
            model_settings = json.loads((repo / model / "model-settings.json").read_text())
            (repo / model / "model-settings.json").write_text(
                json.dumps({**model_settings, **MLSERVER_BATCHING})
            )
        settings: dict[str, object] = {
            "http_port": port,
            "grpc_port": grpc_port,
            "metrics_port": free_port(),
            "host": "127.0.0.1",
        }
        if kind == "mlserver-tuned":
            settings["parallel_workers"] = 0
        else:
            settings["parallel_workers"] = workers
        (repo / "settings.json").write_text(json.dumps(settings))
        command = [str(VENVS / venv / "bin" / "mlserver"), "start", str(repo)]
        cwd = repo
        if kind != "mlserver-default":
            # Tuned: one OpenMP thread per inference process, as kubeloop's workers run
            # (XGBoost and LightGBM otherwise start a thread per core in every predict call).
            env["OMP_NUM_THREADS"] = "1"
    elif kind == "kserve":
        command = [
            str(VENVS / "kserve" / "bin" / "python"), str(HERE / "kserve_model.py"),
            "--model_name", model, "--model_path", str(Path(info["dir"]) / "model.joblib"),
            "--http_port", str(port), "--grpc_port", str(free_port()),
            "--workers", str(workers),
        ]  # fmt: skip
    else:
        raise ValueError(kind)
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
    server = Server(kind, model, process, port, log, grpc_port)
    wait_until_serving(server, info["expected"], workdir / "body.json")
    return server


def post(url: str, body: bytes) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_serving(
    server: Server, expected: str, body_file: Path, timeout: float = 180
) -> None:
    """Ready means: a real inference request answers the expected class."""
    body = body_file.read_bytes()
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text()[-3000:]}")
        try:
            status, payload = post(server.infer_url, body)
            if status == 200:
                data = json.loads(payload)["outputs"][0]["data"]
                answer = float(data[0])
                if server.model == "lgbm" and server.name.startswith("mlserver"):
                    # MLServer's LightGBM runtime answers Booster.predict: P(class 1).
                    answer = float(answer > 0.5)
                if str(int(answer)) != expected:
                    raise RuntimeError(f"{server.name} answered {data}, expected {expected}")
                return
            last = f"{status} {payload[:200]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.25)
    stop_server(server)
    raise RuntimeError(f"{server.name} not serving after {timeout}s ({last})")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakRss:
    """Samples a process tree's RSS in the background; ``peak`` is the maximum seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(0.25)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# --------------------------------------------------------------------------------------------
# Load


@dataclass
class Cell:
    server: str
    model: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    peak_rss_mb: float = 0.0
    runs: list[float] = field(default_factory=list)


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(
    url: str, body_file: Path, concurrency: int, duration: float, header_length: str = ""
) -> dict[str, float]:
    environment = {**os.environ, "BODY_FILE": str(body_file), "HEADER_LENGTH": header_length}
    result = subprocess.run(
        [
            "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "10s",
            "-s", str(HERE / "post.lua"), url,
        ],
        capture_output=True, text=True, env=environment, check=True,
    )  # fmt: skip
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}


def ghz_binary() -> str | None:
    """ghz (a gRPC load generator, a Go module): on PATH, or installed with `go install`."""
    found = shutil.which("ghz")
    if found:
        return found
    local = CACHE / "bin" / "ghz"
    if not local.exists() and shutil.which("go"):
        subprocess.run(
            ["go", "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
            env={**os.environ, "GOBIN": str(local.parent)}, check=True,
        )  # fmt: skip
    return str(local) if local.exists() else None


def ghz(address: str, request_file: Path, concurrency: int, duration: float) -> dict[str, float]:
    """ModelInfer at ``concurrency`` for ``duration`` seconds over one HTTP/2 connection."""
    binary = ghz_binary()
    if binary is None:
        raise RuntimeError("ghz not found and no Go toolchain to install it")
    result = subprocess.run(
        [
            binary, "--insecure", "--proto", str(PROTO),
            "--call", "inference.GRPCInferenceService/ModelInfer",
            "--data-file", str(request_file), "-c", str(concurrency),
            "-z", f"{max(1, round(duration))}s", "--format", "json", address,
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout)
    percentiles = {p["percentage"]: p["latency"] / 1e6 for p in report["latencyDistribution"]}
    # When the duration ends ghz closes its connection under the calls still in flight (one
    # per concurrent caller, "use of closed network connection" on its own read): those are
    # the load generator's, not the server's errors.
    errors = sum(
        count
        for message, count in (report.get("errorDistribution") or {}).items()
        if "use of closed network connection" not in message and "code = Canceled" not in message
    )
    return {"rps": report["rps"], "p50_ms": percentiles[50], "p99_ms": percentiles[99],
            "errors": errors}  # fmt: skip


def load(server: Server, workdir: Path, concurrency: int, duration: float) -> dict[str, float]:
    """One load cell in the server's own protocol: JSON, binary tensor data or gRPC."""
    if server.name in GRPC_SERVERS:
        request = grpc_request(server.model, workdir)
        return ghz(f"127.0.0.1:{server.grpc_port}", request, concurrency, duration)
    if server.name == "kubeloop-binary":
        length = (workdir / "body.bin.header-length").read_text()
        return wrk(server.infer_url, workdir / "body.bin", concurrency, duration, length)
    return wrk(server.infer_url, workdir / "body.json", concurrency, duration)


def load_avg() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------------------------
# Report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def render(cells: list[Cell], meta: dict[str, object]) -> str:
    by = {(c.server, c.model, c.concurrency): c for c in cells}
    lines = [
        "# `kubeloop serve` vs MLServer and KServe",
        "",
        f"Run {meta['date']} on {meta['cpus']} CPUs (shared machine; 1-min load average "
        f"before/after: {meta['load_before']:.1f}/{meta['load_after']:.1f}). "
        f"{meta['workers']} worker(s) per server, wrk -t1, {meta['duration']} s per cell after "
        f"warm-up, {meta['repeats']} repeat(s) (median shown). Single-row v2 infer requests "
        "(FP64, 20 features). XGBoost/LightGBM peers: MLServer's own runtimes "
        "(mlserver-xgboost / mlserver-lightgbm 1.7.1) on the same native model files.",
        "",
        "Peers: MLServer 1.7.1 + mlserver-sklearn as installed (`parallel_workers` default), "
        "MLServer tuned (`parallel_workers=0` + httptools), MLServer batching (tuned + its "
        "adaptive batching: `max_batch_size` 64, `max_batch_time` 2 ms; `mlserver-grpc` is it "
        "over gRPC), KServe "
        f"{meta.get('kserve_version', '?')} custom `kserve.Model` (its documented path). "
        "Peak RSS is summed over every process of a server. `kubeloop-binary`: the same row "
        "as binary tensor data (wrk); `*-grpc`: ModelInfer with typed FP64 contents (ghz, one "
        "HTTP/2 connection); every kubeloop row also listens on gRPC, as its pods do.",
        "",
    ]
    for model in dict.fromkeys(c.model for c in cells):
        title = TITLES[model]
        lines += [
            f"## {title}",
            "",
            "| server | c | req/s | p50 ms | p99 ms | errors | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for server in SERVERS:
            for c in CONCURRENCY:
                cell = by.get((server, model, c))
                if cell is None:
                    continue
                lines.append(
                    f"| {server} | {c} | {cell.rps:,.0f} | {cell.p50_ms:.2f} | "
                    f"{cell.p99_ms:.2f} | {cell.errors} | {cell.peak_rss_mb:.0f} |"
                )
        lines += [
            "",
            "| c | kubeloop / MLServer default | kubeloop / best tuned peer (which) | "
            "p99 kubeloop vs best peer | RSS kubeloop vs MLServer default |",
            "|---:|---:|---:|---:|---:|",
        ]
        for c in CONCURRENCY:
            ours = by.get(("kubeloop", model, c))
            default = by.get(("mlserver-default", model, c))
            tuned = [by[(p, model, c)] for p in TUNED_PEERS if (p, model, c) in by]
            if ours is None or default is None or not tuned:
                continue
            best = max(tuned, key=lambda cell: cell.rps)
            lines.append(
                f"| {c} | {ratio(ours.rps, default.rps)} | {ratio(ours.rps, best.rps)} "
                f"({best.server}) | {ours.p99_ms:.2f} vs {best.p99_ms:.2f} ms | "
                f"{ours.peak_rss_mb:.0f} vs {default.peak_rss_mb:.0f} MB |"
            )
        lines += [
            "",
            "| c | kubeloop-grpc / mlserver-grpc | p99 gRPC kubeloop vs MLServer | "
            "kubeloop-binary / kubeloop (JSON) |",
            "|---:|---:|---:|---:|",
        ]
        for c in CONCURRENCY:
            ours_grpc = by.get(("kubeloop-grpc", model, c))
            peer_grpc = by.get(("mlserver-grpc", model, c))
            binary, json_cell = (
                by.get(("kubeloop-binary", model, c)),
                by.get(("kubeloop", model, c)),
            )
            if ours_grpc is None and binary is None:
                continue
            grpc_ratio = ratio(ours_grpc.rps, peer_grpc.rps) if ours_grpc and peer_grpc else "n/a"
            grpc_p99 = (
                f"{ours_grpc.p99_ms:.2f} vs {peer_grpc.p99_ms:.2f} ms"
                if ours_grpc and peer_grpc
                else "n/a"
            )
            binary_ratio = ratio(binary.rps, json_cell.rps) if binary and json_cell else "n/a"
            lines.append(f"| {c} | {grpc_ratio} | {grpc_p99} | {binary_ratio} |")
        lines.append("")
    lines += targets(by)
    return "\n".join(lines) + "\n"


def targets(by: dict[tuple[str, str, int], Cell]) -> list[str]:
    """The issue's targets, each marked met or not with its numbers."""
    checks: list[tuple[str, Callable[[], tuple[bool, str]]]] = []

    def vs_default(model: str, c: int, target: float) -> tuple[bool, str]:
        r = by[("kubeloop", model, c)].rps / by[("mlserver-default", model, c)].rps
        return r >= target, f"{r:.2f}x (target >= {target}x)"

    def vs_best(
        model: str,
        c: int,
        target: float,
        ours: str = "kubeloop",
        peers: tuple[str, ...] = TUNED_PEERS,
    ) -> tuple[bool, str]:
        present = [p for p in peers if (p, model, c) in by]
        if not present:
            raise KeyError(peers)  # not measured in this run: the target is left out
        best = max(present, key=lambda p: by[(p, model, c)].rps)
        r = by[(ours, model, c)].rps / by[(best, model, c)].rps
        return r >= target, f"{r:.2f}x vs {best} (target >= {target}x)"

    def p99(model: str, c: int) -> tuple[bool, str]:
        ours = by[("kubeloop", model, c)].p99_ms
        peers = {
            p: by[(p, model, c)].p99_ms
            for p in ("mlserver-default", *TUNED_PEERS)
            if (p, model, c) in by
        }
        if not peers:
            raise KeyError(model)
        worse = [p for p, v in peers.items() if ours > v]
        return not worse, f"{ours:.2f} ms; worse than: {', '.join(worse) or 'none'}"

    def rss(model: str) -> tuple[bool, str]:
        ours = max(by[("kubeloop", model, c)].peak_rss_mb for c in CONCURRENCY)
        peers = {
            p: max(by[(p, model, c)].peak_rss_mb for c in CONCURRENCY)
            for p in ("mlserver-default", *TUNED_PEERS)
            if all((p, model, c) in by for c in CONCURRENCY)
        }
        if not peers:
            raise KeyError(model)
        lowest = min(peers.values())
        return ours < lowest, f"{ours:.0f} MB vs lowest peer {lowest:.0f} MB"

    checks += [
        ("XGB vs best tuned peer at c=64 >= 1.5x", lambda: vs_best("xgb", 64, 1.5)),
        ("LGBM vs best tuned peer at c=64 >= 1.5x", lambda: vs_best("lgbm", 64, 1.5)),
        ("RF vs MLServer default at c=1 >= 1.5x", lambda: vs_default("rf", 1, 1.5)),
        ("RF vs MLServer default at c=64 >= 5x", lambda: vs_default("rf", 64, 5.0)),
        ("LR vs MLServer default at c=1 >= 3x", lambda: vs_default("lr", 1, 3.0)),
        ("LR vs MLServer default at c=64 >= 3x", lambda: vs_default("lr", 64, 3.0)),
        ("RF vs best tuned peer at c=64 >= 1.5x", lambda: vs_best("rf", 64, 1.5)),
        ("LR vs best tuned peer at c=64 >= 1.5x", lambda: vs_best("lr", 64, 1.5)),
        (
            "RF gRPC vs MLServer gRPC (batching) at c=64 >= 1.5x",
            lambda: vs_best("rf", 64, 1.5, "kubeloop-grpc", ("mlserver-grpc",)),
        ),
        (
            "LR gRPC vs MLServer gRPC (batching) at c=64 >= 1.5x",
            lambda: vs_best("lr", 64, 1.5, "kubeloop-grpc", ("mlserver-grpc",)),
        ),
    ]
    for model in (*MODELS, *BOOSTER_MODELS):
        for c in CONCURRENCY:
            checks.append(
                (
                    f"{model.upper()} p99 at c={c} no worse than every peer",
                    lambda m=model, cc=c: p99(m, cc),
                )
            )  # type: ignore[misc]
        checks.append((f"{model.upper()} peak RSS below every peer", lambda m=model: rss(m)))  # type: ignore[misc]
    lines = ["## Targets", "", "| target | result | met |", "|---|---|---|"]
    for label, check in checks:
        try:
            met, detail = check()
        except KeyError:
            continue
        lines.append(f"| {label} | {detail} | {'yes' if met else '**no**'} |")
    return [*lines, ""]


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="worker processes per server")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"of {','.join((*MODELS, *BOOSTER_MODELS))}"
    )
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--name", default="results", help="<out>/<name>.md and .json")
    parser.add_argument("--workdir", type=Path, default=CACHE / "bench-serve")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench: wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    servers = [s for s in args.servers.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    if any(not s.startswith("kubeloop") for s in servers):
        ensure_venvs(servers)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    info = train(args.workdir, models)
    meta: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_before": load_avg(),
        "workers": args.workers,
        "duration": args.duration,
        "repeats": args.repeats,
        "sklearn": sklearn_version(),
    }
    if "kserve" in servers:
        meta["kserve_version"] = subprocess.run(
            [str(VENVS / "kserve" / "bin" / "python"), "-c",
             "import importlib.metadata as m; print(m.version('kserve'))"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    samples: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    rss: dict[tuple[str, str], int] = {}
    # Repeats go round every server before the next, so a burst of load on the shared
    # machine hits all servers alike instead of one.
    for repeat in range(args.repeats):
        for model in models:
            for kind in servers:
                server = start_server(kind, model, info[model], args.workdir, args.workers)
                sampler = PeakRss(server.process.pid)
                try:
                    load(server, args.workdir, 8, args.warmup)
                    for c in CONCURRENCY:
                        result = load(server, args.workdir, c, args.duration)
                        samples.setdefault((kind, model, c), []).append(result)
                        print(
                            f"bench: [{repeat + 1}/{args.repeats}] {kind:17s} {model} c={c:<3d}"
                            f" {result['rps']:9.0f} req/s  p50 {result['p50_ms']:7.2f} ms"
                            f"  p99 {result['p99_ms']:7.2f} ms  errors {result['errors']:.0f}"
                            f"  load {load_avg():.1f}",
                            flush=True,
                        )
                finally:
                    peak = sampler.stop()
                    stop_server(server)
                rss[(kind, model)] = max(rss.get((kind, model), 0), peak)
    meta["load_after"] = load_avg()
    cells = []
    for (kind, model, c), runs in samples.items():
        cells.append(
            Cell(
                server=kind,
                model=model,
                concurrency=c,
                rps=statistics.median(r["rps"] for r in runs),
                p50_ms=statistics.median(r["p50_ms"] for r in runs),
                p99_ms=statistics.median(r["p99_ms"] for r in runs),
                errors=int(sum(r["errors"] for r in runs)),
                peak_rss_mb=rss[(kind, model)] / 2**20,
                runs=[r["rps"] for r in runs],
            )
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "cells": [asdict(c) for c in cells]}, indent=2) + "\n"
    )
    report = render(cells, meta)
    (args.out / f"{args.name}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
