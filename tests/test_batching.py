"""Continuous batching: requests that queue while the pipeline is busy share its next call, and
a lone request is not held back for company."""

import asyncio

import requests
from docarray import DocList
from jina import Client
from prometheus_client.parser import text_string_to_metric_families

from devtools.offline_flow import serve_flow
from speech2image.schema import SpeechDoc

CONCURRENT_REQUESTS = 8


def batch_histogram(metrics_port: int) -> dict:
    """Samples of the diffusion Executor's batch-size histogram, by sample name and bucket."""
    text = requests.get(f'http://127.0.0.1:{metrics_port}/metrics', timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        if family.name == 'speech2image_diffusion_batch_documents':
            for sample in family.samples:
                samples[(sample.name, sample.labels.get('le'))] = sample.value
    return samples


async def post_concurrently(address: str, count: int) -> list:
    """Send ``count`` one-document requests at once. jina's synchronous Client serialises calls
    made from threads, so concurrency needs the asyncio Client."""

    async def post(index: int):
        client = Client(host=address, asyncio=True)
        async for docs in client.post(
            '/generate',
            inputs=DocList[SpeechDoc]([SpeechDoc(text=f'prompt {index}')]),
            parameters={'seed': 1},
            return_type=DocList[SpeechDoc],
        ):
            return docs

    return await asyncio.gather(*(post(index) for index in range(count)))


def test_concurrent_requests_are_batched():
    # 50 steps: the first call runs long enough that every other request queues behind it.
    with serve_flow(
        '--batch-size', str(CONCURRENT_REQUESTS), '--num-inference-steps', '50'
    ) as flow:
        answers = asyncio.run(post_concurrently(flow.grpc, CONCURRENT_REQUESTS))
        samples = batch_histogram(flow.port_monitoring + 2)

    assert [doc.text for [doc] in answers] == [f'prompt {i}' for i in range(CONCURRENT_REQUESTS)]
    assert all(len(doc.matches) == 1 for [doc] in answers)
    calls = samples[('speech2image_diffusion_batch_documents_count', None)]
    documents = samples[('speech2image_diffusion_batch_documents_sum', None)]
    assert documents == CONCURRENT_REQUESTS
    assert calls < CONCURRENT_REQUESTS / 2, (
        f'{CONCURRENT_REQUESTS} requests took {calls} pipeline calls'
    )
