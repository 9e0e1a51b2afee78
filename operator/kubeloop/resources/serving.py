"""The serving children of a ModelDeployment: a Deployment per track, three Services, an HPA.

* ``<name>-stable`` and ``<name>-canary`` Deployments run ``kubeloop serve`` with the model's
  URI and sha256 pinned (the server refuses any other file), ``--track`` set so every metric
  series says which side it came from, and the restricted pod security of every runtime pod.
* ``<name>-stable`` / ``<name>-canary`` Services select one track each: gateways and meshes
  weight between them, and the stable server mirrors shadow traffic to the canary Service.
* ``<name>`` selects what the canary's weight says: only stable pods at 0 %, both tracks in
  between (the replicas router: traffic follows the pod ratio), only canary pods at 100 %.
  Changing a Service's selector is instant and restarts no pod, which is why it, not a pod
  label, decides whether the canary answers users (a shadowing canary must answer no one).
* an optional HorizontalPodAutoscaler scales the ModelDeployment itself through its scale
  subresource, so spec.replicas stays the one number every other rule reads.
* an optional PodDisruptionBudget ``<name>-stable`` (spec.server.podDisruptionBudget) selects
  the stable track's pods only: a drain may not empty the model users are served by, while a
  canary (which gets no or little traffic) stays free to move.

``spec.server`` also shapes both tracks' pod templates the same way: serviceAccountName,
nodeSelector, tolerations, affinity, topologySpreadConstraints (without a labelSelector, a
constraint counts its own track's pods), extra env (after the operator's own variables and
before the pins of :mod:`kubeloop.trust.pod_env`; the API models refuse pinned names), and pod
labels and annotations, under the operator's own (which keep their values and are refused in
the spec: :func:`pod_metadata_conflicts`).

Everything here is a pure function of its arguments (wire form in, wire form out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kubeloop.api.batching import DEFAULT_MAX_BATCH_LATENCY_MS, DEFAULT_MAX_BATCH_SIZE
from kubeloop.resources.meta import child_name, labels_for, owner_reference
from kubeloop.resources.storage import PodStorage
from kubeloop.resources.trainingjob import (
    SCRATCH_DIR,
    restricted_container_security,
    restricted_pod_security,
    scratch_volume,
)
from kubeloop.trust.pod_env import pinned_env

Track = Literal["stable", "canary"]
TRACKS: tuple[Track, Track] = ("stable", "canary")
KIND_LABEL = "modeldeployment"
OWNER_LABEL = "kubeloop.io/modeldeployment"
TRACK_LABEL = "kubeloop.io/track"
COMPONENT = "serving"
SERVER_CONTAINER = "server"
PORT_NAME = "http"
DEFAULT_PORT = 8080
GRPC_PORT_NAME = "grpc"
METRICS_PORT_NAME = "metrics"
AUTH_TOKEN_ENV = "KUBELOOP_SERVE_AUTH_TOKEN"
GRPC_PORT = 8081  # the Open Inference Protocol's gRPC port in KServe and MLServer too
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
SHA_ANNOTATION = "kubeloop.io/model-sha256"
# Seconds a stopping server keeps answering (readiness already failing) so endpoints and load
# balancers stop sending before it closes: no request is cut during a roll or a scale-down.
SHUTDOWN_DELAY_SECONDS = 5


@dataclass(frozen=True)
class ServingSettings:
    """What the operator's configuration contributes to every server pod."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    default_storage_uri: str = ""
    models_pvc: str = ""
    allowed_images: tuple[str, ...] = ()
    """Images besides ``image`` a spec may ask for (kubeloop.trust.images)."""


@dataclass(frozen=True)
class RegistryVersion:
    """A numbered version of a registered model in the MLflow registry."""

    name: str
    version: int

    def wire(self) -> dict[str, Any]:
        """As status and spec.model.registry spell it."""
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True)
class ModelRef:
    """A model as a server pod needs it: where it is and the checksum it must have."""

    uri: str
    sha256: str
    training_run: str | None = None
    registry: RegistryVersion | None = None
    """The MLflow registry version it was resolved from (spec.model.registry), when it was."""

    @property
    def revision(self) -> str:
        """Short name for columns and events: the TrainingRun, else the registry version
        (``churn/3``, as spec.model.registry names it), else ``sha256:`` + 12 hex."""
        if self.training_run:
            return self.training_run
        if self.registry is not None:
            return f"{self.registry.name}/{self.registry.version}"
        return f"sha256:{self.sha256[:12]}"

    def same_artifact(self, other: ModelRef | None) -> bool:
        """Whether ``other`` is the same file: the checksum decides, not where it came from."""
        return other is not None and other.uri == self.uri and other.sha256 == self.sha256


