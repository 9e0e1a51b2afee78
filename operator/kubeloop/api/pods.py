"""Kubernetes' own pod types, embedded in a spec where users shape the pods the operator creates.

Each model here has the shape and the field names of its Kubernetes counterpart (``Affinity``,
``TopologySpreadConstraint``, ``EnvVar``...), so a block copied from a Pod spec works as written
and ``kubectl explain`` shows the same fields. They are typed rather than passed through
(``x-kubernetes-preserve-unknown-fields``): a misspelt field is refused when the object is
written, not when the operator later applies the Deployment. Left out: a pod-affinity term's
``matchLabelKeys`` and ``mismatchLabelKeys`` (newer than the rest; ask if you need them). The API
server validates everything again when the operator applies the pod template.

What differs from Kubernetes, and why:

* :class:`EnvVar` takes ``value`` or the downward API (``fieldRef``, ``resourceFieldRef``), not
  ``secretKeyRef`` / ``configMapKeyRef``: a reference inside an ``env`` list cannot be checked at
  admission against the author's rights (the chart's policy can afford one authorizer check per
  field, not one per list entry), so Secrets reach the pods only through the fields that are
  checked (``credentials.secretRef``). Names the operator pins are refused
  (:mod:`kubeloop.trust.pod_env`).
* pod labels and annotations may not use keys the operator sets itself (see
  :data:`RESERVED_LABEL_KEYS`): the selector of every Deployment, Service and
  PodDisruptionBudget reads them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from kubeloop.api.common import KubeModel, Quantity, cel, cel_rules, validations
from kubeloop.trust import pod_env

MAX_TERMS = 16
MAX_VALUES = 64
MAX_ENV = 64
MAX_ENV_NAME_LENGTH = 256
MAX_POD_METADATA = 32
MAX_ANNOTATION_VALUE_LENGTH = 16384

# -- label selectors (meta/v1 LabelSelector) ----------------------------------------------------

LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=317)]
LabelValueText = Annotated[str, StringConstraints(max_length=63)]
SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
Values = Annotated[list[Annotated[str, StringConstraints(max_length=253)]], Field(max_length=MAX_VALUES)]


class LabelSelectorRequirement(KubeModel):
    """A label selector requirement: a key, an operator and values (as in Kubernetes)."""

    key: LabelKey
    """The label key the selector applies to."""
    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""
    values: Values | None = None
    """Values for In and NotIn (non-empty); empty for Exists and DoesNotExist."""


class LabelSelector(KubeModel):
    """Selects pods by their labels; the requirements are ANDed (as in Kubernetes)."""

    match_labels: Annotated[dict[str, LabelValueText], Field(max_length=MAX_POD_METADATA)] | None = None
    """Labels a pod must have, key and value."""
    match_expressions: (
        Annotated[list[LabelSelectorRequirement], Field(max_length=MAX_TERMS)] | None
    ) = None
    """Requirements a pod's labels must meet."""


# -- node affinity ------------------------------------------------------------------------------


class NodeSelectorRequirement(KubeModel):
    """A requirement on a node's labels (or fields): a key, an operator and values."""

    key: LabelKey
    """The label key (or field name, in matchFields) the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """In, NotIn, Exists, DoesNotExist, Gt or Lt (Gt and Lt compare one integer value)."""
    values: Values | None = None
    """Values for In, NotIn (non-empty), Gt and Lt (exactly one integer)."""


class NodeSelectorTerm(KubeModel):
    """Requirements a node must meet together (ANDed)."""

    match_expressions: (
        Annotated[list[NodeSelectorRequirement], Field(max_length=MAX_TERMS)] | None
    ) = None
    """Requirements on the node's labels."""
    match_fields: Annotated[list[NodeSelectorRequirement], Field(max_length=MAX_TERMS)] | None = None
    """Requirements on the node's fields (only metadata.name is supported by Kubernetes)."""


class NodeSelector(KubeModel):
    """Terms of which a node must meet at least one (ORed)."""

    node_selector_terms: Annotated[list[NodeSelectorTerm], Field(min_length=1, max_length=MAX_TERMS)]
    """The terms; a node matching any of them is eligible."""


class PreferredSchedulingTerm(KubeModel):
    """A node preference with a weight."""

    weight: Annotated[int, Field(ge=1, le=100)]
    """Weight (1-100) added to a node's score when it matches ``preference``."""
    preference: NodeSelectorTerm
    """The term a preferred node matches."""


