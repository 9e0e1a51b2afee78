"""Attack: name a Secret or a claim you may not read, and let the operator put it into a pod
(issue 13, "References the author may not read").

A TrainingRun's ``credentials.secretRef`` becomes the ``envFrom`` of a pod the author shapes
(its data source, image, parameters), a ``pvc://<claim>/...`` URI becomes a volume of it; the
same holds for a ModelDeployment's model and a DriftPolicy's dataset and retrain template.
Nothing in the kinds' schemas checks that the *author* may read what they name.

The defence is the chart's ValidatingAdmissionPolicy (templates/admission-policy.yaml), taken
here exactly as ``helm template`` renders it and applied to the real kube-apiserver. The
users are real RBAC subjects reached by impersonation (``kubectl --as``):

* ``mallory`` may create and update the three kinds, but not read Secrets, claims or
  ServiceAccounts;
* ``alice`` may do the same, and ``get`` Secret ``s3``, claim ``data`` and ServiceAccount
  ``model-reader`` (in a real cluster: bound to a cloud role that reads the model bucket);
* ``carol`` may do the same, and ``get`` every Secret and claim of the namespace.

Each attack runs twice: with a weakened policy (the same policy, its binding matching no
namespace) where mallory's object is admitted, so the attack is real; then with the chart's
binding, where mallory is refused with a message naming the field, the Secret or claim and
the missing permission, while alice's identical object is admitted.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from clusterfixture import unique_name
from harness import REPO

from kubeloop.decide.driftpolicy import retrain_run
from kubeloop.resources.serving import ModelRef, ServingSettings, auth_env, build_track_deployment
from kubeloop.resources.trainingjob import credentials_env_from, tracking_env

CHART = REPO / "charts" / "kubeloop"
HACK_CLUSTER = REPO / "hack" / "cluster"
API = "kubeloop.io/v1alpha1"
OPERATOR_SA = "kubeloop-operator"
SHA = "0" * 64

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def helm_template(namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    helm = subprocess.run(
        [str(HACK_CLUSTER), "which", "helm"], capture_output=True, text=True, check=True
    ).stdout.strip()
    proc = subprocess.run(
        [helm, "template", "kl", str(CHART), "--namespace", namespace,
         "--show-only", "templates/admission-policy.yaml",
         *[arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


# -- objects --------------------------------------------------------------------------------------


def training_spec(
    secret: str | None = None, source: str = "sklearn://iris", output: str | None = None,
    tracking_secret: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "iris", "estimator": "sklearn.linear_model.LogisticRegression", "task": "classification"},
        "data": {"source": source, "target": "target"},
    }
    if secret:
        spec["credentials"] = {"secretRef": {"name": secret}}
    if tracking_secret:
        spec["tracking"] = {"credentials": {"secretRef": {"name": tracking_secret}}}
    if output:
        spec["output"] = {"storageUri": output}
    return spec


def training_run(name: str, **kw: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name}, "spec": training_spec(**kw)}


def model_deployment(
    name: str, secret: str | None = None, uri: str = "s3://models/iris/model.skops",
    service_account: str | None = None, auth_secret: str | None = None,
) -> dict[str, Any]:
    model: dict[str, Any] = {"storageUri": uri, "sha256": SHA}
    if secret:
        model["credentials"] = {"secretRef": {"name": secret}}
    spec: dict[str, Any] = {"model": model}
    if service_account:
        spec["server"] = {"serviceAccountName": service_account}
    if auth_secret:
        spec.setdefault("server", {})["auth"] = {"secretRef": {"name": auth_secret}, "key": "AWS_SECRET_ACCESS_KEY"}
    return {"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


def drift_policy(name: str, source: dict[str, Any] | None = None, retrain: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"targetRef": {"name": "iris"}, "source": source or {"live": {}}}
    if retrain is not None:
        spec["retrain"] = retrain
    return {"apiVersion": API, "kind": "DriftPolicy", "metadata": {"name": name}, "spec": spec}


# -- the cluster side ----------------------------------------------------------------------------


@dataclass
class World:
    kubectl: Kubectl
    namespace: str
    policy: dict[str, Any]
    binding: dict[str, Any]

    def create(self, user: str, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl(
            "create", "--as", user, "-n", self.namespace, "-f", "-", input=json.dumps(obj), check=False
        )

    def admitted(self, user: str, obj: dict[str, Any]) -> None:
        proc = self.create(user, obj)
        assert proc.returncode == 0, f"{user}'s {obj['kind']} was refused:\n{proc.stderr}"

    def refused(self, user: str, obj: dict[str, Any]) -> str:
        proc = self.create(user, obj)
        assert proc.returncode != 0, f"{user}'s {obj['kind']} {obj['metadata']['name']} was admitted"
        assert "forbidden" in proc.stderr.lower() and self.policy["metadata"]["name"] in proc.stderr, proc.stderr
        name = obj["metadata"]["name"]
        got = self.kubectl("get", obj["kind"].lower(), name, "-n", self.namespace, check=False)
        assert got.returncode != 0 and "NotFound" in got.stderr, f"{name} exists after a refusal"
        return proc.stderr

    def bind(self, labels: dict[str, str]) -> None:
        """Point the binding at the namespaces with ``labels``."""
        binding = json.loads(json.dumps(self.binding))
        binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": labels}}
        self.kubectl("apply", "-f", "-", input=json.dumps(binding))

    def weaken(self) -> None:
        """The policy in place, its binding matching no namespace."""
        self.bind({"kubeloop.io/no-namespace-has-this": "true"})

    def enforce(self) -> None:
        """The chart's binding, limited to this test's namespace; returns once it bites."""
        self.bind({"kubernetes.io/metadata.name": self.namespace})
        probe = training_run("policy-probe", secret="policy-probe")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc = self.kubectl(
                "create", "--dry-run=server", "--as", "mallory", "-n", self.namespace, "-f", "-",
                input=json.dumps(probe), check=False,
            )
            if proc.returncode != 0 and self.policy["metadata"]["name"] in proc.stderr:
                return
            time.sleep(0.5)
        raise AssertionError("the admission policy never took effect")


def rbac(kubectl: Kubectl, namespace: str) -> None:
    authors = ["trainingruns.kubeloop.io", "driftpolicies.kubeloop.io", "modeldeployments.kubeloop.io"]
    n = ["-n", namespace]
    kubectl("create", "role", "author", *n, "--verb=create,get,list,update,patch",
            *[f"--resource={r}" for r in authors])
    kubectl("create", "role", "reader", *n, "--verb=get", "--resource=secrets,persistentvolumeclaims",
            "--resource-name=s3", "--resource-name=data")
    for user in ("mallory", "alice"):
        kubectl("create", "rolebinding", f"{user}-author", *n, "--role=author", f"--user={user}")
    kubectl("create", "rolebinding", "alice-reader", *n, "--role=reader", "--user=alice")
    kubectl("create", "serviceaccount", "model-reader", *n)
    kubectl("create", "role", "sa-reader", *n, "--verb=get", "--resource=serviceaccounts",
            "--resource-name=model-reader")
    kubectl("create", "rolebinding", "alice-sa-reader", *n, "--role=sa-reader", "--user=alice")
    kubectl("create", "role", "reader-of-all", *n, "--verb=get", "--resource=secrets,persistentvolumeclaims")
    kubectl("create", "rolebinding", "carol-author", *n, "--role=author", "--user=carol")
    kubectl("create", "rolebinding", "carol-reader", *n, "--role=reader-of-all", "--user=carol")
    for sa in (OPERATOR_SA, "not-the-operator"):
        kubectl("create", "serviceaccount", sa, *n)
        kubectl("create", "rolebinding", f"{sa}-author", *n, "--role=author", f"--serviceaccount={namespace}:{sa}")



@pytest.fixture
def world(kubectl: Kubectl, namespace: str, crds: None) -> Iterator[World]:
    # The chart as installed into this namespace with the operator's ServiceAccount named.
    docs = helm_template(namespace, {"serviceAccount": {"create": True, "name": OPERATOR_SA}})
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    # Cluster-scoped: unique names, so parallel tests and other suites never meet this one.
    name = unique_name(f"refs-{namespace}", max_len=60)
    policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = name
    kubectl("create", "secret", "generic", "s3", "-n", namespace, "--from-literal=AWS_SECRET_ACCESS_KEY=s3cr3t")
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    rbac(kubectl, namespace)
    kubectl("apply", "-f", "-", input=json.dumps(policy))
    w = World(kubectl, namespace, policy, binding)
    w.weaken()
    try:
        yield w
    finally:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
                "--ignore-not-found", check=False)


# -- the attacks ------------------------------------------------------------------------------------


def test_the_cluster_runs_validating_admission_policies(kubectl: Kubectl) -> None:
    resources = kubectl("api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name").stdout
    assert "validatingadmissionpolicies.admissionregistration.k8s.io" in resources.split()


def test_a_trainingrun_naming_an_unreadable_secret_or_claim_is_refused(world: World) -> None:
    # Weakened: mallory's run naming Secret s3 is stored, and the operator's Job builder would
    # hand that Secret to mallory's pod as its environment.
    world.admitted("mallory", training_run("weak-secret", secret="s3"))
    world.admitted("mallory", training_run("weak-claim", source="pvc://data/train.csv"))
    stored = json.loads(world.kubectl("get", "trainingrun", "weak-secret", "-n", world.namespace, "-o", "json").stdout)
    assert credentials_env_from(stored["spec"]) == [{"secretRef": {"name": "s3"}}]

    world.enforce()
    message = world.refused("mallory", training_run("steal-secret", secret="s3"))
    assert (
        f'spec.credentials.secretRef: user "mallory" may not get Secret "s3" in namespace "{world.namespace}"; '
        "ask for get on it or name a Secret you can read"
    ) in message
    message = world.refused("mallory", training_run("steal-data", source="pvc://data/train.csv"))
    assert 'spec.data.source: user "mallory" may not get PersistentVolumeClaim "data"' in message
    message = world.refused("mallory", training_run("steal-output", output="pvc://data/models"))
    assert 'spec.output.storageUri: user "mallory" may not get PersistentVolumeClaim "data"' in message

    # What mallory may do is untouched: no Secret, or data from elsewhere.
    world.admitted("mallory", training_run("plain", output="s3://bucket/models"))
    # alice may read both, so the very same runs are hers to create.
    world.admitted("alice", training_run("alice-secret", secret="s3"))
    world.admitted("alice", training_run("alice-claims", source="pvc://data/train.csv", output="pvc://data/models", secret="s3"))


def test_a_modeldeployment_naming_an_unreadable_secret_or_claim_is_refused(world: World) -> None:
    world.admitted("mallory", model_deployment("weak-secret", secret="s3"))
    world.admitted("mallory", model_deployment("weak-claim", uri="pvc://data/model.skops"))

    world.enforce()
    message = world.refused("mallory", model_deployment("steal-secret", secret="s3"))
    assert 'spec.model.credentials.secretRef: user "mallory" may not get Secret "s3"' in message
    message = world.refused("mallory", model_deployment("steal-claim", uri="pvc://data/model.skops"))
    assert 'spec.model.storageUri: user "mallory" may not get PersistentVolumeClaim "data"' in message
    world.admitted("alice", model_deployment("alice", secret="s3", uri="pvc://data/model.skops"))


def test_a_modeldeployment_running_as_an_unreadable_service_account_is_refused(world: World) -> None:
    # Weakened: mallory's deployment naming ServiceAccount model-reader is stored, and the
    # operator (not mallory) would create server pods running as it - with whatever cloud
    # identity the account is bound to.
    world.admitted("mallory", model_deployment("weak-sa", service_account="model-reader"))
    stored = json.loads(world.kubectl("get", "modeldeployment", "weak-sa", "-n", world.namespace, "-o", "json").stdout)
    stored["metadata"].setdefault("uid", "u")
    pod = build_track_deployment(stored, "stable", ModelRef(uri="s3://m/model.skops", sha256=SHA), 1,
                                 ServingSettings(image="kubeloop:test"))["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "model-reader"

    world.enforce()
    message = world.refused("mallory", model_deployment("steal-sa", service_account="model-reader"))
    assert (
        f'spec.server.serviceAccountName: user "mallory" may not get ServiceAccount "model-reader" in namespace '
        f'"{world.namespace}"; ask for get on it or name a ServiceAccount you can read'
    ) in message
    # Nor by changing the spec of a deployment mallory may update.
    world.admitted("mallory", model_deployment("mallorys"))
    patch = world.kubectl("patch", "modeldeployment", "mallorys", "-n", world.namespace, "--as", "mallory",
                          "--type=merge", "-p", json.dumps({"spec": {"server": {"serviceAccountName": "model-reader"}}}),
                          check=False)
    assert patch.returncode != 0 and 'may not get ServiceAccount "model-reader"' in patch.stderr
    # alice may get it, so the same deployment is hers to create; and without a
    # serviceAccountName (the namespace's default account) nothing is checked.
    world.admitted("alice", model_deployment("alice-sa", service_account="model-reader"))
    world.admitted("mallory", model_deployment("default-sa"))


def test_a_driftpolicy_naming_an_unreadable_secret_or_claim_is_refused(world: World) -> None:
    dataset = {"dataset": {"uri": "s3://bucket/today.csv", "credentials": {"secretRef": {"name": "s3"}}}}
    dataset_claim = {"dataset": {"uri": "pvc://data/today.csv"}}
    template = {"template": {"spec": training_spec(secret="s3")}}
    template_claims = {"template": {"spec": training_spec(source="pvc://data/x.csv", output="pvc://data/m")}}
    overrides = {"fromTrainingRun": {"name": "iris"}, "overrides": {"credentials": {"secretRef": {"name": "s3"}}}}
    overrides_claim = {"fromTrainingRun": {"name": "iris"}, "overrides": {"data": {"source": "pvc://data/x.csv"}}}
    attacks = {
        "dataset-secret": (drift_policy("x", source=dataset),
                           'spec.source.dataset.credentials.secretRef: user "mallory" may not get Secret "s3"'),
        "dataset-claim": (drift_policy("x", source=dataset_claim),
                          'spec.source.dataset.uri: user "mallory" may not get PersistentVolumeClaim "data"'),
        "template-secret": (drift_policy("x", retrain=template),
                            'spec.retrain.template.spec.credentials.secretRef: user "mallory" may not get Secret "s3"'),
        "template-claim": (drift_policy("x", retrain=template_claims),
                           'spec.retrain.template.spec.data.source: user "mallory" may not get PersistentVolumeClaim "data"'),
        "overrides-secret": (drift_policy("x", retrain=overrides),
                             'spec.retrain.overrides.credentials.secretRef: user "mallory" may not get Secret "s3"'),
        "overrides-claim": (drift_policy("x", retrain=overrides_claim),
                            'spec.retrain.overrides.data.source: user "mallory" may not get PersistentVolumeClaim "data"'),
    }

    def named(obj: dict[str, Any], name: str) -> dict[str, Any]:
        return {**obj, "metadata": {"name": name}}

    for label, (policy, _) in attacks.items():
        world.admitted("mallory", named(policy, f"weak-{label}"))

    world.enforce()
    for label, (policy, expected) in attacks.items():
        assert expected in world.refused("mallory", named(policy, f"steal-{label}")), label
    for label, (policy, _) in attacks.items():
        # A copy of a run may name anything: only who may read everything may ask for one.
        author = "carol" if "fromTrainingRun" in policy["spec"].get("retrain", {}) else "alice"
        world.admitted(author, named(policy, f"{author}-{label}"))


def _secret_refs(env: list[dict[str, Any]]) -> set[str]:
    """The Secrets a container's ``env`` reads by ``secretKeyRef``."""
    return {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}


