#!/usr/bin/env bash
# podman as the offline scripts use it (build_image_offline.sh, run_containers.py): root podman
# without systemd or overlayfs, so vfs storage, runc and cgroupfs, on private storage dirs that
# hold only this project's images and containers.
#   scripts/podman.sh image ls        # any podman command
set -euo pipefail
WORK=${S2I_BUILD_DIR:-/var/tmp/speech2image-build}
mkdir -p "$WORK"
exec podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs \
  --runtime runc --cgroup-manager cgroupfs "$@"
