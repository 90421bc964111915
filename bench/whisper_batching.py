"""Whisper batching across requests on CPU: N clips in one batched decode (faster-whisper's
BatchedInferencePipeline, as the WhisperExecutor's model thread runs a queue of clips) against the
same N clips one at a time, on the trained tiny.en at default threads.

    python -m bench.whisper_batching [--batch-sizes 2 4 8] [--repeats 3]

The clips are the bundled English ones (assets/clips.json) in turn. Both paths run the
Executor's own backend (loaded through its config.yml, as the Flow loads it) on this thread;
audio decoding is not timed. Each figure is the median over ``--repeats`` after a warm-up of
each path; the transcripts of both paths are compared, as a batch must hear each clip as alone.
"""

import argparse
from typing import List

from jina import Executor

from bench.report import machine_summary, markdown_table, median_seconds
from bench.whisper_backends import ASSETS, MODELS, ROOT, load_clips
from devtools import offline_models

TASK, LANGUAGE = 'transcribe', 'en'


def run(batch_sizes: List[int], repeats: int) -> str:
    offline_models.build_all(MODELS)
    backend = Executor.load_config(
        str(ROOT / 'executors/whisper/config.yml'),
        uses_with={'model': str(MODELS / offline_models.FASTER_WHISPER_LINK), 'device': 'cpu'},
    ).backend
    samples = [clip for clip, _ in load_clips().values()]
    rows = []
    for size in batch_sizes:
        clips = [samples[i % len(samples)] for i in range(size)]
        alone = [backend.transcribe(clip, TASK, LANGUAGE).text for clip in clips]
        batched = [t.text for t in backend.transcribe_batch(clips, TASK, LANGUAGE)]
        one_at_a_time = median_seconds(
            lambda: [backend.transcribe(clip, TASK, LANGUAGE) for clip in clips], repeats
        )
        in_one_batch = median_seconds(
            lambda: backend.transcribe_batch(clips, TASK, LANGUAGE), repeats
        )
        rows.append(
            [
                str(size),
                f'{one_at_a_time:.2f}',
                f'{in_one_batch:.2f}',
                f'{one_at_a_time / in_one_batch:.2f}x',
                f'{size / in_one_batch:.1f}',
                'yes' if batched == alone else f'no: {batched} against {alone}',
            ]
        )
    table = markdown_table(
        [
            'clips',
            'one at a time (s)',
            'one batched decode (s)',
            'speed-up',
            'clips/s batched',
            'same transcripts',
        ],
        rows,
    )
    return (
        f'{machine_summary()}\nClips from {ASSETS.name}/clips.json; median of {repeats}.\n\n{table}'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch-sizes', nargs='+', type=int, default=[2, 4, 8])
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    print(run(args.batch_sizes, args.repeats))


if __name__ == '__main__':
    main()
