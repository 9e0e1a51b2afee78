"""Pieces shared by the three kinds: the base model, references, resources, durations, URIs.

Every model here is written once and serves twice: pydantic validates what the operator reads,
and :mod:`kubeloop.api.crdgen` turns the same classes into the CRDs' OpenAPI schemas, so the
attribute docstrings below are what ``kubectl explain`` prints. Rules that a JSON schema cannot
say are declared with :func:`cel` next to the field they guard and enforced twice as well: by
the API server (CEL) and by a pydantic validator with the same message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

GROUP = "kubeloop.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Bounds. The API server estimates the worst-case cost of every CEL rule from maxLength and
# maxItems, and refuses a CRD whose rules could cost too much, so every string or list a rule
# touches is bounded; the rest are bounded so one object cannot grow without limit in etcd.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_URI_LENGTH = 2048
MAX_COLUMNS = 512
MAX_COLUMN_NAME_LENGTH = 253
MAX_MESSAGE_LENGTH = 32768
MAX_CONDITIONS = 16

# -- the base model -----------------------------------------------------------------------------


class KubeModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` points the error at a child."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules, for a field."""
    return {"x-kubernetes-validations": list(rules)}


def cel_rules(*rules: dict[str, str]) -> ConfigDict:
    """A model config carrying CEL rules that apply to the whole object."""
    return ConfigDict(json_schema_extra=validations(*rules))


# -- scalar types -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matches:
    """A regular expression a string must match: ``pattern`` in the CRD schema, and in Python a
    message that says what was expected instead of quoting the expression."""

    pattern: str
    hint: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        compiled = re.compile(self.pattern)

        def check(value: str) -> str:
            if not compiled.fullmatch(value):
                raise ValueError(f"{value!r} {self.hint}")
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler.resolve_ref_schema(handler(schema))
        json_schema["pattern"] = self.pattern
        return json_schema


NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

ResourceName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    Matches(
        NAME_PATTERN,
        "is not a valid object name: use lowercase letters, digits, '-' and '.', starting and "
        "ending with a letter or digit",
    ),
]
"""The name of a Kubernetes object in the same namespace (a DNS subdomain)."""

LabelValue = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_LABEL_LENGTH),
    Matches(
        LABEL_PATTERN,
        "is not a valid name: use lowercase letters, digits and '-', starting and ending with a "
        "letter or digit",
    ),
]
"""A short lowercase name that can be used as a label value (a DNS label)."""

ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_COLUMN_NAME_LENGTH)]
"""The name of a column of a dataset (a feature or the target)."""

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")

Duration = Annotated[
    str,
    StringConstraints(max_length=64),
    Matches(
        DURATION_PATTERN,
        "is not a duration: write a number and a unit (ms, s, m, h), e.g. '30s', '5m', '1h30m'",
    ),
]
"""A span of time written like Go durations: ``30s``, ``5m``, ``1h30m``, ``500ms``."""


def parse_duration(text: str) -> timedelta:
    """Turn a duration string such as ``"1h30m"`` into a :class:`~datetime.timedelta`.

    Units are ``ms``, ``s``, ``m`` and ``h`` (as in Go, without negative values); the parts are
    added up, so ``"1h30m"`` is 90 minutes and ``"1.5h"`` is the same.
    """
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(
            f"invalid duration {text!r}: write a number followed by a unit, "
            "one of ms, s, m, h, e.g. '30s', '5m' or '1h30m'"
        )
    seconds = sum(
        float(number) * DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    return timedelta(seconds=seconds)


def format_duration(span: timedelta) -> str:
    """The shortest duration string for whole seconds (``timedelta(minutes=90)`` -> ``"1h30m"``)."""
    total = int(span.total_seconds())
    if total < 0:
        raise ValueError(f"a duration cannot be negative, got {span}")
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "".join(
        f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if value
    )
    return text or "0s"


# Storage URI schemes. `sklearn://<name>` names a dataset bundled with scikit-learn (no
# download), so examples and tests work offline; it is only valid where data is read.
STORAGE_SCHEMES = ("file", "pvc", "s3", "gs", "https", "http")
OUTPUT_SCHEMES = ("file", "pvc", "s3", "gs")
DATA_SCHEMES = ("sklearn", *STORAGE_SCHEMES)


def uri_pattern(schemes: tuple[str, ...]) -> str:
    """A regular expression accepting ``<scheme>://<something>`` for the given schemes."""
    return rf"^({'|'.join(schemes)})://\S+$"


def _uri_hint(schemes: tuple[str, ...]) -> str:
    return "is not a supported URI: it must start with " + ", ".join(f"{s}://" for s in schemes)


StorageUri = Annotated[
    str,
    StringConstraints(max_length=MAX_URI_LENGTH),
    Matches(uri_pattern(STORAGE_SCHEMES), _uri_hint(STORAGE_SCHEMES)),
]
"""Where a model artifact is read from: ``file://``, ``pvc://<claim>/<path>``, ``s3://``,
``gs://``, ``https://`` or ``http://``."""

OutputUri = Annotated[
    str,
    StringConstraints(max_length=MAX_URI_LENGTH),
    Matches(uri_pattern(OUTPUT_SCHEMES), _uri_hint(OUTPUT_SCHEMES)),
]
"""Where artifacts are written: ``file://``, ``pvc://<claim>/<path>``, ``s3://`` or ``gs://``."""

DataUri = Annotated[
    str,
    StringConstraints(max_length=MAX_URI_LENGTH),
    Matches(uri_pattern(DATA_SCHEMES), _uri_hint(DATA_SCHEMES)),
]
"""Where a dataset is read from: ``sklearn://<bundled dataset>`` (e.g. ``sklearn://breast_cancer``),
``file://``, ``pvc://<claim>/<path>``, ``s3://``, ``gs://``, ``https://`` or ``http://``."""

SHA256_PATTERN = r"^[a-f0-9]{64}$"
Sha256 = Annotated[
    str,
    StringConstraints(min_length=64, max_length=64),
    Matches(SHA256_PATTERN, "is not a SHA-256 digest: write 64 lowercase hexadecimal digits"),
]
"""A lowercase hexadecimal SHA-256 digest (64 characters)."""

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)


