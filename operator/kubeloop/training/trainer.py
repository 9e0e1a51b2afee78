"""One training run from spec to stored artifacts: the sequence, and nothing but the sequence.

load → validate → fingerprint → split → fit → evaluate (and the champion, on the same
holdout) → gates → profile → serialise → verify (load it back with the model server's own
loader) → write (report.json last). Each step is a function of the modules beside this one;
this module strings them together, times them, and turns every way a run can end into one
:class:`~kubeloop.training.result.TrainingResult`.
"""

from __future__ import annotations

import logging
import platform
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np
import orjson

from kubeloop.training import artifacts
from kubeloop.training.result import (
    EXIT_CODES,
    EXIT_UNAVAILABLE,
    REASON_CHAMPION_UNAVAILABLE,
    REASON_DATA_UNAVAILABLE,
    REASON_ESTIMATOR_NOT_ALLOWED,
    REASON_FIT_FAILED,
    REASON_GATE_FAILED,
    REASON_SPEC_INVALID,
    REASON_STORAGE_FAILED,
    REASON_SUCCEEDED,
    REASON_VALIDATION_FAILED,
    Status,
    TrainingResult,
    ValidationFailure,
)
from kubeloop.training.spec import TrainingRunSpec
from kubeloop.trust.estimators import DEFAULT_ALLOWED_PREFIXES
from kubeloop.trust.run_directory import TRIALS_DIR

log = logging.getLogger("kubeloop.train")

REPORT_FORMAT_VERSION = 1
# Probability-based metrics: a model without predict_proba cannot be gated on them.
PROBABILITY_METRICS = frozenset({"roc_auc", "log_loss"})
_VERSIONED_LIBRARIES = (
    "kubeloop",
    "scikit-learn",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "skops",
    "fsspec",
    # The boosters' native formats are read by these libraries (None when not installed).
    "xgboost-cpu",
    "xgboost",
    "lightgbm",
)


@dataclass(frozen=True)
class TrainingRequest:
    """Everything one run needs, already read from the command line and environment."""

    spec: TrainingRunSpec
    run_name: str
    storage_uri: str | None = None  # overrides spec.output.storageUri
    champion_uri: str | None = None
    champion_sha256: str | None = None
    allowed_prefixes: tuple[str, ...] = DEFAULT_ALLOWED_PREFIXES
    trial_index: int | None = None
    validate_only: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    pvc_mount_root: str = "/mnt/pvc"


@dataclass
class TrainingOutcome:
    """The result for the operator, the report as written, and the trained model."""

    result: TrainingResult
    report: dict[str, Any] | None = None
    model: Any = None
    timings: dict[str, float] = field(default_factory=dict)


class _Stop(Exception):
    """Ends the run early with a finished result."""

    def __init__(self, result: TrainingResult) -> None:
        super().__init__(result.message)
        self.result = result


def trial_params(spec: TrainingRunSpec, index: int) -> dict[str, Any]:
    """``model.params`` overlaid with the ``index``-th sweep combination (see SweepSpec)."""
    if spec.sweep is None or not spec.sweep.grid:
        raise ValueError(
            f"trial index {index} given (JOB_COMPLETION_INDEX) but spec.sweep.grid is empty"
        )
    combinations = spec.sweep.combinations()
    if not 0 <= index < len(combinations):
        raise ValueError(
            f"trial index {index} is outside the sweep grid's {len(combinations)} combinations"
        )
    return {**spec.model.params, **combinations[index]}


def output_root(request: TrainingRequest) -> str:
    """``<storageUri>/<model>/<run>`` (plus ``/trials/<index>`` for a sweep trial)."""
    storage = request.storage_uri or request.spec.output.storage_uri
    if not storage:
        raise ValueError(
            "no output storage: set spec.output.storageUri or pass --storage-uri "
            "(e.g. file:///tmp/models)"
        )
    from kubeloop.training.data import resolve_uri

    storage = resolve_uri(storage, request.pvc_mount_root)
    root = artifacts.join_uri(storage, request.spec.model.name, request.run_name)
    if request.trial_index is not None:
        root = artifacts.join_uri(root, TRIALS_DIR, str(request.trial_index))
    return root


