"""Live results: how soon a streaming call (``/stream``) shows the transcript, the first preview
and the final images, and what previews cost in throughput.

    python -m bench.streaming [--protocol grpc] [--steps 20] [--requests 8] [--repeats 3]

One Flow on the offline models (Whisper tiny.en, the tiny Stable Diffusion); each stream is
apple.wav through ``speech2image.client.stream``, the client the CLI uses. Latencies are
measured from opening the stream, at concurrency 1 and 4 (clients that each wait for their
stream to end before opening the next); each figure is the median over ``--repeats`` runs of
each run's median. The previews' cost compares the throughput of streams with the default
previews (``preview_every`` about steps / 4) against none (``preview_every`` 0), in pairs of
runs whose order alternates, so that neither always runs first.
"""

import argparse
import asyncio
import statistics
import time
from typing import Dict, List, Optional

import flow as flow_module

# bench.measure first: it sets the environment jina and torch read at import.
from bench.measure import APPLE, WARMUP_REQUESTS
from bench.report import machine_summary, markdown_table, median_run
from devtools.offline_flow import offline_flow_args
from speech2image.client import stream
from speech2image.schema import SpeechDoc

CONCURRENCIES = (1, 4)
THROUGHPUT_CONCURRENCY = 4
# The moments a stream is timed at: its first event of each kind.
MILESTONES = {'transcript': 'transcript', 'first preview': 'preview', 'final images': 'done'}
LATENCY_HEADER = ['concurrency', *(f'to the {name} (ms)' for name in MILESTONES)]
COST_HEADER = ['previews', 'streams/s', 'throughput against none']


async def timed_stream(host: str, parameters: Dict) -> Dict[str, float]:
    """Seconds from opening one stream of apple.wav to the first event of each milestone."""
    started = time.perf_counter()
    seen: Dict[str, float] = {}
    async for event in stream(host, SpeechDoc(bytes_=APPLE), parameters):
        seen.setdefault(event.event, time.perf_counter() - started)
    return {name: seen[kind] for name, kind in MILESTONES.items() if kind in seen}


async def run_streams(
    host: str, parameters: Dict, requests: int, concurrency: int
) -> Dict[str, float]:
    """``requests`` streams from ``concurrency`` clients: each milestone's median in ms, and
    streams per second."""
    timings: List[Dict[str, float]] = []

    async def client(count: int) -> None:
        for _ in range(count):
            timings.append(await timed_stream(host, parameters))

    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    started = time.perf_counter()
    await asyncio.gather(*(client(share) for share in shares))
    elapsed = time.perf_counter() - started
    figures = {
        name: 1000 * statistics.median(timing[name] for timing in timings)
        for name in MILESTONES
        if all(name in timing for timing in timings)
    }
    return {**figures, 'streams/s': len(timings) / elapsed}


def measure(host: str, parameters: Dict, requests: int, concurrency: int, repeats: int):
    """The median over ``repeats`` runs of ``run_streams``."""
    return median_run(
        [asyncio.run(run_streams(host, parameters, requests, concurrency)) for _ in range(repeats)]
    )


def preview_cost(host: str, parameters: Dict, requests: int, repeats: int) -> Dict[str, float]:
    """Streams per second with the default previews and with none, in pairs of runs whose
    order alternates, so that the order is not what is measured: the median of each."""
    runs: Dict[str, List[Dict[str, float]]] = {'default': [], 'none': []}
    order = [('default', {}), ('none', {'preview_every': 0})]
    for _ in range(repeats):
        order.reverse()  # ABBA: whichever runs first in a pair, it does so half the time
        for name, previews in order:
            run = run_streams(host, {**parameters, **previews}, requests, THROUGHPUT_CONCURRENCY)
            runs[name].append(asyncio.run(run))
    return {name: median_run(results)['streams/s'] for name, results in runs.items()}


def milliseconds(figures: Dict[str, float], name: str) -> str:
    value: Optional[float] = figures.get(name)
    return '-' if value is None else f'{value:.0f}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--protocol', choices=['grpc', 'http', 'websocket'], default='grpc')
    parser.add_argument('--steps', type=int, default=20, help='denoising steps per image')
    parser.add_argument('--requests', type=int, default=8, help='streams per run')
    parser.add_argument('--repeats', type=int, default=4, help='even: each order as often')
    args = parser.parse_args()
    flow = offline_flow_args()
    port = {'grpc': flow.port_grpc, 'http': flow.port_http, 'websocket': flow.port_websocket}
    host = f'{args.protocol}://127.0.0.1:{port[args.protocol]}'
    parameters = {'num_inference_steps': args.steps, 'seed': 1}
    with flow_module.build_flow(flow):
        asyncio.run(run_streams(host, parameters, WARMUP_REQUESTS, 1))
        latencies = {
            concurrency: measure(host, parameters, args.requests, concurrency, args.repeats)
            for concurrency in CONCURRENCIES
        }
        cost = preview_cost(host, parameters, args.requests, args.repeats)
    print(machine_summary())
    print(
        f'\n{args.protocol}, apple.wav, {args.steps} steps, 1 image of 64x64, '
        f'{args.requests} streams per run, median of {args.repeats} runs\n'
    )
    rows = [
        [str(concurrency), *(milliseconds(figures, name) for name in MILESTONES)]
        for concurrency, figures in latencies.items()
    ]
    print(markdown_table(LATENCY_HEADER, rows))
    print(f'\nThroughput at concurrency {THROUGHPUT_CONCURRENCY}:\n')
    print(
        markdown_table(
            COST_HEADER,
            [
                ['none (preview_every 0)', f'{cost["none"]:.2f}', '1.00x'],
                [
                    'default (about steps / 4)',
                    f'{cost["default"]:.2f}',
                    f'{cost["default"] / cost["none"]:.3f}x',
                ],
            ],
        )
    )


if __name__ == '__main__':
    main()
