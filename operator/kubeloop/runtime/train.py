"""``kubeloop train``: the program a TrainingRun's Job runs, and a laptop can run too.

    kubeloop train --spec trainingrun.yaml --run-name churn-1 --storage-uri file:///tmp/models

Reads the spec (``--spec FILE`` or env ``KUBELOOP_TRAININGRUN_SPEC`` holding JSON), trains,
evaluates, writes ``<storageUri>/<model>/<run>/{model.skops,model.sha256,profile.json,
report.json}``, prints a summary to stdout and the compact JSON result to the termination
message path. Exit codes: 0 Succeeded, 2 DataValidationFailed, 3 GateFailed,
4 TrainingFailed (final: a retry gives the same answer), 5 TrainingFailed that a retry may fix
(data or storage out of reach), 64 command-line usage error (see :mod:`kubeloop.training.result`).

Sweep trial mode: with ``JOB_COMPLETION_INDEX`` set (an Indexed Job) and a ``spec.sweep``
grid, the run trains only that combination and writes under ``.../trials/<index>/``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kubeloop.runtime import termination
from kubeloop.runtime.usage import UsageError, UsageParser

EXIT_USAGE = 64
ENV_SPEC = "KUBELOOP_TRAININGRUN_SPEC"
ENV_RUN_NAME = "KUBELOOP_RUN_NAME"
ENV_PREFIXES = "KUBELOOP_ALLOWED_ESTIMATOR_PREFIXES"
ENV_TRIAL_INDEX = "JOB_COMPLETION_INDEX"
ENV_PVC_ROOT = "KUBELOOP_PVC_MOUNT_ROOT"
# Installed in the image for other uses, never used by a training run (see _prepare_process).
NEVER_TRAINED_WITH_MODULES = frozenset({"pytest", "_pytest"})


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``kubeloop train``."""
    parser = UsageParser(
        prog="kubeloop train",
        description="Train, evaluate and store a model from a TrainingRun spec.",
    )
    parser.add_argument("--spec", metavar="FILE",
                        help=f"TrainingRun spec, JSON or YAML (default: env {ENV_SPEC})")
    parser.add_argument("--run-name", help=f"run name, a path segment (default: env {ENV_RUN_NAME})")
    parser.add_argument("--storage-uri", help="output root; overrides spec.output.storageUri")
    parser.add_argument("--champion-uri", help="the serving model's model.skops (or its run dir)")
    parser.add_argument("--champion-sha256", help="sha256 the champion artifact must have")
    parser.add_argument("--termination-log", metavar="PATH",
                        help=f"where to write the JSON result (default: {termination.DEFAULT_PATH} "
                             "when writable)")
    parser.add_argument("--allowed-estimator-prefix", action="append", default=None,
                        metavar="PREFIX",
                        help=f"allowed import-path prefix, repeatable (default: env {ENV_PREFIXES} "
                             "comma-separated, else sklearn.)")
    parser.add_argument("--trial-index", type=int,
                        help=f"sweep combination to train (default: env {ENV_TRIAL_INDEX})")
    parser.add_argument("--pvc-mount-root",
                        help=f"where pvc://<claim>/ is mounted (default: env {ENV_PVC_ROOT} or "
                             "/mnt/pvc)")
    parser.add_argument("--validate-only", "--dry-run", dest="validate_only", action="store_true",
                        help="load and validate the data and check the estimator; train nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress logs on stderr")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``kubeloop train``; returns the exit code."""
    environment = dict(os.environ if env is None else env)
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        run_name = args.run_name or environment.get(ENV_RUN_NAME)
        if not run_name:
            raise UsageError(f"a run name is required: --run-name or env {ENV_RUN_NAME}")
        if "/" in run_name or run_name in {".", ".."}:
            raise UsageError(f"run name {run_name!r} must be one path segment (no '/')")
        trial_index = args.trial_index
        if trial_index is None and environment.get(ENV_TRIAL_INDEX, "").strip():
            try:
                trial_index = int(environment[ENV_TRIAL_INDEX])
            except ValueError:
                raise UsageError(f"{ENV_TRIAL_INDEX}={environment[ENV_TRIAL_INDEX]!r} is not "
                                  "an integer") from None
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"kubeloop train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    _prepare_process()
    from kubeloop.training.result import render_result
    from kubeloop.training.spec import SpecError, load_spec_file, parse_spec_text
    from kubeloop.training.trainer import TrainingRequest, run_training, summary

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    termination_log = termination.resolve_path(args.termination_log)

    try:
        if args.spec:
            spec = load_spec_file(args.spec)
        elif environment.get(ENV_SPEC):
            spec = parse_spec_text(environment[ENV_SPEC])
        else:
            raise SpecError(f"no spec given: pass --spec FILE or set env {ENV_SPEC}")
    except SpecError as exc:
        from kubeloop.training.result import EXIT_CODES, REASON_SPEC_INVALID, TrainingResult

        result = TrainingResult(status="TrainingFailed", exit_code=EXIT_CODES["TrainingFailed"],
                                reason=REASON_SPEC_INVALID, message=str(exc), trial=trial_index)
        termination.write(termination_log, render_result(result), "kubeloop train")
        print(f"kubeloop train: TrainingFailed (exit {result.exit_code}, {result.reason})\n"
              f"  message    {result.message}")
        return result.exit_code

    request = TrainingRequest(
        spec=spec,
        run_name=run_name,
        storage_uri=args.storage_uri,
        champion_uri=args.champion_uri,
        champion_sha256=args.champion_sha256,
        allowed_prefixes=_allowed_prefixes(args.allowed_estimator_prefix, environment),
        trial_index=trial_index,
        validate_only=args.validate_only,
        env=environment,
        pvc_mount_root=args.pvc_mount_root or environment.get(ENV_PVC_ROOT) or "/mnt/pvc",
    )
    outcome = run_training(request)
    _track(outcome, request, environment)
    termination.write(termination_log, render_result(outcome.result), "kubeloop train")
    print(summary(outcome), flush=True)
    return outcome.result.exit_code


def _track(outcome: Any, request: Any, environment: Mapping[str, str]) -> None:
    """Log the outcome to MLflow when the operator turned tracking on (:mod:`.tracking`)."""
    from kubeloop.runtime import tracking

    target = tracking.target_from_env(environment)
    if target is None or request.validate_only:
        return
    from kubeloop.training.data import storage_options_for

    result = outcome.result
    options = storage_options_for(result.uri, environment) if result.uri else {}
    run_id, error = tracking.log_result(target, result, outcome.report, request.run_name, options)
    outcome.result = result.model_copy(update={"mlflow_run_id": run_id, "tracking_error": error})


def _prepare_process() -> None:
    """Set up this process before its first heavy import; saves ~1 CPU-s per run.

    - pytest is left out (:mod:`kubeloop.runtime._absent`): skops imports
      ``sklearn.utils._testing``, which imports pytest (~100 modules) when it is installed,
      and treats it as optional; a training run never uses it.
    - ``scipy.special`` is imported first, before pydantic, pandas and scikit-learn. Importing
      ``skops.io`` builds its trusted-type table, and names each of scipy's ~230 ufuncs (they
      have no ``__module__``) by scanning ``sys.modules`` in import order for the first module
      holding it; with scipy.special at position ~1100 (where scikit-learn's import puts it)
      that is ~250,000 ``getattr`` calls, ~0.4 s; at ~250 it is a fifth of that. The table
      comes out the same; scipy.special is imported by scikit-learn in every run anyway.
    - At exit (an atexit handler) every object is frozen with ``gc.freeze``, so the
      interpreter's teardown does not run full garbage collections over the objects of the
      ~2,000 modules scikit-learn, pandas and skops leave behind (~0.5 CPU-s). All that is
      skipped is collecting cyclic garbage at exit, whose memory the OS takes back anyway:
      every artifact is written, fsynced and closed long before, the other atexit handlers
      (logging's flush among them) still run, and stdout/stderr are still flushed.
    """
    from kubeloop.runtime._absent import leave_out

    leave_out(NEVER_TRAINED_WITH_MODULES)
    with contextlib.suppress(ImportError):  # a missing scipy is reported where it is needed
        import scipy.special  # noqa: F401
    atexit.unregister(gc.freeze)  # once, however often main() runs in one process
    atexit.register(gc.freeze)


def _allowed_prefixes(flags: list[str] | None, env: Mapping[str, str]) -> tuple[str, ...]:
    from kubeloop.training.estimators import DEFAULT_ALLOWED_PREFIXES, normalise_prefixes

    if flags:
        return normalise_prefixes(flags)
    if env.get(ENV_PREFIXES, "").strip():
        return normalise_prefixes(env[ENV_PREFIXES].split(","))
    return DEFAULT_ALLOWED_PREFIXES

