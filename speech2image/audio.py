"""Turn a request document's audio (tensor, encoded bytes or local file) into Whisper's input.

Whisper wants float32 mono samples at 16 kHz. Encoded files are decoded with PyAV, which bundles
FFmpeg's libraries, so no ffmpeg binary is needed. Every path is bounded by ``max_seconds``:
decoding stops as soon as the cap is passed, so a small, highly compressed file cannot expand
into hours of samples.
"""

import io
import wave
from pathlib import Path
from typing import Optional

import av
import numpy as np

from speech2image.defaults import MAX_REQUEST_MB, MEBIBYTE
from speech2image.schema import SAMPLE_RATE, SpeechDoc

# A file whose decodable audio is shorter than this share of its declared duration is truncated.
MIN_DECODED_SHARE = 0.9
# Peak amplitude below which audio is treated as silence (about -60 dBFS).
SILENCE_PEAK = 1e-3
INT16_SCALE = 32768.0
# The largest file a ``uri`` may name unless told otherwise: what a request may carry itself.
MAX_FILE_BYTES = int(MAX_REQUEST_MB * MEBIBYTE)


class AudioError(ValueError):
    """The audio of a document cannot be used; the message says why."""


def load_audio(
    doc: SpeechDoc,
    max_seconds: float,
    uri_root: Optional[Path],
    max_file_bytes: int = MAX_FILE_BYTES,
) -> np.ndarray:
    """Return the document's audio as float32 mono 16 kHz samples, checked for use.

    Takes ``doc.tensor`` first, then ``doc.bytes_``, then ``doc.uri`` (a file of at most
    ``max_file_bytes`` under ``uri_root``). Raises ``AudioError`` for audio that is missing,
    malformed, longer than ``max_seconds`` or silent.
    """
    if doc.tensor is not None:
        samples = samples_from_tensor(np.asarray(doc.tensor), max_seconds)
    elif doc.bytes_ is not None:
        samples = decode_audio(bytes(doc.bytes_), max_seconds)
    elif doc.uri is not None:
        samples = decode_audio(read_local_uri(doc.uri, uri_root, max_file_bytes), max_seconds)
    else:
        raise AudioError('no audio: set one of tensor, bytes_ or uri')
    if samples.size == 0:
        raise AudioError('audio is empty (0 samples)')
    if float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise AudioError('no speech: the audio is silent')
    return samples


def samples_from_tensor(tensor: np.ndarray, max_seconds: float) -> np.ndarray:
    """Check a raw sample tensor and return it as float32.

    Accepts a 1-D array of float32 (float64 is cast: JSON clients cannot send float32) or int16
    (scaled to [-1, 1)). Anything else raises ``AudioError`` naming the dtype or shape.
    """
    if tensor.ndim != 1:
        raise AudioError(
            f'tensor must be 1-D mono samples at {SAMPLE_RATE} Hz, got shape {tuple(tensor.shape)}'
        )
    if tensor.dtype not in (np.int16, np.float32, np.float64):
        raise AudioError(f'tensor dtype must be float32 or int16, got {tensor.dtype}')
    # Length first: an enormous tensor is refused before anything the size of it is allocated.
    check_duration(tensor.size / SAMPLE_RATE, max_seconds, 'the tensor holds')
    if tensor.dtype == np.int16:
        samples = tensor.astype(np.float32) / INT16_SCALE
    else:
        samples = tensor.astype(np.float32, copy=False)
    if not np.all(np.isfinite(samples)):
        raise AudioError('tensor contains NaN or infinite samples')
    return samples


