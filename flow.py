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
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from speech2image.settings import apply_environment

ROOT = Path(__file__).resolve().parent
ENV_PREFIX = 'S2I_'
FLOW_NAME = 'speech2image'
ENDPOINTS = ('/', '/transcribe', '/generate')
# The gateway: jina's, with an API key, a pending-request bound and a drain (speech2image/gateway.py).
GATEWAY_CONFIG = 'speech2image/gateway.yml'
# JCloud resources, as `jc deploy flow.yml` reads them.
JCLOUD_GATEWAY = {'resources': {'instance': 'C3'}}
JCLOUD_WHISPER = {'resources': {'instance': 'C4', 'memory': '8G'}}
JCLOUD_DIFFUSION = {'resources': {'instance': 'G3', 'gpu': 1, 'memory': '16G'}}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Serve the speech2image Flow.', formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    gateway = parser.add_argument_group('gateway')
    gateway.add_argument('--host', default='0.0.0.0', help='address the gateway binds')
    gateway.add_argument('--port-grpc', type=int, default=54322)
    gateway.add_argument('--port-http', type=int, default=54323)
    gateway.add_argument('--port-websocket', type=int, default=54324)
    gateway.add_argument('--port-monitoring', type=int, default=9090,
                         help='Prometheus /metrics of the gateway; Executors use the next ports')
    gateway.add_argument('--timeout-send-ms', type=int, default=60_000,
                         help='longest wait for one Executor to answer one attempt, in ms')
    gateway.add_argument('--retries', type=int, default=1,
                         help='times a request is resent after an Executor failed or timed out '
                              '(to another replica when there is one)')
    gateway.add_argument('--request-timeout-s', type=float,
                         help='longest a client waits for an answer, retries included; then it '
                              'gets a timeout error')
    gateway.add_argument('--max-pending-requests', type=int,
                         help='requests in flight at once; more get a "server busy" error')
    gateway.add_argument('--max-request-mb', type=float, help='largest request accepted, in MiB')
    gateway.add_argument('--cors-origin', action='append',
                         help='an origin browsers may call the gateway from (repeatable); '
                              'unset: none but the gateway\'s own')
    gateway.add_argument('--drain-seconds', type=float,
                         help='on SIGTERM, how long the gateway and Executors let requests finish')
    tracing = parser.add_argument_group('tracing (OpenTelemetry over OTLP/gRPC; off without a host)')
    tracing.add_argument('--traces-exporter-host',
                         help='OTLP collector host for the gateway and both Executors; '
                              'http://HOST for plaintext, https://HOST or HOST for TLS')
    tracing.add_argument('--traces-exporter-port', type=int, default=4317)
    whisper = parser.add_argument_group('WhisperExecutor (unset: the Executor default)')
    whisper.add_argument('--whisper-backend', choices=['faster-whisper', 'openai-whisper'])
    whisper.add_argument('--whisper-model', help='model name or local path')
    whisper.add_argument('--whisper-device', choices=['auto', 'cpu', 'cuda'])
    whisper.add_argument('--whisper-compute-type', help='faster-whisper precision, e.g. int8, float16')
    whisper.add_argument('--max-audio-seconds', type=float)
    whisper.add_argument('--audio-dir', help='directory that request `uri` paths may read')
    whisper.add_argument('--whisper-replicas', type=int, default=1)
    whisper.add_argument('--whisper-threads', type=int,
                         help='CPU threads per Whisper replica; unset: the local thread plan')
    diffusion = parser.add_argument_group('StableDiffusionExecutor (unset: the Executor default)')
    diffusion.add_argument('--diffusion-model', help='diffusers checkpoint: hub id or local directory')
    diffusion.add_argument('--diffusion-device', choices=['auto', 'cpu', 'cuda'])
    diffusion.add_argument('--num-inference-steps', type=int, help='default steps per image')
    diffusion.add_argument('--width', type=int, help='default image width')
    diffusion.add_argument('--height', type=int, help='default image height')
    diffusion.add_argument('--max-images', type=int, help='cap on images per prompt')
    diffusion.add_argument('--guidance-scale', type=float, help='default classifier-free guidance')
    diffusion.add_argument('--diffusion-scheduler', choices=['auto', 'checkpoint', 'dpm++'])
    diffusion.add_argument('--compile-unet', action='store_true', default=None,
                           help='torch.compile the UNet (GPU: slower start, faster steps)')
    diffusion.add_argument('--diffusion-replicas', type=int, default=1)
    diffusion.add_argument('--diffusion-threads', type=int,
                           help='torch CPU threads per diffusion replica; unset: the local thread plan')
    diffusion.add_argument('--batch-size', type=int,
                           help='most documents per pipeline call, taken from what queued while '
                                'the previous call ran (no waiting window)')
    parser.add_argument('--export-yaml', type=Path, metavar='PATH',
                        help='write the Flow as YAML to PATH and exit')
    apply_environment(parser, ENV_PREFIX)
    return parser.parse_args(argv)


def given(**values: Any) -> Dict[str, Any]:
    """Only the values that were set, so unset flags leave the Executor's defaults alone."""
    return {name: value for name, value in values.items() if value is not None}


def tracing_options(args: argparse.Namespace) -> Dict[str, Any]:
    """jina's tracing arguments, for the gateway and each Executor: none when tracing is off."""
    if not args.traces_exporter_host:
        return {}
    return {'tracing': True, 'traces_exporter_host': args.traces_exporter_host,
            'traces_exporter_port': args.traces_exporter_port}


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
            'timeout_send': args.timeout_send_ms,
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
                    threads=args.whisper_threads,
                    drain_seconds=args.drain_seconds,
                ),
                'replicas': args.whisper_replicas,
                'monitoring': True,
                'port_monitoring': args.port_monitoring + 1,
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
                    guidance_scale=args.guidance_scale,
                    scheduler=args.diffusion_scheduler,
                    compile_unet=args.compile_unet,
                    max_batch_size=args.batch_size,
                    threads=args.diffusion_threads,
                    drain_seconds=args.drain_seconds,
                ),
                'replicas': args.diffusion_replicas,
                'monitoring': True,
                'port_monitoring': args.port_monitoring + 2,
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
    with build_flow(args) as flow:
        flow.block()


if __name__ == '__main__':
    main(sys.argv[1:])
