"""The speech2image Flow: gateway (gRPC, HTTP, WebSocket) -> WhisperExecutor -> StableDiffusionExecutor.

    python flow.py                                   # serve, with the production default models
    python flow.py --whisper-model models/whisper-tiny.en-ct2 \\
                   --diffusion-model models/tiny-stable-diffusion   # serve the offline test models
    python flow.py --export-yaml flow.yml            # write the same Flow as YAML

Every flag can also be given as an environment variable: ``--whisper-model`` is
``S2I_WHISPER_MODEL``. A flag left unset passes nothing to the Executor, whose own default then
applies: each default is written once, in the Executor's signature or here.

flow.yml is this Flow exported with the default flags (``make flow.yml``); a test fails if it drifts.
"""

import argparse
import contextlib
import functools
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from speech2image import defaults
from speech2image.settings import apply_environment

ROOT = Path(__file__).resolve().parent
ENV_PREFIX = 'S2I_'
FLOW_NAME = 'speech2image'
# After the Flow is closed, how long its processes may take to exit before they are killed.
CHILD_EXIT_SECONDS = 5.0
# How often the main thread looks for a stop signal, and which signals stop the Flow.
SIGNAL_POLL_SECONDS = 0.2
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# The gateway: jina's, with an API key, a pending-request bound and a drain (speech2image/gateway.py).
GATEWAY_CONFIG = 'speech2image/gateway.yml'
# JCloud resources, as `jc deploy flow.yml` reads them.
JCLOUD_GATEWAY = {'resources': {'instance': 'C3'}}
JCLOUD_WHISPER = {'resources': {'instance': 'C4', 'memory': '8G'}}
JCLOUD_DIFFUSION = {'resources': {'instance': 'G3', 'gpu': 1, 'memory': '16G'}}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Serve the speech2image Flow.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gateway = parser.add_argument_group('gateway')
    gateway.add_argument(
        '--host', default=defaults.HOST, help='address the gateway binds (0.0.0.0: every interface)'
    )
    gateway.add_argument('--port-grpc', type=int, default=defaults.PORT_GRPC)
    gateway.add_argument('--port-http', type=int, default=defaults.PORT_HTTP)
    gateway.add_argument('--port-websocket', type=int, default=defaults.PORT_WEBSOCKET)
    gateway.add_argument(
        '--port-monitoring',
        type=int,
        default=defaults.PORT_MONITORING,
        help='Prometheus /metrics of the gateway; Executors use the next ports',
    )
    gateway.add_argument(
        '--monitoring-host',
        help='address the three /metrics servers bind; unset: the same as --host',
    )
    gateway.add_argument(
        '--timeout-send-ms',
        type=int,
        help='longest wait for one Executor to answer, in ms; a call that runs out of it is '
        'answered with a timeout error, never sent again; unset: the request timeout',
    )
    gateway.add_argument(
        '--retries',
        type=int,
        default=1,
        help='times a request is resent after an Executor failed or could not be reached '
        '(to another replica when there is one); never after it ran out of time',
    )
    gateway.add_argument(
        '--request-timeout-s',
        type=float,
        help='longest a client waits for an answer, retries included; then it gets a timeout error',
    )
    gateway.add_argument(
        '--client-idle-timeout-s',
        type=float,
        help='a call or connection that sends no request this long, or a stream reader that '
        'takes no event this long, is closed',
    )
    gateway.add_argument(
        '--max-pending-requests',
        type=int,
        help='requests in flight at once; more get a "server busy" error',
    )
    gateway.add_argument(
        '--max-request-mb',
        type=float,
        help='largest request accepted, in MiB; also the largest file a `uri` may name',
    )
    gateway.add_argument(
        '--body-timeout-s',
        type=float,
        help='longest an HTTP request body may take to arrive; then it gets a 408 error',
    )
    gateway.add_argument(
        '--cors-origin',
        action='append',
        help='an origin browsers may call the gateway from (repeatable); '
        "unset: none but the gateway's own",
    )
    gateway.add_argument(
        '--drain-seconds',
        type=float,
        help='on SIGTERM, how long the gateway and Executors let requests finish',
    )
    tracing = parser.add_argument_group(
        'tracing (OpenTelemetry over OTLP/gRPC; off without a host)'
    )
    tracing.add_argument(
        '--traces-exporter-host',
        help='OTLP collector host for the gateway and both Executors; '
        'http://HOST for plaintext, https://HOST or HOST for TLS',
    )
    tracing.add_argument('--traces-exporter-port', type=int, default=4317)
    whisper = parser.add_argument_group('WhisperExecutor (unset: the Executor default)')
    whisper.add_argument('--whisper-backend', choices=['faster-whisper', 'openai-whisper'])
    whisper.add_argument('--whisper-model', help='model name or local path')
    whisper.add_argument('--whisper-device', choices=['auto', 'cpu', 'cuda'])
    whisper.add_argument(
        '--whisper-compute-type', help='faster-whisper precision, e.g. int8, float16'
    )
    whisper.add_argument('--max-audio-seconds', type=float)
    whisper.add_argument('--audio-dir', help='directory that request `uri` paths may read')
    whisper.add_argument(
        '--spoken-settings',
        choices=['on', 'off'],
        help='take settings said in the prompt ("four pictures of ..., seed 42"); '
        "off sends the transcript as is (a request's spoken_settings wins)",
    )
    checks = parser.add_argument_group(
        "WhisperExecutor's checks of what it heard (docs/languages.md; unset: the Executor "
        'default): a transcript is refused when it fails one'
    )
    checks.add_argument(
        '--min-avg-logprob', type=float, help='lowest mean token log-probability of a segment'
    )
    checks.add_argument(
        '--max-no-speech-prob', type=float, help='highest no-speech probability of a segment'
    )
    checks.add_argument(
        '--max-compression-ratio',
        type=float,
        help='highest gzip compression ratio of a segment (repetitive text compresses well)',
    )
    checks.add_argument('--max-words-per-second', type=float, help='most words per second of audio')
    checks.add_argument(
        '--max-ngram-repeats', type=int, help='most times one run of three words may come'
    )
    checks.add_argument(
        '--min-language-probability',
        type=float,
        help="lowest probability of a detected language (a request's 'language' is not detected)",
    )
    whisper.add_argument('--whisper-replicas', type=int, default=1)
    whisper.add_argument(
        '--whisper-threads',
        type=int,
        help='CPU threads per Whisper replica; unset: its CPUs over its replicas',
    )
    diffusion = parser.add_argument_group('StableDiffusionExecutor (unset: the Executor default)')
    diffusion.add_argument(
        '--diffusion-model', help='diffusers checkpoint: hub id or local directory'
    )
    diffusion.add_argument('--diffusion-device', choices=['auto', 'cpu', 'cuda'])
    diffusion.add_argument('--num-inference-steps', type=int, help='default steps per image')
    diffusion.add_argument('--width', type=int, help='default image width')
    diffusion.add_argument('--height', type=int, help='default image height')
    diffusion.add_argument('--max-images', type=int, help='cap on images per prompt')
    diffusion.add_argument(
        '--max-side',
        type=int,
        help="cap on width and height; unset: twice the model's native side",
    )
    diffusion.add_argument('--guidance-scale', type=float, help='default classifier-free guidance')
    diffusion.add_argument('--diffusion-scheduler', choices=['auto', 'checkpoint', 'dpm++'])
    diffusion.add_argument(
        '--compile-unet',
        action='store_true',
        default=None,
        help='torch.compile the UNet (GPU: slower start, faster steps)',
    )
    diffusion.add_argument(
        '--safety-checker',
        choices=['on', 'off'],
        help="run the checkpoint's safety checker on each image (a flagged one is blacked out "
        'and said so); unset: on when the checkpoint has one',
    )
    diffusion.add_argument(
        '--diffusion-backend',
        choices=defaults.DIFFUSION_BACKENDS,
        help='runtime of the UNet, text encoder and VAE decoder: OpenVINO (CPU, Stable '
        f'Diffusion 1.x/2.x) or torch; unset: {defaults.DIFFUSION_BACKEND} (OpenVINO where it can)',
    )
    diffusion.add_argument(
        '--diffusion-precision',
        choices=defaults.DIFFUSION_PRECISIONS,
        help='bf16: faster on CPUs with bf16 instructions, images differ slightly (OpenVINO only); '
        f'unset: {defaults.DIFFUSION_PRECISION}',
    )
    diffusion.add_argument(
        '--openvino-cache',
        help='directory of converted OpenVINO models (kept across restarts); '
        'unset: $XDG_CACHE_HOME/speech2image/openvino',
    )
    diffusion.add_argument('--diffusion-replicas', type=int, default=1)
    diffusion.add_argument(
        '--diffusion-threads',
        type=int,
        help='torch CPU threads per diffusion replica; unset: its CPUs over its replicas',
    )
    diffusion.add_argument(
        '--batch-size',
        type=int,
        help='most documents per pipeline call, taken from what queued while '
        'the previous call ran (no waiting window)',
    )
    parser.add_argument(
        '--export-yaml', type=Path, metavar='PATH', help='write the Flow as YAML to PATH and exit'
    )
    apply_environment(parser, ENV_PREFIX)
    return parser.parse_args(argv)


