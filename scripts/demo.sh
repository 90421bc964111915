#!/usr/bin/env bash
# The demo: serve the Flow on the offline models, send the bundled spoken prompt, print the
# transcript, write the images to out/, stop. Run it as `make demo` (which installs first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# S2I_* variables are flow.py's flags (S2I_PORT_GRPC is --port-grpc); the client follows them.
PORT_GRPC=${S2I_PORT_GRPC:-54322}
GATEWAY=grpc://127.0.0.1:$PORT_GRPC

echo "Starting the Flow (log: out/flow.log), then sending assets/apple.wav" \
  "(\"$($PY -c 'import json;print(json.load(open("assets/clips.json"))["apple.wav"])')\")..."
# devtools.offline_flow serves the Flow, runs the client once the Flow is ready, then stops it.
$PY -m devtools.offline_flow --log out/flow.log --wait \
  --whisper-model models/whisper-base-ct2 --num-inference-steps 10 -- \
  $PY -m speech2image.client --host "$GATEWAY" --out out --num-images 2 --seed 42 assets/apple.wav
cat <<'NOTE'

Note: the transcript comes from a real Whisper model (base, multilingual; try a French clip:
speech2image assets/phare.wav, docs/languages.md). The images come from an
untrained, randomly initialised Stable Diffusion built offline (models/tiny-stable-diffusion),
so they are noise. For real images, serve real weights, e.g.:
  python flow.py --diffusion-model stable-diffusion-v1-5/stable-diffusion-v1-5 --whisper-model base
NOTE
