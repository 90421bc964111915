"""The whole Flow over gRPC, HTTP and WebSocket, on the offline models."""

import base64
import io

import pytest
import requests
from docarray import DocList
from jina import Client
from PIL import Image

from devtools.offline_flow import ASSETS
from speech2image.client import ServiceError, send
from speech2image.schema import SpeechDoc

APPLE_TRANSCRIPT = 'painting of a red apple on a wooden table'


def apple_doc() -> SpeechDoc:
    return SpeechDoc(bytes_=(ASSETS / 'apple.wav').read_bytes())


def assert_png(image, width: int, height: int) -> None:
    decoded = Image.open(io.BytesIO(image.bytes_))
    assert decoded.format == 'PNG'
    assert decoded.size == (width, height) == (image.width, image.height)


@pytest.mark.parametrize('protocol', ['grpc', 'http', 'websocket'])
def test_speech_to_images_round_trip(running_flow, protocol):
    address = getattr(running_flow, protocol)
    [doc] = send(address, '/', [apple_doc()], {'num_images': 2, 'seed': 7})
    assert APPLE_TRANSCRIPT in doc.text.lower()
    assert doc.tags['language'] == 'en'
    assert doc.tags['segments'][0]['text']
    assert [image.tags['seed'] for image in doc.matches] == [7, 8]
    for image in doc.matches:
        assert_png(image, 64, 64)
        assert image.tags['prompt'] == doc.text


def test_transcribe_stops_after_whisper(running_flow):
    [doc] = send(running_flow.grpc, '/transcribe', [apple_doc()], {})
    assert APPLE_TRANSCRIPT in doc.text.lower()
    assert len(doc.matches) == 0


def test_generate_takes_text(running_flow):
    docs = [SpeechDoc(text='a lighthouse'), SpeechDoc(text='a red apple')]
    answered = send(running_flow.grpc, '/generate', docs, {'num_images': 1})
    assert [doc.text for doc in answered] == ['a lighthouse', 'a red apple']
    assert all(len(doc.matches) == 1 for doc in answered)


def test_uri_reads_from_the_audio_dir_only(running_flow):
    [doc] = send(running_flow.grpc, '/transcribe', [SpeechDoc(uri='apple.wav')], {})
    assert APPLE_TRANSCRIPT in doc.text.lower()
    with pytest.raises(ServiceError, match='outside the allowed audio directory'):
        send(running_flow.grpc, '/transcribe', [SpeechDoc(uri='../flow.py')], {})
    with pytest.raises(ServiceError, match='not a URL'):
        send(running_flow.grpc, '/transcribe', [SpeechDoc(uri='https://example.com/a.wav')], {})


def test_raw_http_post_as_curl_sends_it(running_flow):
    """The HTTP gateway with plain JSON: audio and images travel as base64 text."""
    audio = base64.b64encode((ASSETS / 'apple.wav').read_bytes()).decode()
    response = requests.post(
        f'{running_flow.http}/default',
        json={'data': [{'bytes_': audio}], 'parameters': {'seed': 3}},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    [doc] = response.json()['data']
    assert APPLE_TRANSCRIPT in doc['text'].lower()
    png = base64.b64decode(doc['matches'][0]['bytes_'])
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_raw_jina_client_post(running_flow):
    """The plain jina Client call shown in the README."""
    client = Client(host=running_flow.grpc)
    docs = client.post(
        '/',
        inputs=DocList[SpeechDoc]([apple_doc()]),
        parameters={'seed': 1},
        return_type=DocList[SpeechDoc],
    )
    assert APPLE_TRANSCRIPT in docs[0].text.lower()
    assert len(docs[0].matches) == 1
