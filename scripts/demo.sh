#!/usr/bin/env bash
# The demo: serve the Flow on the offline models, send the bundled spoken prompt, print the
# transcript, write the images to out/, stop. Run it as `make demo` (which installs first).
set -euo pipefail
cd "$(dirname "$0")/.."
# S2I_* variables are flow.py's flags (S2I_PORT_GRPC is --port-grpc); the client follows them.
PORT_GRPC=${S2I_PORT_GRPC:-54322}
GATEWAY=grpc://127.0.0.1:$PORT_GRPC
source scripts/offline_flow.sh

echo "Starting the Flow (log: out/flow.log)..."
$PY - "$flow_pid" "$PORT_GRPC" <<'PYEOF'
import os, socket, sys, time
pid, port, deadline = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + 180
while True:  # the gateway's port opens once every Executor is ready
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit('the Flow did not become ready in 180 s; see out/flow.log')
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit('the Flow exited; see out/flow.log')
    time.sleep(1)
PYEOF

echo "Sending assets/apple.wav (\"$($PY -c 'import json;print(json.load(open("assets/clips.json"))["apple.wav"])')\")..."
$PY -m speech2image.client --host "$GATEWAY" --out out --num-images 2 --seed 42 assets/apple.wav
cat <<'NOTE'

Note: the transcript comes from a real Whisper model (base, multilingual; try a French clip:
speech2image assets/phare.wav, docs/languages.md). The images come from an
untrained, randomly initialised Stable Diffusion built offline (models/tiny-stable-diffusion),
so they are noise. For real images, serve real weights, e.g.:
  python flow.py --diffusion-model stable-diffusion-v1-5/stable-diffusion-v1-5 --whisper-model base
NOTE
