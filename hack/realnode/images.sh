#!/usr/bin/env bash
# Build the real node's images without Docker, with Debian's buildah, and cache them as
# docker-archive tarballs (containerd imports those; an oci-archive import silently imports
# nothing with this buildah/containerd pair).
#
#   hack/realnode/images.sh pause     the sandbox ("pause") image, compiled from k8s.io/kubernetes'
#                                     build/pause/linux/pause.c (static, FROM scratch)
#   hack/realnode/images.sh base      a debootstrap Debian bookworm rootfs with python3 (the
#                                     Dockerfile's BASE: Docker Hub cannot be pulled here)
#   hack/realnode/images.sh runtime   the project's own Dockerfile built on that base
#   hack/realnode/images.sh all       the three, in that order
#   hack/realnode/images.sh archive NAME   print the archive path of pause|base|runtime
#
# Each archive's name carries a hash of its inputs, so an unchanged input is never rebuilt:
# pause.c's sha256; the Debian suite, mirror and package list; for the runtime image, the base
# archive plus every file of the build context (Dockerfile, .dockerignore, pyproject.toml,
# README.md, operator/).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
# shellcheck source=hack/controlplane/versions.env
source "${ROOT}/hack/controlplane/versions.env"
# shellcheck source=hack/realnode/versions.env
source "${HERE}/versions.env"
CACHE="${KUBELOOP_CACHE:-${HOME}/.cache/kubeloop}"
IMAGES="${CACHE}/realnode/images"
# buildah's own store, private to Kubeloop (never the system's /var/lib/containers).
BUILDAH_ROOT="${CACHE}/realnode/buildah"
# The mirror apt already uses on this machine (a debootstrap needs one; it is a package registry).
DEBIAN_MIRROR="${KUBELOOP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SUITE="${KUBELOOP_DEBIAN_SUITE:-bookworm}"
# BASE_PACKAGES (the debootstrap --include list) comes from versions.env.

log() { printf '[realnode-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need() {
  local tool="$1" pkg="$2"
  command -v "${tool}" >/dev/null || die "${tool} is missing: apt-get install -y ${pkg}"
}

buildah_() {
  # overlay is fast on this ext4 root; KUBELOOP_BUILDAH_DRIVER=vfs is the fallback that works
  # everywhere (each layer a full copy).
  buildah --root "${BUILDAH_ROOT}/root" --runroot "${BUILDAH_ROOT}/run" \
    --storage-driver "${KUBELOOP_BUILDAH_DRIVER:-overlay}" "$@"
}

# No builder container or mount outlives a build (a failed RUN leaves its working container).
cleanup_buildah() {
  [[ -d "${BUILDAH_ROOT}/root" ]] || return 0
  buildah_ rm --all >/dev/null 2>&1 || true
  local m
  while read -r m; do umount "${m}" 2>/dev/null || true; done < <(
    awk -v root="${BUILDAH_ROOT}/root" 'index($2, root) == 1 { print $2 }' /proc/self/mounts | sort -r)
}
trap cleanup_buildah EXIT

# Keep one archive per image: the one just built (older keys are never used again).
drop_older() {
  local keep="$1" prefix f
  prefix="$(basename "${keep}")"
  prefix="${prefix%-*}"
  for f in "${IMAGES}/${prefix}"-*.tar; do
    [[ -f "${f}" && "${f}" != "${keep}" ]] && rm -f "${f}"
  done
  return 0
}

short_hash() { sha256sum | cut -c1-16; }

pause_archive() {
  local src
  src="$(pause_source)"
  echo "${IMAGES}/pause-$(cat "${src}" <(echo "${PAUSE_IMAGE}") | short_hash).tar"
}
pause_source() {
  local dir
  dir="$(GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" |
    jq -r '.Dir // empty')"
  [[ -f "${dir}/build/pause/linux/pause.c" ]] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@${KUBERNETES_VERSION}"
  echo "${dir}/build/pause/linux/pause.c"
}
base_archive() {
  echo "${IMAGES}/base-$(printf '%s\n' "${DEBIAN_SUITE}" "${DEBIAN_MIRROR}" "${BASE_PACKAGES}" "${BASE_IMAGE}" | short_hash).tar"
}
runtime_archive() {
  local context_hash
  # Exactly the files the Dockerfile's build context admits (see .dockerignore) plus both.
  context_hash="$(cd "${ROOT}" && {
    printf '%s\n' Dockerfile .dockerignore pyproject.toml README.md requirements.lock
    find operator -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -not -path '*.egg-info/*'
  } | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
  echo "${IMAGES}/runtime-$(printf '%s\n' "${context_hash}" "$(basename "$(base_archive)")" "${RUNTIME_IMAGE}" | short_hash).tar"
}

