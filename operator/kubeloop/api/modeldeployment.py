"""ModelDeployment: serve a model, and roll a new one out as a canary gated by live metrics.

Changing ``spec.model`` starts a rollout: the stable model keeps serving, a canary serves the
new one, ``spec.rollout.steps`` run in order while analysis passes, and at the end the canary
becomes stable. A failed analysis (or an abort) sends all traffic back to stable and marks the
deployment Degraded, naming the failing metric.

People steer a rollout in four ways (the ``kubectl kubeloop`` plugin does these for you):

* pause / resume: set ``spec.paused`` (``kubectl patch md/NAME --type merge -p
  '{"spec":{"paused":true}}'``); steps and pause timers stand still until it is false again.
* one-shot requests, as annotations whose value is any new token (a timestamp is fine); the
  operator acts once per new value and records the value it handled in
  ``status.handledRequests``, so re-applying the same manifest never repeats a request:

  - ``kubeloop.io/promote``: move past the current step (ends a pause without duration).
  - ``kubeloop.io/promote-full``: skip all remaining steps; the canary becomes stable now.
  - ``kubeloop.io/abort``: send all traffic back to stable; the deployment stays Degraded
    (reason Aborted) until a retry or a new ``spec.model``.
  - ``kubeloop.io/retry``: start an aborted or failed rollout again from its first step.

* undo: set ``spec.model`` to ``status.previous`` (the model served before the last
  promotion); that is an ordinary change of model, so it rolls out the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from kubeloop.api.batching import (
    DEFAULT_MAX_BATCH_LATENCY_MS,
    DEFAULT_MAX_BATCH_SIZE,
    MAX_BATCH_LATENCY_MS,
)
from kubeloop.api.common import (
    HTTP_URL,
    MAX_MESSAGE_LENGTH,
    MAX_URI_LENGTH,
    Conditions,
    Credentials,
    Duration,
    KubeModel,
    LabelValue,
    LastFailure,
    LocalObjectReference,
    NodeSelector,
    ResourceName,
    ResourceRequirements,
    SecretReference,
    Sha256,
    StorageUri,
    Toleration,
    cel,
    cel_rules,
)
from kubeloop.api.pods import (
    Affinity,
    DisruptionBudget,
    Env,
    PodAnnotations,
    PodLabels,
    TopologySpreadConstraint,
    reserved_annotation_rule,
    reserved_label_rule,
)

KIND: Final = "ModelDeployment"
PLURAL = "modeldeployments"

PROMOTE_ANNOTATION = "kubeloop.io/promote"
PROMOTE_FULL_ANNOTATION = "kubeloop.io/promote-full"
ABORT_ANNOTATION = "kubeloop.io/abort"
RETRY_ANNOTATION = "kubeloop.io/retry"

MAX_STEPS = 32
MAX_METRICS = 16
MAX_ANALYSIS_RUNS = 50

Phase = Literal["Progressing", "Healthy", "Paused", "Degraded"]
Provider = Literal["prometheus", "builtin", "scrape"]
BuiltinMetric = Literal["errorRate", "latencyP99", "predictionShift", "shadowAgreement"]

MODEL_SOURCE_MESSAGE = (
    "set exactly one of trainingRunRef or storageUri (with sha256), or registry {name, alias}"
)
REGISTRY_REF_MESSAGE = "registry needs exactly one of alias or version"
SHA256_MESSAGE = "sha256 is required with storageUri and only allowed with it"
STEP_KIND_MESSAGE = (
    "each rollout step must have exactly one of shadow, setWeight, pause or analysis"
)
ROUTER_MESSAGE = "set at most one of replicas, gatewayAPI or istio"
AUTOSCALING_MESSAGE = "minReplicas must not be greater than maxReplicas"
METRIC_QUERY_MESSAGE = "provider prometheus or scrape needs query"
METRIC_BUILTIN_MESSAGE = "provider builtin needs builtin"
METRIC_BOUNDS_MESSAGE = "set min, max or both"
METRIC_ORDER_MESSAGE = "min must not be greater than max"


class RegistrySource(KubeModel):
    """A model version in the MLflow model registry (docs/mlflow.md), by alias or number.

    The operator resolves it to the version's model URI and the ``kubeloop.sha256`` tag a
    TrainingRun wrote when it registered the version; a version without that tag is refused
    (condition ``RegistryVersionRefused``), and the server verifies the sha256 before loading.
    When MLflow cannot be reached, the rollout waits (``RegistryUnavailable``) and what is
    served stays. Moving the alias in MLflow starts a canary of the new version."""

    model_config = cel_rules(
        cel("has(self.alias) != has(self.version)", REGISTRY_REF_MESSAGE),
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """The registered model's name (a TrainingRun registers under its spec.model.name)."""
    alias: Annotated[str, StringConstraints(max_length=255, pattern=r"^[A-Za-z0-9_-]{1,255}$")] | None = None
    """An alias such as ``champion``; the deployment follows it when it moves."""
    version: Annotated[int, Field(ge=1)] | None = None
    """A fixed version number."""

    @model_validator(mode="after")
    def _one_reference(self) -> RegistrySource:
        if (self.alias is None) == (self.version is None):
            raise ValueError(REGISTRY_REF_MESSAGE)
        return self


