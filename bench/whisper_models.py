"""Which offline Whisper: tiny.en against the multilingual base, on CPU, speed (RTF) and accuracy.

    python -m bench.whisper_models [--repeats 3]

Both are faster-whisper int8, the Executor's defaults otherwise, loaded through its config.yml.
English: every clip of assets/clips.json, transcribed, timed and scored as bench.whisper_backends
does (runs interleaved across models, RTF median, WER over all reference words). Other
languages (base only; tiny.en is English-only): each clip of assets/clips_multilingual.json,
transcribed in its own language, scored against its text, and the language base detected.
"""

import argparse
import json
import statistics
from typing import List

from jina import Executor

from bench.report import machine_summary, markdown_table
from bench.whisper_backends import ASSETS, MODELS, ROOT, load_clips, measure, wer
from devtools import offline_models
from speech2image.audio import decode_audio

# (name, model directory); the first is what the test suite serves.
MODELS_COMPARED = [
    ('tiny.en', offline_models.FASTER_WHISPER_LINK),
    ('base', offline_models.WHISPER_BASE_DIR),
]


def load_backend(model: str):
    return Executor.load_config(
        str(ROOT / 'executors/whisper/config.yml'),
        uses_with={'model': str(MODELS / model), 'device': 'cpu', 'compute_type': 'int8'},
    ).backend


def multilingual(backend) -> List[List[str]]:
    """Rows: clip, language, language detected (probability), WER against its text, transcript."""
    rows = []
    for name, clip in json.loads((ASSETS / 'clips_multilingual.json').read_text()).items():
        samples = decode_audio((ASSETS / name).read_bytes(), max_seconds=60)
        transcript = backend.transcribe(samples, 'transcribe', None)
        score = wer({name: (samples, clip['text'])}, {name: transcript.text})
        rows.append(
            [
                f'`{name}`',
                clip['language'],
                f'{transcript.language} ({transcript.language_probability:.2f})',
                f'{100 * score:.0f}%',
                f'"{transcript.text}"',
            ]
        )
    return rows


def run(repeats: int) -> str:
    offline_models.build_all(MODELS)
    clips = load_clips()
    backends = [load_backend(model) for _, model in MODELS_COMPARED]
    results = measure(backends, clips, repeats)
    rows = []
    for (name, model), result in zip(MODELS_COMPARED, results):
        result['rtf'] = statistics.median(result['rtfs'])
        rows.append(
            [
                name,
                f'`{model}`',
                f'{result["rtf"]:.3f}',
                f'{min(result["rtfs"]):.3f}',
                f'{max(result["rtfs"]):.3f}',
                f'{100 * wer(clips, result["transcripts"]):.1f}%',
            ]
        )
    tiny, base = results
    lines = [
        machine_summary(),
        '',
        f'English: {len(clips)} clips, {repeats} timed runs each after one warm-up, interleaved.',
        '',
        markdown_table(['model', 'directory', 'median RTF', 'min RTF', 'max RTF', 'WER'], rows),
        '',
        f'base / tiny.en median RTF: {base["rtf"] / tiny["rtf"]:.2f}x (same run).',
        '',
        'Transcripts:',
    ]
    for (name, _), result in zip(MODELS_COMPARED, results):
        lines.append(
            f'- {name}: '
            + '; '.join(f'{clip}: "{text}"' for clip, text in result['transcripts'].items())
        )
    lines += [
        '',
        'Other languages, base, task transcribe:',
        '',
        markdown_table(
            ['clip', 'language', 'detected', 'WER', 'transcript'], multilingual(backends[1])
        ),
    ]
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per clip and model')
    print(run(parser.parse_args().repeats))


if __name__ == '__main__':
    main()