# The Secret references the other tests leave out, each with the object naming it and what the
# operator would build from the stored object: the Secrets the pod it creates then reads.
OTHER_SECRET_FIELDS = [
    pytest.param(
        "spec.server.auth.secretRef",
        lambda secret: model_deployment("x", auth_secret=secret),
        lambda stored: _secret_refs(auth_env(stored)),  # the server's bearer token
        "alice",
        id="server-auth",
    ),
    pytest.param(
        "spec.tracking.credentials.secretRef",
        lambda secret: training_run("x", tracking_secret=secret),
        lambda stored: _secret_refs(tracking_env(stored["spec"], "http://mlflow", "r", "e")),
        "alice",
        id="run-tracking",
    ),
    pytest.param(
        "spec.retrain.template.spec.tracking.credentials.secretRef",
        lambda secret: drift_policy("x", retrain={"template": {"spec": training_spec(tracking_secret=secret)}}),
        lambda stored: _secret_refs(tracking_env(retrain_run(stored, 1, "Drift", None)["spec"], "http://mlflow", "r", "e")),
        "alice",
        id="template-tracking",
    ),
    pytest.param(
        "spec.retrain.overrides.tracking.credentials.secretRef",
        lambda secret: drift_policy("x", retrain={
            "fromTrainingRun": {"name": "iris"},
            "overrides": {"tracking": {"credentials": {"secretRef": {"name": secret}}}},
        }),
        # copying a run that names no Secret at all
        lambda stored: _secret_refs(tracking_env(retrain_run(stored, 1, "Drift", training_spec())["spec"],
                                                 "http://mlflow", "r", "e")),
        "carol",  # a copy of a run may name anything: only who may read every Secret may ask
        id="overrides-tracking",
    ),
]