class NodeAffinity(KubeModel):
    """Which nodes the pods may (required) or would rather (preferred) run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    """A node must match this to run the pods."""
    preferred_during_scheduling_ignored_during_execution: (
        Annotated[list[PreferredSchedulingTerm], Field(max_length=MAX_TERMS)] | None
    ) = None
    """Nodes matching these score higher, by weight."""


# -- pod (anti-)affinity -----------------------------------------------------------------------


class PodAffinityTerm(KubeModel):
    """Pods matching ``labelSelector`` (in ``namespaces``) on the same ``topologyKey`` domain."""

    label_selector: LabelSelector | None = None
    """The pods this term is about, e.g. ``{matchLabels: {kubeloop.io/modeldeployment: NAME,
    kubeloop.io/track: stable}}`` for this deployment's stable pods."""
    namespace_selector: LabelSelector | None = None
    """Namespaces (by label) whose pods count; empty with empty namespaces: this namespace."""
    namespaces: (
        Annotated[list[Annotated[str, StringConstraints(max_length=63)]], Field(max_length=MAX_VALUES)]
        | None
    ) = None
    """Namespaces whose pods count, by name."""
    topology_key: Annotated[str, StringConstraints(min_length=1, max_length=317)]
    """The node label that defines a domain, e.g. ``kubernetes.io/hostname`` (one node) or
    ``topology.kubernetes.io/zone``."""


class WeightedPodAffinityTerm(KubeModel):
    """A pod (anti-)affinity preference with a weight."""

    weight: Annotated[int, Field(ge=1, le=100)]
    """Weight (1-100) added to a node's score when the term holds there."""
    pod_affinity_term: PodAffinityTerm
    """The term."""


class PodAffinity(KubeModel):
    """Run near pods matching a term (same node, same zone...)."""

    required_during_scheduling_ignored_during_execution: (
        Annotated[list[PodAffinityTerm], Field(max_length=MAX_TERMS)] | None
    ) = None
    """Terms that must all hold on the chosen node."""
    preferred_during_scheduling_ignored_during_execution: (
        Annotated[list[WeightedPodAffinityTerm], Field(max_length=MAX_TERMS)] | None
    ) = None
    """Terms that raise a node's score, by weight."""


class Affinity(KubeModel):
    """Node affinity, pod affinity and pod anti-affinity, as in a Pod spec."""

    node_affinity: NodeAffinity | None = None
    """Rules on the nodes' labels."""
    pod_affinity: PodAffinity | None = None
    """Run near other pods."""
    pod_anti_affinity: PodAffinity | None = None
    """Run away from other pods (e.g. one server per node)."""


# -- topology spread ----------------------------------------------------------------------------


class TopologySpreadConstraint(KubeModel):
    """How evenly the pods spread over a topology domain (node, zone...), as in a Pod spec,
    with one convenience: without ``labelSelector`` the operator counts the pods of the same
    track (``kubeloop.io/modeldeployment`` and ``kubeloop.io/track`` labels), which is what
    spreading a Deployment's replicas means."""

    max_skew: Annotated[int, Field(ge=1)]
    """The largest allowed difference in matching pods between two domains."""
    topology_key: Annotated[str, StringConstraints(min_length=1, max_length=317)]
    """The node label that defines a domain, e.g. ``topology.kubernetes.io/zone``."""
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    """DoNotSchedule keeps a pod pending rather than break the skew; ScheduleAnyway only
    prefers the nodes that keep it."""
    label_selector: LabelSelector | None = None
    """The pods counted; default: this track's pods."""
    min_domains: Annotated[int, Field(ge=1)] | None = None
    """Fewest eligible domains (with DoNotSchedule)."""
    node_affinity_policy: Literal["Honor", "Ignore"] | None = None
    """Whether nodeSelector and nodeAffinity limit the domains counted (default Honor)."""
    node_taints_policy: Literal["Honor", "Ignore"] | None = None
    """Whether node taints limit the domains counted (default Ignore)."""
    match_label_keys: (
        Annotated[list[Annotated[str, StringConstraints(max_length=317)]], Field(max_length=MAX_TERMS)]
        | None
    ) = None
    """Pod label keys whose values are added to the selector (e.g. ``pod-template-hash``, to
    count only the pods of the current ReplicaSet)."""


# -- environment --------------------------------------------------------------------------------

ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_ENV_NAME = re.compile(ENV_NAME_PATTERN)


def _cel_string_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


