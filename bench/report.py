"""What the benchmarks share that sets nothing up: the machine and versions, latency statistics,
markdown tables. (bench/measure.py, by contrast, sets the OpenMP threads at import.)"""

import os
import platform
import statistics
import time
from importlib.metadata import version
from typing import Callable, Dict, List, Sequence

import numpy as np

PACKAGES = ('jina', 'docarray', 'torch', 'faster-whisper', 'diffusers', 'ctranslate2')


def machine_summary() -> str:
    """One line naming the machine and the versions a figure depends on."""
    versions = ', '.join(f'{name} {version(name)}' for name in PACKAGES)
    return (
        f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python '
        f'{platform.python_version()}; {versions}'
    )


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def percentile(values: Sequence[float], share: float) -> float:
    """The measured value nearest the ``share`` quantile (0.99: p99), not one interpolated."""
    return float(np.quantile(values, share, method='nearest'))


def summarise(latencies: List[float], elapsed: float) -> Dict[str, float]:
    """p50/p99 latency in ms and throughput in requests per second."""
    return {
        'p50_ms': 1000 * statistics.median(latencies),
        'p99_ms': 1000 * percentile(latencies, 0.99),
        'rps': len(latencies) / elapsed,
    }


def median_run(runs: List[Dict[str, float]]) -> Dict[str, float]:
    """Each figure's median over repeated runs."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``action`` over ``repeats`` calls after one warm-up call."""
    action()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)