def run_training(request: TrainingRequest) -> TrainingOutcome:
    """Run the whole sequence; never raises for a run-level failure, returns it instead."""
    timings: dict[str, float] = {}
    try:
        return _run(request, timings)
    except _Stop as stop:
        return TrainingOutcome(result=stop.result, timings=timings)


def _failed(
    request: TrainingRequest,
    status: Status,
    reason: str,
    message: str,
    *,
    retryable: bool = False,
    **fields: Any,
) -> _Stop:
    """The run's failure; ``retryable`` when something it needs could not be reached (exit
    EXIT_UNAVAILABLE, retried by the Job), else its status's final exit code."""
    return _Stop(
        TrainingResult(
            status=status,
            exit_code=EXIT_UNAVAILABLE if retryable else EXIT_CODES[status],
            reason=reason,
            message=message,
            trial=request.trial_index,
            **fields,
        )
    )


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Adds the phase's wall seconds to ``timings[phase]`` and its CPU seconds (this process,
    all threads) to ``timings["cpu:" + phase]``: on a shared machine wall time says how long
    the run waited, CPU time how much work the phase was."""
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        timings[phase] = round(timings.get(phase, 0.0) + time.perf_counter() - start, 6)
        cpu_key = "cpu:" + phase
        timings[cpu_key] = round(timings.get(cpu_key, 0.0) + time.process_time() - cpu_start, 6)


def _run(request: TrainingRequest, timings: dict[str, float]) -> TrainingOutcome:
    from kubeloop.drift.profile import build_profile
    from kubeloop.training import data, estimators, evaluate, fingerprint, validate

    spec = request.spec
    started = datetime.now(UTC)
    # --- spec-level checks, before any data is read -------------------------------------
    try:
        params = (
            trial_params(spec, request.trial_index)
            if request.trial_index is not None
            else dict(spec.model.params)
        )
        root = None if request.validate_only else output_root(request)
    except ValueError as exc:
        raise _failed(request, "TrainingFailed", REASON_SPEC_INVALID, str(exc)) from None
    try:
        # Every path judged before any data is read, so a refused spec costs no download.
        estimators.check_spec(spec.model.estimator, params, request.allowed_prefixes)
    except estimators.EstimatorNotAllowedError as exc:
        raise _failed(
            request, "TrainingFailed", REASON_ESTIMATOR_NOT_ALLOWED, str(exc), params=params
        ) from None
    except estimators.EstimatorSpecError as exc:
        raise _failed(
            request, "TrainingFailed", REASON_SPEC_INVALID, str(exc), params=params
        ) from None
    if request.champion_uri and not request.champion_sha256:
        raise _failed(
            request,
            "TrainingFailed",
            REASON_SPEC_INVALID,
            "--champion-uri needs --champion-sha256: a champion is only loaded when "
            "its checksum is pinned",
        )

    # --- data ---------------------------------------------------------------------------
    log.info("loading data from %s", spec.data.source)
    with _timed(timings, "load"):
        try:
            loaded = data.load_table(
                spec.data.source, spec.data.format, request.env, request.pvc_mount_root
            )
        except (data.DataSourceNotAllowed, data.DataSpecError) as exc:
            # The spec names data this pod may not read, or data that cannot exist as
            # written: final, a retry would fail the same way.
            raise _failed(
                request, "TrainingFailed", REASON_SPEC_INVALID, str(exc), params=params
            ) from None
        except data.DataError as exc:
            raise _failed(
                request, "TrainingFailed", REASON_DATA_UNAVAILABLE, str(exc), params=params,
                retryable=True,  # missing, unreachable or unreadable now; may be there later
            ) from None
    frame = loaded.frame
    with _timed(timings, "validate"):
        columns = validate.choose_columns(frame, spec, loaded.default_target)
        failures = validate.validate(frame, spec, columns)
    if failures:
        raise _failed(
            request,
            "DataValidationFailed",
            REASON_VALIDATION_FAILED,
            validate.summarise(failures),
            failures=failures,
            params=params,
        )
    with _timed(timings, "fingerprint"):
        data_fingerprint = fingerprint.data_fingerprint(frame)

    # --- estimator ----------------------------------------------------------------------
    try:
        model = estimators.build_estimator(spec.model.estimator, params, request.allowed_prefixes)
    except estimators.EstimatorNotAllowedError as exc:
        raise _failed(
            request, "TrainingFailed", REASON_ESTIMATOR_NOT_ALLOWED, str(exc), params=params
        ) from None
    except estimators.EstimatorSpecError as exc:
        raise _failed(
            request, "TrainingFailed", REASON_SPEC_INVALID, str(exc), params=params
        ) from None
    seeded = estimators.seed_unset_random_states(model, params, spec.data.split.seed)
    bare_estimator = model
    model = estimators.wrap_for_categorical(model, columns.categorical)
    metric = spec.primary_metric
    task = spec.model.task
    if metric in PROBABILITY_METRICS and not hasattr(model, "predict_proba"):
        raise _failed(
            request,
            "TrainingFailed",
            REASON_SPEC_INVALID,
            f"evaluation.metric {metric} needs class probabilities, but "
            f"{spec.model.estimator} has no predict_proba with these params",
            params=params,
        )
    if request.validate_only:
        message = (
            f"validation only: {len(frame)} rows passed every rule; "
            f"{spec.model.estimator} can be built; nothing trained or written"
        )
        return TrainingOutcome(
            result=TrainingResult(
                status="Succeeded",
                exit_code=0,
                reason="ValidatedOnly",
                data_fingerprint=data_fingerprint,
                params=params,
                trial=request.trial_index,
                message=message,
            ),
            timings=timings,
        )
    assert root is not None

    # --- fit and evaluate ---------------------------------------------------------------
    with _timed(timings, "split"):
        holdout = evaluate.split_holdout(
            frame[[*columns.features, columns.target]],
            columns.target,
            spec.data.split.test_fraction,
            spec.data.split.seed,
            stratify=task == "classification",
        )
        x_train, y_train = holdout.train[columns.features], holdout.train[columns.target]
        x_test, y_test = holdout.test[columns.features], holdout.test[columns.target]
    log.info("fitting %s on %d rows (%d held out)", spec.model.estimator, len(x_train), len(x_test))
    with _timed(timings, "fit"):
        try:
            model.fit(x_train, y_train)
        except Exception as exc:  # whatever the estimator raises is the run's failure
            log.error("fit failed:\n%s", traceback.format_exc())
            raise _failed(
                request,
                "TrainingFailed",
                REASON_FIT_FAILED,
                f"fitting {spec.model.estimator} failed: {type(exc).__name__}: {exc}",
                params=params,
                data_fingerprint=data_fingerprint,
            ) from None
    with _timed(timings, "evaluate"):
        try:
            predictions = evaluate.predict(model, x_test, task, need_probabilities=True)
            metrics = evaluate.compute_metrics(task, y_test.to_numpy(), predictions)
        except Exception as exc:
            raise _failed(
                request,
                "TrainingFailed",
                REASON_FIT_FAILED,
                f"evaluating the model failed: {type(exc).__name__}: {exc}",
                params=params,
                data_fingerprint=data_fingerprint,
            ) from None

    champion_metrics: dict[str, float] | None = None
    if request.champion_uri:
        with _timed(timings, "champion"):
            champion_metrics = _champion_metrics(
                request, x_test, y_test, task, params, data_fingerprint
            )
    gates = evaluate.evaluate_gates(
        metric,
        metrics,
        spec.evaluation.threshold,
        spec.evaluation.compare_to == "champion",
        champion_metrics,
        spec.evaluation.min_improvement,
    )
    failed_gates = [gate for gate in gates if not gate.passed]

    # --- profile and artifacts ----------------------------------------------------------
    with _timed(timings, "profile"):
        profile = build_profile(
            {
                name: x_train[name].to_numpy()
                if name in columns.categorical
                else x_train[name].to_numpy(dtype=np.float64, na_value=np.nan)
                for name in columns.features
            },
            categorical=columns.categorical,
            prediction=predictions.labels,
            prediction_kind="categorical" if task == "classification" else "numerical",
        )
        profile_bytes = profile.to_json_bytes()
    with _timed(timings, "serialise"):
        model_bytes = _dump(request, model, columns.features, params, data_fingerprint)
        model_sha256 = artifacts.sha256_hex(model_bytes)
    with _timed(timings, "verify"):
        _check_the_server_loads(request, model_bytes, params, data_fingerprint)

    model_uri = artifacts.join_uri(root, artifacts.MODEL_FILE)
    profile_uri = artifacts.join_uri(root, artifacts.PROFILE_FILE)
    report_uri = artifacts.join_uri(root, artifacts.REPORT_FILE)
    status: Status = "GateFailed" if failed_gates else "Succeeded"
    reason = REASON_GATE_FAILED if failed_gates else REASON_SUCCEEDED
    message = (
        "gate(s) failed: " + "; ".join(f"{g.name}: {g.message}" for g in failed_gates)
        if failed_gates
        else f"{metric} {metrics.get(metric, float('nan')):.6g}; every gate passed"
    )
    result = TrainingResult(
        status=status,
        exit_code=EXIT_CODES[status],
        reason=reason,
        uri=model_uri,
        sha256=model_sha256,
        metric=metric,
        metrics=metrics,
        champion_metrics=champion_metrics,
        gates=gates,
        data_fingerprint=data_fingerprint,
        profile_uri=profile_uri,
        report_uri=report_uri,
        trial=request.trial_index,
        params=params,
        message=message,
    )
    classes = getattr(model, "classes_", None)
    report: dict[str, Any] = {
        "formatVersion": REPORT_FORMAT_VERSION,
        "status": status,
        "reason": reason,
        "message": message,
        "runName": request.run_name,
        "model": {
            "name": spec.model.name,
            "task": task,
            "estimator": spec.model.estimator,
            "params": params,
            "seededFromSplit": seeded,
            "pipeline": type(model).__name__ if model is not None else None,
            "categoricalEncoding": "one-hot, added by the trainer"
            if model is not bare_estimator
            else None,
        },
        "trial": None
        if request.trial_index is None
        else {
            "index": request.trial_index,
            "of": len(spec.sweep.combinations()) if spec.sweep else 0,
            "params": spec.sweep.combinations()[request.trial_index] if spec.sweep else {},
        },
        "data": {
            "source": spec.data.source,
            "format": loaded.format,
            "fingerprint": data_fingerprint,
            "fingerprintMethod": "kubeloop-data-v1 (see kubeloop.training.fingerprint)",
            "rows": {"total": len(frame), "train": len(x_train), "test": len(x_test)},
            "target": columns.target,
            "features": columns.features,
            "categoricalFeatures": columns.categorical,
            "featureDtypes": {name: str(frame[name].dtype) for name in columns.features},
            "targetClasses": None if classes is None else [_plain(c) for c in classes],
            "split": {
                "testFraction": spec.data.split.test_fraction,
                "seed": spec.data.split.seed,
                "stratified": task == "classification",
            },
        },
        "evaluation": {
            "metric": metric,
            "metrics": metrics,
            "champion": None
            if not request.champion_uri
            else {
                "uri": request.champion_uri,
                "sha256": request.champion_sha256,
                "metrics": champion_metrics,
            },
            "gates": [gate.model_dump(mode="json", by_alias=True) for gate in gates],
        },
        "artifacts": {
            "model": {
                "uri": model_uri,
                "sha256": model_sha256,
                "bytes": len(model_bytes),
                "format": "skops",
            },
            "profile": {
                "uri": profile_uri,
                "predictionFrom": "holdout",
                "featuresFrom": "training rows",
            },
        },
        "versions": {"python": platform.python_version(), **_versions()},
        "startedAt": started.isoformat(),
    }

    options = _options(root, request)
    try:
        with _timed(timings, "write"):
            artifacts.write_atomic(model_uri, model_bytes, options)
            artifacts.write_atomic(
                artifacts.join_uri(root, artifacts.CHECKSUM_FILE),
                f"{model_sha256}  {artifacts.MODEL_FILE}\n".encode(),
                options,
            )
            artifacts.write_atomic(profile_uri, profile_bytes, options)
        # Every phase but writing the report itself; wall and CPU seconds apart.
        report["timings"] = {k: v for k, v in timings.items() if not k.startswith("cpu:")}
        report["cpuTimings"] = {k[4:]: v for k, v in timings.items() if k.startswith("cpu:")}
        report["cpuTimings"]["process"] = round(time.process_time(), 6)
        report["finishedAt"] = datetime.now(UTC).isoformat()
        with _timed(timings, "writeReport"):
            # The completion marker: only now is the directory a finished run.
            artifacts.write_atomic(
                report_uri, orjson.dumps(report, option=orjson.OPT_INDENT_2), options
            )
    except artifacts.StorageError as exc:
        raise _failed(
            request,
            "TrainingFailed",
            REASON_STORAGE_FAILED,
            str(exc),
            params=params,
            data_fingerprint=data_fingerprint,
            metrics=metrics,
            retryable=True,  # the storage may answer on the next try
        ) from None
    return TrainingOutcome(result=result, report=report, model=model, timings=timings)


def _dump(
    request: TrainingRequest,
    model: Any,
    features: list[str],
    params: dict[str, Any],
    data_fingerprint: str,
) -> bytes:
    """``model.skops``; a model skops cannot write fails the run instead of crashing it."""
    try:
        return artifacts.dump_model(model, features)
    except Exception as exc:  # skops refuses some fitted objects, or recurses without end
        raise _failed(
            request,
            "TrainingFailed",
            REASON_ESTIMATOR_NOT_ALLOWED,
            f"spec.model.estimator {request.spec.model.estimator!r} with these "
            f"spec.model.params cannot be stored: skops cannot write its fitted model "
            f"({type(exc).__name__}: {str(exc)[:300]}); choose other params or another "
            "estimator. Nothing was written",
            params=params,
            data_fingerprint=data_fingerprint,
        ) from None


def _check_the_server_loads(
    request: TrainingRequest, model_bytes: bytes, params: dict[str, Any], data_fingerprint: str
) -> None:
    """Load ``model.skops`` exactly as ``kubeloop serve`` will, before anything is written.

    The estimator policy refuses the classes whose models no server loads
    (``kubeloop.trust.estimators.UNLOADABLE_ESTIMATORS``), but which types a fitted model holds
    can also depend on its params (a ``metric``, a ``scoring``). Without this check such a run
    would end Succeeded, and its model would then stop every server and champion comparison.
    """
    from kubeloop.trust import model_types

    try:
        model_types.load_trusted(model_bytes)  # the server's own loader and type policy
    except model_types.UntrustedModelTypesError as exc:
        refused = "; ".join(f"{name} ({why})" for name, why in exc.refused)
        problem = f"its fitted model holds types the model server will not load: {refused}"
    except Exception as exc:  # whatever stops the server's loader stops the server
        problem = f"the model server cannot load its fitted model ({type(exc).__name__}: {exc})"
    else:
        return
    raise _failed(
        request,
        "TrainingFailed",
        REASON_ESTIMATOR_NOT_ALLOWED,
        f"spec.model.estimator {request.spec.model.estimator!r} with these spec.model.params "
        f"is not allowed: {problem}. No ModelDeployment could serve it, so nothing was "
        "written; change the params that chose those types (e.g. a metric or a scoring) or "
        "choose another estimator",
        params=params,
        data_fingerprint=data_fingerprint,
    )


def _champion_metrics(
    request: TrainingRequest,
    x_test: Any,
    y_test: Any,
    task: str,
    params: dict[str, Any],
    data_fingerprint: str,
) -> dict[str, float]:
    from kubeloop.training import data, evaluate
    from kubeloop.trust.boosters import feature_names_in

    assert request.champion_uri is not None
    champion_uri = data.resolve_uri(request.champion_uri, request.pvc_mount_root)
    trusted = (*artifacts.DEFAULT_TRUSTED_TYPE_PREFIXES, *request.allowed_prefixes)
    try:
        champion = artifacts.load_model(
            champion_uri,
            request.champion_sha256,
            trusted,
            data.storage_options_for(champion_uri, request.env),
        )
        names = feature_names_in(champion)
        features = x_test if names is None else x_test[[str(n) for n in names]]
        predictions = evaluate.predict(champion, features, task, need_probabilities=True)
        return evaluate.compute_metrics(task, y_test.to_numpy(), predictions)
    except artifacts.StorageError as exc:  # unreachable now: a retry may read it
        raise _failed(
            request,
            "TrainingFailed",
            REASON_CHAMPION_UNAVAILABLE,
            str(exc),
            params=params,
            data_fingerprint=data_fingerprint,
            retryable=True,
        ) from None
    except (artifacts.ArtifactIntegrityError, artifacts.UntrustedArtifactError) as exc:
        raise _failed(
            request,
            "TrainingFailed",
            REASON_CHAMPION_UNAVAILABLE,
            str(exc),
            params=params,
            data_fingerprint=data_fingerprint,
        ) from None
    except (KeyError, ValueError) as exc:
        raise _failed(
            request,
            "TrainingFailed",
            REASON_CHAMPION_UNAVAILABLE,
            f"the champion cannot score this holdout ({type(exc).__name__}: {exc}); "
            "was it trained on other features?",
            params=params,
            data_fingerprint=data_fingerprint,
        ) from None


def _options(uri: str, request: TrainingRequest) -> dict[str, Any]:
    from kubeloop.training.data import storage_options_for

    return storage_options_for(uri, request.env)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _VERSIONED_LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _plain(value: Any) -> Any:
    """numpy scalars as JSON-able Python values."""
    return value.item() if isinstance(value, np.generic) else value


def summary(outcome: TrainingOutcome) -> str:
    """The human-readable lines printed to stdout at the end of a run."""
    result = outcome.result
    lines = [f"kubeloop train: {result.status} (exit {result.exit_code}, {result.reason})"]
    if result.trial is not None:
        lines.append(f"  trial      {result.trial}  params {result.params}")
    if result.metrics:
        shown = ", ".join(f"{k}={v:.6g}" for k, v in sorted(result.metrics.items()))
        lines.append(f"  metrics    {shown}")
    if result.champion_metrics is not None:
        shown = ", ".join(f"{k}={v:.6g}" for k, v in sorted(result.champion_metrics.items()))
        lines.append(f"  champion   {shown}")
    for gate in result.gates:
        lines.append(
            f"  gate       {gate.name}: {'PASS' if gate.passed else 'FAIL'} - {gate.message}"
        )
    for failure in result.failures:
        lines.append(f"  invalid    [{failure.rule}] {failure.message}")
    if result.uri:
        lines.append(f"  model      {result.uri}")
        lines.append(f"  sha256     {result.sha256}")
        lines.append(f"  report     {result.report_uri}")
    if result.data_fingerprint:
        lines.append(f"  data       {result.data_fingerprint}")
    if outcome.timings:
        shown = ", ".join(
            f"{k} {v:.2f}s" for k, v in outcome.timings.items() if not k.startswith("cpu:")
        )
        lines.append(f"  timings    {shown}")
    if result.message and not result.failures:
        lines.append(f"  message    {result.message}")
    return "\n".join(lines)


__all__ = [
    "TrainingOutcome",
    "TrainingRequest",
    "ValidationFailure",
    "output_root",
    "run_training",
    "summary",
    "trial_params",
]
