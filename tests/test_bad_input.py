"""Bad input through the whole Flow: a clear error naming the document, and the Flow keeps serving."""

import numpy as np
import pytest

from devtools.audio_files import apple_samples, wav_bytes
from devtools.offline_flow import ASSETS
from speech2image.client import ServiceError, send
from speech2image.schema import SAMPLE_RATE, SpeechDoc

APPLE = (ASSETS / 'apple.wav').read_bytes()

BAD_REQUESTS = {
    'silent audio': (
        '/',
        [SpeechDoc(bytes_=wav_bytes(np.zeros(2 * SAMPLE_RATE, dtype=np.float32)))],
        {},
        r'document 0 \(id \w+\): no speech: the audio is silent',
    ),
    'noise, no speech': (
        '/',
        [
            SpeechDoc(
                tensor=np.random.default_rng(1).normal(0, 0.1, 2 * SAMPLE_RATE).astype(np.float32)
            )
        ],
        {},
        'no speech detected',
    ),
    'bytes that are not audio': (
        '/',
        [SpeechDoc(bytes_=b'\x00\x01garbage' * 50)],
        {},
        'bytes_ is not a decodable audio file',
    ),
    'truncated file': ('/', [SpeechDoc(bytes_=APPLE[: len(APPLE) // 3])], {}, 'truncated'),
    'audio over the cap': (
        '/',
        [SpeechDoc(tensor=np.tile(apple_samples(), 21))],
        {},
        r'longer than the 60 s limit',
    ),
    'wrong tensor dtype': (
        '/',
        [SpeechDoc(tensor=np.zeros(SAMPLE_RATE, dtype=np.int32))],
        {},
        'tensor dtype must be float32 or int16, got int32',
    ),
    'wrong tensor shape': (
        '/',
        [SpeechDoc(tensor=np.zeros((2, SAMPLE_RATE), dtype=np.float32))],
        {},
        'got shape',
    ),
    'missing audio and text': (
        '/',
        [SpeechDoc()],
        {},
        'no prompt: text is empty and there is no audio',
    ),
    'empty prompt on /generate': ('/generate', [SpeechDoc(text='')], {}, 'no prompt'),
    'out-of-range parameter': (
        '/generate',
        [SpeechDoc(text='a cat')],
        {'num_images': 50},
        "'num_images' must be between 1 and 4",
    ),
    'second document bad': (
        '/',
        [SpeechDoc(bytes_=APPLE), SpeechDoc(bytes_=b'nope')],
        {},
        r'document 1 \(id \w+\)',
    ),
}


@pytest.mark.parametrize('case', sorted(BAD_REQUESTS))
def test_bad_input_gets_a_clear_error_and_the_flow_keeps_serving(running_flow, case):
    endpoint, docs, parameters, message = BAD_REQUESTS[case]
    with pytest.raises(ServiceError, match=message):
        send(running_flow.grpc, endpoint, docs, parameters)
    [doc] = send(running_flow.grpc, '/generate', [SpeechDoc(text='still serving')], {})
    assert len(doc.matches) == 1


def test_errors_reach_http_clients_too(running_flow):
    with pytest.raises(ServiceError, match="^parameter 'seed' must be between 0 and 2147483647"):
        send(running_flow.http, '/generate', [SpeechDoc(text='a cat')], {'seed': -5})