@dataclass(frozen=True)
class Shadow:
    """Mirroring from the stable server to the canary Service."""

    url: str
    percent: int


def deployment_name(md_name: str, track: Track) -> str:
    return child_name(md_name, track)


def track_service_name(md_name: str, track: Track) -> str:
    return child_name(md_name, track)


def main_service_name(md_name: str) -> str:
    return child_name(md_name, "")


def hpa_name(md_name: str) -> str:
    return child_name(md_name, "")


def pdb_name(md_name: str) -> str:
    return child_name(md_name, "stable")


def server_port(md: Mapping[str, Any]) -> int:
    return int(((md["spec"].get("server") or {}).get("port")) or DEFAULT_PORT)


def metrics_port(md: Mapping[str, Any]) -> int:
    """The port serving /metrics and /profile: server.metricsPort, else server.port."""
    separate = (md["spec"].get("server") or {}).get("metricsPort")
    return int(separate) if separate else server_port(md)


def auth_env(md: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The bearer token of spec.server.auth, by reference to its Secret (never its value)."""
    auth = (md["spec"].get("server") or {}).get("auth")
    if not auth:
        return []
    selector = {"name": auth["secretRef"]["name"], "key": auth.get("key") or "token"}
    return [{"name": AUTH_TOKEN_ENV, "valueFrom": {"secretKeyRef": selector}}]


def grpc_port(md: Mapping[str, Any]) -> int:
    """The gRPC port: 8081, or the next of 8082, 8083 that server.port and the metrics port
    leave free."""
    taken = {server_port(md), metrics_port(md)}
    return next(p for p in (GRPC_PORT, GRPC_PORT + 1, GRPC_PORT + 2) if p not in taken)


def track_selector(md_name: str, track: Track | None) -> dict[str, str]:
    """Pod selector of one track (or of both when ``track`` is None)."""
    selector = {OWNER_LABEL: md_name}
    if track is not None:
        selector[TRACK_LABEL] = track
    return selector


def selector_string(selector: Mapping[str, str]) -> str:
    """A label selector as the scale subresource and ``kubectl get -l`` write it."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def main_service_selector(md_name: str, canary_weight: int) -> dict[str, str]:
    """Who answers users through the main Service at this canary weight."""
    if canary_weight <= 0:
        return track_selector(md_name, "stable")
    if canary_weight >= 100:
        return track_selector(md_name, "canary")
    return track_selector(md_name, None)


def shadow_url(md: Mapping[str, Any]) -> str:
    """Where the stable server mirrors requests: the canary Service's in-cluster address."""
    meta = md["metadata"]
    service = track_service_name(meta["name"], "canary")
    return f"http://{service}.{meta['namespace']}.svc:{server_port(md)}"


def _meta(md: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": md["metadata"]["namespace"],
        "labels": dict(labels),
        "ownerReferences": [owner_reference(md)],
    }


def server_args(
    md: Mapping[str, Any], track: Track, model_uri: str, model: ModelRef, shadow: Shadow | None
) -> list[str]:
    """The ``kubeloop serve`` command line of a track's pods."""
    server = md["spec"].get("server") or {}
    args = [
        "serve",
        "--model-uri",
        model_uri,
        "--sha256",
        model.sha256,
        "--model-name",
        md["metadata"]["name"],
        "--port",
        str(server_port(md)),
        "--grpc-port",
        str(grpc_port(md)),
        "--track",
        track,
        "--workers",
        str(server.get("workers", 1)),
    ]
    batching = server.get("batching")
    if batching:
        args += [
            "--max-batch-size",
            str(batching.get("maxBatchSize", DEFAULT_MAX_BATCH_SIZE)),
            "--max-batch-latency-ms",
            str(batching.get("maxLatencyMs", DEFAULT_MAX_BATCH_LATENCY_MS)),
        ]
    if shadow is not None and shadow.percent > 0:
        args += ["--shadow-url", shadow.url, "--shadow-percent", str(shadow.percent)]
    if server.get("metricsPort"):
        args += ["--metrics-port", str(server["metricsPort"])]
    return args


def operator_pod_annotations(md: Mapping[str, Any], sha256: str) -> dict[str, str]:
    """The annotations the operator puts on every server pod (they win over the spec's)."""
    return {
        SHA_ANNOTATION: sha256,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port(md)),
        "prometheus.io/path": "/metrics",
    }


