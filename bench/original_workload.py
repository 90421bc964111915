"""The original example's workload (jina-ai/example-speech-to-image), the original example itself
against this project's Flow, alternated in one run at default threads, as users start each.

    export S2I_ORIGINAL_EXAMPLE=/path/to/example-speech-to-image    # bench/original_example.py
    python -m bench.original_workload [--rounds 2] [--replicas 1 2]
                                      [--backends torch openvino-f32 openvino-bf16]
                                      [--latency-requests 10] [--throughput-requests 24]

The workload: assets/apple.wav (3.0 s, English) sent to ``/`` as a 16 kHz float32 tensor; Whisper
tiny.en; the tiny random Stable Diffusion at 64x64 with the checkpoint's scheduler (PNDM, the
original's); 2 images per request, 50 steps, guidance 7.5: the original's work exactly. Latency
(c=1) is the median of 10 sequential requests after a warm-up; throughput (c=8) is 24 requests
(by default) from 8 clients, each with its own jina Client; memory is the resident set of the Flow's
processes (gateway and Executors) after both.

Each round runs, for each diffusion replica count, the original example's Flow (its own flow.py
and Executors from the checkout, bench/original_example.py) and then ``python flow.py`` with
each backend, every Flow a fresh process with no ``OMP_NUM_THREADS``. The load average is
printed with every figure, as other work on the machine moves them all.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from bench.report import machine_summary, markdown_table, summarise

ROOT = Path(__file__).resolve().parent.parent
OMP_THREADS_VARIABLE = 'OMP_NUM_THREADS'
SPEECH_PARAMETERS = {'num_images': 2, 'num_inference_steps': 50, 'guidance_scale': 7.5, 'seed': 1}
LATENCY_REQUESTS, THROUGHPUT_REQUESTS, CONCURRENCY = 10, 24, 8
WARMUP_REQUESTS = 1
PCM_SCALE = 32768.0  # 16-bit PCM full scale
# flow.py flags of each diffusion backend measured.
BACKENDS = {
    'torch': ['--diffusion-backend', 'torch'],
    'openvino-f32': ['--diffusion-backend', 'openvino', '--diffusion-precision', 'f32'],
    'openvino-bf16': ['--diffusion-backend', 'openvino', '--diffusion-precision', 'bf16'],
}
REPLICAS = (1, 2)
# The original's work (its checkpoint's scheduler, 50 steps), and a long send timeout, so that a
# slow (shared) machine gives slow figures rather than none.
WORKLOAD_FLAGS = ['--diffusion-scheduler', 'checkpoint', '--timeout-send-ms', '600000']
# (bench/original_example.py gives the original's gateway the same send timeout.)
# The goals, with the defaults against the original example (its flow.py: 1 replica).
MIN_THROUGHPUT_OVER_ORIGINAL, MAX_LATENCY_OF_ORIGINAL = 2.0, 0.6
ORIGINAL = 'original example'


def apple_tensor() -> np.ndarray:
    """assets/apple.wav (16 kHz mono 16-bit PCM) as float32 in [-1, 1], read with the standard
    library so that the original example's DocArray v1 environment reads it the same way."""
    with wave.open(str(ROOT / 'assets' / 'apple.wav')) as clip:
        pcm = clip.readframes(clip.getnframes())
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / PCM_SCALE


async def timed_requests(post: Callable, workload, requests: int, concurrency: int) -> Dict:
    """``requests`` awaited ``post(endpoint, doc, parameters)`` calls from ``concurrency``
    clients, after a warm-up; ``workload`` is ``(endpoint, make_doc, parameters)``."""
    endpoint, make_doc, parameters = workload
    for _ in range(WARMUP_REQUESTS):
        await post(endpoint, make_doc(), parameters)
    latencies = []

    async def client(count: int) -> None:
        for _ in range(count):
            begin = time.perf_counter()
            await post(endpoint, make_doc(), parameters)
            latencies.append(time.perf_counter() - begin)

    started = time.perf_counter()
    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(client(share) for share in shares))
    return summarise(latencies, time.perf_counter() - started)


