"""Whisper backends on CPU, on the same trained tiny.en: speed (real-time factor) and accuracy (WER).

    python -m bench.whisper_backends [--repeats 5]

Each configuration is the WhisperExecutor loaded through its config.yml as the Flow loads it, with
its defaults (greedy decoding, the temperature-fallback ladder, faster-whisper's VAD first), on
``device='cpu'``; its backend transcribes every bundled clip (assets/*.wav, text in
assets/clips.json) once to warm up, then ``--repeats`` times, interleaved with the other backends.
Audio decoding is not timed. Each backend takes the Executor's default thread count (one per
available core, for CTranslate2 and torch alike): unlike the Flow benchmarks, this one does not
import bench.measure, which pins one.

- RTF (real-time factor): processing seconds / audio seconds, per run; the median over every clip
  and repeat. Below 1 is faster than real time.
- WER: word errors (substitutions + deletions + insertions) over the reference words of all clips,
  after normalising both texts: lowercased, punctuation removed (apostrophes kept), split on
  whitespace. "light house" against "lighthouse" thus counts two errors.
"""

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Dict, List, Sequence

from jina import Executor

from bench.report import machine_summary, markdown_table
from devtools import offline_models
from speech2image.audio import decode_audio
from speech2image.schema import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / 'models'
ASSETS = ROOT / 'assets'
# (backend, precision, model file, executor arguments); the first is the Executor's default.
CONFIGURATIONS = [
    ('faster-whisper', 'int8', offline_models.FASTER_WHISPER_LINK, {'compute_type': 'int8'}),
    ('faster-whisper', 'float32', offline_models.FASTER_WHISPER_LINK, {'compute_type': 'float32'}),
    ('openai-whisper', 'float32', offline_models.OPENAI_WHISPER_FILE, {}),
]
RTF_TARGET = 0.2
# OpenMP worker threads spin for up to ~200 ms after a parallel region before sleeping.
PAUSE_SECONDS = 0.3


def words(text: str) -> List[str]:
    """Lowercase, drop punctuation (keep apostrophes), split on whitespace."""
    return re.sub(r"[^\w\s']", ' ', text.lower()).split()


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance: the fewest substitutions, deletions and insertions that
    turn ``reference`` into ``hypothesis`` (what WER counts; jiwer needs the compiled rapidfuzz).

    >>> word_errors('a red apple'.split(), 'a red apple'.split())
    0
    >>> word_errors('an oil painting'.split(), 'oil paintings here'.split())
    3
    """
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
            )
        previous = current
    return previous[-1]


def load_clips() -> Dict[str, tuple]:
    """name -> (float32 16 kHz samples, reference text)."""
    texts = json.loads((ASSETS / 'clips.json').read_text())
    return {
        name: (decode_audio((ASSETS / name).read_bytes(), max_seconds=60), text)
        for name, text in texts.items()
    }


def measure(backends: List, clips: Dict[str, tuple], repeats: int) -> List[Dict]:
    """Per backend: the RTF of every run, and each clip's transcript (the last run's).

    Runs are interleaved (each repeat runs every clip on every backend in turn) so that other
    work on a shared machine slows all backends alike rather than whichever ran at that moment;
    a pause before each run lets the previous backend's OpenMP threads stop spin-waiting.
    """
    results = [{'rtfs': [], 'transcripts': {}} for _ in backends]
    for samples, _ in clips.values():
        for backend in backends:
            backend.transcribe(samples, 'transcribe', None)  # warm-up
    for _ in range(repeats):
        for name, (samples, _) in clips.items():
            for backend, result in zip(backends, results):
                time.sleep(PAUSE_SECONDS)
                started = time.perf_counter()
                transcript = backend.transcribe(samples, 'transcribe', None)
                result['rtfs'].append(
                    (time.perf_counter() - started) / (samples.size / SAMPLE_RATE)
                )
                result['transcripts'][name] = transcript.text
    return results


def wer(clips: Dict[str, tuple], transcripts: Dict[str, str]) -> float:
    errors = sum(
        word_errors(words(text), words(transcripts[name])) for name, (_, text) in clips.items()
    )
    return errors / sum(len(words(text)) for _, text in clips.values())


def run(repeats: int) -> str:
    offline_models.build_all(MODELS)
    clips = load_clips()
    executors = [
        Executor.load_config(
            str(ROOT / 'executors/whisper/config.yml'),
            uses_with={'backend': name, 'model': str(MODELS / model), 'device': 'cpu', **arguments},
        )
        for name, _, model, arguments in CONFIGURATIONS
    ]
    results = measure([executor.backend for executor in executors], clips, repeats)
    rows = []
    for (backend_name, precision, model, _), result in zip(CONFIGURATIONS, results):
        result['rtf'] = statistics.median(result['rtfs'])
        result['wer'] = wer(clips, result['transcripts'])
        rows.append(
            [
                backend_name + (' (default)' if not rows else ''),
                precision,
                f'`{model}`',
                f'{result["rtf"]:.3f}',
                f'{min(result["rtfs"]):.3f}',
                f'{max(result["rtfs"]):.3f}',
                f'{100 * result["wer"]:.1f}%',
            ]
        )
    audio_seconds = sum(samples.size for samples, _ in clips.values()) / SAMPLE_RATE
    default, others = results[0], results[1:]
    fastest = all(default['rtf'] < other['rtf'] for other in others)
    lines = [
        machine_summary(),
        '',
        f'{len(clips)} clips, {audio_seconds:.1f} s of audio; {repeats} timed runs per clip after one '
        f'warm-up, interleaved across backends; threads: {executors[0].threads} per backend.',
        '',
        markdown_table(
            ['backend', 'precision', 'model', 'median RTF', 'min RTF', 'max RTF', 'WER'], rows
        ),
        '',
        f'Default backend (faster-whisper int8) is the fastest: {"yes" if fastest else "no"}; '
        f'its median RTF {default["rtf"]:.4f} is {"at most" if default["rtf"] <= RTF_TARGET else "above"} '
        f'the {RTF_TARGET} target.',
        '',
        'Transcripts:',
    ]
    for (backend_name, precision, _, _), result in zip(CONFIGURATIONS, results):
        said = '; '.join(f'{name}: "{text}"' for name, text in result['transcripts'].items())
        lines.append(f'- {backend_name} {precision}: {said}')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per clip and backend')
    print(run(parser.parse_args().repeats))


if __name__ == '__main__':
    main()