def pod_metadata_conflicts(md: Mapping[str, Any]) -> list[str]:
    """A message for every label or annotation of spec.server that a server pod already gets
    from the operator (the API models refuse the kubeloop.io/ prefix and the operator's labels
    up front; this also covers the rest, e.g. prometheus.io/scrape)."""
    server = md["spec"].get("server") or {}
    name = md["metadata"]["name"]
    own_labels = {key for track in TRACKS for key in labels_for(KIND_LABEL, name, COMPONENT, track=track)}
    own_annotations = set(operator_pod_annotations(md, ""))
    problems = []
    for field, own in (("podLabels", own_labels), ("podAnnotations", own_annotations)):
        for key in sorted(set(server.get(field) or {}) & own):
            problems.append(
                f'spec.server.{field}["{key}"]: the operator sets this key on every server pod; '
                "remove it from the spec"
            )
    return problems


def pod_placement(md: Mapping[str, Any], track: Track) -> dict[str, Any]:
    """Who a track's pods run as and where they may run, from spec.server (Pod spec fields)."""
    server = md["spec"].get("server") or {}
    placement: dict[str, Any] = {
        # The server never calls the Kubernetes API: no token unless the spec asks for one.
        "automountServiceAccountToken": bool(server.get("automountServiceAccountToken", False)),
    }
    if server.get("serviceAccountName"):
        placement["serviceAccountName"] = server["serviceAccountName"]
    for field in ("nodeSelector", "tolerations", "affinity"):
        if server.get(field):
            placement[field] = server[field]
    constraints = server.get("topologySpreadConstraints") or []
    if constraints:
        own_pods = {"matchLabels": track_selector(md["metadata"]["name"], track)}
        placement["topologySpreadConstraints"] = [
            {**constraint, "labelSelector": constraint.get("labelSelector") or own_pods}
            for constraint in constraints
        ]
    return placement


def build_track_deployment(
    md: Mapping[str, Any],
    track: Track,
    model: ModelRef,
    replicas: int,
    settings: ServingSettings,
    shadow: Shadow | None = None,
) -> dict[str, Any]:
    """The Deployment of one track serving ``model`` on ``replicas`` pods."""
    name = md["metadata"]["name"]
    spec = md["spec"]
    server = spec.get("server") or {}
    port = server_port(md)
    storage = PodStorage()
    model_uri = storage.resolve(
        model.uri,
        read_only=True,
        models_pvc=settings.models_pvc,
        models_root=settings.default_storage_uri,
    )
    labels = labels_for(KIND_LABEL, name, COMPONENT, track=track)
    pod_labels = {**(server.get("podLabels") or {}), **labels}
    scratch, scratch_mount = scratch_volume()
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": server.get("image") or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kubeloop"],
        "args": server_args(md, track, model_uri, model, shadow),
        "ports": [
            {"name": PORT_NAME, "containerPort": port, "protocol": "TCP"},
            {"name": GRPC_PORT_NAME, "containerPort": grpc_port(md), "protocol": "TCP"},
            *(
                [{"name": METRICS_PORT_NAME, "containerPort": metrics_port(md), "protocol": "TCP"}]
                if metrics_port(md) != port
                else []
            ),
        ],
        "env": [
            {"name": "HOME", "value": SCRATCH_DIR},
            {"name": "KUBELOOP_SERVE_SHUTDOWN_DELAY_SECONDS", "value": str(SHUTDOWN_DELAY_SECONDS)},
            # The spec's own variables; the API models refuse the names the operator sets or
            # pins (kubeloop.trust.pod_env.user_env_refusal), so none of them replaces one.
            *[dict(entry) for entry in server.get("env") or []],
            *auth_env(md),
        ],
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": PORT_NAME},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": LIVE_PATH, "port": PORT_NAME},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": server.get("resources") or {},
        "securityContext": restricted_container_security(),
        "volumeMounts": [scratch_mount, *storage.mounts],
    }
    secret = (((spec.get("model") or {}).get("credentials") or {}).get("secretRef") or {}).get(
        "name"
    )
    if secret:
        # Credentials travel by reference only; their values never enter the spec or status.
        container["envFrom"] = [{"secretRef": {"name": secret}}]
        # ...and pins what the Secret may not set: an env entry wins over its key.
        container["env"] += pinned_env(container["env"])
    template_annotations = {
        **(server.get("podAnnotations") or {}),
        **operator_pod_annotations(md, model.sha256),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(md, deployment_name(name, track), labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": track_selector(name, track)},
            "revisionHistoryLimit": 3,
            # A new model or new flags roll pods one surge at a time and never take a ready
            # pod away first, so a roll (e.g. the promotion) never leaves a traffic gap.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": pod_labels, "annotations": template_annotations},
                "spec": {
                    **pod_placement(md, track),
                    "securityContext": restricted_pod_security(),
                    "terminationGracePeriodSeconds": SHUTDOWN_DELAY_SECONDS + 30,
                    "containers": [container],
                    "volumes": [scratch, *storage.volumes],
                },
            },
        },
    }