def default_system() -> str:
    """The backend flow.py runs with no flags on a CPU (its defaults, speech2image/defaults.py)."""
    from speech2image import defaults

    backend = 'openvino' if defaults.DIFFUSION_BACKEND in ('auto', 'openvino') else 'torch'
    return f'openvino-{defaults.DIFFUSION_PRECISION}' if backend == 'openvino' else 'torch'


def through_flow(backend: str, replicas: int, counts: Tuple[int, int]) -> Dict[str, float]:
    """A ``python flow.py`` process with ``backend`` and ``replicas`` diffusion replicas,
    measured with one jina Client per client; ``counts``: requests at c=1 and at c=8."""
    import psutil
    from docarray import DocList
    from jina import Client

    from devtools.offline_flow import serve_flow_process
    from speech2image.schema import SpeechDoc

    clients: Dict[int, Client] = {}

    async def post(endpoint: str, doc, parameters: Dict) -> None:
        task = id(asyncio.current_task())  # one Client per concurrent client
        client = clients.setdefault(task, Client(host=address, asyncio=True))
        async for answer in client.post(
            endpoint,
            inputs=DocList[SpeechDoc]([doc]),
            parameters=parameters,
            return_type=DocList[SpeechDoc],
        ):
            assert len(answer[0].matches) == SPEECH_PARAMETERS['num_images'], answer

    speech = ('/', lambda: SpeechDoc(tensor=apple_tensor()), SPEECH_PARAMETERS)
    flags = [*WORKLOAD_FLAGS, *BACKENDS[backend], '--diffusion-replicas', str(replicas)]
    with serve_flow_process(*flags) as flow:
        address = flow.grpc

        async def run() -> Dict[str, float]:
            c1 = await timed_requests(post, speech, counts[0], 1)
            c8 = await timed_requests(post, speech, counts[1], CONCURRENCY)
            # flow.py's own process only builds the Flow: count its children, as for the original.
            [process] = [
                child
                for child in psutil.Process().children()
                if any(part.endswith('flow.py') for part in child.cmdline()[1:3])
            ]
            rss = sum(child.memory_info().rss for child in process.children(recursive=True))
            return {'latency_s': c1['p50_ms'] / 1000, 'rps': c8['rps'], 'rss_mb': rss / 2**20}

        return asyncio.run(run())


