#!/usr/bin/env bash
# Build the real node's containerd (containerd, containerd-shim-runc-v2, ctr) from its Go module.
#
#   hack/realnode/build.sh            build if missing (cached)
#   hack/realnode/build.sh --force    rebuild and swap in atomically
#   hack/realnode/build.sh --path     print the cache dir
#   hack/realnode/build.sh --regen    regenerate the wrapper module from the pin
#
# Output: ${KUBELOOP_CACHE:-$HOME/.cache/kubeloop}/bin/containerd-<version>/ , created complete
# (built in a temp dir, renamed), so its existence means "built". Same scheme as
# hack/controlplane/build.sh, kept separate so the control plane's pins never move for this.
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

case "${1:-}" in
  --path) echo "${DEST}" ;;
  --regen) regen ;;
  --force) FORCE=1 build ;;
  "") build ;;
  *) die "unknown argument: $1" ;;
esac