@pytest.mark.parametrize(("field", "naming", "pod_reads", "reader"), OTHER_SECRET_FIELDS)
def test_a_server_token_or_tracking_secret_the_author_may_not_read_is_refused(
    world: World,
    field: str,
    naming: Callable[[str], dict[str, Any]],
    pod_reads: Callable[[dict[str, Any]], set[str]],
    reader: str,
) -> None:
    def named(name: str) -> dict[str, Any]:
        obj = naming("s3")
        return {**obj, "metadata": {"name": name}}

    # Weakened: mallory's object naming Secret s3 is stored, and what the operator builds from
    # it reads that Secret into a pod (the server's token, the trainer's MLflow credentials).
    world.admitted("mallory", named("weak"))
    kind = named("weak")["kind"].lower()
    stored = json.loads(world.kubectl("get", kind, "weak", "-n", world.namespace, "-o", "json").stdout)
    stored["metadata"].setdefault("uid", "u")
    assert pod_reads(stored) == {"s3"}

    world.enforce()
    message = world.refused("mallory", named("steal"))
    assert (
        f'{field}: user "mallory" may not get Secret "s3" in namespace "{world.namespace}"; '
        "ask for get on it or name a Secret you can read"
    ) in message
    # Who may read s3 creates the very same object.
    world.admitted(reader, named(reader))


