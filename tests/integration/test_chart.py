"""The Helm chart on a real API server.

* ``helm template`` output is valid against JSON schemas generated here from the API server's
  own OpenAPI v3 (built-in kinds) and from the CRDs in the rendered chart (our kinds and kopf's
  peering), checked by kubeconform in strict mode; and the API server accepts it
  (``kubectl apply --dry-run=server``).
* Given ``helm install`` into a namespace that enforces the ``restricted`` Pod Security level,
  when ``kubeloop operator`` runs as a local process with a token of **the chart's own
  ServiceAccount** (not admin), then it reconciles a TrainingRun (Job created, trainer pod
  admitted, status written from the real trainer's result) and a ModelDeployment (Deployment,
  Services, status) with no request refused, and requests outside its role are refused.
* ``helm install`` with a bad values file stops before creating anything, naming the value.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterfixture import unique_name
from harness import REPO, OperatorProcess, play_kubelet_terminate, wait_for
from kubernetes import client

CHART = REPO / "charts" / "kubeloop"
HACK_CLUSTER = REPO / "hack" / "cluster"
GROUP, VERSION = "kubeloop.io", "v1alpha1"
MANUAL_KUBELET = {"kubeloop.io/test-kubelet": "manual"}


def tool(name: str) -> str:
    path = subprocess.run(
        [str(HACK_CLUSTER), "which", name], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.access(path, os.X_OK):
        message = f"{name} is not built: run `hack/cluster build {name}`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])} ... failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm(kubeconfig: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(tool("helm"), "--kubeconfig", kubeconfig, *args, check=check)


def render(tmp_path: Path, namespace: str, values: dict[str, Any], name: str = "rendered") -> Path:
    values_file = tmp_path / f"{name}-values.json"
    values_file.write_text(json.dumps(values))
    out = tmp_path / f"{name}.yaml"
    text = run(
        tool("helm"), "template", "kl", str(CHART), "--namespace", namespace, "--values", str(values_file)
    ).stdout
    out.write_text(text)
    return out


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# -- JSON schemas for kubeconform -----------------------------------------------------------------


def _json_schema(node: Any, strict: bool) -> Any:
    """OpenAPI v3 (API server or CRD) -> JSON Schema draft-07 as kubeconform reads it."""
    if isinstance(node, list):
        return [_json_schema(item, strict) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref":
            out[key] = value.replace("#/components/schemas/", "#/definitions/")
        elif key in ("properties", "definitions"):
            out[key] = {k: _json_schema(v, strict) for k, v in value.items()}
        elif key.startswith("x-kubernetes-") or key in ("nullable", "default", "example"):
            continue
        else:
            out[key] = _json_schema(value, strict)
    # OpenAPI 3.0's boolean exclusiveMinimum/Maximum -> draft-07's numeric form.
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True:
            out[bound] = out.pop(limit)
        elif out.get(bound) is False:
            del out[bound]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["oneOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    # Strict, like kubeconform's -strict schemas: an unknown field is an error (a typo in a
    # template would otherwise be pruned silently by the API server).
    if (
        strict
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def write_schema(directory: Path, group: str, kind: str, version: str, schema: dict[str, Any]) -> None:
    # kubeconform: -schema-location '<dir>/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'
    # (.Group is "v1" for the core group; .ResourceKind is lowercase).
    target = directory / (group or "v1") / f"{kind.lower()}_{version}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(schema))


def api_server_schemas(kubectl: Any, directory: Path, group_versions: set[str]) -> int:
    """Schemas of every kind in ``group_versions`` from the API server's /openapi/v3."""
    written = 0
    for group_version in sorted(group_versions):
        path = "/openapi/v3/api/v1" if group_version == "v1" else f"/openapi/v3/apis/{group_version}"
        document = json.loads(kubectl("get", "--raw", path).stdout)
        components = document["components"]["schemas"]
        definitions = {name: _json_schema(schema, strict=True) for name, schema in components.items()}
        for schema in components.values():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                gv = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
                if gv != group_version:
                    continue
                standalone = {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    **_json_schema(schema, strict=True),
                    "definitions": definitions,
                }
                write_schema(directory, gvk["group"], gvk["kind"], gvk["version"], standalone)
                written += 1
    return written


