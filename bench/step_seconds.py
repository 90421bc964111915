"""Seconds of one UNet step at 1, 2, 4, 8 and 16 times a model's native side: a job stops only
between steps, so the step at the size cap (``--max-side``) bounds how long a cancelled job runs.

    python -m bench.step_seconds [--model models/shapes-world] [--images 4]

One step of ``--images`` images with classifier-free guidance (twice as many latents), in torch on
CPU, timed once after a warm-up at each side; stops after the first side over ``--stop-after``
seconds.
"""

import argparse
import time
from pathlib import Path

import torch

from bench.measure import ROOT
from bench.report import machine_summary
from devtools.offline_flow import MODELS

FACTORS = (1, 2, 4, 8, 16)
TEXT_LENGTH = 77


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', type=Path, default=MODELS / 'shapes-world')
    parser.add_argument('--images', type=int, default=4)
    parser.add_argument('--stop-after', type=float, default=20.0)
    return parser.parse_args()


@torch.no_grad()
def step_seconds(unet, latent_side: int, latents: int) -> float:
    """Seconds of one UNet call on ``latents`` latents of ``latent_side`` a side."""
    sample = torch.randn(latents, unet.config.in_channels, latent_side, latent_side)
    text = torch.randn(latents, TEXT_LENGTH, unet.config.cross_attention_dim)
    started = time.perf_counter()
    unet(sample, 500, text)
    return time.perf_counter() - started


def main():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    args = parse_args()
    unet = UNet2DConditionModel.from_pretrained(args.model / 'unet').eval()
    vae = AutoencoderKL.from_pretrained(args.model / 'vae')
    downsampling = 2 ** (len(vae.config.block_out_channels) - 1)
    native = unet.config.sample_size * downsampling
    step_seconds(unet, unet.config.sample_size, 2)  # warm-up
    print(machine_summary())
    model = args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model
    print(f'{model}: native side {native} px, {args.images} images with guidance')
    for factor in FACTORS:
        seconds = step_seconds(unet, factor * unet.config.sample_size, 2 * args.images)
        print(f'{factor * native:5d} px ({factor:2d}x native): {seconds:8.3f} s a step', flush=True)
        if seconds > args.stop_after:
            break


if __name__ == '__main__':
    main()
