"""The Flow on the offline models (devtools/offline_models.py): the one way the tests, the
benchmarks and the demo scripts start it.

- ``offline_flow_flags`` / ``offline_flow_args``: flow.py's flags for the offline models on free
  127.0.0.1 ports (later flags win: ``'--whisper-model', other`` replaces the default model);
- ``serve_flow``: that Flow built in this process; ``serve_flow_process``: ``python flow.py`` in
  its own process group, yielded once ready, stopped with SIGINT (as Ctrl-C);
- as a command (``make serve``, ``make demo``, ``make web``; ``--help`` says it all): the Flow
  on the offline models at flow.py's own ports, until Ctrl-C, or around a COMMAND.

Nothing here imports jina before it is used; its environment is devtools.OFFLINE_ENVIRONMENT.
"""

import argparse
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import flow as flow_module
from devtools import OFFLINE_ENVIRONMENT, offline_models
from speech2image import defaults

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / 'assets'
MODELS = ROOT / 'models'
TINY_SD = MODELS / offline_models.TINY_SD_DIR
# The offline default: the trained shapes-world model (weights/README.md). The variable serves
# another one, e.g. the random tiny model, to see the picture tests fail on noise.
WORLD_MODEL = MODELS / offline_models.WORLD_MODEL_DIR
DIFFUSION_MODEL_VARIABLE = 'S2I_OFFLINE_DIFFUSION_MODEL'
WHISPER_TINY_EN = MODELS / offline_models.FASTER_WHISPER_LINK
# What the command serves to people (make serve, demo, web): the multilingual Whisper
# (docs/languages.md), and more steps than the tests' 2.
WHISPER_BASE = MODELS / offline_models.WHISPER_BASE_DIR
SERVED_STEPS = 10
# Steps per image unless a request says otherwise: 2 keeps the images of tests that do not look at
# them cheap; tests that judge pictures ask for more.
OFFLINE_STEPS = 2
FLOW_START_TIMEOUT_S = 180
# After SIGINT, how long the Flow's process group may take to stop before it is killed.
FLOW_STOP_TIMEOUT_S = 60
READY_POLL_S = 0.2
# A dry run given up on stays counted in jina's pending-requests gauge (seen under load, when a
# 1 s dry run timed out): wait for its answer instead.
DRY_RUN_TIMEOUT_S = 15.0
# flow.py's metrics ports: the gateway's, then the Executors' at their offsets after it.
MONITORING_PORTS = 1 + max(defaults.EXECUTOR_MONITORING_OFFSETS.values())
# The command's status after Ctrl-C stopped it before it began, as a shell reports SIGINT.
INTERRUPTED_STATUS = 130


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

    @classmethod
    def of(cls, args: argparse.Namespace, flow: Any = None) -> 'RunningFlow':
        """The addresses flow.py's parsed ``args`` serve."""
        return cls(args.port_grpc, args.port_http, args.port_websocket, args.port_monitoring, flow)

    @property
    def grpc(self) -> str:
        return f'grpc://127.0.0.1:{self.port_grpc}'

    @property
    def http(self) -> str:
        return f'http://127.0.0.1:{self.port_http}'

    @property
    def websocket(self) -> str:
        return f'websocket://127.0.0.1:{self.port_websocket}'


def model_flags() -> List[str]:
    """flow.py flags for the offline models, on 127.0.0.1, at flow.py's own ports."""
    return [
        '--host',
        '127.0.0.1',
        '--whisper-model',
        str(WHISPER_TINY_EN),
        '--diffusion-model',
        os.environ.get(DIFFUSION_MODEL_VARIABLE, str(WORLD_MODEL)),
        '--num-inference-steps',
        str(OFFLINE_STEPS),
        '--audio-dir',
        str(ASSETS),
    ]


def offline_flow_flags(*extra: str) -> List[str]:
    """flow.py flags that serve the offline models on free 127.0.0.1 ports, then ``extra``."""
    grpc, http, websocket = free_ports(3)
    ports = {
        '--port-grpc': grpc,
        '--port-http': http,
        '--port-websocket': websocket,
        '--port-monitoring': free_port_run(MONITORING_PORTS),
    }
    return [*model_flags(), *(str(part) for item in ports.items() for part in item), *extra]


def offline_flow_args(*extra: str) -> argparse.Namespace:
    """flow.py's parsed arguments for ``offline_flow_flags(*extra)``."""
    return flow_module.parse_args(offline_flow_flags(*extra))


