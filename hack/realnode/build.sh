#!/usr/bin/env bash
# Build the real node's containerd (containerd, containerd-shim-runc-v2, ctr) and its cluster DNS
# (CoreDNS) from their Go modules.
#
#   hack/realnode/build.sh                    build what is missing (cached)
#   hack/realnode/build.sh --force            rebuild containerd and swap it in atomically
#   hack/realnode/build.sh --path             print containerd's cache dir
#   hack/realnode/build.sh --regen            regenerate containerd's wrapper module from the pin
#   hack/realnode/build.sh coredns [--force | --path | --regen]   the same for CoreDNS
#
# Output: ${KUBELOOP_CACHE:-$HOME/.cache/kubeloop}/bin/containerd-<version>/ and
# .../coredns-<version>/, each created complete (built in a temp dir, renamed), so its existence
# means "built". Same scheme as hack/controlplane/build.sh, kept separate so the control plane's
# pins never move for this.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/realnode/versions.env
source "${HERE}/versions.env"
CACHE="${KUBELOOP_CACHE:-${HOME}/.cache/kubeloop}"
DEST="${CACHE}/bin/containerd-${CONTAINERD_VERSION}"
MODULE_DIR="${HERE}/modules/containerd"
MOD=github.com/containerd/containerd/v2
PKGS=(cmd/containerd cmd/containerd-shim-runc-v2 cmd/ctr)

# Static binaries: no cgo means no btrfs/devmapper/zfs snapshotters, which we do not use
# (the node uses overlayfs, falling back to native).
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

