"""Run every benchmark and print one markdown report (what docs/benchmarks.md's tables come from).

    make bench            # or, from the repository root: python -m bench.run

Each benchmark runs in its own process, one after another, so none competes with another for
the cores.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = [
    ("The original example's workload at default threads", 'bench.original_workload'),
    ('Flow against in-process', 'bench.flow_vs_inprocess'),
    ('Replicas and dynamic batching', 'bench.scaling'),
    ('Images per second by step count', 'bench.steps'),
    ('OpenVINO against torch: one UNet step at SD-1.5 size', 'bench.openvino_steps'),
    ('OpenVINO against torch: the images', 'bench.openvino_quality'),
    ('Whisper backends', 'bench.whisper_backends'),
    ('Whisper models: tiny.en and base', 'bench.whisper_models'),
    ('Whisper batching across requests', 'bench.whisper_batching'),
    ('Payloads', 'bench.payloads'),
    ('Start-up', 'bench.startup'),
    ('Live results: streaming', 'bench.streaming'),
]


def main() -> None:
    for title, module in BENCHMARKS:
        print(f'\n## {title}\n', flush=True)
        result = subprocess.run(
            [sys.executable, '-m', module], cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True
        )
        print(result.stdout.strip(), flush=True)


if __name__ == '__main__':
    main()
