#!/usr/bin/env bash
# The GPU benchmark in one go, on a machine with a CUDA build of torch and one GPU; under 8 minutes.
#   bench/gpu.sh                 # writes bench-gpu.md (one markdown table) and prints it
#   PY=python bench/gpu.sh --repeats 5
# What it measures: bench/gpu.py. The first run also builds the random full-size models under models/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: bench/gpu.sh needs a GPU")'
exec timeout 480 "$PY" -m bench.gpu "$@"
