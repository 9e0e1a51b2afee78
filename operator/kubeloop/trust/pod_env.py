"""What a credentials Secret may not set in a runtime pod's environment (issue 13).

A TrainingRun (``credentials.secretRef``), a DriftPolicy dataset and a ModelDeployment
(``spec.model.credentials.secretRef``) name a Secret that the pod builders hand to the
container as ``envFrom``: every key of it becomes an environment variable of a process running
the runtime image. Most keys are what the Secret is for (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``...). The ones in :data:`PINNED` are not: they choose the code that runs
(``PYTHONPATH`` to a directory holding ``sitecustomize.py``, ``LD_PRELOAD``...) or change a
setting the runtime reads from its environment (``KUBELOOP_SERVE_INSECURE_SKIP_VERIFY``).

Kubernetes lets an ``env`` entry win over an ``envFrom`` key of the same name, so every builder
that adds ``envFrom`` also appends :func:`pinned_env`: each variable set to a value its reader
takes as "not set" (CPython and glibc ignore an empty value of their variables; the runtime
reads ``or`` its default) or to the value the operator intends (a ``KUBELOOP_SERVE_*`` option
the command line does not give is pinned to its default, since pydantic refuses an empty
number or boolean). A variable the pod's own ``env`` already sets keeps that value.

Not pinned: the Secret's purpose (cloud credentials, endpoints, CA bundles, proxies), and
``PROMETHEUS_MULTIPROC_DIR``, whose mere presence (even empty) switches the metrics client to
multi-process files.

A spec's own ``env`` (``ModelDeployment.spec.server.env``) is the other way in, and a plain
``env`` entry would *win* over the operator's pin of the same name. So :func:`user_env_refusal`
refuses every pinned name, every ``KUBELOOP_*`` name (the runtime's own settings, including
ones added later), and the few variables the pod builders set themselves
(:data:`SET_BY_BUILDERS`). The API models call it (and say the same in CEL), so a refused name
never reaches a builder.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from kubeloop.api.batching import DEFAULT_MAX_BATCH_LATENCY_MS, DEFAULT_MAX_BATCH_SIZE


class PinnedVariable(NamedTuple):
    """One variable a credentials Secret may not set, the value it is pinned to, and why."""

    name: str
    value: str
    reason: str


# Set by the Job controller in an Indexed Job, which leaves a container that already has it alone.
JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"

PINNED: tuple[PinnedVariable, ...] = (
    # CPython: each of these chooses code that runs in the trainer or server.
    PinnedVariable("PYTHONPATH", "", "import directories searched first: a sitecustomize.py there runs at start-up"),
    PinnedVariable("PYTHONHOME", "", "replaces the standard library the interpreter imports"),
    PinnedVariable("PYTHONSTARTUP", "", "a file of code run when the interpreter turns interactive"),
    PinnedVariable("PYTHONINSPECT", "", "keeps the interpreter on an interactive prompt after the program"),
    PinnedVariable("PYTHONUSERBASE", "", "the user site directory, whose usercustomize.py and .pth files run at start-up"),
    PinnedVariable("PYTHONPLATLIBDIR", "", "renames the standard library directory the interpreter imports from"),
    PinnedVariable("PYTHONPYCACHEPREFIX", "", "where cached bytecode is read from: a crafted .pyc runs instead of the source"),
    PinnedVariable("PYTHONWARNINGS", "", "a warning filter imports the module its category names"),
    PinnedVariable("PYTHONBREAKPOINT", "", "the callable breakpoint() imports and calls"),
    PinnedVariable("PYTHONOPTIMIZE", "", "removes the program's assert statements"),
    # glibc's dynamic loader: each of these loads code into every process of the container.
    PinnedVariable("LD_PRELOAD", "", "shared objects loaded into every process before its own libraries"),
    PinnedVariable("LD_LIBRARY_PATH", "", "directories searched first for every shared library (libc, BLAS)"),
    PinnedVariable("LD_AUDIT", "", "audit libraries loaded into every process"),
    PinnedVariable("GLIBC_TUNABLES", "", "tunes the loader and allocator of every process (CVE-2023-4911 went through it)"),
    # The runtime's own settings read from the environment (kubeloop train / drift / artifacts).
    PinnedVariable("KUBELOOP_TRAININGRUN_SPEC", "", "the spec kubeloop train runs; the training Job sets it"),
    PinnedVariable("KUBELOOP_RUN_NAME", "", "kubeloop train's run name; the Job gives --run-name"),
    PinnedVariable("KUBELOOP_ALLOWED_ESTIMATOR_PREFIXES", "",
                   "the estimators kubeloop train may import; the training Job sets the operator's list"),
    PinnedVariable("KUBELOOP_DATA_ROOTS", "",
                   "where local data may be read (empty: nowhere); Jobs that read data set their mounts"),
    PinnedVariable("KUBELOOP_PVC_MOUNT_ROOT", "", "where pvc:// is read; empty is /mnt/pvc, where the pods mount claims"),
    PinnedVariable("KUBELOOP_MLFLOW_TRACKING_URI", "", "where kubeloop train logs to MLflow; only the operator's configuration sets it"),
    PinnedVariable("KUBELOOP_MLFLOW_RUN_ID", "", "the MLflow run kubeloop train logs to; the operator creates it"),
    PinnedVariable("KUBELOOP_MLFLOW_EXPERIMENT_ID", "", "the MLflow experiment of a sweep trial's nested run"),
    PinnedVariable(JOB_COMPLETION_INDEX, "", "kubeloop train's sweep trial (an output directory); Indexed Jobs set it"),
    # kubeloop serve: every option falls back to KUBELOOP_SERVE_<OPTION> when not on the command line.
    PinnedVariable("KUBELOOP_SERVE_MODEL_URI", "", "the model served; the server is given --model-uri"),
    PinnedVariable("KUBELOOP_SERVE_SHA256", "", "the model's checksum; the server is given --sha256"),
    PinnedVariable("KUBELOOP_SERVE_INSECURE_SKIP_VERIFY", "false", "true serves a model without checking its sha256"),
    PinnedVariable("KUBELOOP_SERVE_MODEL_NAME", "", "the name in the API and metrics; the server is given --model-name"),
    PinnedVariable("KUBELOOP_SERVE_PROFILE_URI", "", "the drift reference profile; empty is the one next to the model"),
    PinnedVariable("KUBELOOP_SERVE_HOST", "0.0.0.0", "the address the server listens on"),
    PinnedVariable("KUBELOOP_SERVE_PORT", "", "the port the probes and Services use; the server is given --port"),
    PinnedVariable("KUBELOOP_SERVE_WORKERS", "", "worker processes; the server is given --workers"),
    PinnedVariable("KUBELOOP_SERVE_GRPC_PORT", "0", "the gRPC port the Services use; the server is given --grpc-port"),
    PinnedVariable("KUBELOOP_SERVE_MAX_BATCH_SIZE", str(DEFAULT_MAX_BATCH_SIZE), "rows per model call, unless spec.server.batching sets it"),
    PinnedVariable("KUBELOOP_SERVE_MAX_BATCH_LATENCY_MS", str(DEFAULT_MAX_BATCH_LATENCY_MS), "batch wait, unless spec.server.batching sets it"),
    PinnedVariable("KUBELOOP_SERVE_TRACK", "", "the track label of the metrics; the server is given --track"),
    PinnedVariable("KUBELOOP_SERVE_SHADOW_URL", "", "where every request is mirrored to; only a shadow step sets it"),
    PinnedVariable("KUBELOOP_SERVE_SHADOW_PERCENT", "0", "the share of requests mirrored; only a shadow step sets it"),
    PinnedVariable("KUBELOOP_SERVE_SHADOW_QUEUE_SIZE", "1024", "mirrored requests waiting to be sent"),
    PinnedVariable("KUBELOOP_SERVE_SHADOW_CONCURRENCY", "8", "mirrored requests in flight"),
    PinnedVariable("KUBELOOP_SERVE_SHADOW_TIMEOUT_SECONDS", "5", "how long a mirrored request may take"),
    PinnedVariable("KUBELOOP_SERVE_SHADOW_TOLERANCE", "1e-09", "when a challenger's regression output agrees"),
    PinnedVariable("KUBELOOP_SERVE_FEEDBACK_CAPACITY", "100000", "recent predictions kept for /feedback"),
    PinnedVariable("KUBELOOP_SERVE_FEEDBACK_MAX_BYTES", "67108864", "the byte budget of the predictions kept for /feedback"),
    PinnedVariable("KUBELOOP_SERVE_FEEDBACK_MAX_AGE_SECONDS", "3600", "the oldest prediction that still takes a label"),
    PinnedVariable("KUBELOOP_SERVE_MAX_BODY_BYTES", "16777216", "the largest request body (413 beyond)"),
    PinnedVariable("KUBELOOP_SERVE_MAX_BUFFERED_BODY_BYTES", "67108864", "request bodies a worker holds at once"),
    PinnedVariable("KUBELOOP_SERVE_MAX_REQUEST_ROWS", "100000", "the most rows in one request (413 beyond)"),
    PinnedVariable("KUBELOOP_SERVE_MAX_CONCURRENT_REQUESTS", "256", "requests a worker handles at once (503 beyond)"),
    PinnedVariable("KUBELOOP_SERVE_MAX_QUEUED_ROWS", "200000", "rows waiting for the model (503 beyond)"),
    PinnedVariable("KUBELOOP_SERVE_RETRY_AFTER_SECONDS", "1", "the Retry-After of an overload 503"),
    PinnedVariable("KUBELOOP_SERVE_HEADER_TIMEOUT_SECONDS", "10", "how long a client may take to send its headers"),
    PinnedVariable("KUBELOOP_SERVE_BODY_TIMEOUT_SECONDS", "30", "how long a client may take to send its body"),
    PinnedVariable("KUBELOOP_SERVE_KEEP_ALIVE_TIMEOUT_SECONDS", "30", "how long an idle connection is kept"),
    PinnedVariable("KUBELOOP_SERVE_MAX_HEADER_BYTES", "65536", "the largest request head (431 beyond)"),
    PinnedVariable("KUBELOOP_SERVE_AUTH_TOKEN", "", "the bearer token clients must send; spec.server.auth sets it from its Secret"),
    PinnedVariable("KUBELOOP_SERVE_METRICS_PORT", "0", "the separate /metrics port; spec.server.metricsPort sets it"),
    PinnedVariable("KUBELOOP_SERVE_METRICS_FLUSH_SECONDS", "1", "how often drift counts reach the metrics"),
    PinnedVariable("KUBELOOP_SERVE_SHUTDOWN_DELAY_SECONDS", "0", "503 readiness after SIGTERM; the server Deployment sets it"),
    PinnedVariable("KUBELOOP_SERVE_DRAIN_TIMEOUT_SECONDS", "30", "the longest wait for in-flight requests at shutdown"),
    PinnedVariable("KUBELOOP_SERVE_FAST_PATHS", "true", "direct forest and linear prediction (self-checked at load)"),
    PinnedVariable("KUBELOOP_SERVE_LOG_LEVEL", "info", "the server's log level"),
)

PINNED_NAMES: frozenset[str] = frozenset(variable.name for variable in PINNED)

RUNTIME_PREFIX = "KUBELOOP_"
"""The prefix of every setting the runtime reads from its environment."""

SET_BY_BUILDERS: dict[str, str] = {
    "HOME": "the pod's writable scratch directory (the root file system is read-only)",
    "PROMETHEUS_MULTIPROC_DIR": "where the server's worker processes keep their metrics; the server chooses it",
}
"""Variables the pod builders or the runtime set themselves, and why a spec may not."""

USER_REFUSED_NAMES: frozenset[str] = PINNED_NAMES | frozenset(SET_BY_BUILDERS)
"""Names a spec's own ``env`` may not set (besides every ``KUBELOOP_*`` name)."""


def user_env_refusal(name: str) -> str | None:
    """Why a spec's own ``env`` may not set ``name`` (a sentence naming it), or None if it may."""
    reasons = {variable.name: variable.reason for variable in PINNED} | SET_BY_BUILDERS
    if name in reasons:
        return f"{name} is set by the operator and may not be set in env ({reasons[name]}); remove it"
    if name.startswith(RUNTIME_PREFIX):
        return (
            f"{name} is set by the operator and may not be set in env ({RUNTIME_PREFIX}* variables "
            "are the runtime's own settings: use the spec's fields); remove it"
        )
    return None


def pinned_env(env: Iterable[Mapping[str, Any]], *, indexed_job: bool = False) -> list[dict[str, str]]:
    """The ``env`` entries to append to a container whose ``env`` is ``env`` and which takes a
    credentials Secret as ``envFrom``: every :data:`PINNED` variable ``env`` does not set
    already, except ``JOB_COMPLETION_INDEX`` in an Indexed Job (the Job controller sets it)."""
    already = {str(entry["name"]) for entry in env}
    if indexed_job:
        already.add(JOB_COMPLETION_INDEX)
    return [{"name": variable.name, "value": variable.value} for variable in PINNED if variable.name not in already]
