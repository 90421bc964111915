"""Every way users stop the Flow leaves nothing running and every port free.

``python flow.py`` is started in a session of its own; each test stops it as a user does (SIGTERM
to flow.py alone, as `kill`, a container stop or a script's trap send it; SIGINT to flow.py alone;
the demo script ending) and then asserts that no process of that session is left and that every
port the Flow held can be bound again. Waits are for events (processes ending, ports opening),
bounded by the drain time plus the shutdown grace and a margin, never fixed sleeps.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List, Tuple

import psutil
import pytest

import flow as flow_module
from devtools.offline_flow import (
    MONITORING_PORTS,
    ROOT,
    RunningFlow,
    free_port_run,
    free_ports,
    offline_flow_flags,
    start_flow_process,
    wait_flow_ready,
)
from speech2image import defaults
from speech2image.client import ServiceError, send
from speech2image.schema import SpeechDoc
from tests.support import gateway_pending_requests, poll_until

DRAIN_SECONDS = 3
# On top of the drain and the shutdown grace: process start-up and teardown on a busy machine.
STOP_MARGIN_SECONDS = 20
STOP_BOUND_SECONDS = DRAIN_SECONDS + defaults.SHUTDOWN_GRACE_SECONDS + STOP_MARGIN_SECONDS
LONG_REQUEST = {'num_inference_steps': 100}


@contextmanager
def started_flow(*flags: str) -> Iterator[Tuple[subprocess.Popen, RunningFlow, List[int]]]:
    """``python flow.py`` on the offline models in a new session, yielded once ready; whatever
    the test does, no process of that session outlives it."""
    all_flags = offline_flow_flags('--drain-seconds', str(DRAIN_SECONDS), *flags)
    args = flow_module.parse_args(all_flags)
    process = start_flow_process(all_flags)
    try:
        running = RunningFlow.of(args)
        wait_flow_ready(running, process)
        yield process, running, flow_ports(args)
    finally:
        kill_session(process.pid)
        process.wait()


def kill_session(session_id: int) -> None:
    for leftover in session_processes(session_id):
        leftover.kill()


def flow_ports(args) -> List[int]:
    return [
        args.port_grpc,
        args.port_http,
        args.port_websocket,
        args.port_monitoring,
        *(flow_module.monitoring_port(args, name) for name in defaults.EXECUTOR_MONITORING_OFFSETS),
    ]


def session_processes(session_id: int) -> List[psutil.Process]:
    """The live processes of a session (zombies are gone in all but name)."""
    found = []
    for process in psutil.process_iter(['pid', 'status']):
        try:
            if (
                os.getsid(process.pid) == session_id
                and process.info['status'] != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def assert_all_gone(session_id: int, ports: List[int], within: float) -> None:
    """Every process of the session ends within ``within`` seconds, and then every port binds."""
    alive = session_processes(session_id)
    gone, still = psutil.wait_procs(alive, timeout=within)
    assert not still, f'still running {within:g} s after the stop: ' + ', '.join(
        f'{p.pid} {" ".join(p.cmdline())[:80]}' for p in still
    )
    for port in ports:
        with socket.socket() as probe:
            # As a server binds: connections left in TIME_WAIT do not hold the port, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(('127.0.0.1', port))  # raises if anything still holds it


@pytest.mark.parametrize('stop_signal', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_flow_py_alone_stops_every_process(stop_signal):
    with started_flow() as (process, running, ports):
        stop_and_check(process, ports, stop_signal)


def stop_and_check(process, ports, stop_signal):
    children = session_processes(process.pid)
    assert len(children) >= 4, 'flow.py, the gateway and two Executors'
    listening = {
        (connection.laddr.ip, connection.laddr.port)
        for child in children
        for connection in child.net_connections(kind='inet')
        if connection.status == psutil.CONN_LISTEN
    }
    assert {port for _, port in listening} >= set(ports), 'every port, /metrics included, is up'
    assert {ip for ip, _ in listening} <= {'127.0.0.1', '::ffff:127.0.0.1'}, listening
    process.send_signal(stop_signal)  # to flow.py only, as `kill` or a container stop does
    assert process.wait(timeout=STOP_BOUND_SECONDS) == 0
    assert_all_gone(process.pid, ports, within=STOP_MARGIN_SECONDS)


def test_sigterm_with_a_request_still_running_ends_within_the_drain_bound():
    """A request that outlasts the drain: the caller gets its answer or a clear error, never a
    hang, and every process is gone within the drain time plus the shutdown grace."""
    with started_flow() as (process, running, ports):
        outcome = stop_during_a_long_request(process, running, ports)
    assert outcome, 'the caller got neither an answer nor an error'


def stop_during_a_long_request(process, running, ports) -> dict:
    outcome = {}

    def long_request():
        try:
            outcome['docs'] = send(
                running.grpc, '/generate', [SpeechDoc(text='slow')], LONG_REQUEST
            )
        except ServiceError as error:
            outcome['error'] = str(error)

    caller = threading.Thread(target=long_request)
    caller.start()
    poll_until(
        lambda: gateway_pending_requests(running.port_monitoring) >= 1,
        60,
        'the long request never reached the gateway',
    )
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=STOP_BOUND_SECONDS)
    assert_all_gone(process.pid, ports, within=STOP_BOUND_SECONDS - (time.monotonic() - stopped_at))
    caller.join(timeout=STOP_MARGIN_SECONDS)
    assert not caller.is_alive(), 'the caller still waits after the Flow is gone'
    return outcome


def executor_process(running: RunningFlow, name: str) -> psutil.Process:
    """The process of the Executor ``name``: the one that serves its /metrics port."""
    port = running.port_monitoring + defaults.EXECUTOR_MONITORING_OFFSETS[name]
    for connection in psutil.net_connections(kind='inet'):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return psutil.Process(connection.pid)
    raise AssertionError(f'no process serves the {name} Executor')


@pytest.mark.parametrize('fault', [signal.SIGKILL, signal.SIGSTOP], ids=['killed', 'hung'])
def test_sigterm_ends_within_the_bound_whatever_a_model_process_does(fault):
    """The Whisper process killed (jina's close then waited a minute for its word) or hung,
    with a request in flight: SIGTERM to flow.py still ends every process within the bound."""
    with started_flow() as (process, running, ports):
        caller = threading.Thread(target=lambda: send_quietly(running, LONG_REQUEST), daemon=True)
        caller.start()
        poll_until(
            lambda: gateway_pending_requests(running.port_monitoring) >= 1,
            60,
            'the request never reached the gateway',
        )
        executor_process(running, 'whisper').send_signal(fault)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=STOP_BOUND_SECONDS)
        assert_all_gone(
            process.pid, ports, within=STOP_BOUND_SECONDS - (time.monotonic() - stopped_at)
        )


def send_quietly(running: RunningFlow, parameters: dict) -> None:
    """A request whose answer, or error, does not matter."""
    try:
        send(running.grpc, '/generate', [SpeechDoc(text='slow')], parameters)
    except ServiceError:
        pass


def test_sigterm_while_a_model_process_hangs_starting_ends_within_the_bound():
    """The diffusion process hangs (SIGSTOP) while the Flow starts: jina would wait for it to
    be ready (10 minutes); SIGTERM to flow.py ends every process within the bound."""
    flags = offline_flow_flags('--drain-seconds', str(DRAIN_SECONDS))
    args = flow_module.parse_args(flags)
    process = start_flow_process(flags)
    try:
        children = poll_until(
            lambda: len(session_processes(process.pid)) >= 3 and session_processes(process.pid),
            60,
            'the Flow started no processes',
        )
        for child in children:
            if child.pid != process.pid:
                child.send_signal(signal.SIGSTOP)  # each hangs where it was: loading, starting
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=STOP_BOUND_SECONDS)
        assert_all_gone(
            process.pid,
            flow_ports(args),
            within=STOP_BOUND_SECONDS - (time.monotonic() - stopped_at),
        )
    finally:
        kill_session(process.pid)
        process.wait()


def test_the_demo_ends_with_nothing_left_running():
    grpc_port, http_port, websocket_port = free_ports(3)
    monitoring = str(free_port_run(MONITORING_PORTS))
    env = {
        **os.environ,
        'S2I_PORT_GRPC': str(grpc_port),
        'S2I_PORT_HTTP': str(http_port),
        'S2I_PORT_WEBSOCKET': str(websocket_port),
        'S2I_PORT_MONITORING': monitoring,
    }
    env.pop('OMP_NUM_THREADS', None)  # the demo runs as users run it
    demo = subprocess.Popen(
        ['bash', 'scripts/demo.sh'],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = demo.communicate(timeout=600)
        assert demo.returncode == 0, output
        # Named after the prompt; -2, -3 ... where an earlier run left its files in out/.
        assert re.search(r'painting-of-a-red-apple-on-seed42(-\d+)?\.png', output), output
        args = flow_module.parse_args(
            [
                '--port-grpc',
                str(grpc_port),
                '--port-http',
                str(http_port),
                '--port-websocket',
                str(websocket_port),
                '--port-monitoring',
                monitoring,
            ]
        )
        # Leftovers keep the session of the demo's shell (its pid) even once orphaned.
        assert_all_gone(demo.pid, flow_ports(args), within=STOP_MARGIN_SECONDS)
    finally:
        kill_session(demo.pid)


def test_a_port_in_use_gives_one_clear_line():
    holder = socket.socket()
    holder.bind(('127.0.0.1', 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        flags = offline_flow_flags('--port-http', str(port))
        result = subprocess.run(
            [sys.executable, str(ROOT / 'flow.py'), *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert f'--port-http {port} on 127.0.0.1' in result.stderr
    assert f'pid {os.getpid()}' in result.stderr, 'it names what holds the port'
    assert 'Traceback' not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def time_wait_port() -> int:
    """A 127.0.0.1 port whose only socket is a closed connection in TIME_WAIT (the server side
    closed first, as Prometheus' server does after a scrape; like that server, and every
    server of the Flow, it set SO_REUSEADDR, which Linux's TIME_WAIT sockets keep)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(('127.0.0.1', 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(('127.0.0.1', port)) as client:
            served, _ = listener.accept()
            served.close()  # the active close: TIME_WAIT is on the server's side of the port
            client.recv(1)
    states = {c.status for c in psutil.net_connections('tcp') if c.laddr and c.laddr.port == port}
    assert states == {psutil.CONN_TIME_WAIT}, states
    return port


def test_a_port_only_in_time_wait_is_free_to_start_on():
    """flow.py refused to start after a /metrics scrape ("held by another process")."""
    port = time_wait_port()
    args = flow_module.parse_args(offline_flow_flags('--port-http', str(port)))
    assert flow_module.ports_in_use(args) == []
