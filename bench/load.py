"""A bounded load test: N concurrent clients for T seconds against a speech2image gateway.

    python -m bench.load --host grpc://127.0.0.1:54322 --clients 8 --seconds 30
    python -m bench.load --host grpc://127.0.0.1:54322 --endpoint /transcribe --requests 1000

Each client sends one request at a time and waits for its answer, at most ``--timeout`` seconds.
At the end it prints a JSON report: requests sent, answered with documents, answered with an
error (and which errors), and lost (sent but never answered, including client-side timeouts).
A healthy service loses none. Load goes only to the address given.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from docarray import DocList
from jina import Client

from bench.report import percentile
from speech2image.client import credentials, server_error_message
from speech2image.schema import SpeechDoc

MAX_CLIENTS = 256
MAX_SECONDS = 600


@dataclass
class LoadReport:
    """What a load run saw. ``lost`` counts requests sent but never answered."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    lost: int = 0
    seconds: float = 0.0
    errors: Dict[str, int] = field(default_factory=dict)
    latencies: List[float] = field(default_factory=list, repr=False)

    def summary(self) -> Dict:
        def seconds_at(share: float) -> Optional[float]:
            return round(percentile(self.latencies, share), 3) if self.latencies else None

        fields = {name: value for name, value in asdict(self).items() if name != 'latencies'}
        return {
            **fields,
            'p50_seconds': seconds_at(0.5),
            'p99_seconds': seconds_at(0.99),
            'requests_per_second': round(self.sent / self.seconds, 1) if self.seconds else 0,
        }


async def one_request(
    client: Client, endpoint: str, text: str, parameters: Dict, timeout: float, auth: Dict
) -> Optional[str]:
    """Send one document; return None when it came back with documents, else the error message.
    Raises ``asyncio.TimeoutError`` when no answer came within ``timeout``."""

    async def post():
        documents = 0
        # Read the whole stream: jina's gateway reports a failed Executor call as an empty
        # response followed by the call's error status, which the client raises at the end.
        async for response in client.post(
            endpoint,
            inputs=DocList[SpeechDoc]([SpeechDoc(text=text)]),
            parameters=parameters,
            return_type=DocList[SpeechDoc],
            return_responses=True,
            **auth,
        ):
            documents += len(response.docs)
        return None if documents == 1 else f'{documents} documents came back instead of 1'

    try:
        return await asyncio.wait_for(post(), timeout)
    except asyncio.TimeoutError:
        raise
    except Exception as error:  # transport errors carry the gateway's refusal (busy, timeout)
        return server_error_message(error)


async def run_load(
    host: str,
    clients: int,
    seconds: float,
    max_requests: Optional[int] = None,
    endpoint: str = '/generate',
    parameters: Optional[Dict] = None,
    timeout: float = 60.0,
    api_key: Optional[str] = None,
) -> LoadReport:
    """Run ``clients`` concurrent clients for ``seconds`` (or until ``max_requests`` were sent)."""
    if not 1 <= clients <= MAX_CLIENTS or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f'clients must be 1..{MAX_CLIENTS} and seconds 0..{MAX_SECONDS}')
    report, errors = LoadReport(), Counter()
    parameters = parameters if parameters is not None else {'num_inference_steps': 1}
    auth = credentials(host, api_key)
    started = time.monotonic()
    deadline = started + seconds

    def may_send() -> bool:
        return time.monotonic() < deadline and (max_requests is None or report.sent < max_requests)

    async def client_loop(number: int):
        client = Client(host=host, asyncio=True)
        while may_send():
            report.sent += 1
            sent_at = time.monotonic()
            try:
                error = await one_request(
                    client, endpoint, f'load {number} {report.sent}', parameters, timeout, auth
                )
            except asyncio.TimeoutError:
                report.lost += 1
                continue
            report.latencies.append(time.monotonic() - sent_at)
            if error is None:
                report.answered += 1
            else:
                report.failed += 1
                errors[error.splitlines()[0][:200]] += 1

    await asyncio.gather(*(client_loop(number) for number in range(clients)))
    report.seconds = round(time.monotonic() - started, 2)
    report.errors = dict(errors)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='grpc://127.0.0.1:54322')
    parser.add_argument('--clients', type=int, default=8)
    parser.add_argument('--seconds', type=float, default=30)
    parser.add_argument('--requests', type=int, help='stop after this many requests')
    parser.add_argument('--endpoint', default='/generate')
    parser.add_argument('--steps', type=int, default=1, help='num_inference_steps per image')
    parser.add_argument('--timeout', type=float, default=60, help='seconds a client waits')
    args = parser.parse_args(argv)
    report = asyncio.run(
        run_load(
            args.host,
            args.clients,
            args.seconds,
            args.requests,
            args.endpoint,
            {'num_inference_steps': args.steps},
            args.timeout,
            os.environ.get('S2I_API_KEY'),
        )
    )
    print(json.dumps(report.summary(), indent=2))
    return 0 if report.lost == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
