"""``kubeloop serve``: verify, load and serve a model; supervise worker processes.

Start-up order: parse settings (CLI over ``KUBELOOP_SERVE_*`` env) -> fetch the artifact and
check its sha256 *before* deserialising anything -> check its types against the allowlist ->
serve. With one worker the server runs in this process. With N workers this process becomes
a small supervisor: it stages the verified bytes in a private directory, sets up the shared
metrics directory, starts N workers that each bind the port with SO_REUSEPORT (the kernel
spreads connections across them), forwards SIGTERM to them and restarts any that crash.

Shutdown (SIGTERM): readiness answers 503 at once, requests keep being served for
``--shutdown-delay-seconds`` so load balancers stop sending, then the listener closes and
in-flight requests (including queued batches) are answered before the process exits 0.

Exit codes: 0 clean shutdown, 2 bad settings, 3 sha256 mismatch, 4 model unusable. On 3 and 4
the reason (one line) is also written to the container's termination message
(``--termination-log``, default /dev/termination-log when writable), where the operator reads it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kubeloop.runtime import termination

if TYPE_CHECKING:
    from kubeloop.serving.app import ServeApp
    from kubeloop.serving.model import ModelArtifact
    from kubeloop.serving.settings import ServeSettings

log = logging.getLogger("kubeloop.serve")

EXIT_OK = 0
EXIT_BAD_SETTINGS = 2
#: Most characters of a refusal written to the termination message (Kubernetes keeps 4096 bytes).
MAX_REFUSAL_CHARS = 1024


def build_parser() -> argparse.ArgumentParser:
    """Options of ``kubeloop serve``; every one also reads ``KUBELOOP_SERVE_<NAME>``."""
    parser = argparse.ArgumentParser(
        prog="kubeloop serve",
        description="Serve a scikit-learn model stored by `kubeloop train` (Open Inference "
        "Protocol v2, /predict, /feedback, /metrics). Every option can also be set with "
        "the environment variable KUBELOOP_SERVE_<OPTION> (e.g. KUBELOOP_SERVE_SHA256).",
        epilog="exit codes: 0 clean shutdown, 2 bad settings, 3 sha256 mismatch, "
        "4 model unusable (missing, unreadable, untrusted types)",
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add("--model-uri", help="run directory or model.skops (path, file://, s3://, ...)")
    add("--sha256", help="expected sha256 of model.skops (the content of model.sha256)")
    add("--insecure-skip-verify", action="store_true", help="serve without checking sha256")
    add("--model-name", help="name in the v2 API and in metrics (default: model)")
    add("--profile-uri", help="reference profile (default: profile.json next to the model)")
    add("--host", help="address to listen on (default: 0.0.0.0)")
    add("--port", type=int, help="port to listen on (default: 8080)")
    add("--grpc-port", type=int, help="also serve gRPC (Open Inference Protocol) here (0: no)")
    add("--workers", type=int, help="worker processes (default: CPU count)")
    add("--max-batch-size", type=int, help="most rows merged into one model call (64)")
    add("--max-batch-latency-ms", type=float, help="longest wait to fill a batch (2)")
    add("--track", choices=["stable", "canary"], help="metrics label of this deployment")
    add("--shadow-url", help="challenger server to mirror requests to")
    add("--shadow-percent", type=float, help="share of requests to mirror, 0-100")
    add("--feedback-capacity", type=int, help="recent predictions kept for /feedback")
    add("--feedback-max-bytes", type=int, help="their byte budget per worker (64 MiB)")
    add("--feedback-max-age-seconds", type=float, help="oldest labelled prediction (3600 s)")
    add("--max-body-bytes", type=int, help="largest request body; more is 413 (16 MiB)")
    add("--max-buffered-body-bytes", type=int, help="bodies held at once per worker (64 MiB)")
    add("--max-request-rows", type=int, help="most rows per request; more is 413 (100000)")
    add("--max-concurrent-requests", type=int, help="requests per worker; more is 503 (256)")
    add("--max-queued-rows", type=int, help="rows waiting for the model; more is 503 (200000)")
    add("--retry-after-seconds", type=int, help="Retry-After of an overload 503 (1)")
    add("--header-timeout-seconds", type=float, help="deadline for a request's headers (10)")
    add("--body-timeout-seconds", type=float, help="deadline for a request's body (30)")
    add("--keep-alive-timeout-seconds", type=float, help="idle keep-alive connection (30)")
    add("--max-header-bytes", type=int, help="largest request head; more is 431 (65536)")
    add("--metrics-port", type=int, help="serve /metrics on this port only (default: --port)")
    add("--shutdown-delay-seconds", type=float, help="seconds of 503 readiness after SIGTERM")
    add("--drain-timeout-seconds", type=float, help="longest wait for in-flight requests")
    add(
        "--no-fast-paths",
        dest="fast_paths",
        action="store_false",
        help="always call the estimator's own predict (no direct forest/linear paths)",
    )
    add("--log-level", choices=["debug", "info", "warning", "error"])
    add(
        "--termination-log",
        metavar="PATH",
        help=f"where a refusal (exit 3 or 4) is written in one line (default: "
        f"{termination.DEFAULT_PATH} when writable)",
    )
    return parser


def load_settings(argv: Sequence[str]) -> ServeSettings:
    """Settings from the command line, falling back to the environment."""
    return _parse(argv)[0]


def _parse(argv: Sequence[str]) -> tuple[ServeSettings, Path | None]:
    """The settings, and where a refusal is reported (not a setting of the server itself)."""
    from kubeloop.serving.settings import ServeSettings

    given = vars(build_parser().parse_args(list(argv)))
    flag = given.pop("termination_log", None)
    return ServeSettings(**given), termination.resolve_path(flag)


def write_refusal(path: Path | None, error: BaseException) -> None:
    """The reason the server refuses its model, in one bounded line, for the operator."""
    line = " ".join(str(error).split())[:MAX_REFUSAL_CHARS]
    termination.write(path, line.encode(), "kubeloop serve")


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "settings"
        option = "--" + field.replace("_", "-") if item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {field} ({option}): {message}" if option else f"  {message}")
    return "invalid settings:\n" + "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Entry point of ``kubeloop serve``; returns the process exit code."""
    try:
        settings, termination_log = _parse(argv)
    except ValidationError as exc:
        print(f"kubeloop serve: {_describe(exc)}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except SystemExit as exc:  # argparse already printed the problem
        return int(exc.code or 0)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    _leave_out_never_served()
    from kubeloop.serving.model import ModelArtifactError, fetch_artifact

    try:
        artifact = fetch_artifact(
            settings.model_uri,
            None if settings.insecure_skip_verify else settings.sha256,
            settings.profile_uri,
        )
    except ModelArtifactError as exc:
        log.error("refusing to serve: %s", exc)
        write_refusal(termination_log, exc)
        return exc.exit_code
    _leave_out_unneeded(artifact.model_bytes)
    if settings.insecure_skip_verify:
        log.warning(
            "serving %s WITHOUT sha256 verification (sha256 %s)",
            artifact.model_uri,
            artifact.sha256,
        )
    else:
        log.info("verified %s (sha256 %s)", artifact.model_uri, artifact.sha256)
    # Handed over in a box so that the runner, not this frame, holds the last reference to
    # the artifact's bytes and can drop them once the model is loaded or staged.
    box = [artifact]
    del artifact
    if settings.workers == 1:
        return _serve_in_process(settings, box, termination_log)
    return _supervise(settings, box, termination_log)


def _leave_out_never_served() -> None:
    """Serve as if pyarrow, pytest, rich and charset_normalizer were not installed.

    The image has them for the trainer, the CLI and the tests; libraries the server uses
    import them only because they are there (pandas -> pyarrow ~33 MB, skops ->
    sklearn.utils._testing -> pytest ~6 MB; see ``kubeloop.serving.inputs``). Each importer
    treats its module as optional, so an absent module is a configuration they support (a
    ``None`` in sys.modules would not be). Called first thing, in the supervisor and in every
    spawned worker.
    """
    from kubeloop.runtime._absent import leave_out
    from kubeloop.serving.inputs import NEVER_SERVED_MODULES

    leave_out(NEVER_SERVED_MODULES)


def _leave_out_unneeded(model_bytes: bytes) -> None:
    """After the bytes are fetched, before scikit-learn is imported: pandas too, if unused.

    scikit-learn imports pandas only if it can (~30 MB per worker); a model needs it only
    when it takes DataFrames (see ``kubeloop.serving.inputs.needs_pandas``).
    """
    from kubeloop.runtime._absent import leave_out
    from kubeloop.serving.inputs import modules_to_leave_out

    wanted = modules_to_leave_out(model_bytes)
    leave_out(wanted)
    log.info(
        "serving without %s (installed, but not needed for this model)",
        ", ".join(sorted(n for n in wanted if n not in sys.modules)),
    )


# --------------------------------------------------------------------------------------------
# One server process


def _version() -> str:
    from kubeloop import __version__

    return __version__


class _EarlyStop:
    """Remembers a stop signal that arrives before uvicorn has installed its own handlers.

    Loading a model takes seconds; a pod deleted meanwhile must neither die half-way (exit
    -15) nor, once its socket is bound, drop the connections waiting in its backlog: a stop
    before the socket is bound ends the process cleanly, one after it starts the drain as
    soon as uvicorn runs.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, self._record)

    def _record(self, sig: int, frame: FrameType | None) -> None:
        self.signal = sig


def _limit_threads() -> None:
    # Parallelism comes from worker processes; BLAS/OpenMP threads would only compete.
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def _unix_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _run_server(
    app: ServeApp, settings: ServeSettings, sockets: list[socket.socket], early: _EarlyStop
) -> int:
    import gc

    import uvicorn

    from kubeloop.serving.connection import DeadlineProtocol

    class DrainingServer(uvicorn.Server):
        """uvicorn, with readiness flipped first and the listener kept open for a delay."""

        drain_started: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Not calling super(): it re-raises the signal after shutdown, which would turn a
            # clean drain into death by SIGTERM (exit code -15).
            if self.drain_started is None:
                self.drain_started = time.monotonic()
                app.begin_drain()
                log.info(
                    "signal %s: readiness is now 503; closing in %.1fs, then draining",
                    signal.Signals(sig).name,
                    settings.shutdown_delay_seconds,
                )
            elif self.should_exit:
                self.force_exit = True
            else:
                self.should_exit = True

        async def on_tick(self, counter: int) -> bool:
            if early.signal is not None and self.drain_started is None:
                self.handle_exit(early.signal, None)  # asked to stop while starting
            if (
                self.drain_started is not None
                and time.monotonic() - self.drain_started >= settings.shutdown_delay_seconds
            ):
                self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=DeadlineProtocol.configured(
            settings.header_timeout_seconds,
            settings.body_timeout_seconds,
            settings.keep_alive_timeout_seconds,
            settings.max_header_bytes,
        ),
        lifespan="on",
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_seconds),
        server_header=False,
        date_header=False,
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_seconds)),
    )
    server = DrainingServer(config)
    # The model and its arrays live for the whole process: keep them out of GC passes.
    gc.collect()
    gc.freeze()
    server.run(sockets=sockets)
    return EXIT_OK if server.started else 4


def _build_app(
    settings: ServeSettings, artifact: ModelArtifact, siblings: list[str] | None = None
) -> ServeApp:
    from kubeloop.serving.app import ServeApp, build_state

    return ServeApp(build_state(settings, artifact, _version(), siblings))


def _serve_in_process(
    settings: ServeSettings, box: list[ModelArtifact], termination_log: Path | None = None
) -> int:
    early = _EarlyStop()
    from kubeloop.serving.model import ModelArtifactError, trusted_types

    _limit_threads()
    try:
        artifact = box.pop()
        trusted_types(artifact.model_bytes)
        app = _build_app(settings, artifact)
        del artifact  # the loaded model is all we need from here on
    except ModelArtifactError as exc:
        log.error("refusing to serve: %s", exc)
        write_refusal(termination_log, exc)
        return exc.exit_code
    if early.signal is not None:
        log.info("stopped before serving (%s)", signal.Signals(early.signal).name)
        return EXIT_OK
    sockets = [_listen(settings.host, settings.port, reuse_port=False)]
    if settings.metrics_port is not None:
        sockets.append(_listen(settings.host, settings.metrics_port, reuse_port=False))
    log.info("serving %r on %s:%d (1 worker)", settings.model_name, settings.host, settings.port)
    return _run_server(app, settings, sockets, early)


# --------------------------------------------------------------------------------------------
# Several worker processes


def _worker_main(
    env: dict[str, str],
    index: int,
    sockets_dir: str,
    workers: int,
    log_level: str,
    termination_log: str | None = None,
) -> None:
    """Body of one worker process (spawned, so it starts from a clean interpreter)."""
    early = _EarlyStop()
    os.environ.update(env)
    _leave_out_never_served()
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    from kubeloop.serving.model import ModelArtifactError, fetch_artifact, trusted_types
    from kubeloop.serving.settings import ServeSettings

    settings = ServeSettings()
    _limit_threads()
    siblings = [str(Path(sockets_dir) / f"worker-{i}.sock") for i in range(workers) if i != index]
    try:
        artifact = fetch_artifact(settings.model_uri, settings.sha256, settings.profile_uri)
        _leave_out_unneeded(artifact.model_bytes)
        trusted_types(artifact.model_bytes)
        app = _build_app(settings, artifact, siblings)
        del artifact
    except ModelArtifactError as exc:
        log.error("worker %d refusing to serve: %s", index, exc)
        write_refusal(Path(termination_log) if termination_log else None, exc)
        sys.exit(exc.exit_code)
    if early.signal is not None:
        log.info("worker %d stopped before serving (%s)", index, signal.Signals(early.signal).name)
        sys.exit(EXIT_OK)
    own = Path(sockets_dir) / f"worker-{index}.sock"
    own.unlink(missing_ok=True)
    sockets = [
        _listen(settings.host, settings.port, reuse_port=True),
        _unix_listener(str(own)),
    ]
    if settings.metrics_port is not None:
        sockets.append(_listen(settings.host, settings.metrics_port, reuse_port=True))
    sys.exit(_run_server(app, settings, sockets, early))


def _stage(artifact: ModelArtifact, directory: Path) -> tuple[str, str | None]:
    """Write the verified bytes where workers load them, so a remote store is read once."""
    from kubeloop.serving.model import MODEL_FILE, PROFILE_FILE

    model_path = directory / MODEL_FILE
    model_path.write_bytes(artifact.model_bytes)
    profile_path = None
    if artifact.profile is not None:
        profile_path = directory / PROFILE_FILE
        profile_path.write_bytes(artifact.profile.to_json_bytes())
    return str(model_path), str(profile_path) if profile_path else None


def _supervise(
    settings: ServeSettings, box: list[ModelArtifact], termination_log: Path | None = None
) -> int:
    """Stage the verified artifact, run N workers, forward signals, restart crashed workers.

    This process never loads the model (nor scikit-learn): workers do, and a worker that
    cannot (untrusted types, unreadable file) makes the whole server exit with its code.
    """
    import multiprocessing

    from kubeloop.serving.metrics import MULTIPROC_ENV

    workdir = Path(tempfile.mkdtemp(prefix="kubeloop-serve-"))
    own_metrics_dir = MULTIPROC_ENV not in os.environ
    metrics_dir = os.environ.get(MULTIPROC_ENV) or str(workdir / "metrics")
    Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    for stale in Path(metrics_dir).glob("*.db"):
        stale.unlink()
    artifact = box.pop()
    model_path, profile_path = _stage(artifact, workdir)
    staged = settings.model_copy(
        update={
            "model_uri": model_path,
            "profile_uri": profile_path,
            "sha256": artifact.sha256,
            "insecure_skip_verify": False,
        }
    )
    del artifact
    env = {**staged.to_env(), MULTIPROC_ENV: metrics_dir}
    if profile_path is None:
        env.pop("KUBELOOP_SERVE_PROFILE_URI", None)
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the spawned workers
    context = multiprocessing.get_context("spawn")

    def start(index: int) -> Any:
        process = context.Process(
            target=_worker_main,
            args=(
                env, index, str(workdir), settings.workers, settings.log_level,
                str(termination_log) if termination_log else None,
            ),
            name=f"kubeloop-serve-worker-{index}",
        )
        process.start()
        return process

    stopping = False
    processes: list[Any] = []
    told: set[int] = set()  # workers a stop was forwarded to

    def forward(sig: int, again: bool) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None and (again or process.pid not in told):
                told.add(process.pid)
                os.kill(process.pid, sig)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        forward(sig, again=True)  # a repeated signal escalates, as it would without us

    # Handlers before the workers: a stop that arrives while they start is forwarded, not
    # fatal to this process; a worker started just after it is told once the loop is done.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    for index in range(settings.workers):
        processes.append(start(index))
    if stopping:
        forward(signal.SIGTERM, again=False)
    log.info(
        "serving %r on %s:%d (%d workers, metrics in %s)",
        settings.model_name,
        settings.host,
        settings.port,
        settings.workers,
        metrics_dir,
    )
    exit_code = EXIT_OK
    started_at = time.monotonic()
    try:
        while True:
            alive = [p for p in processes if p.is_alive()]
            if stopping and not alive:
                break
            for index, process in enumerate(processes):
                if process.is_alive() or stopping:
                    continue
                code = process.exitcode
                _forget_worker_metrics(process.pid)
                if code in (3, 4) and time.monotonic() - started_at < 60:
                    log.error("worker %d could not start (exit %s); stopping", index, code)
                    exit_code = int(code or 4)
                    on_signal(signal.SIGTERM, None)
                    break
                log.warning("worker %d exited with %s; restarting it", index, code)
                processes[index] = start(index)
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            process.join(timeout=settings.drain_timeout_seconds + 5)
        # A worker told to stop while it was still starting (no handlers of its own yet)
        # ends by the signal's default action: it served nothing, so that is a clean stop.
        failed = [
            p.exitcode for p in processes
            if p.exitcode not in (0, None)
            and not (p.pid in told and p.exitcode in (-signal.SIGTERM, -signal.SIGINT))
        ]
        if exit_code == EXIT_OK and failed:
            exit_code = int(failed[0])
        shutil.rmtree(workdir, ignore_errors=True)
        if own_metrics_dir:
            os.environ.pop(MULTIPROC_ENV, None)
    return exit_code


def _forget_worker_metrics(pid: int | None) -> None:
    """Drop a dead worker's live-gauge files (its counters stay, as they must)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
