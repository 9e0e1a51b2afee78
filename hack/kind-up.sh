#!/usr/bin/env bash
# Kubeloop on a local kind cluster, for users with Docker:
#
#   hack/kind-up.sh          create the cluster (if missing), build and load the image,
#                            install the chart, apply the quickstart examples
#   hack/kind-up.sh down     delete the cluster
#
# Needs docker, kind, kubectl and helm on PATH. Everything runs against the kind cluster's own
# context (kind-<name>); your current kubectl context is left alone.
#
# Environment (all optional):
#   KIND_CLUSTER_NAME   cluster name                      (default: kubeloop)
#   KUBELOOP_NAMESPACE  namespace of the chart + examples (default: kubeloop)
#   KUBELOOP_IMAGE_REPO image repository                  (default: kubeloop)
#   KUBELOOP_IMAGE_TAG  image tag                         (default: dev)
#   SKIP_BUILD=1        reuse an image built earlier
#   SKIP_EXAMPLES=1     install the chart only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER_NAME:-kubeloop}"
NAMESPACE="${KUBELOOP_NAMESPACE:-kubeloop}"
IMAGE_REPO="${KUBELOOP_IMAGE_REPO:-kubeloop}"
IMAGE_TAG="${KUBELOOP_IMAGE_TAG:-dev}"
IMAGE="${IMAGE_REPO}:${IMAGE_TAG}"
CONTEXT="kind-${CLUSTER}"

log() { printf '[kind-up] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not on PATH: $2"
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"
}

up() {
  need docker "install Docker (or Podman with KIND_EXPERIMENTAL_PROVIDER=podman)"
  need kind "go install sigs.k8s.io/kind@latest, or see https://kind.sigs.k8s.io"
  need kubectl "see https://kubernetes.io/docs/tasks/tools/"
  need helm "see https://helm.sh/docs/intro/install/"
  docker info >/dev/null 2>&1 || die "docker is installed but not running (docker info failed)"

  if cluster_exists; then
    log "kind cluster ${CLUSTER} exists; reusing it"
  else
    log "creating kind cluster ${CLUSTER}"
    kind create cluster --name "${CLUSTER}" --config "${ROOT}/hack/kind-config.yaml" --wait 120s
  fi

  if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building ${IMAGE} from ${ROOT}/Dockerfile"
    docker build --tag "${IMAGE}" "${ROOT}"
  fi
  log "loading ${IMAGE} into the cluster's node"
  kind load docker-image "${IMAGE}" --name "${CLUSTER}"

  # pullPolicy Never: the image exists only inside the kind node, loaded above.
  # The models volume is created by the chart in the release namespace, where the examples go.
  log "installing the chart into namespace ${NAMESPACE}"
  helm upgrade --install kubeloop "${ROOT}/charts/kubeloop" \
    --kube-context "${CONTEXT}" \
    --namespace "${NAMESPACE}" --create-namespace \
    --set image.repository="${IMAGE_REPO}" \
    --set image.tag="${IMAGE_TAG}" \
    --set image.pullPolicy=Never \
    --set runtime.pullPolicy=Never \
    --set storage.modelsPvc.name=kubeloop-models \
    --set storage.modelsPvc.create=true \
    --set 'storage.modelsPvc.accessModes={ReadWriteOnce}' \
    --wait --timeout 5m

  if [[ "${SKIP_EXAMPLES:-0}" != 1 ]]; then
    log "applying examples/quickstart"
    kubectl --context "${CONTEXT}" --namespace "${NAMESPACE}" apply -f "${ROOT}/examples/quickstart/"
  fi

  cat <<NEXT

Kubeloop is running in kind cluster ${CLUSTER}, namespace ${NAMESPACE}.

  kubectl --context ${CONTEXT} -n ${NAMESPACE} get kubeloop          # all three kinds
  kubectl --context ${CONTEXT} -n ${NAMESPACE} get tr -w              # watch the training run
  kubectl --context ${CONTEXT} -n ${NAMESPACE} describe md breast-cancer
  kubectl --context ${CONTEXT} -n ${NAMESPACE} port-forward svc/breast-cancer 8080:8080
  hack/kind-up.sh down                                                # delete the cluster
NEXT
}

down() {
  need kind "go install sigs.k8s.io/kind@latest, or see https://kind.sigs.k8s.io"
  if cluster_exists; then
    kind delete cluster --name "${CLUSTER}"
  else
    log "no kind cluster named ${CLUSTER}"
  fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  -h | --help | help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command: $1 (use: up, down)" ;;
esac
