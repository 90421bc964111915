"""What replicas and continuous batching buy: throughput of ``/generate`` through the Flow, with the
diffusion Executor at 1 against 2 replicas, and with batching on against off.

    python -m bench.scaling [--requests 48] [--concurrency 8] [--steps 4] [--repeats 3]

Each Executor process uses one core (bench/measure.py), so on an N-core machine up to N
replicas can run side by side. "Batching off" is a preferred batch size of 1: every request is
its own pipeline call, however many requests queue. Every figure is the median over
``--repeats`` runs of ``--requests`` requests from ``--concurrency`` clients.
"""

import argparse
import os
from typing import Dict, List, Tuple

import flow as flow_module

# bench.measure first: it sets the OpenMP threads torch reads.
from bench.measure import Workload, measure_flow_repeated
from bench.report import machine_summary, markdown_table
from devtools.offline_flow import offline_flow_args
from speech2image.schema import SpeechDoc

HEADER = ['comparison', 'configuration', 'p50 ms', 'req/s', 'throughput ratio']
# (comparison, baseline flags, variant flags): flow.py flags; batching is on by default.
COMPARISONS: List[Tuple[str, Tuple[str, List[str]], Tuple[str, List[str]]]] = [
    (
        'diffusion replicas',
        ('1 replica', ['--diffusion-replicas', '1']),
        ('2 replicas', ['--diffusion-replicas', '2']),
    ),
    (
        'continuous batching',
        ('off (batch size 1)', ['--batch-size', '1']),
        ('on (the default batch size)', []),
    ),
]


def measure(
    flags: List[str], workload: Workload, requests: int, concurrency: int, repeats: int
) -> Dict[str, float]:
    """Start a Flow with ``flags``, measure ``workload`` through it, stop it."""
    args = offline_flow_args(*flags)
    with flow_module.build_flow(args):
        return measure_flow_repeated(
            f'grpc://127.0.0.1:{args.port_grpc}', workload, requests, concurrency, repeats
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requests', type=int, default=48)
    parser.add_argument('--concurrency', type=int, default=8)
    parser.add_argument(
        '--steps',
        type=int,
        default=4,
        help='denoising steps per image: enough that diffusion is the bottleneck',
    )
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    workload = Workload(
        '/generate',
        lambda: SpeechDoc(text='a red apple'),
        {'num_inference_steps': args.steps, 'seed': 1},
    )
    rows = []
    for comparison, (base_name, base_flags), (variant_name, variant_flags) in COMPARISONS:
        base = measure(base_flags, workload, args.requests, args.concurrency, args.repeats)
        variant = measure(variant_flags, workload, args.requests, args.concurrency, args.repeats)
        rows.append([comparison, base_name, f'{base["p50_ms"]:.0f}', f'{base["rps"]:.2f}', '1.00x'])
        rows.append(
            [
                comparison,
                variant_name,
                f'{variant["p50_ms"]:.0f}',
                f'{variant["rps"]:.2f}',
                f'{variant["rps"] / base["rps"]:.2f}x',
            ]
        )
    print(machine_summary())
    print(
        f'`/generate`, {args.steps} steps, concurrency {args.concurrency}, '
        f'{args.requests} requests per run, median of {args.repeats} runs, '
        f'{os.cpu_count()} cores.\n'
    )
    print(markdown_table(HEADER, rows))


if __name__ == '__main__':
    main()
