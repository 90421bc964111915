"""Seconds per UNet step at a real size: Stable Diffusion 1.5's UNet architecture with random
weights (860 M parameters), 512x512 (64x64 latents), batch 2 (one image with classifier-free
guidance), in torch float32 against the project's OpenVINO backend in f32 and bf16, alternated
in one process at default threads.

    python -m bench.openvino_steps [--rounds 3] [--tiny]     # --tiny: the offline tiny model

The OpenVINO models are converted and compiled by speech2image/openvino_backend.py, as the
Executor does (into a temporary cache); the report gives the conversion and compile times, each
step's seconds per round and their median, the largest difference from torch's output, and the
load average before every round.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from bench.report import machine_summary, markdown_table
from speech2image.openvino_backend import UNetStep, compiled, converted, run

# Stable Diffusion 1.5's UNet (its unet/config.json), built with random weights: no weights of a
# real checkpoint are reachable here, and the time per step depends on the architecture only.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
    up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
TEXT_LENGTH = 77
SEED = 0
PRECISIONS = ('f32', 'bf16')


def build_unet(tiny: bool):
    """The UNet to measure, and its input batch: SD-1.5's at 512 px batch 2, or the offline
    tiny model's at its native size, batch 4 (2 images with guidance)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    if tiny:
        from devtools.offline_flow import TINY_SD

        unet, batch = UNet2DConditionModel.from_pretrained(TINY_SD, subfolder='unet'), 4
    else:
        unet, batch = UNet2DConditionModel(**SD15_UNET), 2
    step = UNetStep(unet.eval())
    inputs = step.example_input(TEXT_LENGTH)
    return step, tuple(torch.cat([tensor] * (batch // 2)) for tensor in inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--tiny', action='store_true', help='the offline tiny model instead')
    args = parser.parse_args()
    threads = torch.get_num_threads()
    step, inputs = build_unet(args.tiny)
    with torch.no_grad():
        reference = step(*inputs).numpy()
    cache = Path(tempfile.mkdtemp(prefix='openvino-steps-'))
    path, convert_s = converted('unet', step, inputs, dict(step.unet.config), cache)
    print(f'converted in {convert_s:.1f} s', flush=True)
    runs = {'torch f32': lambda: step(*inputs)}
    notes: Dict[str, str] = {'torch f32': ''}
    # The backend's models take any batch and size; the static row fixes this input's shapes,
    # to see whether static shapes would pay.
    for precision, static in [(precision, False) for precision in PRECISIONS] + [('f32', True)]:
        started = time.perf_counter()
        shapes = [tensor.shape for tensor in inputs] if static else None
        network = compiled(path, precision, threads, cache, shapes)
        compile_s = time.perf_counter() - started
        request = network.create_infer_request()
        [output] = run(request, *inputs)
        difference = float(np.abs(output.numpy() - reference).max())
        name = f'OpenVINO {precision}' + (', static shapes' if static else '')
        runs[name] = lambda request=request: run(request, *inputs)
        notes[name] = f'compiled in {compile_s:.1f} s; max difference from torch {difference:.2g}'
        print(name, notes[name], flush=True)
    times: Dict[str, List[float]] = {name: [] for name in runs}
    loads = []
    repeats = 10 if args.tiny else 1
    with torch.no_grad():
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name, action in runs.items():
                action()  # a warm call per round
                started = time.perf_counter()
                for _ in range(repeats):
                    action()
                times[name].append((time.perf_counter() - started) / repeats)
                print(name, f'{times[name][-1]:.3f} s', flush=True)
    torch_median = statistics.median(times['torch f32'])
    rows = [
        [
            name,
            ', '.join(f'{value:.3f}' for value in values),
            f'{statistics.median(values):.3f}',
            f'{torch_median / statistics.median(values):.2f}x',
            notes[name],
        ]
        for name, values in times.items()
    ]
    print(machine_summary())
    print(
        f'UNet: {"tiny offline" if args.tiny else "SD-1.5 architecture, random weights"}, input '
        f'{tuple(inputs[0].shape)}; {threads} threads; conversion {convert_s:.1f} s; load '
        f'average (1 min) before each round: {", ".join(f"{load:.1f}" for load in loads)}\n'
    )
    print(
        markdown_table(
            ['runtime', 's per step, each round', 'median', 'speed-up over torch f32', 'notes'],
            rows,
        )
    )


if __name__ == '__main__':
    main()