# The same decision as pod_env.user_env_refusal, said in CEL so the API server refuses the
# object before it is stored; the message names the variable, the error's path its index.
ENV_NAME_RULE = {
    "message": "this variable is set by the operator and may not be set in env; remove it",
    "rule": (
        f"!(self in {_cel_string_list(sorted(pod_env.USER_REFUSED_NAMES))}) && "
        f"!self.startsWith('{pod_env.RUNTIME_PREFIX}')"
    ),
    "messageExpression": (
        "self + ' is set by the operator and may not be set in env (' + "
        f"(self.startsWith('{pod_env.RUNTIME_PREFIX}') ? "
        f"'{pod_env.RUNTIME_PREFIX}* variables are the runtime\\'s own settings: use the spec\\'s fields'"
        " : 'it chooses the code that runs, or a setting the pod depends on') + '); remove it'"
    ),
}


def _env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not an environment variable name: use letters, digits, '_', '-' and "
            "'.', not starting with a digit"
        )
    refusal = pod_env.user_env_refusal(name)
    if refusal is not None:
        raise ValueError(refusal)
    return name


EnvName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ENV_NAME_LENGTH),
    AfterValidator(_env_name),
    Field(json_schema_extra={"pattern": ENV_NAME_PATTERN, **validations(ENV_NAME_RULE)}),
]


class ObjectFieldSelector(KubeModel):
    """A field of the pod (downward API), e.g. ``metadata.name`` or ``status.podIP``."""

    field_path: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    """Path of the field, e.g. ``metadata.name``, ``spec.nodeName``, ``status.hostIP``."""
    api_version: Annotated[str, StringConstraints(max_length=63)] | None = None
    """Version of the schema the path is written in; default v1."""


class ResourceFieldSelector(KubeModel):
    """A resource request or limit of the server container (downward API)."""

    resource: Literal[
        "limits.cpu", "limits.memory", "limits.ephemeral-storage",
        "requests.cpu", "requests.memory", "requests.ephemeral-storage",
    ]  # fmt: skip
    """Which request or limit, e.g. ``limits.cpu``."""
    container_name: Annotated[str, StringConstraints(max_length=63)] | None = None
    """The container; default: the server container."""
    divisor: Quantity | None = None
    """The unit of the value, e.g. ``1Mi``; default 1."""


ENV_SOURCE_MESSAGE = "set exactly one of fieldRef or resourceFieldRef"
ENV_VALUE_MESSAGE = "set value or valueFrom, not both"


