"""Audio test material made on the fly: encoded files in several containers, silence, noise."""

import io
import wave

import av
import numpy as np

from devtools.offline_flow import ASSETS
from speech2image.audio import decode_audio
from speech2image.schema import SAMPLE_RATE

# container format -> (codec, sample rate the codec accepts)
FORMATS = {
    'wav': ('pcm_s16le', 16_000),
    'flac': ('flac', 16_000),
    'mp3': ('libmp3lame', 16_000),
    'ogg': ('libopus', 48_000),
    'webm': ('libopus', 48_000),
}


def apple_samples() -> np.ndarray:
    """The bundled spoken prompt as float32 16 kHz samples."""
    return decode_audio((ASSETS / 'apple.wav').read_bytes(), max_seconds=60)


def encode(samples: np.ndarray, container_format: str) -> bytes:
    """Encode float32 16 kHz mono samples into ``container_format`` with PyAV."""
    codec, rate = FORMATS[container_format]
    if rate != SAMPLE_RATE:
        samples = np.interp(
            np.arange(0, samples.size, SAMPLE_RATE / rate), np.arange(samples.size), samples
        ).astype(np.float32)
    buffer = io.BytesIO()
    with av.open(buffer, mode='w', format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout='mono')
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format='s16', layout='mono')
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout='mono', rate=rate)
        for resampled in resampler.resample(frame):
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def wav_bytes(samples: np.ndarray) -> bytes:
    """A 16-bit PCM WAV file of float32 16 kHz samples."""
    buffer = io.BytesIO()
    with wave.open(buffer, 'wb') as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return buffer.getvalue()
