"""Fuzzing audio decoding (hypothesis): whatever comes in, the only exception out is AudioError,
with a message, in bounded time and memory."""

import io
import subprocess
import sys
import tracemalloc

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from devtools.audio_files import FORMATS, apple_samples, encode
from devtools.offline_flow import ROOT
from speech2image.audio import AudioError, decode_audio, load_audio, samples_from_tensor
from speech2image.schema import SAMPLE_RATE, SpeechDoc

MAX_SECONDS = 5.0
# Decoding is capped at MAX_SECONDS of float32 samples; allow the codec's frames and copies on top.
PEAK_MEMORY_LIMIT = 64 * 2**20
FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
ENCODED = {name: encode(apple_samples()[: 2 * SAMPLE_RATE], name) for name in FORMATS}


def refused_clearly(call, *args) -> None:
    """``call(*args)`` either returns float32 mono samples or raises AudioError with a message."""
    try:
        samples = call(*args)
    except AudioError as error:
        assert str(error)
        return
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.size <= MAX_SECONDS * SAMPLE_RATE
    assert np.all(np.isfinite(samples))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    refused_clearly(decode_audio, data, MAX_SECONDS)


@FUZZ
@given(st.sampled_from(sorted(ENCODED)), st.data())
def test_truncated_and_corrupted_containers(container_format, data):
    """Real files cut short, with bytes flipped or spliced: headers and packets gone wrong."""
    original = bytearray(ENCODED[container_format])
    cut = data.draw(st.integers(0, len(original)), label='cut')
    damaged = original[:cut]
    for _ in range(data.draw(st.integers(0, 8), label='flips')):
        if damaged:
            position = data.draw(st.integers(0, len(damaged) - 1))
            damaged[position] = data.draw(st.integers(0, 255))
    damaged += data.draw(st.binary(max_size=64), label='tail')
    refused_clearly(decode_audio, bytes(damaged), MAX_SECONDS)


@FUZZ
@given(
    hnp.arrays(
        dtype=st.sampled_from(
            [np.float32, np.float64, np.int16, np.int32, np.uint8, np.complex64, bool]
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=64),
        elements=None,
    )
)
def test_arbitrary_tensors(tensor):
    """Any dtype, any shape, NaN, inf, subnormals: checked, never passed on."""
    refused_clearly(samples_from_tensor, tensor, MAX_SECONDS)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_uri_reads_nothing_outside_the_audio_dir(tmp_path_factory, uri):
    root = tmp_path_factory.getbasetemp() / 'audio'
    root.mkdir(exist_ok=True)
    try:
        load_audio(SpeechDoc(uri=uri), MAX_SECONDS, root)
    except AudioError as error:
        assert str(error)
    else:
        pytest.fail(f'{uri!r} read something from an empty audio directory')


def silent_flac(seconds: int, rate: int = 8000) -> bytes:
    """``seconds`` of silence as FLAC, encoded a minute at a time: hours fit in about a MB."""
    buffer = io.BytesIO()
    minute = np.zeros((1, 60 * rate), dtype=np.int16)
    with av.open(buffer, mode='w', format='flac') as container:
        stream = container.add_stream('flac', rate=rate, layout='mono')
        for index in range(seconds // 60):
            frame = av.AudioFrame.from_ndarray(minute, format='s16', layout='mono')
            frame.sample_rate, frame.pts = rate, index * minute.shape[1]
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def without_declared_length(flac: bytes) -> bytes:
    """The FLAC file with its STREAMINFO's total-sample count zeroed ("unknown", as a stream
    being written has): nothing in it says how long it is, so only decoding can tell."""
    data = bytearray(flac)
    assert data[:4] == b'fLaC'
    # STREAMINFO starts at byte 8; its 36-bit sample count is the low 4 bits of its byte 13
    # and its bytes 14-17.
    data[8 + 13] &= 0xF0
    data[8 + 14 : 8 + 18] = bytes(4)
    return bytes(data)


# Peak RSS (the kernel's count: FFmpeg's allocations included) of a fresh Python that decodes
# the file, against one that only imports the same modules.
PEAK_RSS_SCRIPT = """
import resource, sys
from speech2image.audio import AudioError, decode_audio
data = open(sys.argv[1], 'rb').read()
if sys.argv[2] == 'decode':
    try:
        decode_audio(data, float(sys.argv[3]))
    except AudioError as error:
        print(error, file=sys.stderr)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(path, mode: str) -> tuple:
    result = subprocess.run(
        [sys.executable, '-c', PEAK_RSS_SCRIPT, str(path), mode, str(MAX_SECONDS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(result.stdout.split()[-1]), result.stderr


def test_compression_bomb_of_two_hours_stops_at_the_streaming_cap_in_bounded_memory(tmp_path):
    bomb = without_declared_length(silent_flac(2 * 3600))
    assert len(bomb) < 2 * 2**20  # 2 h of 16 kHz float32 samples would be 460 MB
    with av.open(io.BytesIO(bomb)) as container:  # the cap, not a header, must stop it
        assert container.streams.audio[0].duration is None and container.duration is None
    path = tmp_path / 'bomb.flac'
    path.write_bytes(bomb)
    baseline, _ = peak_rss(path, 'read')
    peak, message = peak_rss(path, 'decode')
    assert f'longer than the {MAX_SECONDS:g} s limit: decoding passed' in message, message
    grown = peak - baseline
    assert grown < PEAK_MEMORY_LIMIT, f'decoding grew the peak RSS by {grown / 2**20:.0f} MiB'


def test_enormous_tensor_is_refused_without_copying_it():
    huge = np.zeros(3600 * SAMPLE_RATE, dtype=np.float32)  # an hour: 230 MB
    tracemalloc.start()
    try:
        with pytest.raises(AudioError, match='longer than'):
            samples_from_tensor(huge, MAX_SECONDS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < huge.nbytes / 4
