#!/usr/bin/env bash
# The demo: serve the Flow on the offline models, send the bundled spoken prompt, print the
# transcript, write the images to out/, stop. Run it as `make demo` (which installs first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# S2I_* variables are flow.py's flags (S2I_PORT_GRPC is --port-grpc); the client reads them too.

echo "Starting the Flow (log: out/flow.log), then sending assets/apple.wav" \
  "(\"$($PY -c 'import json;print(json.load(open("assets/clips.json"))["apple.wav"])')\")..."
# devtools.offline_flow serves the Flow, runs the client once the Flow is ready, then stops it.
$PY -m devtools.offline_flow --log out/flow.log --wait -- \
  $PY -m speech2image.client --out out --num-images 2 --seed 42 assets/apple.wav
# The lines under "Next" are commands, run as printed by tests/test_demo.py.
cat <<'NOTE'

The demo has stopped its Flow. Next, keep one running (Ctrl-C stops it):
  make serve
and in another terminal, speak Spanish to it (docs/languages.md):
  .venv/bin/speech2image assets/barco.wav

The transcript comes from a real Whisper model (base, multilingual). `make serve` and this demo
serve the offline image model built in models/; the client and the web page (make web) say which
model drew the pictures and what it knows. For other images, serve real weights, e.g.:
python flow.py --diffusion-model stable-diffusion-v1-5/stable-diffusion-v1-5 --whisper-model base
NOTE
