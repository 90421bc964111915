"""speech2image.audio: every accepted form decodes to the same speech; bad audio is refused clearly."""

import numpy as np
import pytest

from devtools.audio_files import FORMATS, apple_samples, encode, wav_bytes
from devtools.offline_flow import ASSETS
from speech2image.audio import (
    AudioError,
    decode_audio,
    load_audio,
    read_local_uri,
    samples_from_tensor,
)
from speech2image.schema import SAMPLE_RATE, SpeechDoc

MAX_SECONDS = 30.0


@pytest.mark.parametrize('container_format', sorted(FORMATS))
def test_encoded_formats_decode_to_16khz_mono(container_format):
    original = apple_samples()
    decoded = decode_audio(encode(original, container_format), MAX_SECONDS)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # Codecs pad or trim a few milliseconds; the duration must survive.
    assert abs(decoded.size - original.size) / SAMPLE_RATE < 0.1
    # Lossy codecs change samples but keep the loudness.
    assert np.sqrt(np.mean(decoded**2)) == pytest.approx(np.sqrt(np.mean(original**2)), rel=0.2)


def test_wav_decodes_exactly():
    original = apple_samples()
    np.testing.assert_allclose(decode_audio(wav_bytes(original), MAX_SECONDS), original, atol=1e-4)


def test_tensor_forms():
    original = apple_samples()
    assert samples_from_tensor(original, MAX_SECONDS) is not None
    as_int16 = (original * 32767).astype(np.int16)
    np.testing.assert_allclose(samples_from_tensor(as_int16, MAX_SECONDS), original, atol=1e-4)
    as_float64 = samples_from_tensor(original.astype(np.float64), MAX_SECONDS)
    assert as_float64.dtype == np.float32


@pytest.mark.parametrize(
    'tensor, message',
    [
        (np.zeros((2, 16000), dtype=np.float32), r'1-D mono samples .* got shape \(2, 16000\)'),
        (np.zeros(16000, dtype=np.int64), 'dtype must be float32 or int16, got int64'),
        (np.array([0.1, np.nan, 0.2], dtype=np.float32), 'NaN or infinite'),
        (np.array([0.1, np.inf], dtype=np.float32), 'NaN or infinite'),
        (
            np.zeros(31 * SAMPLE_RATE, dtype=np.float32),
            'longer than the 30 s limit: the tensor holds 31.0 s',
        ),
    ],
)
def test_bad_tensors_are_refused(tensor, message):
    with pytest.raises(AudioError, match=message):
        samples_from_tensor(tensor, MAX_SECONDS)


def test_garbage_bytes_are_not_audio():
    with pytest.raises(AudioError, match='not a decodable audio file'):
        decode_audio(b'this is not audio at all' * 100, MAX_SECONDS)


def test_empty_bytes():
    with pytest.raises(AudioError, match='bytes_ is empty'):
        decode_audio(b'', MAX_SECONDS)


def test_truncated_file_is_refused():
    whole = (ASSETS / 'apple.wav').read_bytes()
    with pytest.raises(AudioError, match='truncated'):
        decode_audio(whole[: len(whole) // 3], MAX_SECONDS)


def test_long_file_is_refused_before_decoding_it_all():
    long_audio = wav_bytes(np.tile(apple_samples(), 12))  # about 36 s
    with pytest.raises(AudioError, match='longer than the 30 s limit'):
        decode_audio(long_audio, MAX_SECONDS)


def test_highly_compressed_long_audio_is_refused():
    """Ten minutes of silence compresses to a few kB of FLAC; decoding stops at the cap."""
    bomb = encode(np.zeros(600 * SAMPLE_RATE, dtype=np.float32), 'flac')
    assert len(bomb) < 200_000
    with pytest.raises(AudioError, match='longer than the 30 s limit'):
        decode_audio(bomb, MAX_SECONDS)


def test_silence_is_no_speech():
    doc = SpeechDoc(tensor=np.zeros(SAMPLE_RATE, dtype=np.float32))
    with pytest.raises(AudioError, match='no speech: the audio is silent'):
        load_audio(doc, MAX_SECONDS, None)


def test_document_without_audio():
    with pytest.raises(AudioError, match='no audio'):
        load_audio(SpeechDoc(text='hi'), MAX_SECONDS, None)


def test_uri_rules(tmp_path):
    (tmp_path / 'a.wav').write_bytes(b'x')
    assert read_local_uri('a.wav', tmp_path) == b'x'
    assert read_local_uri(f'file://{tmp_path}/a.wav', tmp_path) == b'x'
    with pytest.raises(AudioError, match='uri is disabled'):
        read_local_uri('a.wav', None)
    with pytest.raises(AudioError, match='outside the allowed audio directory'):
        read_local_uri('../etc/passwd', tmp_path)
    with pytest.raises(AudioError, match='outside the allowed audio directory'):
        read_local_uri('/etc/passwd', tmp_path)
    with pytest.raises(AudioError, match='not a URL'):
        read_local_uri('http://127.0.0.1/a.wav', tmp_path)
    with pytest.raises(AudioError, match='not a file'):
        read_local_uri('missing.wav', tmp_path)


def test_a_uri_file_over_the_size_cap_is_refused_before_it_is_read(tmp_path):
    """A 400 MiB (sparse) file under a 32 MiB cap: refused by its size, not read whole first."""
    with open(tmp_path / 'huge.wav', 'wb') as file:
        file.truncate(400 * 2**20)
    with pytest.raises(
        AudioError, match="uri 'huge.wav' names a file larger than the 32 MiB limit"
    ):
        read_local_uri('huge.wav', tmp_path, 32 * 2**20)
    (tmp_path / 'small.wav').write_bytes(b'x' * 2000)
    with pytest.raises(AudioError, match='larger than the'):
        load_audio(SpeechDoc(uri='small.wav'), MAX_SECONDS, tmp_path, 1000)


def test_a_uri_symlink_loop_is_refused_by_name(tmp_path):
    (tmp_path / 'loop.wav').symlink_to(tmp_path / 'loop.wav')
    (tmp_path / 'a').symlink_to(tmp_path / 'b')
    (tmp_path / 'b').symlink_to(tmp_path / 'a')
    for uri in ('loop.wav', 'a'):
        with pytest.raises(AudioError, match=f"uri '{uri}' is a symbolic link loop|cannot be read"):
            read_local_uri(uri, tmp_path)
