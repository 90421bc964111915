"""The original example (jina-ai/example-speech-to-image) served from a checkout outside this
repository and measured on its own workload: the outside reference of bench.original_workload.

    export S2I_ORIGINAL_EXAMPLE=/path/to/example-speech-to-image   # a checkout, see below
    $(python -m bench.original_example --environment) -m bench.original_example [--replicas 1]

Get a checkout with ``git clone https://github.com/jina-ai/example-speech-to-image`` (this
project measured commit fb6ab4f). Nothing of it is copied here: this module imports the
checkout's own ``flow.py``, which builds its Flow (Whisper, then Stable Diffusion) from its own
Executors, and changes at run time only what this machine needs:

- ``whisper.load_model`` loads the local openai-whisper checkpoint (tiny.en) on the CPU,
  whatever model name the Flow asks for;
- ``StableDiffusionPipeline.from_pretrained`` loads the local tiny Stable Diffusion in float32
  (the original asks the hub for CompVis/stable-diffusion-v1-4 in float16 with a token);
- pipelines moved to 'cuda' stay on the CPU, and ``torch.autocast('cuda')`` does nothing;
- the Flow's gateway and Executors bind 127.0.0.1 on a free port, with ``--replicas``
  diffusion replicas (its flow-local.yml runs 2; its flow.py 1), and the gateway waits up to
  10 minutes for an Executor (as bench.original_workload's Flows do: a busy machine then gives
  slow figures rather than none).

The Executors need DocArray v1, which cannot share the project's environment:
``--environment`` makes (once) a venv under .cache/ holding only docarray 0.21.1 (hash-pinned,
bench/original_example_requirements.txt) that sees every other package of the running
environment through a .pth file, so both systems run the same torch, diffusers, openai-whisper
and jina builds; it prints that venv's python. The last line printed is the figures, as JSON.
"""

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Dict, List