def crd_schemas(crds: list[dict[str, Any]], directory: Path) -> int:
    written = 0
    for crd in crds:
        for version in crd["spec"]["versions"]:
            schema = _json_schema(version["schema"]["openAPIV3Schema"], strict=True)
            # The API server adds these to every custom resource's schema implicitly.
            schema.setdefault("properties", {}).update(
                {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
            )
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            write_schema(directory, crd["spec"]["group"], crd["spec"]["names"]["kind"], version["name"], schema)
            written += 1
    return written


def kubeconform(directory: Path, *manifests: Path) -> dict[str, Any]:
    proc = run(
        tool("kubeconform"), "-strict", "-summary", "-output", "json",
        "-schema-location", str(directory) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
        *map(str, manifests), check=False,
    )
    report: dict[str, Any] = json.loads(proc.stdout)
    report["returncode"] = proc.returncode
    return report


VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced-ha-pvc": {
        "replicaCount": 2,
        "watchNamespaces": ["ml-a", "ml-b"],
        "storage": {"modelsPvc": {"name": "models", "create": True}},
        "runtime": {"podLabels": {"team": "ml"}},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    },
}


@pytest.fixture(scope="module")
def schema_dir(tmp_path_factory: pytest.TempPathFactory, kubectl: Any) -> Path:
    directory = tmp_path_factory.mktemp("schemas")
    rendered = tmp_path_factory.mktemp("rendered")
    docs = [d for name, values in VARIANTS.items() for d in documents(render(rendered, "kubeloop", values, name))]
    group_versions = {d["apiVersion"] for d in docs if d["kind"] not in {"KopfPeering", "ClusterKopfPeering"}}
    group_versions -= {f"{GROUP}/{VERSION}"}
    assert api_server_schemas(kubectl, directory, group_versions) > 10
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    unique = {c["metadata"]["name"]: c for c in crds}
    assert crd_schemas(list(unique.values()), directory) == 5  # ours and kopf's two
    return directory


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_chart_is_valid_against_api_server_and_crd_schemas(tmp_path: Path, schema_dir: Path, variant: str) -> None:
    manifest = render(tmp_path, "kubeloop", VARIANTS[variant])
    report = kubeconform(schema_dir, manifest)
    summary = report["summary"]
    assert report["returncode"] == 0, json.dumps(report["resources"], indent=1)
    assert summary["invalid"] == 0 and summary["errors"] == 0 and summary["skipped"] == 0, summary
    assert summary["valid"] == len(documents(manifest))


def test_the_schemas_catch_a_broken_manifest(tmp_path: Path, schema_dir: Path) -> None:
    # Proof that the validation bites: a misspelled field and a wrong type are reported.
    docs = documents(render(tmp_path, "kubeloop", {}))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replicass"] = 1
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    report = kubeconform(schema_dir, broken)
    assert report["summary"]["invalid"] == 1, report
    message = json.dumps(report["resources"])
    assert "replicass" in message and "containerPort" in message


def test_examples_are_valid_against_the_chart_crds(schema_dir: Path) -> None:
    examples = sorted((REPO / "examples").rglob("*.yaml"))
    assert examples
    report = kubeconform(schema_dir, *examples)
    assert report["returncode"] == 0 and report["summary"]["invalid"] == 0, json.dumps(report, indent=1)
    assert report["summary"]["valid"] >= 3



