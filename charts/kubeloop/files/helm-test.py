"""`helm test` for a Kubeloop release: the three kinds are served and the operator answers.

Runs in the operator's own image (python and the kubernetes client are there; kubectl is not)
under a ServiceAccount of its own that may only list pods and the three kinds in the release
namespace.
Settings come from the environment the test Pod template sets. Exit code 0: every check
passed; otherwise each failed check is printed with what to look at.
"""

import json
import os
import sys
import time
import urllib.request

from kubernetes import client, config

GROUP, VERSION = "kubeloop.io", "v1alpha1"
KINDS = ("trainingruns", "modeldeployments", "driftpolicies")
# A family every operator registers at start-up (kubeloop/controllers/metrics.py).
METRICS_FAMILY = "# TYPE kubeloop_reconcile_total counter"
TIMEOUT = 10
RETRY_SECONDS = 3


def get(url):
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return response.status, response.read().decode("utf-8", "replace")


def check_kinds(custom, namespace):
    """Each kind is served: a list answers only once its CRD is established."""
    problems = []
    for plural in KINDS:
        try:
            custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, limit=1)
        except client.ApiException as error:
            problems.append(
                f"{plural}.{GROUP} is not served ({error.status} {error.reason}): "
                f"kubectl get crd {plural}.{GROUP} -o yaml shows its conditions"
            )
            continue
        print(f"ok: {plural}.{GROUP} is served (CRD established)")
    return problems


def check_operator_pods(core, namespace, selector, health_port):
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    ready = [
        p for p in pods
        if p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]
    if not ready:
        return [f"no Ready operator pod in {namespace} (selector {selector}): kubectl -n {namespace} describe pods -l {selector}"]
    problems = []
    for pod in ready:
        url = f"http://{pod.status.pod_ip}:{health_port}/healthz"
        try:
            status, _ = get(url)
        except OSError as error:
            problems.append(f"operator pod {pod.metadata.name}: {url} did not answer: {error}")
            continue
        if status != 200:
            problems.append(f"operator pod {pod.metadata.name}: {url} answered {status}")
        else:
            print(f"ok: operator pod {pod.metadata.name} answers {url}")
    return problems


def check_metrics_service(url):
    try:
        status, body = get(url)
    except OSError as error:
        return [f"the operator's metrics Service did not answer {url}: {error}"]
    if status != 200 or METRICS_FAMILY not in body:
        return [f"{url} answered {status} without {METRICS_FAMILY!r}"]
    print(f"ok: the metrics Service answers {url}")
    return []


def check_all():
    problems = []
    if os.environ.get("CHECK_API") == "true":
        config.load_incluster_config()
        problems += check_kinds(client.CustomObjectsApi(), os.environ["RELEASE_NAMESPACE"])
        problems += check_operator_pods(
            client.CoreV1Api(), os.environ["RELEASE_NAMESPACE"], os.environ["OPERATOR_SELECTOR"],
            int(os.environ["HEALTH_PORT"]),
        )
    else:
        print("skipped: kinds and operator pods (rbac.create or serviceAccount.create is false: no identity of its own)")
    if os.environ.get("METRICS_URL"):
        problems += check_metrics_service(os.environ["METRICS_URL"])
    return problems


def main():
    # `helm install --wait` returns once the operator container runs; kopf opens /healthz and
    # the metrics server a moment later, so failed checks are retried for a while.
    deadline = time.monotonic() + float(os.environ.get("SETTLE_SECONDS", "60"))
    problems = check_all()
    while problems and time.monotonic() < deadline:
        print(f"retrying in {RETRY_SECONDS}s: {len(problems)} check(s) failed")
        time.sleep(RETRY_SECONDS)
        problems = check_all()
    for problem in problems:
        print(f"FAILED: {problem}")
    print(json.dumps({"passed": not problems, "problems": len(problems)}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
