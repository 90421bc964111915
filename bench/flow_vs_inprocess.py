"""What the Flow costs: per-request latency and throughput through the gateway against calling
the same Executors in-process, in one run, on the offline models.

    python -m bench.flow_vs_inprocess [--requests 24] [--concurrency 1 4 16] [--repeats 3]

Workloads (bench/measure.py): ``speech``, the whole pipeline on assets/apple.wav; ``text``,
``/generate`` with one denoising step, where the Flow's own overhead shows most.

In-process, one request at a time, so its throughput is the same at any concurrency; the Flow
at concurrency > 1 also overlaps Whisper with diffusion and batches what queues. The "batching
off" row (batch size 1) shows the gateway and hops alone.
Every figure is the median over ``--repeats`` runs.
"""

import argparse
import asyncio
from typing import Callable, Dict, List

from docarray import DocList
from jina import Executor

import flow as flow_module

# bench.measure first: it sets the OpenMP threads torch reads.
from bench.measure import (
    ROOT,
    WORKLOADS,
    Workload,
    measure_flow_repeated,
    measure_in_process,
)
from bench.report import machine_summary, markdown_table, median_run
from devtools import offline_models
from devtools.offline_flow import TINY_SD, WHISPER_TINY_EN, offline_flow_args
from speech2image.schema import SpeechDoc

HEADER = [
    'workload',
    'path',
    'concurrency',
    'p50 ms',
    'p99 ms',
    'req/s',
    'p50 over in-process (ms)',
    'throughput vs in-process',
]


def load_executors():
    whisper = Executor.load_config(
        str(ROOT / 'executors/whisper/config.yml'), uses_with={'model': str(WHISPER_TINY_EN)}
    )
    diffusion = Executor.load_config(
        str(ROOT / 'executors/stablediffusion/config.yml'),
        uses_with={'model': str(TINY_SD)},
    )
    return whisper, diffusion


def in_process_call(whisper, diffusion, workload: Workload) -> Callable:
    """The same work the Flow does for the workload's endpoint, as direct (awaited) calls."""
    first = whisper.transcribe if workload.endpoint == '/' else whisper.check_prompts

    async def both(doc: SpeechDoc, parameters: Dict) -> None:
        docs = await first(docs=DocList[SpeechDoc]([doc]), parameters=parameters)
        await diffusion.generate(docs=docs, parameters=parameters)

    def call(doc: SpeechDoc, parameters: Dict) -> None:
        asyncio.run(both(doc, parameters))

    return call


def measure_through_flow(
    flags: List[str], concurrencies: List[int], requests: int, repeats: int
) -> Dict[str, Dict[int, Dict[str, float]]]:
    """Every workload at every concurrency through one Flow started with ``flags``."""
    args = offline_flow_args(*flags)
    with flow_module.build_flow(args):
        address = f'grpc://127.0.0.1:{args.port_grpc}'
        return {
            name: {
                concurrency: measure_flow_repeated(
                    address, workload, max(requests, concurrency), concurrency, repeats
                )
                for concurrency in concurrencies
            }
            for name, workload in WORKLOADS.items()
        }


def row(
    name: str, path: str, concurrency: int, result: Dict[str, float], base: Dict[str, float]
) -> List[str]:
    return [
        name,
        path,
        str(concurrency),
        f'{result["p50_ms"]:.1f}',
        f'{result["p99_ms"]:.1f}',
        f'{result["rps"]:.1f}',
        f'{result["p50_ms"] - base["p50_ms"]:+.1f}',
        f'{result["rps"] / base["rps"]:.2f}x',
    ]


def run(requests: int, concurrencies: List[int], repeats: int) -> List[List[str]]:
    """Measure every workload through the Flow (as configured by default, and at concurrency 1
    without the dynamic-batching window), then in-process; return the table rows. The Flows go
    first: forking them after torch ran here can deadlock (bench/measure.py)."""
    offline_models.build_all(ROOT / 'models')
    through_flow = measure_through_flow([], concurrencies, requests, repeats)
    unbatched = measure_through_flow(['--batch-size', '1'], [1], requests, repeats)
    whisper, diffusion = load_executors()
    rows = []
    for name, workload in WORKLOADS.items():
        call = in_process_call(whisper, diffusion, workload)
        base = median_run([measure_in_process(call, workload, requests) for _ in range(repeats)])
        rows.append(
            [
                name,
                'in-process',
                '1',
                f'{base["p50_ms"]:.1f}',
                f'{base["p99_ms"]:.1f}',
                f'{base["rps"]:.1f}',
                '',
                '',
            ]
        )
        rows.append(row(name, 'Flow, batching off', 1, unbatched[name][1], base))
        rows += [
            row(name, 'Flow', concurrency, result, base)
            for concurrency, result in through_flow[name].items()
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requests', type=int, default=24, help='requests per measurement')
    parser.add_argument('--concurrency', type=int, nargs='+', default=[1, 4, 16])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    rows = run(args.requests, args.concurrency, args.repeats)
    print(machine_summary())
    print(markdown_table(HEADER, rows))


if __name__ == '__main__':
    main()