@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_api_server_accepts_the_rendered_chart(tmp_path: Path, kubectl: Any, namespace: str, crds: None, variant: str) -> None:
    values = json.loads(json.dumps(VARIANTS[variant]).replace('"ml-a"', json.dumps(namespace)).replace('"ml-b"', json.dumps(namespace + "-b")))
    values.setdefault("watchNamespaces", [])
    if values["watchNamespaces"]:
        kubectl("create", "namespace", namespace + "-b")
    try:
        manifest = render(tmp_path, namespace, values)
        # KopfPeering objects are post-install hooks whose CRD is in the same manifest: a dry
        # run cannot create a kind whose CRD it only pretended to create. The `helm test` Pod
        # runs only under `helm test`, after install: its ServiceAccount exists by then, not
        # in a dry run (kubeconform above validates it; the real-node e2e runs it).
        docs = [
            d for d in documents(manifest)
            if d["kind"] not in {"KopfPeering", "ClusterKopfPeering"}
            and (d["metadata"].get("annotations") or {}).get("helm.sh/hook") != "test"
        ]
        manifest.write_text(yaml.safe_dump_all(docs))
        proc = kubectl(
            "apply", "--dry-run=server", "--server-side", "--force-conflicts",
            "--field-manager=kubeloop-chart-test", "-f", str(manifest),
        )
        assert len([line for line in proc.stdout.splitlines() if "serverside-applied" in line]) == len(docs), proc.stdout
    finally:
        if values["watchNamespaces"]:
            kubectl("delete", "namespace", namespace + "-b", "--wait=false")


# -- helm install and the operator under the chart's ServiceAccount ------------------------------


def service_account_kubeconfig(admin_kubeconfig: str, token: str, namespace: str, out: Path) -> Path:
    """A kubeconfig with the API server's URL and CA from the admin one, and only the token."""
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    ca = cluster.get("certificate-authority-data") or base64.b64encode(
        Path(cluster["certificate-authority"]).read_bytes()
    ).decode()
    out.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}],
        "users": [{"name": "kubeloop-operator", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "kubeloop-operator", "namespace": namespace}}],
        "current-context": "sa",
    }))
    out.chmod(0o600)
    return out


