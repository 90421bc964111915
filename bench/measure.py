"""What the Flow benchmarks share: the threads, the workloads and timing (the offline Flow is
devtools.offline_flow's; the bench package sets the offline environment).

Benchmarks run from the repository root as modules (``python -m bench.<name>``) and import
this module before torch runs. It sets one OpenMP thread per process: each Executor process
then uses one core, so replicas map onto cores and the in-process and Flow paths compare like for
like. (jina forks the Flow's processes, and forking a process whose OpenMP pool already ran
deadlocks the child: start Flows before running Executors in-process.)
"""

import asyncio
import os
import time
from typing import Callable, Dict, List

os.environ.setdefault('OMP_NUM_THREADS', '1')

from docarray import DocList
from jina import Client

from bench.report import median_run, summarise
from devtools.offline_flow import ROOT
from speech2image.schema import SpeechDoc

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
