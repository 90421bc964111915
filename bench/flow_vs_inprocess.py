"""What the Flow costs: per-request latency and throughput through the gateway against calling
the same Executors in-process, in one run, on the offline models.

    python bench/flow_vs_inprocess.py [--requests 40] [--concurrency 1 8]

Workloads:
- ``speech``: the whole pipeline on assets/apple.wav (Whisper tiny.en + tiny diffusion, 2 steps);
- ``text``: ``/generate`` with one denoising step, where the Flow's own overhead shows most.

In-process, one Executor serves one request at a time (as jina runs it), so its throughput is
the same at any concurrency; the Flow at concurrency > 1 also gains from dynamic batching.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

from docarray import DocList  # noqa: E402
from jina import Client, Executor  # noqa: E402

import flow as flow_module  # noqa: E402
from bench.report import machine_summary, markdown_table  # noqa: E402
from speech2image import offline_models  # noqa: E402
from speech2image.schema import SpeechDoc  # noqa: E402
from tests.conftest import free_port_run, free_ports  # noqa: E402

MODELS = ROOT / 'models'
APPLE = (ROOT / 'assets' / 'apple.wav').read_bytes()
WORKLOADS = {
    'speech': ('/', lambda: SpeechDoc(bytes_=APPLE), {'num_inference_steps': 2, 'seed': 1}),
    'text': ('/generate', lambda: SpeechDoc(text='a red apple'), {'num_inference_steps': 1, 'seed': 1}),
}
WARMUP_REQUESTS = 3


def percentile(values: List[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summarise(latencies: List[float], elapsed: float) -> Dict[str, float]:
    """p50/p99 latency in ms and throughput in requests per second."""
    return {
        'p50_ms': 1000 * statistics.median(latencies),
        'p99_ms': 1000 * percentile(latencies, 0.99),
        'rps': len(latencies) / elapsed,
    }


def load_executors():
    whisper = Executor.load_config(
        str(ROOT / 'executors/whisper/config.yml'),
        uses_with={'model': str(MODELS / offline_models.FASTER_WHISPER_LINK)},
    )
    diffusion = Executor.load_config(
        str(ROOT / 'executors/stablediffusion/config.yml'),
        uses_with={'model': str(MODELS / offline_models.TINY_SD_DIR)},
    )
    return whisper, diffusion


def in_process_call(whisper, diffusion, endpoint: str) -> Callable:
    """The same work the Flow does for ``endpoint``, as direct method calls."""
    first = whisper.transcribe if endpoint == '/' else whisper.check_prompts

    def call(doc: SpeechDoc, parameters: Dict) -> None:
        docs = DocList[SpeechDoc]([doc])
        docs = first(docs=docs, parameters=parameters)
        diffusion.generate(docs=docs, parameters=parameters)

    return call


def measure_in_process(call: Callable, make_doc, parameters, requests: int) -> Dict[str, float]:
    for _ in range(WARMUP_REQUESTS):
        call(make_doc(), parameters)
    latencies = []
    started = time.perf_counter()
    for _ in range(requests):
        begin = time.perf_counter()
        call(make_doc(), parameters)
        latencies.append(time.perf_counter() - begin)
    return summarise(latencies, time.perf_counter() - started)


async def measure_flow(address: str, endpoint: str, make_doc, parameters, requests: int,
                       concurrency: int) -> Dict[str, float]:
    """``requests`` requests from ``concurrency`` asyncio clients (jina's sync Client serialises
    calls from threads)."""
    latencies: List[float] = []

    async def post(client: Client) -> None:
        begin = time.perf_counter()
        async for _ in client.post(endpoint, inputs=DocList[SpeechDoc]([make_doc()]),
                                   parameters=parameters, return_type=DocList[SpeechDoc]):
            pass
        latencies.append(time.perf_counter() - begin)

    async def worker(count: int) -> None:
        client = Client(host=address, asyncio=True)
        for _ in range(count):
            await post(client)

    await asyncio.gather(*(worker(1) for _ in range(WARMUP_REQUESTS)))
    latencies.clear()
    started = time.perf_counter()
    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(worker(share) for share in shares))
    return summarise(latencies, time.perf_counter() - started)


def flow_args():
    grpc, http, websocket = free_ports(3)
    return flow_module.parse_args([
        '--host', '127.0.0.1', '--port-grpc', str(grpc), '--port-http', str(http),
        '--port-websocket', str(websocket), '--port-monitoring', str(free_port_run(3)),
        '--whisper-model', str(MODELS / offline_models.FASTER_WHISPER_LINK),
        '--diffusion-model', str(MODELS / offline_models.TINY_SD_DIR),
    ])


def run(requests: int, concurrencies: List[int]) -> List[List[str]]:
    """Measure every workload through the Flow, then in-process; return the table rows.

    The Flow goes first: jina forks the Executor processes, and forking after this process has
    started torch's thread pools (the in-process Executors) can deadlock the children.
    """
    offline_models.build_all(MODELS)
    through_flow: Dict[str, Dict[int, Dict[str, float]]] = {}
    args = flow_args()
    with flow_module.build_flow(args):
        address = f'grpc://127.0.0.1:{args.port_grpc}'
        for name, (endpoint, make_doc, params) in WORKLOADS.items():
            through_flow[name] = {
                concurrency: asyncio.run(measure_flow(address, endpoint, make_doc, params,
                                                      requests * concurrency, concurrency))
                for concurrency in concurrencies
            }
    whisper, diffusion = load_executors()
    rows = []
    for name, (endpoint, make_doc, params) in WORKLOADS.items():
        call = in_process_call(whisper, diffusion, endpoint)
        base = measure_in_process(call, make_doc, params, requests)
        rows.append([name, 'in-process', '1', f'{base["p50_ms"]:.1f}', f'{base["p99_ms"]:.1f}',
                     f'{base["rps"]:.1f}', '', ''])
        for concurrency, result in through_flow[name].items():
            rows.append([
                name, 'Flow (gRPC)', str(concurrency), f'{result["p50_ms"]:.1f}',
                f'{result["p99_ms"]:.1f}', f'{result["rps"]:.1f}',
                f'{result["p50_ms"] - base["p50_ms"]:+.1f}', f'{result["rps"] / base["rps"]:.2f}x',
            ])
    return rows


HEADER = ['workload', 'path', 'concurrency', 'p50 ms', 'p99 ms', 'req/s',
          'p50 over in-process (ms)', 'throughput vs in-process']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requests', type=int, default=40, help='requests per client')
    parser.add_argument('--concurrency', type=int, nargs='+', default=[1, 8])
    args = parser.parse_args()
    rows = run(args.requests, args.concurrency)
    print(machine_summary())
    print(markdown_table(HEADER, rows))


if __name__ == '__main__':
    main()
