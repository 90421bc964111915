#!/usr/bin/env bash
# Builds a project image with podman on a machine with no Docker engine and no container registry
# (only Debian's mirror and PyPI reachable), then checks it starts its Executor.
#
#   sudo scripts/build_image_offline.sh [whisper|gateway|diffusion]    # default: whisper
#
# The pinned python:*-slim base cannot be pulled here, so a Debian bookworm base (Python 3.11, as in
# python:3.11-slim-bookworm) is made with debootstrap and imported into podman. The Dockerfile is
# the one CI lints and users build; only BASE_IMAGE differs. Whisper is built CPU-only
# (CUDA_LIBS empty) to keep the download small. Needs root, podman, buildah and debootstrap
# (apt-get install podman buildah debootstrap). Slow (minutes): not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-whisper}
TAG=0.1.0
WORK=${S2I_BUILD_DIR:-/var/tmp/speech2image-build}
BASE=localhost/speech2image-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
case "$IMAGE" in
  whisper) DOCKERFILE=Dockerfile.whisper; BUILD_ARGS=(--build-arg CUDA_LIBS=) ;;
  gateway) DOCKERFILE=Dockerfile.gateway; BUILD_ARGS=() ;;
  diffusion) DOCKERFILE=Dockerfile.diffusion; BUILD_ARGS=() ;;
  *) echo "unknown image '$IMAGE': choose whisper, gateway or diffusion" >&2; exit 2 ;;
esac
NAME=speech2image/${IMAGE/diffusion/stablediffusion}:$TAG

# Root podman without systemd or overlayfs: vfs storage, runc, cgroupfs, private storage dirs.
podman() {
  command podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs \
    --runtime runc --cgroup-manager cgroupfs "$@"
}
mkdir -p "$WORK"

if ! podman image exists "$BASE"; then
  echo "== debootstrap a Debian bookworm base with Python 3.11"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" > "$WORK/debootstrap.log"
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  tar -C "$WORK/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE"
  rm -rf "$WORK/rootfs"
fi

echo "== build $NAME from $DOCKERFILE"
start=$(date +%s)
# The host's CA bundle, read-only and for the build only: it may hold a proxy's CA that PyPI needs.
podman build --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  --build-arg BASE_IMAGE="$BASE" "${BUILD_ARGS[@]}" -f "$DOCKERFILE" -t "$NAME" .
echo "built $NAME in $(( $(date +%s) - start )) s"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$NAME"

echo "== check: runs as uid 10001, its entrypoint answers"
[ "$(podman run --rm --network none --entrypoint id "$NAME" -u)" = 10001 ]
podman run --rm --network none "$NAME" --version
if [ "$IMAGE" != gateway ]; then
  podman run --rm --network none --entrypoint python "$NAME" -c \
    'import speech2image, executor; print("imports ok:", executor.__file__)'
fi
echo "OK $NAME"
