"""Start-up: seconds from ``python flow.py`` to a gateway that answers, each Executor's model
load, and what importing the light modules costs.

    python -m bench.startup [--repeats 3]

The Flow runs on the offline models, started as the tracing test starts it
(``devtools.offline_flow.serve_flow_process``). "Ready" is the moment jina's Client reports the Flow
ready over gRPC. Model load times are the Executors' own ``speech2image_model_load_seconds``
gauges (loading and configuring the model, OpenVINO's conversion or cache read included; the
diffusion warm-up generation comes after), with an empty OpenVINO cache, the same cache again,
and the torch backend. Import times are fresh interpreters importing a module, with the heavy
libraries it pulled in.
Every figure is the median over ``--repeats`` runs.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Dict, List

# bench.measure first: it sets the OpenMP threads torch reads.
from bench.measure import ROOT
from bench.report import machine_summary, markdown_table, median_run
from devtools.offline_flow import serve_flow_process

LOAD_METRIC = 'speech2image_model_load_seconds'
# The diffusion Executor's starts measured, with their flow.py flags.
COLD, WARM = (
    'OpenVINO (default), empty cache: converts',
    'OpenVINO (default), cache filled: a restart',
)
STARTS = {COLD: [], WARM: [], 'torch': ['--diffusion-backend', 'torch']}
HEAVY_MODULES = ('torch', 'diffusers', 'transformers', 'faster_whisper', 'ctranslate2', 'whisper')
LIGHT_MODULES = ('speech2image.client', 'speech2image.schema', 'flow')


def model_load_seconds(port: int) -> float:
    """The Executor's model-load gauge from its Prometheus endpoint on ``port``."""
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(LOAD_METRIC + '{'):
                return float(line.rsplit(' ', 1)[1])
    raise RuntimeError(f'no {LOAD_METRIC} on port {port}')


def start_once(*flags: str) -> Dict[str, float]:
    """Start flow.py with ``flags``, time it to ready, read both load gauges, stop it."""
    started = time.perf_counter()
    with serve_flow_process(*flags) as flow:
        ready = time.perf_counter() - started
        return {
            'ready': ready,
            'whisper': model_load_seconds(flow.port_monitoring + 1),
            'stablediffusion': model_load_seconds(flow.port_monitoring + 2),
        }


def import_cost(module: str) -> Dict[str, object]:
    """Seconds a fresh interpreter takes to import ``module``, and the heavy modules it loaded."""
    code = (
        'import sys, time; started = time.perf_counter(); import '
        + module
        + '; print(time.perf_counter() - started); '
        f'print(",".join(m for m in {HEAVY_MODULES!r} if m in sys.modules))'
    )
    output = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split('\n')
    return {'seconds': float(output[0]), 'heavy': output[1] or 'none'}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    runs: Dict[str, List[Dict[str, float]]] = {start: [] for start in STARTS}
    for _ in range(args.repeats):
        # Each repeat: an empty OpenVINO cache (the first start converts), then the same cache
        # again (a restart reads it), then the torch backend.
        with tempfile.TemporaryDirectory(prefix='openvino-cache-') as cache:
            for start, flags in STARTS.items():
                runs[start].append(start_once(*flags, '--openvino-cache', cache))
    medians = {start: median_run(start_runs) for start, start_runs in runs.items()}
    print(machine_summary())
    rows = [['WhisperExecutor model load (tiny.en, int8)', '', f'{medians[WARM]["whisper"]:.2f}']]
    for start, median in medians.items():
        rows += [
            ['`python flow.py` to ready (offline models)', start, f'{median["ready"]:.1f}'],
            [
                'StableDiffusionExecutor model load (shapes-world)',
                start,
                f'{median["stablediffusion"]:.2f}',
            ],
        ]
    print(markdown_table(['what', 'diffusion backend', 'seconds'], rows))
    print()
    rows = []
    for module in LIGHT_MODULES:
        costs = [import_cost(module) for _ in range(args.repeats)]
        rows.append(
            [
                f'`import {module}`',
                f'{statistics.median(c["seconds"] for c in costs):.2f}',
                costs[0]['heavy'],
            ]
        )
    print(markdown_table(['import', 'seconds', 'heavy modules loaded'], rows))


if __name__ == '__main__':
    main()
