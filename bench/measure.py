"""What every benchmark shares: the environment, the workloads, the offline Flow, and timing.

Benchmarks run from the repository root as modules (``python -m bench.<name>``) and import
this module before jina or torch. It sets:
- no telemetry and no model hub;
- one OpenMP thread per process: each Executor process then uses one core, so replicas map onto
  cores and the in-process and Flow paths compare like for like. (jina forks the Flow's
  processes, and forking a process whose OpenMP pool already ran deadlocks the child: start
  Flows before running Executors in-process.)
"""

import asyncio
import os
import time
from pathlib import Path
from typing import Callable, Dict, List

os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('OMP_NUM_THREADS', '1')

from docarray import DocList  # noqa: E402
from jina import Client  # noqa: E402

import flow as flow_module  # noqa: E402
from bench.report import median_run, summarise  # noqa: E402
from speech2image import offline_models  # noqa: E402
from speech2image.schema import SpeechDoc  # noqa: E402
from tests.conftest import free_port_run, free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / 'models'
WHISPER_MODEL = MODELS / offline_models.FASTER_WHISPER_LINK
DIFFUSION_MODEL = MODELS / offline_models.TINY_SD_DIR
APPLE = (ROOT / 'assets' / 'apple.wav').read_bytes()
WARMUP_REQUESTS = 3


class Workload:
    """An endpoint, a document factory and the request parameters."""

    def __init__(self, endpoint: str, make_doc: Callable[[], SpeechDoc], parameters: Dict):
        self.endpoint, self.make_doc, self.parameters = endpoint, make_doc, parameters


WORKLOADS = {
    # The whole pipeline: Whisper tiny.en on a spoken prompt, then 2 tiny denoising steps.
    'speech': Workload('/', lambda: SpeechDoc(bytes_=APPLE), {'num_inference_steps': 2, 'seed': 1}),
    # Text to image with one step: the cheapest request, where the Flow's own cost shows most.
    'text': Workload(
        '/generate', lambda: SpeechDoc(text='a red apple'), {'num_inference_steps': 1, 'seed': 1}
    ),
}


def flow_args(*extra: str):
    """flow.py's arguments for a Flow on the offline models, bound to free ports on 127.0.0.1."""
    grpc, http, websocket = free_ports(3)
    return flow_module.parse_args(
        [
            '--host',
            '127.0.0.1',
            '--port-grpc',
            str(grpc),
            '--port-http',
            str(http),
            '--port-websocket',
            str(websocket),
            '--port-monitoring',
            str(free_port_run(3)),
            '--whisper-model',
            str(WHISPER_MODEL),
            '--diffusion-model',
            str(DIFFUSION_MODEL),
            *extra,
        ]
    )


def measure_in_process(
    call: Callable[[SpeechDoc, Dict], None], workload: Workload, requests: int
) -> Dict[str, float]:
    """``requests`` sequential calls of ``call`` after a warm-up."""
    for _ in range(WARMUP_REQUESTS):
        call(workload.make_doc(), workload.parameters)
    latencies = []
    started = time.perf_counter()
    for _ in range(requests):
        begin = time.perf_counter()
        call(workload.make_doc(), workload.parameters)
        latencies.append(time.perf_counter() - begin)
    return summarise(latencies, time.perf_counter() - started)


async def measure_flow(
    address: str, workload: Workload, requests: int, concurrency: int
) -> Dict[str, float]:
    """``requests`` requests from ``concurrency`` clients, each waiting for its answer before
    sending the next. asyncio clients: jina's sync Client serialises calls from threads."""
    latencies: List[float] = []

    async def worker(count: int) -> None:
        client = Client(host=address, asyncio=True)
        for _ in range(count):
            begin = time.perf_counter()
            async for _ in client.post(
                workload.endpoint,
                inputs=DocList[SpeechDoc]([workload.make_doc()]),
                parameters=workload.parameters,
                return_type=DocList[SpeechDoc],
            ):
                pass
            latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(worker(1) for _ in range(WARMUP_REQUESTS)))
    latencies.clear()
    started = time.perf_counter()
    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(worker(share) for share in shares))
    return summarise(latencies, time.perf_counter() - started)


def measure_flow_repeated(
    address: str, workload: Workload, requests: int, concurrency: int, repeats: int
) -> Dict[str, float]:
    return median_run(
        [
            asyncio.run(measure_flow(address, workload, requests, concurrency))
            for _ in range(repeats)
        ]
    )