class EnvVarSource(KubeModel):
    """Where a variable's value comes from: the pod's own fields or resources (downward API).
    Secrets are not taken here (see the module's notes): name them in ``credentials``."""

    model_config = cel_rules(
        cel("has(self.fieldRef) != has(self.resourceFieldRef)", ENV_SOURCE_MESSAGE),
    )

    field_ref: ObjectFieldSelector | None = None
    """A field of the pod."""
    resource_field_ref: ResourceFieldSelector | None = None
    """A resource request or limit of the container."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        if (self.field_ref is None) == (self.resource_field_ref is None):
            raise ValueError(ENV_SOURCE_MESSAGE)
        return self


class EnvVar(KubeModel):
    """One environment variable of the server container, as in a Pod spec."""

    model_config = cel_rules(cel("!has(self.value) || !has(self.valueFrom)", ENV_VALUE_MESSAGE))

    name: EnvName
    """The variable's name. Names the operator sets or pins are refused (``PYTHONPATH``,
    ``LD_PRELOAD``, every ``KUBELOOP_*``...: see docs/security.md)."""
    value: Annotated[str, StringConstraints(max_length=32768)] | None = None
    """The value; ``$(OTHER)`` expands a variable defined before it, as in Kubernetes."""
    value_from: EnvVarSource | None = None
    """Take the value from the pod's fields or resources instead."""

    @model_validator(mode="after")
    def _one_value(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(ENV_VALUE_MESSAGE)
        return self


Env = Annotated[
    list[EnvVar],
    Field(
        max_length=MAX_ENV,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    ),
]


# -- pod metadata -------------------------------------------------------------------------------

_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_KEY = re.compile(rf"^(?:(?P<prefix>{_DNS_SUBDOMAIN})/)?(?P<name>{_QUALIFIED_NAME})$")
_LABEL_VALUE = re.compile(rf"^({_QUALIFIED_NAME})?$")

RESERVED_PREFIX = "kubeloop.io/"
"""Label and annotation keys under this prefix are the operator's (selectors, model checksum)."""
RESERVED_LABEL_KEYS = ("app.kubernetes.io/managed-by", "app.kubernetes.io/component")
"""Further labels the operator sets on every pod it creates."""
RESERVED_LABEL_MESSAGE = (
    f"label keys starting with {RESERVED_PREFIX} and {', '.join(RESERVED_LABEL_KEYS)} are set by "
    "the operator (the selectors of the Deployments, Services and PodDisruptionBudget read them): "
    "choose another key"
)
RESERVED_ANNOTATION_MESSAGE = (
    f"annotation keys starting with {RESERVED_PREFIX} are set by the operator: choose another key"
)


def _key_problem(key: str, what: str) -> str | None:
    match = _KEY.fullmatch(key)
    if match is None or len(match["name"]) > 63 or len(match["prefix"] or "") > 253:
        return (
            f"{what} key {key!r} is not valid: write an optional DNS prefix and '/', then a name "
            "of at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or "
            "digit"
        )
    return None


def _labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        problem = _key_problem(key, "label")
        if problem is not None:
            raise ValueError(problem)
        if key.startswith(RESERVED_PREFIX) or key in RESERVED_LABEL_KEYS:
            raise ValueError(f"label {key!r}: {RESERVED_LABEL_MESSAGE}")
        if not _LABEL_VALUE.fullmatch(value):
            raise ValueError(
                f"label {key!r} has value {value!r}, which is not a label value: at most 63 "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            )
    return labels


def _annotations(annotations: dict[str, str]) -> dict[str, str]:
    for key in annotations:
        problem = _key_problem(key, "annotation")
        if problem is not None:
            raise ValueError(problem)
        if key.startswith(RESERVED_PREFIX):
            raise ValueError(f"annotation {key!r}: {RESERVED_ANNOTATION_MESSAGE}")
    return annotations


PodLabels = Annotated[
    dict[str, Annotated[str, StringConstraints(max_length=63)]],
    Field(max_length=MAX_POD_METADATA),
    AfterValidator(_labels),
]

PodAnnotations = Annotated[
    dict[str, Annotated[str, StringConstraints(max_length=MAX_ANNOTATION_VALUE_LENGTH)]],
    Field(max_length=MAX_POD_METADATA),
    AfterValidator(_annotations),
]


def reserved_label_rule(field: str) -> dict[str, str]:
    """The CEL rule, for the object holding ``field`` (a :data:`PodLabels`), that refuses the
    operator's label keys at admission."""
    reserved = _cel_string_list(list(RESERVED_LABEL_KEYS))
    return cel(
        f"!has(self.{field}) || self.{field}.all(k, !k.startsWith('{RESERVED_PREFIX}') && "
        f"!(k in {reserved}))",
        RESERVED_LABEL_MESSAGE,
        f".{field}",
    )


def reserved_annotation_rule(field: str) -> dict[str, str]:
    """The CEL rule, for the object holding ``field`` (a :data:`PodAnnotations`), that refuses
    the operator's annotation keys at admission."""
    return cel(
        f"!has(self.{field}) || self.{field}.all(k, !k.startsWith('{RESERVED_PREFIX}'))",
        RESERVED_ANNOTATION_MESSAGE,
        f".{field}",
    )


# -- disruption budget --------------------------------------------------------------------------

INT_OR_PERCENT_PATTERN = r"^([0-9]|[1-9][0-9]|100)%$"


def _int_or_percent(value: object) -> int | str:
    if isinstance(value, bool):
        raise ValueError("write a number of pods (e.g. 1) or a percentage (e.g. '50%')")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(INT_OR_PERCENT_PATTERN, value):
        return value
    raise ValueError(
        f"{value!r} is neither a number of pods (an integer >= 0) nor a percentage such as '50%'"
    )


IntOrPercent = Annotated[
    int | str,
    BeforeValidator(_int_or_percent),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": INT_OR_PERCENT_PATTERN}),
]
"""A number of pods (``1``) or a percentage of them (``"50%"``)."""

PDB_MESSAGE = "set exactly one of minAvailable or maxUnavailable"


class DisruptionBudget(KubeModel):
    """A PodDisruptionBudget for the stable pods: how many a voluntary disruption (a node
    drain, a cluster upgrade) may take away at once. Rollouts are not limited by it."""

    model_config = cel_rules(cel("has(self.minAvailable) != has(self.maxUnavailable)", PDB_MESSAGE))

    min_available: IntOrPercent | None = None
    """Stable pods that must stay available during a disruption (a number or a percentage)."""
    max_unavailable: IntOrPercent | None = None
    """Stable pods a disruption may take away at once (a number or a percentage)."""

    @model_validator(mode="after")
    def _one_bound(self) -> DisruptionBudget:
        if (self.min_available is None) == (self.max_unavailable is None):
            raise ValueError(PDB_MESSAGE)
        return self