class ModelSource(KubeModel):
    """Which model to serve: the model of a TrainingRun, an artifact by URI and checksum, or a
    version of the MLflow model registry."""

    model_config = cel_rules(
        cel(
            "(has(self.trainingRunRef) ? 1 : 0) + (has(self.storageUri) ? 1 : 0) + "
            "(has(self.registry) ? 1 : 0) == 1",
            MODEL_SOURCE_MESSAGE,
        ),
        cel("has(self.sha256) == has(self.storageUri)", SHA256_MESSAGE, ".sha256"),
    )

    training_run_ref: LocalObjectReference | None = None
    """A succeeded TrainingRun in the same namespace; its status.model gives uri and sha256."""
    storage_uri: StorageUri | None = None
    """URI of a model.skops file (file, pvc, s3, gs, https, http); needs sha256."""
    sha256: Sha256 | None = None
    """Expected SHA-256 of the file at storageUri; the server refuses to load anything else."""
    registry: RegistrySource | None = None
    """A version of the MLflow model registry (operator with MLflow only)."""
    credentials: Credentials | None = None
    """Secret with credentials for reading storageUri (or the registry version's model URI)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        sources = [self.training_run_ref, self.storage_uri, self.registry]
        if sum(source is not None for source in sources) != 1:
            raise ValueError(MODEL_SOURCE_MESSAGE)
        if (self.sha256 is None) != (self.storage_uri is None):
            raise ValueError(SHA256_MESSAGE)
        return self


class BatchingSpec(KubeModel):
    """Adaptive micro-batching: concurrent requests are predicted together."""

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = DEFAULT_MAX_BATCH_SIZE
    """Largest number of rows predicted in one call; 1 predicts every request alone."""
    max_latency_ms: Annotated[int, Field(ge=0, le=MAX_BATCH_LATENCY_MS)] = DEFAULT_MAX_BATCH_LATENCY_MS
    """Longest a request waits for others to join its batch, in milliseconds."""


METRICS_PORT_MESSAGE = "metricsPort must differ from port"


class ServerAuth(KubeModel):
    """Bearer-token authentication of the inference and /feedback endpoints."""

    secret_ref: SecretReference
    """A Secret in this namespace holding the token. The server container reads it as an
    environment variable from the Secret (``secretKeyRef``): the token is never in the pod
    spec. Clients send ``Authorization: Bearer <token>``. Health, metadata, /metrics and
    /profile stay open (the operator and Prometheus read them): put them on ``metricsPort``
    behind the chart's ``servingNetworkPolicy``."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = "token"
    """The Secret's key holding the token."""