build_pause() {
  local out src tmp ctr version
  out="$(pause_archive)"
  [[ -f "${out}" ]] && { log "pause: cached ${out}"; return 0; }
  need gcc gcc
  need buildah buildah
  src="$(pause_source)"
  tmp="$(mktemp -d)"
  version="${PAUSE_IMAGE##*:}"
  # Same flags as upstream's build/pause/Makefile (-Os -static, VERSION baked in).
  gcc -Os -Wall -Werror -static -DVERSION="v${version}-kubeloop" -o "${tmp}/pause" "${src}"
  strip "${tmp}/pause"
  ctr="$(buildah_ from scratch)"
  buildah_ copy "${ctr}" "${tmp}/pause" /pause >/dev/null
  buildah_ config --entrypoint '["/pause"]' --user 65535:65535 \
    --label io.containerd.image.pinned=pinned "${ctr}"
  buildah_ commit -q --rm "${ctr}" "${PAUSE_IMAGE}" >/dev/null
  mkdir -p "${IMAGES}"
  rm -f "${out}.tmp"
  buildah_ push -q "${PAUSE_IMAGE}" "docker-archive:${out}.tmp:${PAUSE_IMAGE}" >/dev/null
  mv "${out}.tmp" "${out}"
  drop_older "${out}"
  rm -rf "${tmp}"
  log "pause: built ${out}"
}

build_base() {
  local out tmp ctr mnt
  out="$(base_archive)"
  [[ -f "${out}" ]] && { log "base: cached ${out}"; return 0; }
  need debootstrap debootstrap
  need buildah buildah
  tmp="$(mktemp -d "${CACHE}/realnode/debootstrap.XXXXXX")"
  log "base: debootstrap ${DEBIAN_SUITE} (${BASE_PACKAGES}) from ${DEBIAN_MIRROR}"
  debootstrap --variant=minbase --include="${BASE_PACKAGES}" "${DEBIAN_SUITE}" "${tmp}/rootfs" \
    "${DEBIAN_MIRROR}" > "${tmp}/debootstrap.log" 2>&1 ||
    { tail -n 20 "${tmp}/debootstrap.log" >&2; die "debootstrap failed (log: ${tmp}/debootstrap.log)"; }
  # Slim it: apt lists and caches are not needed at run time.
  rm -rf "${tmp}/rootfs/var/lib/apt/lists/"* "${tmp}/rootfs/var/cache/apt/"*.bin \
    "${tmp}/rootfs/var/cache/apt/archives/"*.deb "${tmp}/rootfs/usr/share/doc" "${tmp}/rootfs/usr/share/man"
  ctr="$(buildah_ from scratch)"
  mnt="$(buildah_ mount "${ctr}")"
  # tar keeps owners, modes, device nodes and hard links (buildah copy would not).
  tar -C "${tmp}/rootfs" -cf - . | tar -C "${mnt}" -xpf -
  buildah_ umount "${ctr}" >/dev/null
  buildah_ config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd '["python3"]' "${ctr}"
  buildah_ commit -q --rm "${ctr}" "${BASE_IMAGE}" >/dev/null
  mkdir -p "${IMAGES}"
  buildah_ push -q "${BASE_IMAGE}" "docker-archive:${out}.tmp:${BASE_IMAGE}" >/dev/null
  mv "${out}.tmp" "${out}"
  drop_older "${out}"
  rm -rf "${tmp}"
  log "base: built ${out}"
}

build_runtime() {
  local out
  out="$(runtime_archive)"
  [[ -f "${out}" ]] && { log "runtime: cached ${out}"; return 0; }
  build_base
  # The base must be in buildah's store for FROM (it is after build_base, unless the store was
  # wiped while the archive was kept).
  buildah_ inspect --type image "${BASE_IMAGE}" >/dev/null 2>&1 ||
    buildah_ pull "docker-archive:$(base_archive)" >/dev/null
  log "runtime: building ${ROOT}/Dockerfile FROM ${BASE_IMAGE} (pip install needs PyPI)"
  # RUN steps see the host's trust store and pip settings (mounted for the build only, never
  # in a layer), so a proxy or mirror that this machine trusts is trusted by `pip install` too.
  local -a mounts=()
  local f
  for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    [[ -f "${f}" ]] && mounts+=(--volume "${f}:${f}:ro")
  done
  # --isolation chroot: RUN steps share the host's network (PyPI) and need no CNI of buildah's.
  buildah_ bud --isolation chroot --layers "${mounts[@]}" --build-arg "BASE=${BASE_IMAGE}" \
    -f "${ROOT}/Dockerfile" -t "${RUNTIME_IMAGE}" "${ROOT}" >&2
  mkdir -p "${IMAGES}"
  buildah_ push -q "${RUNTIME_IMAGE}" "docker-archive:${out}.tmp:${RUNTIME_IMAGE}" >/dev/null
  mv "${out}.tmp" "${out}"
  drop_older "${out}"
  # Untagged images of earlier builds: each runtime image is ~700 MB.
  buildah_ rmi --prune >/dev/null 2>&1 || true
  log "runtime: built ${out}"
}

case "${1:-all}" in
  pause) build_pause ;;
  base) build_base ;;
  runtime) build_runtime ;;
  all) build_pause; build_base; build_runtime ;;
  archive)
    case "${2:-}" in
      pause) pause_archive ;; base) base_archive ;; runtime) runtime_archive ;;
      *) die "usage: images.sh archive pause|base|runtime" ;;
    esac ;;
  *) die "usage: images.sh pause|base|runtime|all|archive NAME" ;;
esac
