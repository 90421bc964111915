"""Images per second at several step counts and batch sizes, through the StableDiffusionExecutor
in-process.

    python -m bench.steps [--steps 1 2 4 8] [--batch-sizes 1 4] [--repeats 5]
    python -m bench.steps --full-size [--side 512] [--device cuda]

By default on the offline tiny model (models/tiny-stable-diffusion, 64 px). ``--full-size``
builds the Stable Diffusion 1.5 architecture (UNet, VAE and CLIP text encoder at their real
sizes) with random weights, saves it once under models/, and loads it through the Executor's
``from_pretrained`` path: no hub has the weights here, but compute cost does not depend on them.
Every figure is the median over ``--repeats`` calls after a warm-up; a batch of N is one
``generate`` call for N prompts, as dynamic batching makes it, so the batch rows are the most
batching can gain on this hardware.
"""

import argparse
import asyncio
import statistics
import time
from typing import List

from docarray import DocList
from jina import Executor

# bench.measure first: it sets the OpenMP threads torch reads.
from bench.measure import ROOT
from bench.report import machine_summary, markdown_table
from devtools.offline_flow import MODELS, TINY_SD
from devtools.offline_models import build_random_stable_diffusion
from speech2image.schema import SpeechDoc

FULL_SIZE_DIR = MODELS / 'sd15-architecture-random'
HEADER = [
    'model',
    'device',
    'side',
    'steps',
    'batch',
    'seconds per image',
    'images/s',
    'seconds per step',
]


# Stable Diffusion 1.5's published component configs, as build_random_stable_diffusion takes them.
SD15_SIZES = dict(
    text_encoder=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        hidden_act='quick_gelu',
    ),
    unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    vae=dict(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=('DownEncoderBlock2D',) * 4,
        up_block_types=('UpDecoderBlock2D',) * 4,
        sample_size=512,
    ),
)


def seconds_per_image(executor, side: int, steps: int, batch: int, repeats: int) -> float:
    """Median seconds per image of one ``/generate`` call for ``batch`` prompts, after one
    warm-up call."""
    parameters = {'num_inference_steps': steps, 'width': side, 'height': side, 'seed': 1}
    timings: List[float] = []
    for _ in range(repeats + 1):
        docs = DocList[SpeechDoc]([SpeechDoc(text='a red apple') for _ in range(batch)])
        started = time.perf_counter()
        asyncio.run(executor.generate(docs=docs, parameters=parameters))
        timings.append((time.perf_counter() - started) / batch)
    return statistics.median(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, nargs='+', default=[1, 2, 4, 8])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 4])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument(
        '--full-size',
        action='store_true',
        help='the SD 1.5 architecture with random weights instead of the tiny model',
    )
    parser.add_argument('--side', type=int, help='image side in pixels (default: the native one)')
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    args = parser.parse_args()
    model = TINY_SD
    if args.full_size:
        model = FULL_SIZE_DIR
        if not (model / 'model_index.json').exists():
            build_random_stable_diffusion(model, **SD15_SIZES)  # about 4 GB in float32
    executor = Executor.load_config(
        str(ROOT / 'executors/stablediffusion/config.yml'),
        uses_with={'model': str(model), 'device': args.device},
    )
    side = args.side or executor.defaults['width']
    device = executor.pipeline.device.type
    rows = []
    for steps in args.steps:
        for batch in args.batch_sizes:
            seconds = seconds_per_image(executor, side, steps, batch, args.repeats)
            rows.append(
                [
                    model.name,
                    device,
                    str(side),
                    str(steps),
                    str(batch),
                    f'{seconds:.3f}',
                    f'{1 / seconds:.2f}',
                    f'{seconds / steps:.3f}',
                ]
            )
    print(machine_summary())
    print(markdown_table(HEADER, rows))


if __name__ == '__main__':
    main()