class ServerSpec(KubeModel):
    """The model server pods (``kubeloop serve``)."""

    model_config = cel_rules(
        reserved_label_rule("podLabels"),
        reserved_annotation_rule("podAnnotations"),
        cel("!has(self.metricsPort) || self.metricsPort != self.port", METRICS_PORT_MESSAGE),
    )

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Server container image; default: the operator's configured kubeloop image."""
    resources: ResourceRequirements | None = None
    """CPU, memory and GPU of each server pod."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    """Container port for HTTP (inference, health, and /metrics unless metricsPort is set)."""
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """A separate container port (named ``metrics``) for /metrics and /profile alone, so a
    NetworkPolicy can open it to Prometheus and the operator only; default: on ``port``."""
    auth: ServerAuth | None = None
    """Require a bearer token from a Secret on /predict, /v2/models/*/infer and /feedback
    (the Open Inference Protocol's gRPC service too); default: no authentication."""
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    """Worker processes per pod."""
    batching: BatchingSpec | None = None
    """Micro-batching of concurrent requests; default: on, up to 64 rows per call, a request
    waiting at most 2 ms for others (``maxBatchSize: 1`` turns it off)."""
    service_account_name: ResourceName | None = None
    """ServiceAccount the server pods run as (in this namespace), e.g. one bound to a cloud
    identity (EKS IRSA, GKE or Azure workload identity) so the servers read the model's storage
    without static keys; default: the namespace's ``default``. Whoever writes the spec must be
    allowed to ``get`` it (the chart's admission policy checks)."""
    automount_service_account_token: bool = False
    """Mount the ServiceAccount's Kubernetes API token into the server pods. The server never
    calls the API; turn it on only for an identity provider that reads that token file
    (IRSA and Azure workload identity inject their own token; GKE needs none)."""
    node_selector: NodeSelector | None = None
    """Labels a node must have to run the server pods, e.g. a GPU node pool's."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    """Taints the server pods tolerate, e.g. ``nvidia.com/gpu`` on GPU nodes."""
    affinity: Affinity | None = None
    """Node affinity, pod affinity and anti-affinity of the server pods, as in a Pod spec."""
    topology_spread_constraints: (
        Annotated[list[TopologySpreadConstraint], Field(max_length=8)] | None
    ) = None
    """How the server pods of each track spread over nodes or zones, as in a Pod spec; without
    a labelSelector a constraint counts the pods of its own track."""
    env: Env | None = None
    """Extra environment variables of the server container (a value, or the pod's own fields).
    Names the operator sets or pins are refused: every ``KUBELOOP_*``, ``PYTHONPATH``,
    ``LD_PRELOAD``, ``HOME``... Secrets are not taken here: name them in model.credentials."""
    pod_labels: PodLabels | None = None
    """Labels added to the server pods (not to their selectors); keys under kubeloop.io/ and
    app.kubernetes.io/managed-by and app.kubernetes.io/component are the operator's."""
    pod_annotations: PodAnnotations | None = None
    """Annotations added to the server pods; keys under kubeloop.io/ and the ones the operator
    sets itself (e.g. prometheus.io/scrape) are refused."""
    pod_disruption_budget: DisruptionBudget | None = None
    """A PodDisruptionBudget (``NAME-stable``) that keeps stable pods serving through node
    drains; default: none."""

    @model_validator(mode="after")
    def _separate_metrics_port(self) -> ServerSpec:
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(METRICS_PORT_MESSAGE)
        return self


class AutoscalingSpec(KubeModel):
    """A HorizontalPodAutoscaler for the stable pods (it scales the ModelDeployment)."""

    model_config = cel_rules(
        cel("self.minReplicas <= self.maxReplicas", AUTOSCALING_MESSAGE, ".minReplicas"),
    )

    min_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    """Fewest replicas."""
    max_replicas: Annotated[int, Field(ge=1, le=1000)]
    """Most replicas."""
    target_cpu_utilization_percentage: Annotated[int, Field(ge=1, le=100)] = Field(
        default=80, alias="targetCPUUtilizationPercentage"
    )
    """Average CPU utilisation the autoscaler aims for, in percent of requests."""

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(AUTOSCALING_MESSAGE)
        return self


class AnalysisMetric(KubeModel):
    """One measurement that must stay within bounds while the canary runs."""

    model_config = cel_rules(
        cel("self.provider == 'builtin' || has(self.query)", METRIC_QUERY_MESSAGE, ".query"),
        cel("self.provider != 'builtin' || has(self.builtin)", METRIC_BUILTIN_MESSAGE, ".builtin"),
        cel("has(self.min) || has(self.max)", METRIC_BOUNDS_MESSAGE),
        cel(
            "!has(self.min) || !has(self.max) || self.min <= self.max", METRIC_ORDER_MESSAGE, ".min"
        ),
    )

    name: LabelValue
    """A short name for the metric, shown in status and events (e.g. ``error-rate``)."""
    provider: Provider = "builtin"
    """Where the value comes from: builtin (computed by the operator from the model servers'
    own /metrics: see builtin), prometheus (a PromQL query), or scrape (a metric read directly
    from the canary pods' /metrics, summed over pods)."""
    builtin: BuiltinMetric | None = None
    """With provider builtin: errorRate (share of failed requests), latencyP99 (seconds),
    predictionShift (distance between canary and stable prediction distributions) or
    shadowAgreement (share of mirrored rows where the challenger agreed with stable; the rows
    of a mirror the challenger failed or timed out on count as not agreeing)."""
    query: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    """For prometheus: a PromQL query returning one number; ``{{namespace}}``, ``{{name}}`` and
    ``{{track}}`` (stable or canary) are filled in. For scrape: a metric name on /metrics."""
    prometheus_url: (
        Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH), HTTP_URL] | None
    ) = None
    """Prometheus base URL for this metric; default: the operator's configured Prometheus.
    Must be that one or one of the operator's allowed URLs (chart values
    rollout.prometheusUrl, rollout.allowedPrometheusUrls; a trailing slash does not matter; no
    userinfo, query or fragment): any other URL is refused (AnalysisPassing False, reason
    PrometheusUrlNotAllowed) and never requested."""
    min: float | None = None
    """The measurement fails below this value."""
    max: float | None = None
    """The measurement fails above this value."""

    @model_validator(mode="after")
    def _complete(self) -> AnalysisMetric:
        if self.provider != "builtin" and self.query is None:
            raise ValueError(METRIC_QUERY_MESSAGE)
        if self.provider == "builtin" and self.builtin is None:
            raise ValueError(METRIC_BUILTIN_MESSAGE)
        if self.min is None and self.max is None:
            raise ValueError(METRIC_BOUNDS_MESSAGE)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(METRIC_ORDER_MESSAGE)
        return self


Metrics = Annotated[
    list[AnalysisMetric],
    Field(
        max_length=MAX_METRICS,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    ),
]


class AnalysisSpec(KubeModel):
    """Analysis that runs in the background for the whole rollout; any failure beyond
    failureLimit aborts it."""

    interval: Duration = "1m"
    """Time between measurements."""
    failure_limit: Annotated[int, Field(ge=0, le=100)] = 0
    """Failed measurements tolerated; one more aborts the rollout."""
    inconclusive_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Inconclusive rounds in a row tolerated (no value, or fewer than minSamples
    observations); one more pauses the rollout (phase Paused, reason AnalysisInconclusive)
    until ``kubectl kubeloop promote`` resumes it or it is aborted. Also the default of
    analysis steps."""
    min_samples: Annotated[int, Field(ge=0, le=1_000_000)] = 10
    """Fewest observations a builtin measurement must rest on to count (the canary's inference
    requests for errorRate and latencyP99, mirrored rows for shadowAgreement); fewer make
    the round inconclusive. predictionShift always needs 20 predictions per track."""
    metrics: Metrics | None = None
    """The measurements; also the default metrics of analysis steps. With background metrics,
    the last step completes only after a background round has passed, so a rollout that never
    measured its canary cannot be promoted."""


class ShadowStep(KubeModel):
    """The challenger gets a mirrored sample of requests and answers no one; its agreement with
    stable is recorded per row (use builtin shadowAgreement in analysis)."""

    percent: Annotated[int, Field(ge=1, le=100)] = 100
    """Share of requests mirrored to the canary, in percent."""
    duration: Duration
    """How long to mirror before the next step."""


class PauseStep(KubeModel):
    """Hold the current weights."""

    duration: Duration | None = None
    """How long to hold; empty: until promoted (annotation kubeloop.io/promote)."""


class AnalysisStep(KubeModel):
    """Measure now, and move on only when the measurements pass."""

    metrics: Metrics | None = None
    """Metrics to check; default: rollout.analysis.metrics."""
    count: Annotated[int, Field(ge=1, le=100)] = 1
    """How many measurements must pass (one per interval)."""
    interval: Duration | None = None
    """Time between measurements; default: rollout.analysis.interval."""
    failure_limit: Annotated[int, Field(ge=0, le=100)] = 0
    """Failed measurements tolerated; one more aborts the rollout."""
    inconclusive_limit: Annotated[int, Field(ge=0, le=100)] | None = None
    """Inconclusive rounds in a row tolerated; one more pauses the rollout; default:
    rollout.analysis.inconclusiveLimit."""


class RolloutStep(KubeModel):
    """One step of a rollout: exactly one of shadow, setWeight, pause or analysis."""

    model_config = cel_rules(
        cel(
            "(has(self.shadow) ? 1 : 0) + (has(self.setWeight) ? 1 : 0) + "
            "(has(self.pause) ? 1 : 0) + (has(self.analysis) ? 1 : 0) == 1",
            STEP_KIND_MESSAGE,
        ),
    )

    shadow: ShadowStep | None = None
    """Mirror traffic to the canary without serving its answers."""
    set_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    """Send this percentage (0-100) of live traffic to the canary."""
    pause: PauseStep | None = None
    """Hold for a duration, or until promoted."""
    analysis: AnalysisStep | None = None
    """Check metrics before moving on."""

    @model_validator(mode="after")
    def _one_kind(self) -> RolloutStep:
        kinds = [self.shadow, self.set_weight, self.pause, self.analysis]
        if sum(kind is not None for kind in kinds) != 1:
            raise ValueError(STEP_KIND_MESSAGE)
        return self


class ReplicasRouting(KubeModel):
    """Weight by replica ratio: stable and canary pods sit behind one Service. Needs no mesh or
    gateway; weights are as fine as the replica count allows."""


class GatewayAPIRouting(KubeModel):
    """Weights as backend weights of a Gateway API HTTPRoute the operator manages."""

    http_route: ResourceName
    """Name of the HTTPRoute whose rule is pointed at the stable and canary Services."""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Service port in the backend references; default: server.port."""


class IstioRouting(KubeModel):
    """Weights as route weights of an Istio VirtualService."""

    virtual_service: ResourceName
    """Name of the VirtualService."""
    routes: (
        Annotated[list[Annotated[str, StringConstraints(max_length=253)]], Field(max_length=16)]
        | None
    ) = None
    """Names of the HTTP routes to weight; default: all of them."""


class TrafficRouting(KubeModel):
    """How weights reach requests; default: replicas."""

    model_config = cel_rules(
        cel(
            "(has(self.replicas) ? 1 : 0) + (has(self.gatewayAPI) ? 1 : 0) + "
            "(has(self.istio) ? 1 : 0) <= 1",
            ROUTER_MESSAGE,
        ),
    )

    replicas: ReplicasRouting | None = None
    """Weight by replica ratio behind one Service (the default)."""
    gateway_api: GatewayAPIRouting | None = Field(default=None, alias="gatewayAPI")
    """Weight with a Gateway API HTTPRoute."""
    istio: IstioRouting | None = None
    """Weight with an Istio VirtualService."""

    @model_validator(mode="after")
    def _one_router(self) -> TrafficRouting:
        if sum(r is not None for r in (self.replicas, self.gateway_api, self.istio)) > 1:
            raise ValueError(ROUTER_MESSAGE)
        return self


class RolloutSpec(KubeModel):
    """How a new model replaces the stable one."""

    steps: Annotated[list[RolloutStep], Field(max_length=MAX_STEPS)] | None = None
    """Steps run in order, each exactly one of shadow, setWeight, pause or analysis; empty:
    the new model replaces the old one once it is ready."""
    analysis: AnalysisSpec | None = None
    """Background analysis for the whole rollout, and default metrics of analysis steps."""
    traffic_routing: TrafficRouting | None = None
    """How weights are applied; default: by replica ratio."""


class ModelDeploymentSpec(KubeModel):
    """Which model to serve, how, and how a new one is rolled out.

    Pause with ``paused``; promote, abort and retry with the annotations described on the
    kind (``kubeloop.io/promote``, ``kubeloop.io/promote-full``, ``kubeloop.io/abort``,
    ``kubeloop.io/retry``); undo by setting ``model`` to ``status.previous``.
    """

    model: ModelSource
    """The model to serve; changing it starts a rollout."""
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Pods serving the stable model (the canary gets its share on top); managed by the
    autoscaler when autoscaling is set."""
    server: ServerSpec | None = None
    """Server image, resources, port, workers and batching, and how its pods are placed
    (nodeSelector, tolerations, affinity, topology spread), who they run as
    (serviceAccountName), their env, labels, annotations and disruption budget."""
    autoscaling: AutoscalingSpec | None = None
    """Scale on CPU with a HorizontalPodAutoscaler."""
    rollout: RolloutSpec | None = None
    """Canary steps, analysis and traffic routing."""
    paused: bool = False
    """Hold the rollout where it is (weights stay, timers stop) until set back to false."""


# -- status -------------------------------------------------------------------------------------


class RegistryVersion(KubeModel):
    """A numbered version of a registered model in the MLflow registry."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """The registered model."""
    version: Annotated[int, Field(ge=1)]
    """The version number."""


class ServedModel(KubeModel):
    """A model being served, and its pods."""

    uri: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """URI of the model file."""
    sha256: Sha256 | None = None
    """Its SHA-256, verified by the server before loading."""
    training_run: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The TrainingRun that produced it, when known."""
    registry: RegistryVersion | None = None
    """The MLflow registry version spec.model.registry resolved to, when it came from there."""
    revision: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Short name for columns and events: the TrainingRun's name, else the registry version as
    ``name/version``, else ``sha256:`` and the first 12 hex digits."""
    replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods created for it."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods that passed their readiness check."""


class PreviousModel(KubeModel):
    """The model served before the last promotion; ``kubectl kubeloop undo`` copies it to
    spec.model: ``registry`` as ``spec.model.registry {name, version}`` when the model came from
    the MLflow registry, else ``trainingRun`` as trainingRunRef, else uri and sha256 as
    storageUri and sha256."""

    uri: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """URI of the model file."""
    sha256: Sha256 | None = None
    """Its SHA-256."""
    training_run: Annotated[str, StringConstraints(max_length=253)] | None = None
    """The TrainingRun that produced it, when known."""
    registry: RegistryVersion | None = None
    """The MLflow registry version it was served as (spec.model.registry), when it was."""
    revision: Annotated[str, StringConstraints(max_length=253)] | None = None
    """Short name, as status.stable.revision said while it was stable."""


class AnalysisRun(KubeModel):
    """One measurement of one metric."""

    name: Annotated[str, StringConstraints(max_length=63)]
    """The metric's name."""
    value: float | None = None
    """The measured value; empty when the measurement itself failed."""
    min: float | None = None
    """The lower bound it was held to."""
    max: float | None = None
    """The upper bound it was held to."""
    passed: bool
    """Whether the value was within bounds."""
    step: Annotated[int, Field(ge=0)] | None = None
    """The rollout step during which it was measured."""
    time: AwareDatetime
    """When it was measured."""
    message: Annotated[str, StringConstraints(max_length=4096)] | None = None
    """Why it failed, when it did (e.g. the query returned nothing)."""


class AnalysisStatus(KubeModel):
    """Recent measurements of the current rollout."""

    runs: Annotated[list[AnalysisRun], Field(max_length=MAX_ANALYSIS_RUNS)] | None = None
    """The latest measurements, newest last (at most 50)."""
    consecutive_failures: Annotated[int, Field(ge=0)] = 0
    """Failed measurements in a row."""
    failures: Annotated[int, Field(ge=0)] = 0
    """Failed measurements in this rollout."""
    consecutive_inconclusive: Annotated[int, Field(ge=0)] = 0
    """Inconclusive rounds in a row (no value, or too few samples)."""
    last_background_result: Literal["Passed", "Failed", "Inconclusive"] | None = None
    """The outcome of the latest background round; the last step completes only after Passed."""
    last_background_time: AwareDatetime | None = None
    """When the latest background round was measured (the next is due one interval later)."""
    paused_inconclusive: bool = False
    """The rollout is paused because analysis was inconclusive more often than inconclusiveLimit
    allows; ``kubectl kubeloop promote`` resumes it."""


Token = Annotated[str, StringConstraints(max_length=253)]


class HandledRequests(KubeModel):
    """The last value of each request annotation the operator has acted on."""

    promote: Token | None = None
    """Last handled kubeloop.io/promote."""
    promote_full: Token | None = None
    """Last handled kubeloop.io/promote-full."""
    abort: Token | None = None
    """Last handled kubeloop.io/abort."""
    retry: Token | None = None
    """Last handled kubeloop.io/retry."""


class RegistryAliases(KubeModel):
    """The aliases this deployment set last in the MLflow registry."""

    model: Annotated[str, StringConstraints(max_length=256)] | None = None
    """The registered model."""
    champion: Annotated[str, StringConstraints(max_length=32)] | None = None
    """The version the ``champion`` alias is on: the stable model's."""
    challenger: Annotated[str, StringConstraints(max_length=32)] | None = None
    """The version the ``challenger`` alias is on: the canary's, while a rollout runs."""


class RegistryStatus(KubeModel):
    """The MLflow registry as this deployment sees it (docs/mlflow.md)."""

    source: Annotated[str, StringConstraints(max_length=512)] | None = None
    """spec.model.registry as ``name@alias`` or ``name/version``."""
    version: Annotated[str, StringConstraints(max_length=32)] | None = None
    """The version it resolved to last."""
    uri: Annotated[str, StringConstraints(max_length=MAX_URI_LENGTH)] | None = None
    """That version's model URI (its ``kubeloop.uri`` tag)."""
    sha256: Sha256 | None = None
    """That version's ``kubeloop.sha256`` tag, which the server verifies."""
    aliases: RegistryAliases | None = None
    """The champion/challenger aliases as this deployment set them."""


class ModelDeploymentStatus(KubeModel):
    """What is served and where the rollout is, written by the operator."""

    phase: Phase | None = None
    """Progressing, Healthy, Paused or Degraded."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this status describes."""
    conditions: Conditions | None = None
    """Ready, StableReady, CanaryReady, AnalysisPassing, Progressing, Degraded."""
    stable: ServedModel | None = None
    """The model answering (most) requests."""
    canary: ServedModel | None = None
    """The model being rolled out, while a rollout runs."""
    previous: PreviousModel | None = None
    """The model before the last promotion, for undo."""
    current_step: Annotated[int, Field(ge=0)] | None = None
    """Index of the rollout step being run; equal to the number of steps when done."""
    canary_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    """Percentage of live traffic served by the canary."""
    shadow_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """Percentage of requests mirrored to the canary."""
    step_started_at: AwareDatetime | None = None
    """When the current step began (pause and shadow durations count from here)."""
    analysis: AnalysisStatus | None = None
    """Recent analysis measurements."""
    replicas: Annotated[int, Field(ge=0)] | None = None
    """Pods of the stable model (the scale subresource reads this)."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Ready pods of the stable model."""
    selector: Annotated[str, StringConstraints(max_length=1024)] | None = None
    """Label selector of the stable pods, for the scale subresource (HPA)."""
    aborted: bool | None = None
    """True after an abort or failed analysis, until a retry or a new spec.model."""
    handled_requests: HandledRequests | None = None
    """Request annotations already acted on."""
    last_failure: LastFailure | None = None
    """The most recent failure, e.g. the metric that failed analysis."""
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)] | None = None
    """A one-line summary for people."""
    registry: RegistryStatus | None = None
    """spec.model.registry's resolution and the MLflow aliases (operator with MLflow only)."""


class ModelDeployment(KubeModel):
    """A ModelDeployment resource as stored in the API server."""

    api_version: Literal["kubeloop.io/v1alpha1"] = "kubeloop.io/v1alpha1"
    kind: Literal["ModelDeployment"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None
