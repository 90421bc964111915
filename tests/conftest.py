"""Shared fixtures: the offline models, and the real Flow from flow.py served on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

# Before jina or huggingface_hub are imported: no telemetry, and no model hub at all.
os.environ['JINA_OPTOUT_TELEMETRY'] = '1'
os.environ['HF_HUB_OFFLINE'] = '1'
# One OpenMP thread: jina forks the Executor processes from this one, and forking a process
# whose OpenMP thread pool already ran (the in-process Executor tests) deadlocks the child.
os.environ['OMP_NUM_THREADS'] = '1'

import flow as flow_module  # noqa: E402
from speech2image import offline_models  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / 'assets'
MODELS = ROOT / 'models'
TINY_SD = MODELS / offline_models.TINY_SD_DIR
OPENAI_WHISPER_TINY_EN = MODELS / offline_models.OPENAI_WHISPER_FILE
WHISPER_TINY_EN = offline_models.faster_whisper_tiny_en()


# Markers by test file (pyproject.toml lists them); every test of the shared Flow is slow too.
MODULE_MARKERS = {
    'test_autoscaling_cold_start': ('slow',),
    'test_autoscaling_manifests': ('k8s',),
    'test_autoscaling_metric': ('slow',),
    'test_autoscaling_simulation': ('slow', 'k8s'),
    'test_batching': ('slow',),
    'test_bench': ('slow',),
    'test_client_streaming': ('slow',),
    'test_k8s': ('k8s',),
    'test_k8s_images': ('k8s',),
    'test_k8s_load_sharing': ('slow', 'k8s'),
    'test_monitoring': ('slow',),
    'test_multilingual': ('slow', 'browser'),
    'test_reliability': ('slow',),
    'test_run_containers': ('k8s',),
    'test_security': ('slow',),
    'test_security_deploy': ('k8s',),
    'test_setup_python': ('slow',),
    'test_stopping': ('slow',),
    'test_tracing': ('slow',),
    'test_web': ('slow', 'browser'),
}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        names = MODULE_MARKERS.get(item.module.__name__.rpartition('.')[2], ())
        if 'running_flow' in getattr(item, 'fixturenames', ()):
            names = (*names, 'slow')
        for name in names:
            item.add_marker(name)


@pytest.fixture(scope='session', autouse=True)
def offline_model_files() -> Path:
    """Build the offline models once (``make models`` has usually done it already)."""
    offline_models.build_all(MODELS)
    return MODELS


def free_ports(count: int) -> List[int]:
    """Ports free on 127.0.0.1 right now, distinct from each other."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(('127.0.0.1', 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_run(length: int) -> int:
    """First of ``length`` consecutive ports free on 127.0.0.1 (flow.py numbers the Executors'
    metrics ports after the gateway's)."""
    for _ in range(100):
        first = free_ports(1)[0]
        try:
            held = []
            for port in range(first, first + length):
                sock = socket.socket()
                held.append(sock)
                sock.bind(('127.0.0.1', port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f'no {length} consecutive free ports found')


@dataclass
class RunningFlow:
    """Addresses of a Flow served on 127.0.0.1."""

    port_grpc: int
    port_http: int
    port_websocket: int
    port_monitoring: int
    flow: Any = None  # the jina Flow, for tests that reach into its processes

    @property
    def grpc(self) -> str:
        return f'grpc://127.0.0.1:{self.port_grpc}'

    @property
    def http(self) -> str:
        return f'http://127.0.0.1:{self.port_http}'

    @property
    def websocket(self) -> str:
        return f'websocket://127.0.0.1:{self.port_websocket}'


def offline_flow_flags(*extra: str) -> List[str]:
    """flow.py flags that serve the offline models on free 127.0.0.1 ports."""
    grpc, http, websocket = free_ports(3)
    monitoring = free_port_run(3)
    return [
        '--host',
        '127.0.0.1',
        '--port-grpc',
        str(grpc),
        '--port-http',
        str(http),
        '--port-websocket',
        str(websocket),
        '--port-monitoring',
        str(monitoring),
        '--whisper-model',
        str(WHISPER_TINY_EN),
        '--diffusion-model',
        str(TINY_SD),
        '--num-inference-steps',
        '2',
        '--audio-dir',
        str(ASSETS),
        *extra,
    ]


@contextmanager
def serve_flow(*extra_flags: str) -> Iterator[RunningFlow]:
    """Start the Flow exactly as ``python flow.py`` builds it, on the offline models."""
    args = flow_module.parse_args(offline_flow_flags(*extra_flags))
    with flow_module.build_flow(args) as flow:
        yield RunningFlow(
            args.port_grpc, args.port_http, args.port_websocket, args.port_monitoring, flow
        )


FLOW_START_TIMEOUT_S = 180


def wait_flow_ready(running: RunningFlow, process: subprocess.Popen) -> None:
    """Until jina's Client reports the Flow ready (its dry run reaches every Executor)."""
    from jina import Client

    client = Client(host=running.grpc)
    deadline = time.monotonic() + FLOW_START_TIMEOUT_S
    while not client.is_flow_ready(timeout=1.0):
        assert process.poll() is None, f'flow.py exited with {process.returncode}'
        assert time.monotonic() < deadline, f'flow.py not ready in {FLOW_START_TIMEOUT_S} s'
        time.sleep(0.2)


@contextmanager
def serve_flow_process(
    *extra_flags: str,
    env: Optional[Dict[str, str]] = None,
    log: Optional[Path] = None,
    wait_ready: Callable[[RunningFlow, subprocess.Popen], None] = wait_flow_ready,
) -> Iterator[RunningFlow]:
    """``python flow.py`` on the offline models in its own process group, yielded once
    ``wait_ready`` returns, stopped with SIGINT (as Ctrl-C). ``env`` is added to this process's
    environment; the Flow's output goes to ``log``, else to stderr (a caller's stdout stays its
    own). The default readiness check is a dry run, which a Flow that requires an API key refuses.

    For Flows this process must not fork: jina forks the Flow's processes from the one that
    builds it, and after many Flows this one holds gRPC and OpenTelemetry threads whose forked
    copies crashed it (a segfault starting the tracing Flow, in two CI runs)."""
    flags = offline_flow_flags(*extra_flags)
    args = flow_module.parse_args(flags)
    running = RunningFlow(args.port_grpc, args.port_http, args.port_websocket, args.port_monitoring)
    with ExitStack() as stack:
        output = stack.enter_context(open(log, 'wb')) if log else 2
        process = subprocess.Popen(
            [sys.executable, str(ROOT / 'flow.py'), *flags],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,
        )
    try:
        wait_ready(running, process)
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope='session')
def running_flow(offline_model_files) -> Iterator[RunningFlow]:
    """One Flow shared by the tests that only send requests to it."""
    with serve_flow() as running:
        yield running
