"""How far OpenVINO's images are from torch's: the same prompts and seeds through one diffusers
checkpoint on torch float32 and on the OpenVINO backend in f32 and bf16.

    python -m bench.openvino_quality [MODEL_DIR ...] [--images 8] [--steps 25]

Each model (default: the offline tiny one) makes ``--images`` images (prompts from a fixed list,
seeds 0, 1, ...), 64 px or the model's native size, with DPM-Solver++ and guidance 7.5 as the
Executor's defaults; the report gives, against torch's images, the largest and the mean pixel
difference (levels of 255), the share of pixels that differ, and the PSNR.
"""

import argparse
import math
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from bench.report import machine_summary, markdown_table
from devtools.offline_flow import TINY_SD
from speech2image.openvino_backend import OpenVINOPipeline

PROMPTS = (
    'a red circle on the left',
    'two blue squares at the top',
    'a green triangle in the middle',
    'a yellow star at the bottom right',
)
GUIDANCE = 7.5
MAX_LEVEL = 255.0


def pipeline_of(model: Path):
    """The checkpoint as the Executor runs it on CPU: float32, DPM-Solver++."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
        pipeline.scheduler.config, algorithm_type='dpmsolver++'
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def images(pipeline, count: int, steps: int) -> np.ndarray:
    """``count`` images, one call each, as uint8 arrays stacked."""
    made = []
    with torch.inference_mode():
        for index in range(count):
            result = pipeline(
                PROMPTS[index % len(PROMPTS)],
                num_inference_steps=steps,
                guidance_scale=GUIDANCE,
                generator=torch.Generator().manual_seed(index),
            )
            made.append(np.asarray(result.images[0], dtype=np.int16))
    return np.stack(made)


def compare(ours: np.ndarray, reference: np.ndarray) -> Dict[str, str]:
    difference = np.abs(ours - reference).astype(np.float64)
    mse = float((difference**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(MAX_LEVEL**2 / mse)
    return {
        'max': f'{difference.max():.0f}',
        'mean': f'{difference.mean():.2f}',
        'pixels differing': f'{(difference > 0).mean():.2%}',
        'PSNR dB': 'identical' if math.isinf(psnr) else f'{psnr:.1f}',
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('models', nargs='*', type=Path, default=[TINY_SD])
    parser.add_argument('--images', type=int, default=8)
    parser.add_argument('--steps', type=int, default=25)
    args = parser.parse_args()
    rows: List[List[str]] = []
    with tempfile.TemporaryDirectory(prefix='openvino-quality-') as cache:
        for model in args.models:
            reference = images(pipeline_of(model), args.images, args.steps)
            for precision in ('f32', 'bf16'):
                pipeline = pipeline_of(model)
                OpenVINOPipeline(pipeline, precision, torch.get_num_threads(), cache).install()
                figures = compare(images(pipeline, args.images, args.steps), reference)
                rows.append([model.name, f'OpenVINO {precision}', *figures.values()])
    print(machine_summary())
    print(f'{args.images} images per model, {args.steps} DPM-Solver++ steps, guidance {GUIDANCE}\n')
    header = ['model', 'against torch f32', 'max difference', 'mean difference']
    print(markdown_table(header + ['pixels differing', 'PSNR dB'], rows))


if __name__ == '__main__':
    main()
