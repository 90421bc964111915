"""The demo's closing note: the next step it prints works as printed.

The note's indented lines are commands: `make serve` in one terminal, the client in another. They
run here verbatim through bash, in an environment that only moves the ports (the S2I_* variables
both read) and the serve log, so that they run beside anything else on this machine."""

import os
import re
import subprocess
from pathlib import Path
from typing import List

from devtools import OFFLINE_ENVIRONMENT
from devtools.offline_flow import (
    MONITORING_PORTS,
    ROOT,
    RunningFlow,
    free_port_run,
    free_ports,
    logged_process_group,
    wait_flow_ready,
)
from tests.support import poll_until

DEMO = ROOT / 'scripts' / 'demo.sh'
CLIENT_SECONDS = 180
# After the Flow answers, how long `make serve` may take to say so.
READY_SAID_SECONDS = 30


def printed_commands() -> List[str]:
    """The commands of the demo's closing note (its heredoc is printed verbatim)."""
    note = re.search(r"^cat <<'NOTE'\n(.*?)^NOTE$", DEMO.read_text(), re.DOTALL | re.MULTILINE)
    assert note, 'scripts/demo.sh has no closing note'
    return [line.strip() for line in note.group(1).splitlines() if line.startswith('  ')]


def test_the_demos_next_step_works_as_printed(tmp_path):
    serve, client = printed_commands()
    assert serve == 'make serve'
    grpc, http, websocket = free_ports(3)
    monitoring = free_port_run(MONITORING_PORTS)
    env = {
        **os.environ,
        **OFFLINE_ENVIRONMENT,
        'S2I_PORT_GRPC': str(grpc),
        'S2I_PORT_HTTP': str(http),
        'S2I_PORT_WEBSOCKET': str(websocket),
        'S2I_PORT_MONITORING': str(monitoring),
        'SERVE_LOG': str(tmp_path / 'flow.log'),
    }
    env.pop('S2I_API_KEY', None)
    with logged_process_group(['bash', '-c', serve], env, tmp_path / 'serve.txt') as server:
        wait_flow_ready(RunningFlow(grpc, http, websocket, monitoring), server)
        poll_until(
            lambda: b'Ctrl-C stops' in (tmp_path / 'serve.txt').read_bytes(),
            READY_SAID_SECONDS,
            'make serve did not say that the Flow is ready',
        )
        result = subprocess.run(
            ['bash', '-c', client],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLIENT_SECONDS,
        )
    written = [Path(line.strip()) for line in result.stdout.splitlines() if line.endswith('.png')]
    for path in written:  # the client writes to out/, as printed; leave it as it was
        (ROOT / path).unlink()
    assert result.returncode == 0, result.stderr
    assert len(written) == 1, result.stdout
    assert '[barco.wav]' in result.stdout and 'drawn by' in result.stdout
    said = (tmp_path / 'serve.txt').read_text()
    assert f'The Flow is ready: grpc://127.0.0.1:{grpc}' in said and 'Ctrl-C stops' in said, said