def original_example(replicas: int, counts: Tuple[int, int], checkout: str) -> Dict[str, float]:
    """bench.original_example in its DocArray v1 environment (made here if missing)."""
    from bench.original_example import ensure_environment

    command = [str(ensure_environment()), '-m', 'bench.original_example']
    command += ['--replicas', str(replicas), '--requests', *map(str, counts)]
    command += ['--checkout', checkout] if checkout else []
    output = subprocess.run(
        command, cwd=ROOT, env=os.environ, stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def load_average() -> float:
    return os.getloadavg()[0]


def run_rounds(args) -> Dict[Tuple[str, int], List[Dict[str, float]]]:
    """Every system's figures, one entry per round, each with the load average at its start."""
    runs: Dict[Tuple[str, int], List[Dict[str, float]]] = {}
    for round_number in range(1, args.rounds + 1):
        for replicas in args.replicas:
            for system in [ORIGINAL, *args.backends]:
                load = load_average()
                counts = (args.latency_requests, args.throughput_requests)
                if system == ORIGINAL:
                    figures = original_example(replicas, counts, args.checkout)
                else:
                    figures = through_flow(system, replicas, counts)
                figures['load_1min'] = load
                runs.setdefault((system, replicas), []).append(figures)
                print(
                    f'round {round_number}, {system}, {replicas} replica(s): {json.dumps(figures)}',
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def joined(runs: List[Dict[str, float]], key: str, digits: int) -> str:
    """Each round's ``key``, in order, and their median: '2.20, 2.26 (2.23)'."""
    values = [run[key] for run in runs]
    each = ', '.join(f'{value:.{digits}f}' for value in values)
    return f'{each} ({statistics.median(values):.{digits}f})' if len(values) > 1 else each


def median(runs: List[Dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def report(runs: Dict[Tuple[str, int], List[Dict[str, float]]]) -> str:
    """The table of every system measured and the table of the issue's goals."""
    default = default_system()
    rows = []
    for (system, replicas), system_runs in runs.items():
        original = runs.get((ORIGINAL, replicas))
        flags = ' '.join(BACKENDS.get(system, [])) + (
            f' --diffusion-replicas {replicas}' if replicas > 1 else ''
        )
        versus = ''
        if system != ORIGINAL and original:
            versus = (
                f'{median(system_runs, "latency_s") / median(original, "latency_s"):.2f}x / '
                f'{median(system_runs, "rps") / median(original, "rps"):.2f}x'
            )
        label = system + (' (defaults)' if system == default else '')
        rows.append(
            [
                label,
                str(replicas),
                '' if system == ORIGINAL else flags.strip(),
                joined(system_runs, 'latency_s', 2),
                joined(system_runs, 'rps', 3),
                versus,
                f'{median(system_runs, "rss_mb"):.0f}',
                joined(system_runs, 'load_1min', 1),
            ]
        )
    table = markdown_table(
        [
            'system',
            'diffusion replicas',
            'flow.py flags',
            '`/` c=1 p50 s (each round, median)',
            '`/` c=8 req/s',
            'c=1 latency / c=8 throughput against the original, same replicas',
            'Flow RSS MiB',
            'load average (1 min) at start',
        ],
        rows,
    )
    goals = []
    original, ours = runs.get((ORIGINAL, 1)), runs.get((default, 1))
    if original and ours:
        latency = median(ours, 'latency_s') / median(original, 'latency_s')
        throughput = median(ours, 'rps') / median(original, 'rps')
        memory = median(ours, 'rss_mb') / median(original, 'rss_mb')
        goals = [
            [
                'c=8 throughput at least 2x the original (defaults, 1 replica each)',
                f'{throughput:.2f}x',
                'yes' if throughput >= MIN_THROUGHPUT_OVER_ORIGINAL else 'no',
            ],
            [
                'c=1 latency at most 0.6x the original',
                f'{latency:.2f}x',
                'yes' if latency <= MAX_LATENCY_OF_ORIGINAL else 'no',
            ],
            [
                "memory no more than the original's (Flow RSS)",
                f'{memory:.2f}x',
                'yes' if memory <= 1 else 'no',
            ],
        ]
    return table + '\n\n' + markdown_table(['goal', 'measured', 'met'], goals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--replicas', nargs='+', type=int, default=list(REPLICAS))
    parser.add_argument('--backends', nargs='*', choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument('--checkout', help='the original example; unset: $S2I_ORIGINAL_EXAMPLE')
    parser.add_argument('--latency-requests', type=int, default=LATENCY_REQUESTS, help='at c=1')
    parser.add_argument('--throughput-requests', type=int, default=THROUGHPUT_REQUESTS)
    args = parser.parse_args()
    os.environ.pop(OMP_THREADS_VARIABLE, None)  # every Flow at default threads
    load_before = os.getloadavg()
    runs = run_rounds(args)
    print(machine_summary())
    print(
        f'Load average (1, 5, 15 min) before: {load_before}, after: {os.getloadavg()}; '
        f'{OMP_THREADS_VARIABLE} unset; {args.rounds} round(s); {args.latency_requests} '
        f'requests at c=1, {args.throughput_requests} at c={CONCURRENCY}.\n'
    )
    print(report(runs))


if __name__ == '__main__':
    main()