def test_a_driftpolicy_copying_someone_elses_run_is_refused(world: World) -> None:
    # alice's run reads Secret s3. mallory's DriftPolicy copies it and overrides its image:
    # the operator (exempt) would create a run with alice's Secret in mallory's container.
    world.admitted("alice", training_run("iris-1", secret="s3", source="pvc://data/train.csv"))
    copy = drift_policy("weak", retrain={
        "fromTrainingRun": {"name": "iris-1"}, "overrides": {"image": "mallory/exfiltrate:1"},
    })
    world.admitted("mallory", copy)
    stored = json.loads(world.kubectl("get", "driftpolicy", "weak", "-n", world.namespace, "-o", "json").stdout)
    source = json.loads(world.kubectl("get", "trainingrun", "iris-1", "-n", world.namespace, "-o", "json").stdout)
    run = retrain_run(stored, 1, "Drift", source["spec"])
    assert run["spec"]["image"] == "mallory/exfiltrate:1"
    assert credentials_env_from(run["spec"]) == [{"secretRef": {"name": "s3"}}]

    world.enforce()
    message = world.refused("mallory", {**copy, "metadata": {"name": "steal"}})
    assert (
        f'spec.retrain.fromTrainingRun: user "mallory" may not get every Secret in namespace "{world.namespace}", '
        'and a copy of TrainingRun "iris-1" may name any of them; write retrain.template naming what you can '
        "read, or ask for get on secrets"
    ) in message
    # Reading s3 and data is not enough: the run to copy could name any other Secret.
    assert 'user "alice" may not get every Secret' in world.refused("alice", {**copy, "metadata": {"name": "alice"}})
    world.admitted("carol", {**copy, "metadata": {"name": "carol"}})
    # What alice may do instead: name her references in a template.
    world.admitted("alice", drift_policy("alice-template", retrain={
        "template": {"spec": training_spec(secret="s3", source="pvc://data/train.csv")},
    }))