def build_service(
    md: Mapping[str, Any], name: str, selector: Mapping[str, str], component_track: str
) -> dict[str, Any]:
    """A ClusterIP Service on the server port selecting ``selector``."""
    port = server_port(md)
    labels = labels_for(KIND_LABEL, md["metadata"]["name"], COMPONENT, service=component_track)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(md, name, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [
                {"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"},
                # appProtocol tells meshes and gateways this port speaks HTTP/2 gRPC.
                {
                    "name": GRPC_PORT_NAME,
                    "port": grpc_port(md),
                    "targetPort": GRPC_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
            ],
        },
    }


def build_services(md: Mapping[str, Any], canary_weight: int) -> list[dict[str, Any]]:
    """The main Service (selector by weight) and one Service per track."""
    name = md["metadata"]["name"]
    return [
        build_service(
            md, main_service_name(name), main_service_selector(name, canary_weight), "main"
        ),
        *(
            build_service(md, track_service_name(name, track), track_selector(name, track), track)
            for track in TRACKS
        ),
    ]


def build_pdb(md: Mapping[str, Any]) -> dict[str, Any] | None:
    """The PodDisruptionBudget of the stable track from spec.server.podDisruptionBudget (None
    when it is not set). It selects by the track label, so whichever model the stable
    Deployment runs (before, during and after a promotion) is covered, and never the canary."""
    budget = (md["spec"].get("server") or {}).get("podDisruptionBudget")
    if not budget:
        return None
    name = md["metadata"]["name"]
    spec: dict[str, Any] = {"selector": {"matchLabels": track_selector(name, "stable")}}
    for field in ("minAvailable", "maxUnavailable"):
        if budget.get(field) is not None:
            spec[field] = budget[field]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(md, pdb_name(name), labels_for(KIND_LABEL, name, "disruption-budget")),
        "spec": spec,
    }


def build_hpa(md: Mapping[str, Any]) -> dict[str, Any] | None:
    """The HorizontalPodAutoscaler from spec.autoscaling, targeting the ModelDeployment's scale
    subresource (None when autoscaling is not set)."""
    autoscaling = md["spec"].get("autoscaling")
    if not autoscaling:
        return None
    name = md["metadata"]["name"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(md, hpa_name(name), labels_for(KIND_LABEL, name, "autoscaling")),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": md["apiVersion"],
                "kind": md["kind"],
                "name": name,
            },
            "minReplicas": autoscaling.get("minReplicas", 1),
            "maxReplicas": autoscaling["maxReplicas"],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.get(
                                "targetCPUUtilizationPercentage", 80
                            ),
                        },
                    },
                }
            ],
        },
    }
