"""The chart's RBAC is exactly what the operator's code needs: no rule missing, none extra.

The needed permissions are derived from the source, not listed by hand:

* every call on the thin client (``kube.get/get_or_none/list/create/apply/patch/patch_status/
  delete/request/request_text`` and ``post_event``) in the modules the operator process
  imports (``kubeloop.controllers.main`` and everything it pulls in; the kubectl plugin runs
  with the user's own credentials and is not part of it), mapped through ``KINDS`` in
  ``controllers/kube.py``;
* kopf's needs for every ``@kopf.on.*`` / ``@kopf.timer`` / ``@kopf.daemon`` handler (list and
  watch; patch where kopf keeps a finalizer), its events, its peering object and discovery.

A call whose kind or path is not a literal (``kube.create(decision.create_job)``) must be
listed in ``DYNAMIC_CALLS`` with the kinds it can carry, so a new kind of call cannot slip in
unnoticed: the test names the file and line to add.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_chart_support import REPO, by_kind, render

from kubeloop.controllers.kube import KINDS

PACKAGE = REPO / "operator"

# (group, resource, verb); resource may be "<plural>/<subresource>".
Permission = tuple[str, str, str]

# Thin-client method -> RBAC verbs. Server-side apply is a PATCH, and the API server also
# checks `create` when the applied object does not exist yet.
VERBS_OF_METHOD = {
    "get": ("get",),
    "get_or_none": ("get",),
    "list": ("list",),
    "create": ("create",),
    "apply": ("patch", "create"),
    "patch": ("patch",),
    "patch_status": ("patch",),
    "delete": ("delete",),
}
HTTP_VERB = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}

# Calls whose kind, object (create/apply) or path (request) is computed:
# "<module>:<source text of the argument>" -> the kinds it carries, read from the decide() or
# builder code the value comes from.
DYNAMIC_CALLS: dict[str, frozenset[str]] = {
    # controllers.peering.PeeringView: kopf's peering object, read only with peering on
    # (see needed_permissions)
    "peering:path": frozenset({"ClusterKopfPeering", "KopfPeering"}),
    # decide.trainingrun.Decision.create_job: resources.trainingjob.build_training_job
    "trainingrun:decision.create_job": frozenset({"Job"}),
    # the same Job, with the trainer's MLflow env when the run is tracked (kubeloop.registry)
    "trainingrun:create_job": frozenset({"Job"}),
    # decide.artifact_cleanup.CleanupDecision.create_job: resources.cleanupjob.build_cleanup_job
    "trainingrun:cleanup.create_job": frozenset({"Job"}),
    # decide.driftpolicy.Decision.create_run: a retrain TrainingRun
    "driftpolicy:decision.create_run": frozenset({"TrainingRun"}),
    # resources.driftjob.build_drift_job: the dataset check
    "driftpolicy:job": frozenset({"Job"}),
    # decide.modeldeployment.Decision: resources.serving builders
    # (ModelDeploymentController._apply: the Services, Deployments, HPA and PDB it applies)
    "modeldeployment:obj": frozenset({"Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}),
    # The traffic router's object: traffic.gatewayapi (HTTPRoute) or traffic.istio
    # (VirtualService); the replicas router has none.
    "modeldeployment:route.kind": frozenset({"HTTPRoute", "VirtualService"}),
    # `kind` is also the argument of the ownership check (ModelDeploymentController.conflicts):
    # a get on every child the decision writes (Service, Deployment, HPA, PDB).
    "modeldeployment:kind": frozenset(
        {"HTTPRoute", "VirtualService", "Service", "Deployment", "HorizontalPodAutoscaler",
         "PodDisruptionBudget"}
    ),
}

KOPF_CHANGING = {"create", "update", "resume", "delete", "field"}
#: Kinds whose objects earlier versions let kopf put its finalizer on (its resync timers): kopf
#: removes it from each when it sees one and no handler needs it any more - a patch.
KOPF_FINALIZER_OF_EARLIER_VERSIONS = {"trainingruns", "modeldeployments", "driftpolicies"}


@dataclass(frozen=True)
class CallSite:
    path: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.text}"


@functools.cache
def operator_modules() -> tuple[Path, ...]:
    """Source files of every kubeloop module the operator process imports."""
    code = (
        "import json, sys, kubeloop.controllers.main\n"
        "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()"
        " if n.startswith('kubeloop') and getattr(m, '__file__', None))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return tuple(Path(p) for p in json.loads(proc.stdout))


def _receiver_is_kube(node: ast.AST) -> bool:
    """``kube.x(...)``, ``self.kube.x(...)``, ``controller.kube.x(...)``."""
    if isinstance(node, ast.Name):
        return node.id == "kube"
    return isinstance(node, ast.Attribute) and node.attr == "kube"


def _constant(node: ast.AST, module: Any) -> Any:
    """A literal, or a module-level name bound to one (``KIND``, ``API_GROUP``)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and hasattr(module, node.id):
        return getattr(module, node.id)
    return None


