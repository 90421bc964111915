"""The web page's service and the browser that opens it, for the tests and the README's screenshot.

``serve_web`` runs ``python -m speech2image.web`` on a free 127.0.0.1 port until the block ends;
``CHROMIUM`` and ``CHROMIUM_FLAGS`` launch Debian's headless Chromium (make system-deps) quietly:
no sandbox (root in a container), no GPU, no background traffic.
"""

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

import requests

from devtools.offline_flow import ROOT, free_ports

CHROMIUM = Path('/usr/bin/chromium')
CHROMIUM_FLAGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]
SERVICE_START_TIMEOUT_S = 20
SERVICE_STOP_TIMEOUT_S = 10
POLL_S = 0.1


@contextmanager
def serve_web(
    *flags: str, env: Optional[Dict[str, str]] = None, log: Optional[Path] = None
) -> Iterator[str]:
    """Run ``python -m speech2image.web`` on a free 127.0.0.1 port (``env`` added to this
    process's environment, its output to ``log`` when given); yield its base URL once /healthz
    answers, and stop it when the block ends."""
    [port] = free_ports(1)
    output = open(log, 'wb') if log else None  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        [sys.executable, '-m', 'speech2image.web', '--host', '127.0.0.1', '--port', str(port)]
        + list(flags),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
    )
    url = f'http://127.0.0.1:{port}'
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=SERVICE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # still finishing requests: not what is asked here
            process.kill()
            process.wait()
        if output:
            output.close()


def wait_healthy(url: str, process: subprocess.Popen) -> None:
    """Until ``url``/healthz answers; RuntimeError if the service exits or is not up in time."""
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'the web service exited at start (exit code {process.returncode})')
        try:
            if requests.get(f'{url}/healthz', timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(POLL_S)
    raise RuntimeError(f'the web service did not start within {SERVICE_START_TIMEOUT_S} s')