def given(**values: Any) -> Dict[str, Any]:
    """Only the values that were set, so unset flags leave the Executor's defaults alone."""
    return {name: value for name, value in values.items() if value is not None}


def on_off(value: Optional[str]) -> Optional[bool]:
    """An on/off flag as the Executor's bool; None (unset) stays None."""
    return None if value is None else value == 'on'


def monitoring_port(args: argparse.Namespace, executor: str) -> int:
    return args.port_monitoring + defaults.EXECUTOR_MONITORING_OFFSETS[executor]


def tracing_options(args: argparse.Namespace) -> Dict[str, Any]:
    """jina's tracing arguments, for the gateway and each Executor: none when tracing is off."""
    if not args.traces_exporter_host:
        return {}
    return {
        'tracing': True,
        'traces_exporter_host': args.traces_exporter_host,
        'traces_exporter_port': args.traces_exporter_port,
    }


def timeout_send_ms(args: argparse.Namespace) -> int:
    """jina's per-Executor limit: ``--timeout-send-ms``, else the request timeout, so that it
    does not end a call the client is still willing to wait for."""
    if args.timeout_send_ms is not None:
        return args.timeout_send_ms
    request_timeout = args.request_timeout_s or defaults.REQUEST_TIMEOUT_SECONDS
    return round(request_timeout * 1000)


