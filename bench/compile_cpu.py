"""torch.compile on CPU: the StableDiffusionExecutor with ``compile_unet`` against without, on the
original example's diffusion work (tiny model, 64x64, 2 images, 50 steps, guidance 7.5).

    OMP_NUM_THREADS=1 python -m bench.compile_cpu [--repeats 2]

Each line: load time (the compile happens in the warm-up at load) and the median seconds of
``--repeats`` awaited ``generate`` calls after one more warm-up call. Compiled first, so the
eager figures are not taken on a machine still busy compiling. Needs a C++ compiler (g++).
"""

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMETERS = {'num_images': 2, 'num_inference_steps': 50, 'guidance_scale': 7.5, 'seed': 1}


def median_request_seconds(executor, repeats: int) -> float:
    from docarray import DocList

    from speech2image.schema import SpeechDoc

    timings = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        asyncio.run(
            executor.generate(
                docs=DocList[SpeechDoc]([SpeechDoc(text='a red apple')]), parameters=PARAMETERS
            )
        )
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=2)
    args = parser.parse_args()
    from jina import Executor

    from bench.report import machine_summary
    from devtools import offline_models

    print(machine_summary(), f'load average {os.getloadavg()}', flush=True)
    for compiled in (True, False):
        started = time.perf_counter()
        executor = Executor.load_config(
            str(ROOT / 'executors/stablediffusion/config.yml'),
            uses_with={
                'model': str(ROOT / 'models' / offline_models.TINY_SD_DIR),
                'scheduler': 'checkpoint',
                'compile_unet': compiled,
                'backend': 'torch',  # torch.compile is a torch backend's option
            },
        )
        load = time.perf_counter() - started
        print(
            f'{"compiled" if compiled else "eager"}: load and warm-up {load:.1f} s, median '
            f'request {median_request_seconds(executor, args.repeats):.3f} s',
            flush=True,
        )


if __name__ == '__main__':
    main()
