"""The original example's Flow measured on the original example's workload, in its DocArray v1
environment; bench.original_workload runs it and reads the JSON line it prints last.

    $(python -m bench.original_example.environment) -m bench.original_example [--repeats 1]

The Flow is the original's flow-local.yml on this machine's models: Whisper then diffusion, each
Executor in its own process at default threads, ``--replicas`` diffusion replicas (the original
file has 2; 1 is the plain two-Executor Flow). Its Whisper is openai-whisper, as the original's;
only ``/`` exists (the original has no text-only endpoint).
"""

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Dict

from bench.original_example.executors import StableDiffusionExecutor, WhisperExecutor
from bench.original_workload import (
    CONCURRENCY,
    LATENCY_REQUESTS,
    OMP_THREADS_VARIABLE,
    THROUGHPUT_REQUESTS,
    apple_tensor,
    timed_requests,
)
from bench.report import median_run
from devtools.offline_models import OPENAI_WHISPER_FILE, TINY_SD_DIR  # imports no DocArray

MODELS = Path(__file__).resolve().parents[2] / 'models'
# The original reads num_images only; its pipeline's defaults are the workload's 50 steps, 7.5.
PARAMETERS = {'num_images': 2}
HOST = '127.0.0.1'


def original_flow(replicas: int):
    from jina import Flow

    return (
        Flow(host=HOST, timeout_send=600_000)
        .add(
            name='whisper',
            uses=WhisperExecutor,
            uses_with={'model_name': str(MODELS / OPENAI_WHISPER_FILE)},
            host=HOST,
        )
        .add(
            name='diffusion',
            uses=StableDiffusionExecutor,
            uses_with={'model_path': str(MODELS / TINY_SD_DIR)},
            replicas=replicas,
            timeout_ready=-1,
            host=HOST,
        )
    )


def measure(address: str, repeats: int, requests: int) -> Dict[str, float]:
    """``/`` at concurrency 1 and 8 (``requests`` scales both counts down for a quick check)."""
    from docarray import Document, DocumentArray
    from jina import Client

    samples = apple_tensor()
    clients: Dict[int, Client] = {}

    async def post(endpoint: str, doc, parameters: Dict) -> None:
        task = id(asyncio.current_task())  # one Client per concurrent client
        client = clients.setdefault(task, Client(host=address, asyncio=True))
        async for answer in client.post(
            endpoint, inputs=DocumentArray([doc]), parameters=parameters
        ):
            assert len(answer[0].matches) == PARAMETERS['num_images'], answer[0].summary()

    speech = ('/', lambda: Document(tensor=samples), PARAMETERS)

    async def one_run() -> Dict[str, float]:
        c1 = await timed_requests(post, speech, min(requests, LATENCY_REQUESTS), 1)
        c8 = await timed_requests(
            post, speech, min(requests, THROUGHPUT_REQUESTS), min(requests, CONCURRENCY)
        )
        return {'latency_s': c1['p50_ms'] / 1000, 'rps': c8['rps']}

    return median_run([asyncio.run(one_run()) for _ in range(repeats)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--replicas', type=int, default=1)
    parser.add_argument(
        '--requests', type=int, default=THROUGHPUT_REQUESTS, help='fewer requests: a quick check'
    )
    args = parser.parse_args()
    os.environ.pop(OMP_THREADS_VARIABLE, None)  # default threads, as the original runs
    with original_flow(args.replicas) as flow:
        result = measure(f'grpc://{HOST}:{flow.port}', args.repeats, args.requests)
    print(json.dumps(result))


if __name__ == '__main__':
    main()