def _quantity(value: object) -> str:
    # YAML turns `cpu: 2` into an int; Kubernetes accepts it (int-or-string), so do we.
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string such as '500m', '2Gi' or '1'")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
        raise ValueError(
            f"invalid quantity {value!r}: write an integer or a string such as '500m', '2Gi' or "
            "'0.5' (a fractional number must be quoted)"
        )
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]
"""A Kubernetes resource quantity: ``2``, ``500m``, ``4Gi``."""


# -- shared objects -----------------------------------------------------------------------------


class LocalObjectReference(KubeModel):
    """A reference to an object of a known kind in the same namespace."""

    name: ResourceName
    """Name of the referenced object."""


class SecretReference(KubeModel):
    """A reference to a Secret in the same namespace. Its values are never copied into a spec."""

    name: ResourceName
    """Name of the Secret."""


class Credentials(KubeModel):
    """Credentials for storage (S3, GCS, HTTPS), given by reference only."""

    secret_ref: SecretReference
    """A Secret whose keys become environment variables of the pod that reads or writes storage
    (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_ENDPOINT_URL)."""


ResourceList = Annotated[dict[str, Quantity], Field(max_length=16)]


class ResourceRequirements(KubeModel):
    """Compute resources of a container, as in a Pod spec."""

    requests: ResourceList | None = None
    """Resources the scheduler reserves, e.g. ``{cpu: 500m, memory: 1Gi}``."""
    limits: ResourceList | None = None
    """Upper bounds, e.g. ``{memory: 2Gi, nvidia.com/gpu: 1}``; a GPU is requested here."""


class Toleration(KubeModel):
    """Lets a pod be scheduled onto nodes with a matching taint (as in a Pod spec)."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = None
    """Taint key to match; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists matches any value; Equal (the default) matches ``value``."""
    value: Annotated[str, StringConstraints(max_length=MAX_LABEL_LENGTH)] | None = None
    """Taint value to match when operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches every effect."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """How long a NoExecute taint is tolerated before eviction; empty means forever."""


NodeSelector = Annotated[
    dict[str, Annotated[str, StringConstraints(max_length=63)]], Field(max_length=32)
]

ConditionStatus = Literal["True", "False", "Unknown"]
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)

REASON = Matches(REASON_PATTERN, "is not a reason: write one CamelCase word, e.g. JobCreated")
HTTP_URL = Matches(r"^https?://\S+$", "is not a URL: it must start with http:// or https://")


class Condition(KubeModel):
    """One aspect of an object's state, following the Kubernetes API conventions."""

    type: Annotated[
        str,
        StringConstraints(max_length=316),
        Matches(CONDITION_TYPE_PATTERN, "is not a condition type: write one CamelCase word"),
    ]
    """Which aspect this is, in CamelCase: Ready, Progressing, Degraded, Drifted, ..."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024), REASON]
    """Why the condition has this status, as one CamelCase word a program can match on."""
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)] = ""
    """A sentence for people: what happened and, when something is wrong, how to fix it."""
    last_transition_time: AwareDatetime
    """When the status last changed (a new reason or message does not change it)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation of the spec this condition was computed from."""


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=MAX_CONDITIONS,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    ),
]


class LastFailure(KubeModel):
    """The most recent failure, kept after the conditions have moved on."""

    reason: Annotated[str, StringConstraints(min_length=1, max_length=1024), REASON]
    """CamelCase reason, e.g. DataValidationFailed, AnalysisFailed, ImagePullFailed."""
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_LENGTH)] = ""
    """What failed, naming the field, column or metric, and how to fix it."""
    time: AwareDatetime
    """When the failure was recorded."""


FreeForm = Annotated[
    dict[str, Any],
    Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
]
"""A map whose keys and values the operator passes through without a schema."""