@contextmanager
def serve_flow(*extra_flags: str) -> Iterator[RunningFlow]:
    """Start the Flow exactly as ``python flow.py`` builds it, in this process (jina forks its
    gateway and Executors from it). This process's garbage is collected, and what is left frozen,
    before the fork: a forked gateway that collected gRPC objects inherited from earlier tests
    aborted ("Fatal Python error: Aborted" while garbage-collecting, CI run of 2026-12-04)."""
    args = offline_flow_args(*extra_flags)
    gc.collect()
    gc.freeze()
    try:
        with flow_module.build_flow(args) as flow:
            yield RunningFlow.of(args, flow)
    finally:
        gc.unfreeze()


def wait_flow_ready(running: RunningFlow, process: subprocess.Popen) -> None:
    """Until the gateway's gRPC port takes connections (jina opens it once the Executors are
    up; polling it logs nothing), then until jina's Client reports the Flow ready (its dry run
    reaches every Executor), then until the HTTP and WebSocket ports take connections too (the
    gateway starts their servers beside the gRPC one, and on a busy machine after it). Raises
    RuntimeError when ``process`` exits first or FLOW_START_TIMEOUT_S passes."""
    from jina import Client

    deadline = time.monotonic() + FLOW_START_TIMEOUT_S
    while not port_open(running.port_grpc):
        still_starting(process, deadline)
    client = Client(host=running.grpc)
    while not client.is_flow_ready(timeout=DRY_RUN_TIMEOUT_S):
        still_starting(process, deadline)
    for port in (running.port_http, running.port_websocket):
        while not port_open(port):
            still_starting(process, deadline)


def port_open(port: int) -> bool:
    """Whether something takes TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        return True
    except OSError:
        return False


def still_starting(process: subprocess.Popen, deadline: float) -> None:
    """Wait READY_POLL_S, unless ``process`` has exited or ``deadline`` passed (RuntimeError)."""
    if process.poll() is not None:
        raise RuntimeError(f'flow.py exited with {process.returncode}')
    if time.monotonic() > deadline:
        raise RuntimeError(f'flow.py not ready in {FLOW_START_TIMEOUT_S} s')
    time.sleep(READY_POLL_S)


def stop_process_group(
    process: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = FLOW_STOP_TIMEOUT_S
) -> None:
    """Send ``sig`` to the process group ``process`` leads (started in a group of its own), wait
    up to ``timeout_s`` for it, then SIGKILL the group. What is left of a group whose leader
    already exited gets ``sig`` too."""
    with suppress(ProcessLookupError):  # no group left: every process of it has exited
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@contextmanager
def logged_process_group(
    command: List[str],
    env: Dict[str, str],
    log: Path,
    stop_signal: int = signal.SIGINT,
    stop_timeout_s: float = FLOW_STOP_TIMEOUT_S,
) -> Iterator[subprocess.Popen]:
    """``command`` leading a new session and process group in ROOT, with exactly ``env`` and its
    output (stdout and stderr) in ``log``; the whole group is stopped with ``stop_signal`` on the
    way out (stop_process_group)."""
    with open(log, 'wb') as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process_group(process, stop_signal, stop_timeout_s)


def start_flow_process(
    flags: List[str],
    env: Optional[Dict[str, str]] = None,
    output: Any = None,
    new_session: bool = True,
) -> subprocess.Popen:
    """``python flow.py flags`` leading a new process group, with OFFLINE_ENVIRONMENT and ``env``
    added to this process's environment; its output (stdout and stderr) goes to ``output``, a
    file, else to this process's stderr (a caller's stdout stays its own). The group is a new
    session unless ``new_session`` is false: then it stays in this process's session (a demo
    script's leftovers stay findable by the script's session) but out of the terminal's Ctrl-C."""
    group = {'start_new_session': True} if new_session else {'process_group': 0}
    return subprocess.Popen(
        [sys.executable, str(ROOT / 'flow.py'), *flags],
        cwd=ROOT,
        env={**os.environ, **OFFLINE_ENVIRONMENT, **(env or {})},
        stdout=output if output is not None else 2,
        stderr=subprocess.STDOUT,
        **group,
    )


@contextmanager
def flow_process(
    flags: List[str],
    env: Optional[Dict[str, str]] = None,
    log: Optional[Path] = None,
    wait_ready: Callable[[RunningFlow, subprocess.Popen], None] = wait_flow_ready,
    new_session: bool = True,
) -> Iterator[RunningFlow]:
    """``python flow.py flags`` (start_flow_process; its output to ``log`` when given), yielded
    once ``wait_ready`` returns, its process group stopped with SIGINT on the way out."""
    running = RunningFlow.of(flow_module.parse_args(flags))
    with ExitStack() as stack:
        output = stack.enter_context(open(log, 'wb')) if log else None
        process = start_flow_process(flags, env, output, new_session)
    try:
        wait_ready(running, process)
        yield running
    finally:
        stop_process_group(process)