log() { printf '[realnode-build] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

regen() {
  local gomod pkg
  gomod="$(go mod download -json "${MOD}@${CONTAINERD_VERSION}" | jq -r '.GoMod // empty')"
  [[ -n "${gomod}" ]] || die "cannot download ${MOD}@${CONTAINERD_VERSION}"
  rm -f "${MODULE_DIR}/go.mod" "${MODULE_DIR}/go.sum"
  (
    cd "${MODULE_DIR}"
    go mod init kubeloop.local/hack/realnode/containerd >/dev/null 2>&1
    go mod edit -go="$(go mod edit -json "${gomod}" | jq -r '.Go')"
    local -a tools=()
    for pkg in "${PKGS[@]}"; do tools+=("${MOD}/${pkg}@${CONTAINERD_VERSION}"); done
    go get -tool "${tools[@]}"
    go mod tidy
  )
}

module_is_current() {
  [[ -f "${MODULE_DIR}/go.sum" ]] || return 1
  [[ "$(cd "${MODULE_DIR}" && go list -m -f '{{.Version}}' "${MOD}")" == "${CONTAINERD_VERSION}" ]]
}

build() {
  if [[ -d "${DEST}" && "${FORCE:-0}" != 1 ]]; then
    log "containerd ${CONTAINERD_VERSION}: cached at ${DEST}"
    return 0
  fi
  mkdir -p "${CACHE}/bin"
  exec 8>"${CACHE}/bin/.containerd-${CONTAINERD_VERSION}.lock"
  flock -w 3600 8 || die "could not take the build lock"
  if [[ -d "${DEST}" && "${FORCE:-0}" != 1 ]]; then
    log "containerd ${CONTAINERD_VERSION}: built by another session at ${DEST}"
    return 0
  fi
  module_is_current || regen
  local tmp pkg t0 ld
  tmp="$(mktemp -d "${CACHE}/bin/.containerd-build.XXXXXX")"
  ld="-s -w -X ${MOD}/version.Version=${CONTAINERD_VERSION} -X ${MOD}/version.Package=${MOD}"
  for pkg in "${PKGS[@]}"; do
    t0=$(date +%s)
    (cd "${MODULE_DIR}" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
      -ldflags "${ld}" -o "${tmp}/${pkg##*/}" "${MOD}/${pkg}")
    log "built ${pkg##*/} in $(( $(date +%s) - t0 )) s"
  done
  printf 'module %s %s\ngo %s\n' "${MOD}" "${CONTAINERD_VERSION}" "$(go env GOVERSION)" > "${tmp}/BUILDINFO"
  chmod 755 "${tmp}"
  if [[ -d "${DEST}" ]]; then
    mv "${DEST}" "${DEST}.old.$$" && mv "${tmp}" "${DEST}" && rm -rf "${DEST}.old.$$"
  else
    mv "${tmp}" "${DEST}"
  fi
  log "containerd ${CONTAINERD_VERSION} at ${DEST}"
}

# --- CoreDNS: its own main package (modules/coredns/main.go) with only the plugins the node
# uses (kubernetes, cache, health, ready, errors, log, bind), so neither the cloud DNS plugins
# nor their SDKs are compiled. The module pins github.com/coredns/coredns at COREDNS_VERSION.
DNS_DEST="${CACHE}/bin/coredns-${COREDNS_VERSION}"
DNS_MODULE_DIR="${HERE}/modules/coredns"
DNS_MOD=github.com/coredns/coredns

dns_regen() {
  local gomod
  gomod="$(go mod download -json "${DNS_MOD}@${COREDNS_VERSION}" | jq -r '.GoMod // empty')"
  [[ -n "${gomod}" ]] || die "cannot download ${DNS_MOD}@${COREDNS_VERSION}"
  rm -f "${DNS_MODULE_DIR}/go.mod" "${DNS_MODULE_DIR}/go.sum"
  (
    cd "${DNS_MODULE_DIR}"
    go mod init kubeloop.local/hack/realnode/coredns >/dev/null 2>&1
    go mod edit -go="$(go mod edit -json "${gomod}" | jq -r '.Go')"
    go get "${DNS_MOD}@${COREDNS_VERSION}"
    go mod tidy
  )
}

dns_module_is_current() {
  [[ -f "${DNS_MODULE_DIR}/go.sum" ]] || return 1
  [[ "$(cd "${DNS_MODULE_DIR}" && go list -m -f '{{.Version}}' "${DNS_MOD}")" == "${COREDNS_VERSION}" ]]
}

dns_build() {
  if [[ -x "${DNS_DEST}/coredns" && "${FORCE:-0}" != 1 ]]; then
    log "coredns ${COREDNS_VERSION}: cached at ${DNS_DEST}"
    return 0
  fi
  mkdir -p "${CACHE}/bin"
  exec 7>"${CACHE}/bin/.coredns-${COREDNS_VERSION}.lock"
  flock -w 3600 7 || die "could not take the CoreDNS build lock"
  if [[ -x "${DNS_DEST}/coredns" && "${FORCE:-0}" != 1 ]]; then
    log "coredns ${COREDNS_VERSION}: built by another session at ${DNS_DEST}"
    return 0
  fi
  dns_module_is_current || dns_regen
  local tmp t0
  tmp="$(mktemp -d "${CACHE}/bin/.coredns-build.XXXXXX")"
  t0=$(date +%s)
  (cd "${DNS_MODULE_DIR}" && go build -trimpath \
    -ldflags "-s -w -X ${DNS_MOD}/coremain.GitCommit=${COREDNS_VERSION}" -o "${tmp}/coredns" .)
  log "built coredns in $(( $(date +%s) - t0 )) s"
  printf 'module %s %s\ngo %s\n' "${DNS_MOD}" "${COREDNS_VERSION}" "$(go env GOVERSION)" > "${tmp}/BUILDINFO"
  chmod 755 "${tmp}"
  if [[ -d "${DNS_DEST}" ]]; then
    mv "${DNS_DEST}" "${DNS_DEST}.old.$$" && mv "${tmp}" "${DNS_DEST}" && rm -rf "${DNS_DEST}.old.$$"
  else
    mv "${tmp}" "${DNS_DEST}"
  fi
  log "coredns ${COREDNS_VERSION} at ${DNS_DEST}"
}

case "${1:-}" in
  --path) echo "${DEST}" ;;
  --regen) regen ;;
  --force) FORCE=1 build ;;
  "") build; dns_build ;;
  coredns)
    case "${2:-}" in
      --path) echo "${DNS_DEST}" ;;
      --regen) dns_regen ;;
      --force) FORCE=1 dns_build ;;
      "") dns_build ;;
      *) die "unknown argument: coredns $2" ;;
    esac
    ;;
  *) die "unknown argument: $1" ;;
esac