def decode_audio(data: bytes, max_seconds: float) -> np.ndarray:
    """Decode an encoded audio file (wav, flac, mp3, ogg/opus, webm, ...) to float32 mono 16 kHz."""
    if not data:
        raise AudioError('bytes_ is empty')
    try:
        with av.open(io.BytesIO(data), metadata_errors='ignore') as container:
            if not container.streams.audio:
                raise AudioError('the file has no audio stream')
            stream = container.streams.audio[0]
            declared_seconds = wav_header_seconds(data) or declared_duration(container, stream)
            if declared_seconds is not None:
                check_duration(declared_seconds, max_seconds, "the file's header declares")
            samples = decode_stream(container, stream, max_seconds)
    except av.FFmpegError as error:
        raise AudioError(
            f'bytes_ is not a decodable audio file, or is truncated ({error.strerror or error})'
        ) from None
    decoded_seconds = samples.size / SAMPLE_RATE
    if declared_seconds and decoded_seconds < MIN_DECODED_SHARE * declared_seconds:
        raise AudioError(
            f'audio file is truncated: it declares {declared_seconds:.2f} s '
            f'but only {decoded_seconds:.2f} s could be decoded'
        )
    return samples


def decode_stream(container, stream, max_seconds: float) -> np.ndarray:
    """Decode and resample one audio stream, stopping as soon as it passes ``max_seconds``."""
    resampler = av.AudioResampler(format='flt', layout='mono', rate=SAMPLE_RATE)
    max_samples = int(max_seconds * SAMPLE_RATE)
    chunks, total = [], 0
    for frame in container.decode(stream):
        for resampled in resampler.resample(frame):
            chunk = resampled.to_ndarray().reshape(-1)
            chunks.append(chunk)
            total += chunk.size
        if total > max_samples:
            check_duration(total / SAMPLE_RATE, max_seconds, 'decoding passed')
    for resampled in resampler.resample(None):
        chunks.append(resampled.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    check_duration(samples.size / SAMPLE_RATE, max_seconds, 'the file decodes to')
    if not np.all(np.isfinite(samples)):
        raise AudioError('the file decodes to NaN or infinite samples')
    return samples


def declared_duration(container, stream) -> Optional[float]:
    """The duration the file's headers declare, in seconds, or None if they declare none."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def wav_header_seconds(data: bytes) -> Optional[float]:
    """The duration a PCM WAV header declares. FFmpeg estimates a WAV's duration from the file
    size, which hides truncation; the header keeps the length that was written."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            return wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError, ZeroDivisionError):
        return None  # not a PCM WAV file: the container's own duration is used


def check_duration(seconds: float, max_seconds: float, measured: str) -> None:
    """Refuse audio over ``max_seconds``; ``measured`` says where ``seconds`` comes from
    (a header's claim is not decoded audio), e.g. "the file's header declares"."""
    if seconds > max_seconds:
        raise AudioError(
            f'audio is longer than the {max_seconds:g} s limit: {measured} {seconds:.1f} s'
        )


def read_local_uri(uri: str, uri_root: Optional[Path], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a ``uri`` that names a file of at most ``max_bytes`` under ``uri_root``; never
    fetches anything remote. The size is checked before the file is read, and the read stops
    past it (a file that grows meanwhile).

    ``uri_root`` None means the service accepts no ``uri`` at all.
    """
    if uri_root is None:
        raise AudioError('uri is disabled on this service; send the audio as bytes_ or tensor')
    path_text = uri.removeprefix('file://')
    if '://' in path_text:
        raise AudioError(f'uri must be a local file path, not a URL: {uri!r}')
    root = uri_root.resolve()
    try:
        path = (root / path_text).resolve()
        if not path.is_relative_to(root):
            raise AudioError(f'uri {uri!r} is outside the allowed audio directory')
        if not path.is_file():
            raise AudioError(f'uri {uri!r} is not a file in the allowed audio directory')
        if path.stat().st_size > max_bytes:
            raise file_too_large(uri, max_bytes)
        with path.open('rb') as file:
            data = file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise file_too_large(uri, max_bytes)
        return data
    except AudioError:
        raise
    except RuntimeError:  # Path.resolve's "Symlink loop" (an OSError from Python 3.13)
        raise AudioError(f'uri {uri!r} is a symbolic link loop') from None
    except (ValueError, OSError) as error:  # a NUL byte, a name too long, a permission, a loop
        raise AudioError(f'uri {uri!r} cannot be read as a file: {error}') from None


def file_too_large(uri: str, max_bytes: int) -> AudioError:
    return AudioError(
        f'uri {uri!r} names a file larger than the {max_bytes / MEBIBYTE:g} MiB limit'
    )