def _path_template(node: ast.AST) -> str | None:
    """``f"/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/metrics"`` with ``{}`` holes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("{}")
        return "".join(parts)
    return None


PATH_PATTERN = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/[^/]+)"
    r"(?:/namespaces/[^/]+)?/(?P<resource>[a-z]+)(?:/(?P<name>[^/?]+)(?:/(?P<sub>[a-z]+))?)?"
)


def _permission_of_path(method: str, path: str) -> Permission | None:
    """RBAC of a raw REST path (``{}`` marks a computed segment)."""
    match = PATH_PATTERN.match(path)
    if not match or method not in HTTP_VERB:
        return None
    group = "" if match["core"] else match["group"]
    resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
    verb = HTTP_VERB[method]
    if verb == "get" and not match["name"]:
        verb = "list"
    return (group, resource, verb)


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("GET", "/api/v1/namespaces/{}/pods/{}:{}/proxy/metrics", ("", "pods/proxy", "get")),
        ("GET", "/api/v1/namespaces/{}/pods/{}/log", ("", "pods/log", "get")),
        ("GET", "/api/v1/namespaces/{}/pods", ("", "pods", "list")),
        ("PATCH", "/apis/apps/v1/namespaces/{}/deployments/{}", ("apps", "deployments", "patch")),
        ("GET", "/apis/kubeloop.io/v1alpha1/namespaces/{}/trainingruns/{}/status",
         ("kubeloop.io", "trainingruns/status", "get")),
    ],
)
def test_raw_paths_map_to_rbac(method: str, path: str, permission: Permission) -> None:
    assert _permission_of_path(method, path) == permission


def _kind_permission(kind: str, verb: str, sub: str = "") -> Permission:
    assert kind in KINDS, f"kind {kind!r} is not in controllers/kube.py KINDS"
    entry = KINDS[kind]
    return (entry.group, entry.plural + (f"/{sub}" if sub else ""), verb)


def client_calls(path: Path, module: Any) -> Iterator[tuple[CallSite, set[Permission] | None]]:
    """Every thin-client call in one module with the permissions it needs (None: unknown)."""
    source = path.read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        site = CallSite(path, node.lineno, ast.get_source_segment(source, node) or "")
        func = node.func
        if isinstance(func, ast.Name) and func.id == "post_event":
            yield site, {_kind_permission("Event", "create")}
            continue
        if not (isinstance(func, ast.Attribute) and _receiver_is_kube(func.value)):
            continue
        method = func.attr

        def dynamic(argument: ast.AST) -> frozenset[str] | None:
            text = ast.get_source_segment(source, argument) or ""
            return DYNAMIC_CALLS.get(f"{path.stem}:{text}")

        if method in ("request", "request_text"):
            http = str(_constant(node.args[0], module))
            template = _path_template(node.args[1])
            permission = _permission_of_path(http, template) if template else None
            if permission is not None:
                yield site, {permission}
            else:
                kinds = dynamic(node.args[1])
                yield site, None if kinds is None else {
                    _kind_permission(k, HTTP_VERB[http]) for k in kinds
                }
            continue
        if method not in VERBS_OF_METHOD:
            continue
        verbs = VERBS_OF_METHOD[method]
        argument = node.args[0]
        kinds: Iterable[str] | None = None
        if method in ("create", "apply") and isinstance(argument, ast.Dict):
            for key, value in zip(argument.keys, argument.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "kind":
                    kinds = [str(_constant(value, module))]
        elif method not in ("create", "apply") and isinstance(_constant(argument, module), str):
            kinds = [str(_constant(argument, module))]
        else:
            kinds = dynamic(argument)
        if kinds is None:
            yield site, None
            continue
        sub = ""
        if method == "patch_status":
            sub = "status"
        elif method == "patch":
            sub_node = next((k.value for k in node.keywords if k.arg == "sub"), None)
            if sub_node is None and len(node.args) > 4:
                sub_node = node.args[4]
            if sub_node is not None:
                sub = str(_constant(sub_node, module) or "")
        yield site, {_kind_permission(kind, verb, sub) for kind in kinds for verb in verbs}


@dataclass(frozen=True)
class KopfHandler:
    site: CallSite
    decorator: str  # event, timer, daemon, create, ...
    group: str
    plural: str


def kopf_handlers(path: Path, module: Any) -> Iterator[KopfHandler]:
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        match = re.fullmatch(r"kopf\.(?:on\.)?(\w+)", name)
        if not match or match[1] not in {"event", "timer", "daemon", "index"} | KOPF_CHANGING:
            continue
        args = [_constant(a, module) for a in node.args]
        assert len(args) == 3 and all(isinstance(a, str) for a in args), (
            f"{path}:{node.lineno}: write kopf handlers as (group, version, plural) literals "
            "so the chart's RBAC can be derived from them"
        )
        site = CallSite(path, node.lineno, name)
        yield KopfHandler(site, match[1], args[0], args[2])


@functools.cache
def _code_permissions() -> tuple[frozenset[Permission], tuple[str, ...]]:
    """Permissions of the thin-client calls and kopf handlers, and unresolved call sites."""
    needed: set[Permission] = set()
    unresolved: list[str] = []
    for path in operator_modules():
        if path.name == "kube.py":
            continue  # the client itself: its own self.request(...) calls are the mechanism
        module_name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        module = importlib.import_module(module_name.removesuffix(".__init__"))
        for site, permissions in client_calls(path, module):
            if permissions is None:
                unresolved.append(str(site))
            else:
                needed |= permissions
        for handler in kopf_handlers(path, module):
            needed |= {(handler.group, handler.plural, "list"), (handler.group, handler.plural, "watch")}
            if handler.decorator in {"timer", "daemon"} | KOPF_CHANGING:
                # kopf keeps its finalizer (and, for changing handlers, progress annotations).
                needed.add((handler.group, handler.plural, "patch"))
            if handler.plural in KOPF_FINALIZER_OF_EARLIER_VERSIONS:
                needed.add((handler.group, handler.plural, "patch"))
    needed.add(("", "events", "create"))  # kopf posts events about its handlers too
    return frozenset(needed), tuple(unresolved)


def needed_permissions(peering: bool, cluster_wide: bool) -> tuple[set[Permission], list[str]]:
    """What the operator needs, and the call sites the derivation could not resolve."""
    code, unresolved = _code_permissions()
    # The operator reads kopf's peering object only when there is one.
    peering_reads = {p for p in code if p[0] == "kopf.dev"}
    assert peering_reads <= {("kopf.dev", plural, "get") for plural in ("clusterkopfpeerings", "kopfpeerings")}
    needed = set(code) - peering_reads
    if peering:
        plural = "clusterkopfpeerings" if cluster_wide else "kopfpeerings"
        needed |= {("kopf.dev", plural, verb) for verb in ("get", "list", "watch", "patch")}
    return needed, list(unresolved)


DISCOVERY_CLUSTER_WIDE = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
DISCOVERY_NAMESPACED = DISCOVERY_CLUSTER_WIDE | {("", "namespaces", "list"), ("", "namespaces", "watch")}


def granted(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    result = set()
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    result.add((group, resource, verb))
    return result


def explain(missing: set[Permission], extra: set[Permission]) -> str:
    lines = []
    if missing:
        lines.append("needed by the code but not granted by the chart (add to templates/rbac.yaml):")
        lines += [f"  {g or 'core'} {r}: {v}" for g, r, v in sorted(missing)]
    if extra:
        lines.append("granted by the chart but not needed by any code path (remove):")
        lines += [f"  {g or 'core'} {r}: {v}" for g, r, v in sorted(extra)]
    return "\n".join(lines)


def test_every_api_call_of_the_operator_is_resolved() -> None:
    _, unresolved = needed_permissions(peering=False, cluster_wide=True)
    assert not unresolved, (
        "these calls carry a kind or path the test cannot read; add their argument's source "
        "text to DYNAMIC_CALLS with the kinds they carry:\n" + "\n".join(unresolved)
    )


def test_the_derivation_sees_the_calls_we_know_about() -> None:
    # Guards the parser itself: these calls exist in the controllers today.
    needed, _ = needed_permissions(peering=False, cluster_wide=True)
    assert {
        ("batch", "jobs", "create"),
        ("kubeloop.io", "trainingruns/status", "patch"),
        ("", "pods", "list"),
        ("kubeloop.io", "trainingruns", "watch"),
        ("", "events", "create"),
    } <= needed


def operator_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's objects without the `helm test` Pod's own identity (a ServiceAccount, Role
    and RoleBinding that may list pods and the three kinds: test_chart_monitoring.py checks
    them, test_no_wildcards_secrets_or_escalation below covers them too)."""
    return [d for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "helm-test"]


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
def test_cluster_wide_rbac_is_exactly_what_the_code_needs(tmp_path: Path, peering: bool) -> None:
    docs = operator_objects(render(tmp_path, {"replicaCount": 2 if peering else 1}))
    roles = by_kind(docs, "ClusterRole")
    assert len(roles) == 1 and not by_kind(docs, "Role")
    needed, _ = needed_permissions(peering=peering, cluster_wide=True)
    needed |= DISCOVERY_CLUSTER_WIDE
    have = granted(roles[0]["rules"])
    assert have == needed, explain(needed - have, have - needed)
    binding = by_kind(docs, "ClusterRoleBinding")[0]
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": by_kind(docs, "ServiceAccount")[0]["metadata"]["name"],
         "namespace": "kubeloop"}
    ]


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
def test_namespaced_rbac_is_a_role_per_watched_namespace(tmp_path: Path, peering: bool) -> None:
    docs = operator_objects(render(tmp_path, {"watchNamespaces": ["ml-a", "ml-b"], "peering": {"enabled": peering}}))
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-a", "ml-b"]
    needed, _ = needed_permissions(peering=peering, cluster_wide=False)
    for role in roles:
        have = granted(role["rules"])
        assert have == needed, explain(needed - have, have - needed)
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-a", "ml-b"]
    # The only cluster-scope grant is read-only discovery.
    cluster_roles = by_kind(docs, "ClusterRole")
    assert len(cluster_roles) == 1
    assert granted(cluster_roles[0]["rules"]) == DISCOVERY_NAMESPACED


def test_discovery_can_be_left_out(tmp_path: Path) -> None:
    docs = render(tmp_path, {"watchNamespaces": ["ml"], "rbac": {"clusterDiscovery": False}})
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    docs = render(tmp_path, {"rbac": {"clusterDiscovery": False}})
    assert not (granted(by_kind(docs, "ClusterRole")[0]["rules"]) & DISCOVERY_CLUSTER_WIDE)


def test_no_wildcards_secrets_or_escalation(tmp_path: Path) -> None:
    docs = render(tmp_path, {"replicaCount": 3})
    docs += render(tmp_path, {"watchNamespaces": ["a"], "replicaCount": 3})
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for group, resource, verb in granted(role["rules"]):
            assert "*" not in (group, resource, verb)
            assert resource not in {"secrets", "configmaps", "serviceaccounts/token", "roles",
                                    "clusterroles", "rolebindings", "clusterrolebindings"}
            assert verb not in {"escalate", "bind", "impersonate", "deletecollection"}


def test_rbac_create_false_renders_no_rbac(tmp_path: Path) -> None:
    docs = render(tmp_path, {"rbac": {"create": False}, "watchNamespaces": ["a"]})
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
