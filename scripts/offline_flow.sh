# Sourced, from the repository root, by demo.sh and web.sh: start the Flow on the offline models
# in the background (log: out/flow.log); it is stopped when the sourcing script exits.
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 JINA_OPTOUT_TELEMETRY=1
mkdir -p out

$PY flow.py --host 127.0.0.1 \
  --whisper-model models/whisper-base-ct2 \
  --diffusion-model models/tiny-stable-diffusion \
  --num-inference-steps 10 > out/flow.log 2>&1 &
flow_pid=$!
trap 'kill $flow_pid 2>/dev/null; wait $flow_pid 2>/dev/null || true' EXIT
