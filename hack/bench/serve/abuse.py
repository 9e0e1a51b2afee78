"""Abuse benchmark of `kubeloop serve` (issue 14): normal clients' latency under attack.

One `kubeloop serve --workers 1` process (default limits: 16 MiB bodies, 10 s header and 30 s
body deadlines) serves a 100-tree RandomForestClassifier on 20 features. Normal clients (4
keep-alive connections, each sending one-row /predict requests back to back) are measured
twice for --duration seconds:

* quiet: nothing else;
* attacked: at the same time, in a separate process,
  - 300 slow clients: half trickle a request's headers, half announce a 100 kB body and
    trickle it, one byte a second; each one that is cut reconnects at once;
  - one large-body sender: POST /predict bodies of 33 MB (as in the issue), one after the
    other, as fast as the server lets it.

Reports the normal clients' p50/p99 in both phases and their ratio (target: attacked p99 at
most 2x the quiet p99), how many slow connections the server cut and how long they had been
open, the large-body sender's attempts and the server's count of 413 answers, and the
server's peak RSS (VmHWM). Writes abuse.json and abuse.md next to this file (or --out).

On Linux with 2 or more CPUs, the server and the normal clients are pinned to CPU 0 and the
attackers to CPU 1 (in both phases): a real attacker's CPU is not the server's, and on a small
machine an unpinned attacker would measure its own CPU use, not the server's defences.

    python hack/bench/serve/abuse.py                 # 40 s per phase
    python hack/bench/serve/abuse.py --duration 5    # quick look

The machine is shared: run it when `uptime` shows little load, and repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LARGE_BODY = 33 * 1000 * 1000
SLOW_CLIENTS = 300
NORMAL_CLIENTS = 4


def train(directory: Path) -> list[float]:
    """Store a forest as the trainer does; return one row to predict."""
    import numpy as np
    import skops.io
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from kubeloop.drift.profile import build_profile

    features, target = make_classification(n_samples=5000, n_features=20, random_state=0)
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1)
    model.fit(features, target)
    directory.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, directory / "model.skops")
    digest = hashlib.sha256((directory / "model.skops").read_bytes()).hexdigest()
    (directory / "model.sha256").write_text(digest)
    profile = build_profile(
        {f"f{i}": features[:, i] for i in range(20)},
        prediction=model.predict(features),
        prediction_kind="categorical",
    )
    (directory / "profile.json").write_bytes(profile.to_json_bytes())
    row: list[float] = np.asarray(features[0], dtype=float).tolist()
    return row


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(directory: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    digest = (directory / "model.sha256").read_text().strip()
    command = [
        sys.executable, "-c", "from kubeloop.cli import main; main()", "serve",
        "--model-uri", str(directory), "--sha256", digest, "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--grpc-port", "0", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=lambda: pin(SERVER_CPU)
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n")
                if b" 200 " in sock.recv(1024):
                    return process
        except OSError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server not ready:\n{log.read_text()}")


SERVER_CPU, ATTACKER_CPU = 0, 1


def pin(cpu: int) -> None:
    """Run this process on one CPU (when the machine has more than one)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def count_413(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        text = b""
        while data := sock.recv(65536):
            text += data
    return sum(
        int(float(line.rsplit(b" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(b"kubeloop_serve_requests_total{") and b'code="413"' in line
    )


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# -- normal clients ---------------------------------------------------------------------------


async def _normal_client(port: int, body: bytes, until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    while time.monotonic() < until:
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"a normal request failed: {head!r}")
    writer.close()


def measure_normal(port: int, row: list[float], seconds: float) -> list[float]:
    body = json.dumps({"instances": [row]}).encode()
    latencies: list[float] = []

    async def run() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(_normal_client(port, body, until, latencies) for _ in range(NORMAL_CLIENTS))
        )

    asyncio.run(run())
    return latencies


# -- attackers (their own process) --------------------------------------------------------------


async def _slow_client(port: int, kind: str, stop: float, cuts: list[float]) -> None:
    while time.monotonic() < stop:
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            if kind == "body":
                writer.write(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
            message = b"GET /v2/health/live HTTP/1.1\r\nx-slow: " + b"a" * 10_000
            for byte in message:
                if time.monotonic() >= stop or reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1024), timeout=1.0)
                    break  # the server answered (408) or closed
                except TimeoutError:
                    continue
            if time.monotonic() < stop:
                cuts.append(time.monotonic() - opened)
        except OSError:
            cuts.append(time.monotonic() - opened)
        finally:
            writer.close()


async def _large_body_sender(port: int, stop: float, answers: dict[str, int]) -> None:
    chunk = b"[" + b"0," * 32767 + b"0"
    head = (
        b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(LARGE_BODY).encode() + b"\r\n\r\n"
    )
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            sent = 0
            status = "no answer"
            while sent < LARGE_BODY:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
                if reader._buffer:  # type: ignore[attr-defined]  # the server answered early
                    break
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            status = line.split(b" ")[1].decode() if line else "closed"
        except (OSError, TimeoutError):
            status = "reset"
        answers[status] = answers.get(status, 0) + 1
        writer.close()


def attack(port: int, seconds: float, out: Any) -> None:
    pin(ATTACKER_CPU)
    cuts: list[float] = []
    answers: dict[str, int] = {}

    async def run() -> None:
        stop = time.monotonic() + seconds
        await asyncio.gather(
            *(
                _slow_client(port, "head" if i % 2 else "body", stop, cuts)
                for i in range(SLOW_CLIENTS)
            ),
            _large_body_sender(port, stop, answers),
        )

    asyncio.run(run())
    out.send({"cuts": cuts, "large_body_answers": answers})


# -- report -------------------------------------------------------------------------------------


def summary(latencies: list[float]) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(q[98] * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=40.0, help="seconds per phase")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kubeloop-abuse-"))
    row = train(workdir / "model")
    port = free_port()
    server = start_server(workdir / "model", port, workdir / "serve.log")
    pin(SERVER_CPU)  # the normal clients share the server's CPU, in both phases
    try:
        measure_normal(port, row, 2.0)  # warm-up
        quiet = measure_normal(port, row, args.duration)
        receiver, sender = multiprocessing.Pipe(duplex=False)
        # The attack runs 3 s longer on each side of the measurement, so it is in full swing.
        attacker = multiprocessing.Process(target=attack, args=(port, args.duration + 6, sender))
        attacker.start()
        time.sleep(3)
        attacked = measure_normal(port, row, args.duration)
        report = receiver.recv()
        attacker.join()
        peak = peak_rss(server.pid)
        refused = count_413(port)
        alive = server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    cuts = report["cuts"]
    result = {
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "normal_clients": NORMAL_CLIENTS,
        "slow_clients": SLOW_CLIENTS,
        "quiet": summary(quiet),
        "attacked": summary(attacked),
        "slow_connections_cut": len(cuts),
        "slow_connection_open_s": {
            "median": round(statistics.median(cuts), 2) if cuts else None,
            "max": round(max(cuts), 2) if cuts else None,
        },
        "large_body_attempts": report["large_body_answers"],
        "large_body_413s_counted_by_server": refused,
        "server_peak_rss_mib": round(peak / 2**20, 1),
        "server_alive": alive,
    }
    result["p99_ratio"] = round(result["attacked"]["p99_ms"] / result["quiet"]["p99_ms"], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "abuse.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "abuse.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    q, a = r["quiet"], r["attacked"]
    return f"""# `kubeloop serve` under attack (hack/bench/serve/abuse.py)

{r["normal_clients"]} normal keep-alive clients sending one-row `/predict` requests back to back
for {r["duration_s"]} s, quiet and then while {r["slow_clients"]} slow clients (a byte a second:
half headers, half bodies; reconnecting when cut) and one sender of 33 MB bodies attack, on
one `kubeloop serve --workers 1` with default limits (server and normal clients on CPU 0,
attackers on CPU 1). {r["cpus"]} CPUs, load average
{", ".join(f"{x:.1f}" for x in r["load_average"])} at the end (a shared machine).

| phase | requests | p50 ms | p99 ms | max ms |
| --- | ---: | ---: | ---: | ---: |
| quiet | {q["requests"]} | {q["p50_ms"]} | {q["p99_ms"]} | {q["max_ms"]} |
| attacked | {a["requests"]} | {a["p50_ms"]} | {a["p99_ms"]} | {a["max_ms"]} |

- p99 attacked / quiet: **{r["p99_ratio"]}x** (target: at most 2x).
- Slow connections cut by the server: {r["slow_connections_cut"]}, open for a median
  {r["slow_connection_open_s"]["median"]} s, at most {r["slow_connection_open_s"]["max"]} s
  (header deadline 10 s, body deadline 30 s).
- 33 MB bodies sent: {sum(r["large_body_attempts"].values())} attempts ({r["large_body_attempts"]}
  as the sender saw them: the server answers 413 from Content-Length and closes, so the
  sender, still writing, mostly sees a reset); the server counted
  {r["large_body_413s_counted_by_server"]} answers 413.
- Server peak RSS: {r["server_peak_rss_mib"]} MiB; still serving afterwards: {r["server_alive"]}.
"""


if __name__ == "__main__":
    sys.exit(main())
