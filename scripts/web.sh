#!/usr/bin/env bash
# The web page on the offline models: serves the Flow and the page until Ctrl-C.
# Run it as `make web`, then open http://127.0.0.1:54325. S2I_* / S2I_WEB_* variables change ports.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 JINA_OPTOUT_TELEMETRY=1
mkdir -p out

$PY flow.py --host 127.0.0.1 \
  --whisper-model models/whisper-tiny.en-ct2 \
  --diffusion-model models/tiny-stable-diffusion \
  --num-inference-steps 10 > out/flow.log 2>&1 &
flow_pid=$!
trap 'kill $flow_pid 2>/dev/null; wait $flow_pid 2>/dev/null || true' EXIT

echo "The Flow is starting (log: out/flow.log); the page says so until it is ready."
$PY -m speech2image.web --host 127.0.0.1