def run_trainer_locally(run_spec: dict[str, Any], name: str, out: Path) -> tuple[str, int]:
    """Really run `kubeloop train` on the spec; its termination message is what a kubelet reports."""
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps(run_spec))
    message_file = out / "message.json"
    proc = subprocess.run(
        [sys.executable, "-c", "from kubeloop.cli import main; main()", "train", "--spec", str(spec_file),
         "--run-name", name, "--storage-uri", f"file://{out}/models", "--termination-log", str(message_file)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    return message_file.read_text(), proc.returncode


@pytest.fixture(scope="module")
def kopf_peering_crds(kubectl: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """kopf's peering CRDs as the chart renders them, applied once for the whole cluster.

    CRDs outlive releases (resource-policy keep), so installs in these tests leave them to
    this fixture (``peering.installCRDs: false``) instead of fighting over their ownership;
    the dry-run test above shows the API server accepts the chart creating them.
    """
    manifest = render(tmp_path_factory.mktemp("peering"), "kubeloop", {"replicaCount": 2})
    crds_only = [d for d in documents(manifest) if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "kopf.dev"]
    assert len(crds_only) == 2
    manifest.write_text(yaml.safe_dump_all(crds_only))
    kubectl("apply", "--server-side", "--field-manager=kubeloop-tests", "--force-conflicts", "-f", str(manifest))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(manifest))


@pytest.fixture
def release(
    kubeconfig_path: str, kubectl: Any, namespace: str, crds: None, kopf_peering_crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The chart installed into a namespace that enforces the restricted Pod Security level,
    with two replicas, so kopf peering is on."""
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
    name = unique_name("kl", max_len=20)
    values = {
        "watchNamespaces": [namespace],
        "replicaCount": 2,
        "peering": {"installCRDs": False},
        # The CRDs are shared by every test on this cluster (installed above from crds/, the
        # same files the chart's templates are generated from, see test_chart_render.py).
        "crds": {"install": False},
        "runtime": {"podLabels": MANUAL_KUBELET},
        "storage": {"storageUri": "file:///var/lib/kubeloop/models"},
    }
    values_file = tmp_path_factory.mktemp("release") / "values.json"
    values_file.write_text(json.dumps(values))
    helm(kubeconfig_path, "install", name, str(CHART), "--namespace", namespace, "--values", str(values_file), "--wait", "--timeout", "120s")
    yield name
    helm(kubeconfig_path, "uninstall", name, "--namespace", namespace, "--wait", check=False)


def test_operator_under_the_charts_service_account_reconciles_and_is_fenced(
    kube_api: Any, kubectl: Any, kubeconfig_path: str, namespace: str, release: str, tmp_path: Path
) -> None:
    core, custom, batch, apps = (
        client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api), client.BatchV1Api(kube_api), client.AppsV1Api(kube_api)
    )
    # Given the installed chart: its operator pod was admitted under `restricted`.
    (deployment,) = apps.list_namespaced_deployment(namespace, label_selector=f"app.kubernetes.io/instance={release}").items
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=operator").items
    assert pods and pods[0].spec.security_context.run_as_non_root
    service_account = deployment.spec.template.spec.service_account_name
    chart_env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env if e.value is not None}
    # Peering is on (two replicas): the operator meets its peers in this KopfPeering, which
    # the chart created after install.
    assert chart_env["KUBELOOP_PEERING"] == "kubeloop"
    custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "kubeloop")

    # And a kubeconfig holding nothing but a token of the chart's ServiceAccount.
    token = kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    sa_config = service_account_kubeconfig(kubeconfig_path, token, namespace, tmp_path / "sa.kubeconfig")
    whoami = json.loads(run(tool("kubectl"), "--kubeconfig", str(sa_config), "auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:{service_account}"

    operator = OperatorProcess(str(sa_config), namespace, tmp_path / "operator.log", env=chart_env, inherit_kubeloop_env=False)
    operator.start()
    try:
        # When a TrainingRun is applied (by a user, as admin).
        spec = {
            "model": {"name": "cancer", "estimator": "sklearn.linear_model.LogisticRegression",
                      "params": {"max_iter": 500}, "task": "classification"},
            "data": {"source": "sklearn://breast_cancer", "target": "target", "split": {"testFraction": 0.25, "seed": 7}},
            "evaluation": {"metric": "accuracy", "threshold": 0.8},
        }
        message, code = run_trainer_locally(spec, "cancer-1", tmp_path / "trainer")
        assert code == 0, message
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": "cancer-1"}, "spec": spec,
        })
        # Then the operator creates the Job, whose restricted pod is admitted.
        pod = wait_for(
            lambda: next(iter(core.list_namespaced_pod(namespace, label_selector="kubeloop.io/trainingrun=cancer-1").items), None),
            90, what=f"trainer pod (operator log:\n{operator.log_tail()})",
        )
        assert len(batch.list_namespaced_job(namespace, label_selector="kubeloop.io/trainingrun=cancer-1").items) == 1
        assert pod.metadata.labels["kubeloop.io/test-kubelet"] == "manual"  # runtime.podLabels
        play_kubelet_terminate(core, namespace, core.api_client.sanitize_for_serialization(pod), message, 0)

        def run_status() -> dict[str, Any] | None:
            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "cancer-1").get("status") or {}
            return status if status.get("phase") == "Succeeded" else None

        status = wait_for(run_status, 90, what=f"TrainingRun Succeeded (operator log:\n{operator.log_tail()})")
        assert status["model"]["sha256"] == json.loads(message)["sha256"]

        # When a ModelDeployment serves that run, then its servers and Services appear.
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "cancer"},
            "spec": {"model": {"trainingRunRef": {"name": "cancer-1"}}, "replicas": 1},
        })
        wait_for(lambda: apps.list_namespaced_deployment(namespace, label_selector="kubeloop.io/modeldeployment=cancer").items,
                 90, what=f"model server Deployment (operator log:\n{operator.log_tail()})")
        wait_for(lambda: core.list_namespaced_service(namespace, label_selector="kubeloop.io/modeldeployment=cancer").items,
                 60, what="model Services")

        def md_status() -> dict[str, Any] | None:
            md = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "cancer")
            status = md.get("status") or {}
            stable = status.get("stable") or {}
            return status if status.get("observedGeneration") == md["metadata"]["generation"] and stable.get("sha256") else None

        md = wait_for(md_status, 90, what=f"ModelDeployment status (operator log:\n{operator.log_tail()})")
        assert md["stable"]["sha256"] == status["model"]["sha256"]

        # And no request of the operator was refused on the way (RBAC is sufficient).
        log = operator.log_tail(100000)
        # A 403 is a status code standing alone, not the milliseconds of a timestamp ("48,403")
        # or a fraction ("0.403 s").
        refused = [line for line in log.splitlines() if re.search(r"(?<![\d.,])403(?![\d.,])|[Ff]orbidden", line)]
        assert not refused, "\n".join(refused[:20])
        assert operator.alive(), log[-3000:]
        # It took part in peering: its keep-alive is in the peering object.
        peering = custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "kubeloop")
        assert peering.get("status"), peering
    finally:
        operator.stop()
        print(operator.log_tail(40))

    # And the token opens nothing outside the operator's role.
    def sa_kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return run(tool("kubectl"), "--kubeconfig", str(sa_config), *args, check=False)

    for denied in (
        ("get", "secrets", "-n", namespace),
        ("get", "configmaps", "-n", namespace),
        ("create", "clusterrole", "x-escalate", "--verb=*", "--resource=*"),
        ("get", "trainingruns", "-n", "default"),  # a namespace the chart does not watch
        ("delete", "trainingrun", "cancer-1", "-n", namespace),
    ):
        proc = sa_kubectl(*denied)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (denied, proc.stdout, proc.stderr)
    for allowed in (("trainingruns", "watch"), ("jobs.batch", "create"), ("deployments.apps", "patch")):
        proc = sa_kubectl("auth", "can-i", allowed[1], allowed[0], "-n", namespace)
        assert proc.stdout.strip() == "yes", allowed


def test_cluster_wide_install_grants_its_rules_everywhere_and_nothing_more(
    kubeconfig_path: str, kubectl: Any, namespace: str, crds: None, kopf_peering_crds: None, tmp_path: Path
) -> None:
    name = unique_name("klcw", max_len=20)
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps({"crds": {"install": False}, "replicaCount": 2, "peering": {"installCRDs": False}}))
    helm(kubeconfig_path, "install", name, str(CHART), "--namespace", namespace, "--values", str(values_file))
    try:
        # The ServiceAccount is named after the release's full name: <release>-kubeloop.
        token = kubectl("create", "token", f"{name}-kubeloop", "-n", namespace, "--duration=10m").stdout.strip()
        config = service_account_kubeconfig(kubeconfig_path, token, namespace, tmp_path / "sa.kubeconfig")

        def can(*args: str) -> str:
            return run(tool("kubectl"), "--kubeconfig", str(config), "auth", "can-i", *args, check=False).stdout.strip()

        assert can("watch", "trainingruns.kubeloop.io", "--all-namespaces") == "yes"
        assert can("create", "jobs.batch", "-n", "default") == "yes"
        assert can("patch", "clusterkopfpeerings.kopf.dev") == "yes"
        assert can("list", "customresourcedefinitions") == "yes"
        assert can("get", "secrets", "--all-namespaces") == "no"
        assert can("list", "namespaces") == "no"  # cluster-wide kopf does not need it
        assert can("create", "clusterroles") == "no"
        # The peering object exists (a post-install hook, after its CRD).
        kubectl("get", "clusterkopfpeering", "kubeloop")
    finally:
        helm(kubeconfig_path, "uninstall", name, "--namespace", namespace, "--wait", check=False)


def test_helm_install_refuses_bad_values_naming_the_value(kubeconfig_path: str, namespace: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("replicaCount: two\nwatchNamespaces: ml\n")
    proc = helm(kubeconfig_path, "install", "bad", str(CHART), "--namespace", namespace, "--values", str(bad), check=False)
    assert proc.returncode != 0
    assert "/replicaCount" in proc.stderr and "/watchNamespaces" in proc.stderr, proc.stderr
    listed = helm(kubeconfig_path, "list", "--namespace", namespace, "--short").stdout
    assert "bad" not in listed.split()