def test_changing_the_spec_under_someone_elses_secret_is_refused(world: World) -> None:
    # alice's deployment reads Secret s3; mallory may update ModelDeployments. Changing its
    # spec (say, the server image, which runs with that Secret as its environment) is
    # checked against every reference in it; an annotation (promote, abort) names nothing.
    world.enforce()
    world.admitted("alice", model_deployment("served", secret="s3"))
    ns = ["-n", world.namespace, "--as", "mallory"]
    proc = world.kubectl("patch", "modeldeployment", "served", *ns, "--type=merge",
                         "-p", json.dumps({"spec": {"server": {"image": "mallory/exfiltrate:1"}}}), check=False)
    assert proc.returncode != 0
    assert 'spec.model.credentials.secretRef: user "mallory" may not get Secret "s3"' in proc.stderr
    image = world.kubectl("get", "modeldeployment", "served", "-n", world.namespace,
                          "-o", "jsonpath={.spec.server.image}").stdout
    assert image == ""
    world.kubectl("annotate", "modeldeployment", "served", *ns, "kubeloop.io/abort=true")
    world.kubectl("patch", "modeldeployment", "served", "-n", world.namespace, "--as", "alice",
                  "--type=merge", "-p", json.dumps({"spec": {"replicas": 2}}))


def test_the_operators_own_writes_are_not_checked(world: World) -> None:
    # The operator creates TrainingRuns from a DriftPolicy's template and may not read
    # Secrets by design; the template was admitted with its author's rights. Only the
    # chart's ServiceAccount is exempt: another one with the same Role is refused.
    world.enforce()
    operator = f"system:serviceaccount:{world.namespace}:{OPERATOR_SA}"
    other = f"system:serviceaccount:{world.namespace}:not-the-operator"
    world.admitted(operator, training_run("retrain-1", secret="s3", source="pvc://data/x.csv"))
    message = world.refused(other, training_run("retrain-2", secret="s3"))
    assert f'user "{other}" may not get Secret "s3"' in message