@contextmanager
def serve_flow_process(
    *extra_flags: str,
    env: Optional[Dict[str, str]] = None,
    log: Optional[Path] = None,
    wait_ready: Callable[[RunningFlow, subprocess.Popen], None] = wait_flow_ready,
) -> Iterator[RunningFlow]:
    """``python flow.py`` on the offline models at free ports (flow_process). The default
    readiness check is a dry run, which a Flow that requires an API key refuses.

    For Flows this process must not fork: jina forks the Flow's processes from the one that
    builds it, and after many Flows this one holds gRPC and OpenTelemetry threads whose forked
    copies crashed it (a segfault starting the tracing Flow, in two CI runs)."""
    with flow_process(offline_flow_flags(*extra_flags), env, log, wait_ready) as running:
        yield running


def no_wait(running: RunningFlow, process: subprocess.Popen) -> None:
    """A readiness check that returns at once (the web page says when the Flow is ready)."""


def command_flags() -> List[str]:
    """flow.py flags of the command (what people are served): ``model_flags`` with the
    multilingual Whisper and ``SERVED_STEPS``."""
    return [
        *model_flags(),
        '--whisper-model',
        str(WHISPER_BASE),
        '--num-inference-steps',
        str(SERVED_STEPS),
    ]


def command_parser() -> argparse.ArgumentParser:
    """The command's options and its help: what it serves, where, and how to stop it."""
    served = flow_module.parse_args(command_flags())
    return argparse.ArgumentParser(
        prog='python -m devtools.offline_flow',
        usage='%(prog)s [--log FILE] [--wait] [flow.py flags] [-- COMMAND [ARG ...]]',
        description=(
            'Serve the speech2image Flow (python flow.py) on the offline models that `make models` '
            f'builds in {MODELS.relative_to(ROOT)}/: Whisper {WHISPER_BASE.name} (multilingual) '
            f'and the image model {Path(served.diffusion_model).name}, '
            f'{SERVED_STEPS} denoising steps per image unless a request says otherwise. '
            'Without COMMAND it serves until Ctrl-C (`make serve`); with one it serves, runs '
            'COMMAND, and stops the Flow when COMMAND ends or on Ctrl-C, exiting with its '
            'status (`make demo`, `make web`).'
        ),
        epilog=(
            f"Ports are flow.py's: gRPC {served.port_grpc}, HTTP {served.port_http}, "
            f'WebSocket {served.port_websocket}, metrics from {served.port_monitoring}, on '
            f'{served.host}; S2I_* variables move them (S2I_PORT_GRPC=6000), and the '
            "speech2image client reads the same variables. Any other flag is flow.py's "
            '(python flow.py --help) and wins over these defaults, e.g. '
            '--diffusion-model DIR.'
        ),
        allow_abbrev=False,
    )


def main(argv: Optional[List[str]] = None) -> int:
    """The command: serve the offline Flow until Ctrl-C, or around COMMAND (its exit status)."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index('--') if '--' in argv else len(argv)
    parser = command_parser()
    parser.add_argument(
        '--log', type=Path, metavar='FILE', help="file for the Flow's output (default: stderr)"
    )
    parser.add_argument('--wait', action='store_true', help='start COMMAND once the Flow is ready')
    args, flow_flags = parser.parse_known_args(argv[:split])
    command = argv[split + 1 :]
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
    flags = [*command_flags(), *flow_flags]
    wait_ready = wait_flow_ready if args.wait or not command else no_wait
    try:
        with flow_process(flags, log=args.log, wait_ready=wait_ready, new_session=False) as flow:
            if not command:
                return serve_until_interrupted(flow, args.log)
            return run_to_the_end(command)
    except RuntimeError as error:  # the Flow exited or was not ready in time
        sys.exit(f'{error}; see {args.log or "the output above"}')
    except KeyboardInterrupt:  # Ctrl-C before the Flow was ready; the Flow is stopped
        return INTERRUPTED_STATUS


def serve_until_interrupted(flow: RunningFlow, log: Optional[Path]) -> int:
    """Say where the ready Flow is and how to use and stop it, then wait for Ctrl-C."""
    print(
        f'The Flow is ready: {flow.grpc}, {flow.http}, ws://127.0.0.1:{flow.port_websocket}'
        f'{f" (log: {log})" if log else ""}.\n'
        'In another terminal: .venv/bin/speech2image assets/phare.wav '
        '(or make web for the page). Ctrl-C stops the Flow.',
        flush=True,
    )
    try:
        while True:
            time.sleep(READY_POLL_S * 5)
    except KeyboardInterrupt:
        return 0


def run_to_the_end(command: List[str]) -> int:
    """Run ``command``; on Ctrl-C (which reaches it too) wait for it to finish. Its status."""
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        return process.wait()


if __name__ == '__main__':
    sys.exit(main())
