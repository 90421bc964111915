"""The GPU benchmark in one go (bench/gpu.sh runs it): full-size models with random weights, on CUDA.

    python -m bench.gpu [--output bench-gpu.md] [--budget-s 420]

- Stable Diffusion 1.5's architecture (UNet, VAE, CLIP text encoder at their real sizes; random
  weights, float16) at 512x512, 25 steps: seconds per image at batch 1, 4 and 8, through the
  StableDiffusionExecutor (its awaited ``generate``: validation, the model thread, PNG encoding)
  against the bare diffusers pipeline call, then the same with the UNet under ``torch.compile``.
- Whisper large-v3's architecture (random weights, float16) through the WhisperExecutor's
  openai-whisper backend: real-time factor on the bundled clips. (A random CTranslate2 model
  for faster-whisper would need large-v3's tokenizer, which no registry here ships.)

Weights do not change compute cost. Every figure is the median of ``--repeats`` calls after a
warm-up; rows that would pass ``--budget-s`` are skipped and marked so, so the script ends in
time. It writes one markdown table to ``--output`` and prints it.
"""

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import List

from bench.report import machine_summary, markdown_table, median_seconds
from bench.steps import SD15_SIZES

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / 'models'
SD15_DIR = MODELS / 'sd15-architecture-random'
WHISPER_LARGE_V3_FILE = MODELS / 'whisper-large-v3-architecture-random.pt'
SIDE, STEPS, BATCHES = 512, 25, (1, 4, 8)
# openai-whisper's ModelDimensions of large-v3 (128 mel bins, 100 languages).
LARGE_V3_DIMS = dict(
    n_mels=128,
    n_audio_ctx=1500,
    n_audio_state=1280,
    n_audio_head=20,
    n_audio_layer=32,
    n_vocab=51866,
    n_text_ctx=448,
    n_text_state=1280,
    n_text_head=20,
    n_text_layer=32,
)
HEADER = [
    'model',
    'path',
    'torch.compile',
    'batch',
    'seconds per image',
    'images/s',
    'Executor / bare',
]


def build_whisper_large_v3(path: Path) -> Path:
    """A random openai-whisper checkpoint of large-v3's dimensions, saved once."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    if not path.exists():
        torch.manual_seed(0)
        model = Whisper(ModelDimensions(**LARGE_V3_DIMS)).half()
        torch.save({'dims': LARGE_V3_DIMS, 'model_state_dict': model.state_dict()}, path)
    return path


def diffusion_rows(repeats: int, deadline: float) -> List[List[str]]:
    """Executor against bare pipeline, at each batch size, without then with torch.compile."""
    import torch
    from docarray import DocList
    from jina import Executor

    from devtools.offline_models import build_random_stable_diffusion
    from speech2image.schema import SpeechDoc

    if not (SD15_DIR / 'model_index.json').exists():
        build_random_stable_diffusion(SD15_DIR, **SD15_SIZES)
    parameters = {'num_inference_steps': STEPS, 'width': SIDE, 'height': SIDE, 'seed': 1}
    rows = []
    for compiled in (False, True):
        # compile_unet compiles before the metrics hooks go on, so they stay outside the graph.
        executor = Executor.load_config(
            str(ROOT / 'executors/stablediffusion/config.yml'),
            uses_with={
                'model': str(SD15_DIR),
                'device': 'cuda',
                'compile_unet': compiled,
                'max_batch_size': max(BATCHES),
            },
        )
        for batch in BATCHES:
            if time.monotonic() > deadline:
                rows.append(
                    [
                        'SD 1.5 (random)',
                        'skipped: over the time budget',
                        str(compiled),
                        str(batch),
                        '',
                        '',
                        '',
                    ]
                )
                continue
            prompts = ['a painting of a red apple'] * batch

            def through_executor():
                docs = DocList[SpeechDoc]([SpeechDoc(text=prompt) for prompt in prompts])
                asyncio.run(executor.generate(docs=docs, parameters=parameters))

            def bare():  # on the model thread too: CUDA graphs belong to the thread that made them
                executor.worker.call(
                    lambda: executor.pipeline(
                        prompt=prompts, num_inference_steps=STEPS, width=SIDE, height=SIDE
                    )
                )

            bare_s = median_seconds(bare, repeats) / batch
            executor_s = median_seconds(through_executor, repeats) / batch
            for path, seconds in (('bare diffusers', bare_s), ('Executor', executor_s)):
                rows.append(
                    [
                        'SD 1.5 (random), 512 px, 25 steps, fp16',
                        path,
                        str(compiled),
                        str(batch),
                        f'{seconds:.3f}',
                        f'{1 / seconds:.2f}',
                        f'{executor_s / bare_s:.2f}x' if path == 'Executor' else '',
                    ]
                )
        executor.worker.close()
        torch.cuda.empty_cache()
    return rows


def whisper_rows(repeats: int) -> List[List[str]]:
    """Real-time factor of the random large-v3 on the bundled clips, through the Executor."""
    from jina import Executor

    from speech2image.audio import decode_audio
    from speech2image.schema import SAMPLE_RATE

    executor = Executor.load_config(
        str(ROOT / 'executors/whisper/config.yml'),
        uses_with={
            'backend': 'openai-whisper',
            'model': str(build_whisper_large_v3(WHISPER_LARGE_V3_FILE)),
            'device': 'cuda',
        },
    )
    rtfs = []
    for clip in sorted((ROOT / 'assets').glob('*.wav')):
        samples = decode_audio(clip.read_bytes(), max_seconds=60)
        seconds = median_seconds(
            lambda: executor.worker.call(
                lambda: executor.backend.transcribe(samples, 'transcribe', 'en')
            ),
            repeats,
        )
        rtfs.append(seconds / (samples.size / SAMPLE_RATE))
    rtf = statistics.median(rtfs)
    return [
        [
            'Whisper large-v3 (random), fp16, openai-whisper',
            'Executor backend',
            'False',
            '1',
            f'RTF {rtf:.3f}',
            '',
            '',
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', type=Path, default=ROOT / 'bench-gpu.md')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument(
        '--budget-s',
        type=float,
        default=420,
        help='seconds after which remaining diffusion rows are skipped',
    )
    args = parser.parse_args()
    started = time.monotonic()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit('bench.gpu needs a CUDA device (torch.cuda.is_available() is False)')
    rows = whisper_rows(args.repeats)
    rows += diffusion_rows(args.repeats, started + args.budget_s)
    text = '\n'.join(
        [
            machine_summary(),
            f'GPU: {torch.cuda.get_device_name()}, torch CUDA {torch.version.cuda}; '
            f'{time.monotonic() - started:.0f} s in all.',
            '',
            markdown_table(HEADER, rows),
        ]
    )
    args.output.write_text(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