def flow_spec(args: argparse.Namespace) -> Dict[str, Any]:
    """The Flow as plain data: ``build_flow`` builds it in Python, ``--export-yaml`` dumps it."""
    tracing = tracing_options(args)
    return {
        'jtype': 'Flow',
        'with': {
            'name': FLOW_NAME,
            'protocol': ['grpc', 'http', 'websocket'],
            'port': [args.port_grpc, args.port_http, args.port_websocket],
            'host': args.host,
            'monitoring': True,
            'port_monitoring': args.port_monitoring,
            **tracing,
            'timeout_send': timeout_send_ms(args),
            'retries': args.retries,
        },
        'gateway': {
            'uses': GATEWAY_CONFIG,
            'uses_with': given(
                max_pending_requests=args.max_pending_requests,
                max_request_mb=args.max_request_mb,
                cors_origins=args.cors_origin,
                drain_seconds=args.drain_seconds,
                request_timeout_seconds=args.request_timeout_s,
                client_idle_seconds=args.client_idle_timeout_s,
                body_timeout_seconds=args.body_timeout_s,
            ),
        },
        'jcloud': JCLOUD_GATEWAY,
        'executors': [
            {
                'name': 'whisper',
                'uses': 'executors/whisper/config.yml',
                'uses_with': given(
                    backend=args.whisper_backend,
                    model=args.whisper_model,
                    device=args.whisper_device,
                    compute_type=args.whisper_compute_type,
                    max_audio_seconds=args.max_audio_seconds,
                    audio_dir=args.audio_dir,
                    max_audio_file_mb=args.max_request_mb,
                    threads=args.whisper_threads,
                    drain_seconds=args.drain_seconds,
                    spoken_settings=on_off(args.spoken_settings),
                    min_avg_logprob=args.min_avg_logprob,
                    max_no_speech_prob=args.max_no_speech_prob,
                    max_compression_ratio=args.max_compression_ratio,
                    max_words_per_second=args.max_words_per_second,
                    max_ngram_repeats=args.max_ngram_repeats,
                    min_language_probability=args.min_language_probability,
                ),
                'replicas': args.whisper_replicas,
                'monitoring': True,
                'port_monitoring': monitoring_port(args, 'whisper'),
                **tracing,
                'jcloud': JCLOUD_WHISPER,
            },
            {
                'name': 'stablediffusion',
                'uses': 'executors/stablediffusion/config.yml',
                'uses_with': given(
                    model=args.diffusion_model,
                    device=args.diffusion_device,
                    num_inference_steps=args.num_inference_steps,
                    width=args.width,
                    height=args.height,
                    max_images=args.max_images,
                    max_side=args.max_side,
                    guidance_scale=args.guidance_scale,
                    scheduler=args.diffusion_scheduler,
                    compile_unet=args.compile_unet,
                    backend=args.diffusion_backend,
                    precision=args.diffusion_precision,
                    openvino_cache=args.openvino_cache,
                    max_batch_size=args.batch_size,
                    threads=args.diffusion_threads,
                    drain_seconds=args.drain_seconds,
                    safety_checker=on_off(args.safety_checker),
                ),
                'replicas': args.diffusion_replicas,
                'monitoring': True,
                'port_monitoring': monitoring_port(args, 'stablediffusion'),
                **tracing,
                'jcloud': JCLOUD_DIFFUSION,
            },
        ],
    }


