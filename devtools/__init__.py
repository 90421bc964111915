"""Development tooling: the offline models (offline_models) and the offline Flow harness
(offline_flow) that the tests, the benchmarks and the demo scripts share. Runtime code
(speech2image/, executors/, flow.py) never imports it, and no image ships it.

This module imports nothing, so the tests and benchmarks can read OFFLINE_ENVIRONMENT and set it
before anything imports jina, huggingface_hub or numpy."""

# Every process of the offline tooling: no jina telemetry, and no model hub at all.
OFFLINE_ENVIRONMENT = {'JINA_OPTOUT_TELEMETRY': '1', 'HF_HUB_OFFLINE': '1'}
