#!/usr/bin/env bash
# The web page on the offline models: serves the Flow and the page until Ctrl-C.
# Run it as `make web`, then open http://127.0.0.1:54325. S2I_* / S2I_WEB_* variables change ports.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

echo "The Flow is starting (log: out/flow.log); the page says so until it is ready."
# devtools.offline_flow serves the Flow around the page and stops it when the page stops.
$PY -m devtools.offline_flow --log out/flow.log -- $PY -m speech2image.web --host 127.0.0.1