def build_flow(args: argparse.Namespace):
    """Build the Flow in Python, as the jina docs do: ``Flow(...).add(...).add(...)``.

    Executors always bind 127.0.0.1: only the gateway is meant to be reached from outside.
    """
    from jina import Flow

    spec = flow_spec(args)
    flow = Flow(**spec['with']).config_gateway(
        uses=str(ROOT / spec['gateway']['uses']), uses_with=spec['gateway']['uses_with']
    )
    for executor in spec['executors']:
        options = {key: value for key, value in executor.items() if key != 'jcloud'}
        options['uses'] = str(ROOT / executor['uses'])
        flow = flow.add(host='127.0.0.1', **options)
    return flow


def ports_in_use(args: argparse.Namespace) -> List[str]:
    """Each port the Flow would bind on this machine that something already holds, as
    "--flag N (held by ...)"; empty when all are free.

    Probed as the Flow's servers bind (gRPC, uvicorn and Prometheus' all set SO_REUSEADDR): a
    port whose only sockets are closed connections in TIME_WAIT (left by a /metrics scrape,
    say) is free to them, and so it is here."""
    monitoring_host = args.monitoring_host or args.host
    wanted = [
        ('--port-grpc', args.host, args.port_grpc),
        ('--port-http', args.host, args.port_http),
        ('--port-websocket', args.host, args.port_websocket),
        ('--port-monitoring', monitoring_host, args.port_monitoring),
        *(
            ('--port-monitoring', monitoring_host, monitoring_port(args, name))
            for name in defaults.EXECUTOR_MONITORING_OFFSETS
        ),
    ]
    busy = []
    for flag, host, port in wanted:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                busy.append(f'{flag} {port} on {host} (held by {holder_of(port)})')
    return busy


def holder_of(port: int) -> str:
    """Which process listens on ``port``, as "pid N: command", when this user may see it."""
    import psutil

    try:
        for connection in psutil.net_connections(kind='inet'):
            listening = connection.status in (psutil.CONN_LISTEN, psutil.CONN_NONE)  # NONE: UDP
            if listening and connection.laddr and connection.laddr.port == port and connection.pid:
                process = psutil.Process(connection.pid)
                return f'pid {connection.pid}: {" ".join(process.cmdline())[:120]}'
    except (psutil.Error, OSError):
        pass
    return 'another process'


def bind_metrics_to(host: str) -> None:
    """Make the /metrics servers of the Flow's processes bind ``host``.

    jina starts them with ``prometheus_client.start_http_server(port)``, which binds 0.0.0.0 and
    takes no host from jina. The Flow's processes are forked from this one after this call, so
    they inherit the default address given here. (In Kubernetes each container runs jina
    directly and 0.0.0.0, the pod's address, is what Prometheus scrapes.)"""
    import prometheus_client

    prometheus_client.start_http_server = functools.partial(
        prometheus_client.start_http_server, addr=host
    )


