#!/usr/bin/env bash
# Builds a project image with podman on a machine with no Docker engine and no container registry
# (only Debian's mirror and PyPI reachable), then checks it starts its Executor.
#
#   sudo scripts/build_image_offline.sh [whisper|gateway|diffusion|diffusion-cpu]    # default: whisper
#
# The pinned python:*-slim base cannot be pulled here, so a Debian bookworm base (Python 3.11, as in
# python:3.11-slim-bookworm) is made with debootstrap and imported into podman. The Dockerfile is
# the one CI lints and users build; only BASE_IMAGE differs. Whisper is built CPU-only
# (CUDA_LIBS empty) to keep the download small. diffusion is the CUDA image the manifests run;
# diffusion-cpu the CPU-only one (tag 0.1.0-cpu), its torch from the local wheels in
# $S2I_TORCH_WHEELS (default /opt/wheels) where that folder exists, else from PyTorch's CPU index.
# Needs root, podman, buildah and debootstrap (apt-get install podman buildah debootstrap).
# Slow (minutes): not part of `make test`. scripts/run_containers.py runs the three images.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-whisper}
TAG=0.1.0
WORK=${S2I_BUILD_DIR:-/var/tmp/speech2image-build}
BASE=localhost/speech2image-base:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_WHEELS=${S2I_TORCH_WHEELS:-/opt/wheels}
case "$IMAGE" in
  whisper) DOCKERFILE=Dockerfile.whisper; BUILD_ARGS=(--build-arg CUDA_LIBS=) ;;
  gateway) DOCKERFILE=Dockerfile.gateway; BUILD_ARGS=() ;;
  diffusion) DOCKERFILE=Dockerfile.diffusion; BUILD_ARGS=() ;;
  diffusion-cpu)
    DOCKERFILE=Dockerfile.diffusion; TAG=$TAG-cpu
    if [ -d "$TORCH_WHEELS" ]; then
      # Mounted for the build only: pip prefers the local +cpu wheel to PyPI's CUDA one.
      BUILD_ARGS=(--volume "$TORCH_WHEELS:/wheels:ro" --build-arg TORCH_PIP_OPTIONS="--find-links /wheels")
    else
      BUILD_ARGS=(--build-arg TORCH_PIP_OPTIONS="--index-url https://download.pytorch.org/whl/cpu")
    fi ;;
  *) echo "unknown image '$IMAGE': choose whisper, gateway, diffusion or diffusion-cpu" >&2; exit 2 ;;
esac
STAGE=${IMAGE%-cpu}
NAME=speech2image/${STAGE/diffusion/stablediffusion}:$TAG
podman() { scripts/podman.sh "$@"; }
# This machine's limits cap what runc may set: keep containers at 1024 open files and processes.
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

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
# --layers=false: vfs stores every layer as a full copy of the tree, so one layer per stage.
podman build --network host --layers=false "${LIMITS[@]}" \
  --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  --build-arg BASE_IMAGE="$BASE" "${BUILD_ARGS[@]}" -f "$DOCKERFILE" -t "$NAME" .
echo "built $NAME in $(( $(date +%s) - start )) s"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$NAME"

echo "== check: runs as uid 10001, its entrypoint answers"
# One container for all of it: on vfs each container start copies the whole image.
CHECK='import os, speech2image; assert os.getuid() == 10001, os.getuid(); print("uid", os.getuid())'
[ "$IMAGE" != gateway ] && CHECK+='; import executor; print("imports ok:", executor.__file__)'
[ "$STAGE" = diffusion ] && CHECK+='; import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
podman run --rm "${LIMITS[@]}" --network none --entrypoint sh "$NAME" -c "jina --version && python -c '$CHECK'"

# The Whisper image serves a transcription for real, on the offline model (make models) if present.
MODEL=models/whisper-tiny.en-ct2
if [ "$IMAGE" = whisper ] && [ -d "$MODEL" ]; then
  echo "== check: the Executor in the container transcribes assets/apple.wav"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  container=speech2image-check-$$
  trap 'podman rm -f "$container" > /dev/null 2>&1 || true' EXIT
  podman run -d --name "$container" "${LIMITS[@]}" --network host -e HF_HUB_OFFLINE=1 \
    -v "$(readlink -f "$MODEL")":/models/whisper-tiny.en:ro -v "$PWD/assets":/assets:ro \
    "$NAME" executor --uses config.yml --host 127.0.0.1 --port "$port" \
    --uses-with '{"model": "/models/whisper-tiny.en"}' > /dev/null
  podman exec "$container" python -c "
import sys, time
import grpc
from docarray import DocList
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jina import Client
from speech2image.schema import SpeechDoc
health = health_pb2_grpc.HealthStub(grpc.insecure_channel('127.0.0.1:$port'))
for _ in range(120):  # what the manifests' gRPC probes ask
    try:
        health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        break
    except grpc.RpcError:
        time.sleep(1)
client = Client(host='grpc://127.0.0.1:$port')
docs = client.post('/transcribe', DocList[SpeechDoc]([SpeechDoc(bytes_=open('/assets/apple.wav', 'rb').read())]),
                   return_type=DocList[SpeechDoc])
print('transcript:', docs[0].text)
sys.exit(0 if 'apple' in docs[0].text.lower() else 1)
"
fi
echo "OK $NAME"