from bench.original_workload import (
    CONCURRENCY,
    LATENCY_REQUESTS,
    THROUGHPUT_REQUESTS,
    apple_tensor,
    timed_requests,
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / 'models'
CHECKOUT_VARIABLE = 'S2I_ORIGINAL_EXAMPLE'
ENVIRONMENT_PATH = ROOT / '.cache' / 'original-example-venv'
REQUIREMENTS = Path(__file__).with_name('original_example_requirements.txt')
PTH_NAME = 'speech2image-environment.pth'
READY_MARKER = '.ready'  # written last: a half-made environment is made again
# The original reads num_images only; its pipeline's defaults are the workload's 50 steps, 7.5.
PARAMETERS = {'num_images': 2}
HOST = '127.0.0.1'
SEND_TIMEOUT_MS = 600_000


def checkout_path(given=None) -> Path:
    """The original example's checkout: ``given``, else $S2I_ORIGINAL_EXAMPLE; it must hold
    the original's flow.py and Executors."""
    path = given or os.environ.get(CHECKOUT_VARIABLE)
    if not path:
        raise SystemExit(
            f'no checkout of the original example: set {CHECKOUT_VARIABLE} to one '
            '(git clone https://github.com/jina-ai/example-speech-to-image; docs/benchmarks.md)'
        )
    path = Path(path).resolve()
    if not (path / 'flow.py').is_file() or not (path / 'executors' / 'whisper').is_dir():
        raise SystemExit(f'{path} is not a checkout of jina-ai/example-speech-to-image')
    return path


def ensure_environment(path: Path = ENVIRONMENT_PATH) -> Path:
    """The DocArray v1 environment at ``path`` (made if missing); returns its python."""
    python, ready = path / 'bin' / 'python', path / READY_MARKER
    if ready.exists():
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    pip = [str(python), '-m', 'pip', 'install', '--quiet', '--no-deps', '--require-hashes']
    subprocess.run([*pip, '-r', str(REQUIREMENTS)], check=True)
    site_packages = subprocess.run(
        [str(python), '-c', "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    # Read after the venv's own site-packages, so its docarray v1 shadows the project's v2.
    (Path(site_packages) / PTH_NAME).write_text(sysconfig.get_paths()['purelib'] + '\n')
    ready.touch()
    return python


def patch_for_this_machine(port: int, replicas: int) -> None:
    """The run-time changes listed in this module's docstring (local models, CPU, 127.0.0.1 on
    ``port``, ``replicas`` diffusion replicas), made before the original's modules load."""
    import diffusers
    import jina
    import torch
    import whisper

    from devtools.offline_models import OPENAI_WHISPER_FILE, TINY_SD_DIR

    load_model = whisper.load_model
    whisper.load_model = lambda name, *args, **kwargs: load_model(
        str(MODELS / OPENAI_WHISPER_FILE), device='cpu'
    )
    from_pretrained = diffusers.StableDiffusionPipeline.from_pretrained.__func__
    diffusers.StableDiffusionPipeline.from_pretrained = classmethod(
        lambda cls, *args, **kwargs: from_pretrained(
            cls, str(MODELS / TINY_SD_DIR), torch_dtype=torch.float32
        )
    )
    to_device = diffusers.DiffusionPipeline.to
    diffusers.DiffusionPipeline.to = lambda self, *args, **kwargs: to_device(self, 'cpu')
    autocast = torch.autocast
    torch.autocast = lambda device_type, *args, **kwargs: (
        contextlib.nullcontext()
        if device_type == 'cuda'
        else autocast(device_type, *args, **kwargs)
    )
    flow_init, flow_add = jina.Flow.__init__, jina.Flow.add

    @functools.wraps(flow_init)
    def init(self, *args, **kwargs):
        flow_init(
            self, *args, **{**kwargs, 'port': port, 'host': HOST, 'timeout_send': SEND_TIMEOUT_MS}
        )

    @functools.wraps(flow_add)
    def add(self, *args, **kwargs):
        if getattr(kwargs.get('uses'), '__name__', '') == 'StableDiffusionExecutor':
            kwargs['replicas'] = replicas
        return flow_add(self, *args, **{**kwargs, 'host': HOST})

    jina.Flow.__init__, jina.Flow.add = init, add


def original_flow(checkout: Path):
    """The Flow the checkout's flow.py builds (its module-level ``f``), its Executors imported
    from the checkout."""
    sys.path.insert(0, str(checkout))  # its flow.py imports its `executors` package
    spec = importlib.util.spec_from_file_location('original_flow', checkout / 'flow.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.f


def flow_rss_mb() -> float:
    """Resident memory of this process's children (the Flow's gateway and Executors), in MiB."""
    import psutil

    children = psutil.Process().children(recursive=True)
    return sum(child.memory_info().rss for child in children) / 2**20


def measure(address: str, requests: List[int]) -> Dict[str, float]:
    """``/`` at concurrency 1 and 8: ``requests`` at each (one number: both, for a quick check;
    fewer than 8 also lowers the concurrency)."""
    from docarray import Document, DocumentArray
    from jina import Client

    samples = apple_tensor()
    clients: Dict[int, Client] = {}

    async def post(endpoint: str, doc, parameters: Dict) -> None:
        task = id(asyncio.current_task())  # one Client per concurrent client
        client = clients.setdefault(task, Client(host=address, asyncio=True))
        async for answer in client.post(
            endpoint, inputs=DocumentArray([doc]), parameters=parameters
        ):
            assert len(answer[0].matches) == PARAMETERS['num_images'], answer[0].summary()

    speech = ('/', lambda: Document(tensor=samples), PARAMETERS)

    async def one_run() -> Dict[str, float]:
        latency_requests, throughput_requests = (requests * 2)[:2]
        c1 = await timed_requests(post, speech, latency_requests, 1)
        c8 = await timed_requests(
            post, speech, throughput_requests, min(throughput_requests, CONCURRENCY)
        )
        return {'latency_s': c1['p50_ms'] / 1000, 'rps': c8['rps'], 'rss_mb': flow_rss_mb()}

    return asyncio.run(one_run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkout', help=f'the checkout; unset: ${CHECKOUT_VARIABLE}')
    parser.add_argument('--replicas', type=int, default=1)
    parser.add_argument(
        '--requests',
        nargs='+',
        type=int,
        default=[LATENCY_REQUESTS, THROUGHPUT_REQUESTS],
        help='requests at c=1 and at c=8 (one number: both)',
    )
    parser.add_argument(
        '--environment', action='store_true', help='make the DocArray v1 venv; print its python'
    )
    args = parser.parse_args()
    if args.environment:
        print(ensure_environment())
        return
    from devtools.offline_flow import free_ports

    checkout = checkout_path(args.checkout)
    os.environ.pop('OMP_NUM_THREADS', None)  # default threads, as the original runs
    [port] = free_ports(1)
    patch_for_this_machine(port, args.replicas)
    with original_flow(checkout) as flow:
        print(json.dumps(measure(f'grpc://{HOST}:{flow.port}', args.requests)))


if __name__ == '__main__':
    main()