def hold_stop_signals() -> None:
    """Block SIGINT and SIGTERM in this process, before any thread exists, so that every thread
    started later blocks them too and only ``wait_for_a_stop_signal`` receives them; the Flow's
    processes, forked from here, unblock them at once and install jina's own handlers.

    Python's own handlers proved unreliable here: a SIGTERM that arrived right after the Flow was
    ready was now and then caught and lost (the stop tests saw it; a second one worked), and
    without any handler SIGTERM ends this process alone, leaving the Flow's processes running."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    os.register_at_fork(
        after_in_child=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    )


def wait_for_a_stop_signal() -> int:
    """Until SIGINT or SIGTERM arrives (also one that arrived before this was called); returns
    its number."""
    while True:
        received = signal.sigtimedwait(STOP_SIGNALS, SIGNAL_POLL_SECONDS)
        if received is not None:
            return received.si_signo


def stop_bound_seconds(args: argparse.Namespace) -> float:
    """The longest a stop takes, whatever state the Flow's processes are in: their drain, their
    shutdown grace, and the time this process gives them to exit."""
    drain = defaults.DRAIN_SECONDS if args.drain_seconds is None else args.drain_seconds
    return drain + defaults.SHUTDOWN_GRACE_SECONDS + CHILD_EXIT_SECONDS


def watch_for_a_stop_signal(bound_seconds: float) -> threading.Event:
    """Start a thread that waits for SIGINT or SIGTERM, from now on (the Flow may still be
    starting); returns the event it sets when one arrives. ``bound_seconds`` after the signal
    it ends every process of the Flow, and this one, if the stop is not over by then: jina's
    close waits a minute for each process that died without telling it (a model process
    killed), and its start waits for one that hangs."""
    stopping = threading.Event()

    def watch():
        wait_for_a_stop_signal()
        stopping.set()
        time.sleep(bound_seconds)
        kill_every_process_and_exit(bound_seconds)

    threading.Thread(target=watch, name='stop-watch', daemon=True).start()
    return stopping


def kill_every_process_and_exit(bound_seconds: float) -> None:
    """SIGKILL every process this one started (their children too), then exit with status 1."""
    import psutil

    leftovers = psutil.Process().children(recursive=True)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.kill()
    print(
        f'speech2image: still stopping {bound_seconds:g} s after the stop signal; '
        f'killed {len(leftovers)} processes of the Flow',
        file=sys.stderr,
        flush=True,
    )
    os._exit(1)


def end_leftover_processes() -> None:
    """Kill any of the Flow's processes still alive ``CHILD_EXIT_SECONDS`` after the Flow closed
    (their drain and grace are over by then: jina's close gives up waiting but does not kill)."""
    for child in multiprocessing.active_children():
        child.join(CHILD_EXIT_SECONDS)
        if child.is_alive():
            child.kill()
            child.join()


def serve(args: argparse.Namespace) -> int:
    """Serve the Flow until SIGINT or SIGTERM; every process it started is gone on return."""
    busy = ports_in_use(args)
    if busy:
        print(
            f'speech2image: cannot start, ports already in use: {"; ".join(busy)}', file=sys.stderr
        )
        return 1
    bind_metrics_to(args.monitoring_host or args.host)
    hold_stop_signals()
    stopping = watch_for_a_stop_signal(stop_bound_seconds(args))
    try:
        with build_flow(args):
            stopping.wait()
    finally:
        end_leftover_processes()
    return 0


def export_yaml(args: argparse.Namespace, path: Path) -> None:
    import yaml

    header = '# Generated by `python flow.py --export-yaml flow.yml`; edit flow.py instead.\n'
    path.write_text(header + yaml.safe_dump(flow_spec(args), sort_keys=False))


def main(argv: Optional[List[str]] = None) -> None:
    os.environ.setdefault('JINA_OPTOUT_TELEMETRY', '1')
    args = parse_args(argv)
    if args.export_yaml:
        export_yaml(args, args.export_yaml)
        return
    sys.exit(serve(args))


if __name__ == '__main__':
    main(sys.argv[1:])
