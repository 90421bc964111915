"""The web page: its service (speech2image.web) and the page itself in a real browser.

The browser is Debian's Chromium, headless, driven by Playwright, with a fake microphone that
plays assets/apple.wav; the page talks to the real Flow on the offline models. Screenshots go to
tests/artifacts/ (ignored by git).
"""

import base64
import io
import socket
import subprocess
import sys
import threading
import time
import wave
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import requests
from playwright.sync_api import sync_playwright

from devtools.offline_flow import ASSETS, ROOT, free_ports
from speech2image.gateway_errors import GatewayError, read_gateway_error
from speech2image.web import parse_args
from tests.support import poll_until

CHROMIUM = Path('/usr/bin/chromium')
ARTIFACTS = ROOT / 'tests' / 'artifacts'
CHROMIUM_FLAGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]
FAKE_MICROPHONE_RATE = 48_000
# Silence around the spoken prompt, so the recording holds all of it.
LEAD_SILENCE_S, TAIL_SILENCE_S = 0.3, 2.0
SPOKEN_S = 3.03  # assets/apple.wav
SERVICE_START_TIMEOUT_S = 20
SERVICE_STOP_TIMEOUT_S = 10
ANSWER_TIMEOUT_S = 60
POLL_S = 0.05
# The first request's own timeout bounds how long it can be in flight.
FIRST_IN_FLIGHT_S = 30
DESKTOP = {'width': 1024, 'height': 768}
PHONE = {'width': 390, 'height': 844}


@contextmanager
def serve_web(*flags: str) -> Iterator[str]:
    """Run ``python -m speech2image.web`` on a free 127.0.0.1 port; yield its base URL."""
    [port] = free_ports(1)
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'speech2image.web',
            '--host',
            '127.0.0.1',
            '--port',
            str(port),
            *flags,
        ],
        cwd=ROOT,
    )
    url = f'http://127.0.0.1:{port}'
    try:

        def healthy() -> bool:
            assert process.poll() is None, 'the web service exited at start'
            return requests.get(f'{url}/healthz', timeout=1).ok

        poll_until(
            healthy,
            SERVICE_START_TIMEOUT_S,
            'the web service did not start',
            interval=0.1,
            ignore=(requests.ConnectionError,),
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=SERVICE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # still finishing requests: not what is tested here
            process.kill()
            process.wait()


@pytest.fixture(scope='module')
def web_url(running_flow) -> Iterator[str]:
    """The page's service, forwarding to the shared Flow."""
    with serve_web('--gateway', running_flow.http) as url:
        yield url


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """float samples in [-1, 1] as a 16-bit mono WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, 'wb') as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype('<i2').tobytes())
    return buffer.getvalue()


def fake_microphone_wav(path: Path) -> Path:
    """apple.wav at 48 kHz with silence around it: what Chromium's fake microphone plays."""
    with wave.open(str(ASSETS / 'apple.wav')) as clip:
        rate = clip.getframerate()
        speech = np.frombuffer(clip.readframes(clip.getnframes()), '<i2') / 32768.0
    times = np.arange(int(speech.size * FAKE_MICROPHONE_RATE / rate)) / FAKE_MICROPHONE_RATE
    upsampled = np.interp(times, np.arange(speech.size) / rate, speech)
    samples = np.concatenate(
        [
            np.zeros(int(LEAD_SILENCE_S * FAKE_MICROPHONE_RATE)),
            upsampled,
            np.zeros(int(TAIL_SILENCE_S * FAKE_MICROPHONE_RATE)),
        ]
    )
    path.write_bytes(wav_bytes(samples, FAKE_MICROPHONE_RATE))
    return path


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    """Headless Chromium whose microphone plays the spoken prompt once (``%noloop``)."""
    directory = tmp_path_factory.mktemp('chromium')
    microphone = fake_microphone_wav(directory / 'microphone.wav')
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                *CHROMIUM_FLAGS,
                '--use-fake-ui-for-media-stream',
                '--use-fake-device-for-media-stream',
                f'--use-file-for-fake-audio-capture={microphone}%noloop',
            ],
        )
        yield browser
        browser.close()


@contextmanager
def open_page(browser, url: str, viewport: dict, screenshot: str):
    """A fresh page at ``url``; a full-page screenshot is saved to tests/artifacts/ at the end."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    console_errors = []
    page.on(
        'console', lambda message: message.type == 'error' and console_errors.append(message.text)
    )
    page.goto(url)
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
        print(f'screenshot: {ARTIFACTS / screenshot}')
        context.close()
    # The browser logs each refused request (4xx) as a console error; anything else is a fault.
    assert not [text for text in console_errors if 'with a status of 4' not in text], console_errors


def wait_until(page, expression: str, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
    """Poll a JavaScript expression until it is true. (Playwright's wait_for_function evaluates
    strings inside the page, which the page's Content-Security-Policy rightly forbids.)"""
    poll_until(lambda: page.evaluate(expression), timeout_s, f'still false: {expression}', POLL_S)


def assert_layout_fits(page) -> None:
    """Nothing sticks out: no sideways scrolling, every settings field within its column."""
    assert page.evaluate('document.documentElement.scrollWidth <= window.innerWidth')
    overflowing = page.eval_on_selector_all(
        '#parameters label',
        'labels => labels.flatMap(label => [...label.querySelectorAll("input, select")]'
        '.filter(f => f.getBoundingClientRect().right > label.getBoundingClientRect().right + 1)'
        '.map(f => f.name))',
    )
    assert overflowing == []


def rendered_image_widths(page) -> list:
    return page.eval_on_selector_all(
        '#images img', 'images => images.map(image => image.complete ? image.naturalWidth : 0)'
    )


# --- the page in a browser -------------------------------------------------------------------


def test_recorded_speech_shows_transcript_and_images(browser, web_url):
    with open_page(browser, web_url, DESKTOP, 'web-recorded-desktop.png') as page:
        page.click('#settings summary')
        page.fill('[name=num_images]', '2')
        page.fill('[name=seed]', '7')
        page.click('#record')
        wait_until(page, "document.getElementById('level').value > 0.05", timeout_s=5)
        time.sleep(LEAD_SILENCE_S + SPOKEN_S)
        page.click('#record')
        page.wait_for_selector('#result:not([hidden])', timeout=ANSWER_TIMEOUT_S * 1000)
        assert 'red apple' in page.inner_text('#transcript').lower()
        assert 'from recording' in page.inner_text('#transcript-info')
        wait_until(page, "[...document.querySelectorAll('#images img')].every(i => i.complete)")
        assert rendered_image_widths(page) == [64, 64]
        captions = page.eval_on_selector_all(
            '#images figcaption', 'cs => cs.map(c => c.textContent)'
        )
        assert 'seed 7' in captions[0] and 'seed 8' in captions[1]
        assert '64 × 64' in captions[0]
        links = page.eval_on_selector_all(
            '#images a[download]', 'links => links.map(a => [a.download, a.href])'
        )
        assert [name for name, _ in links] == ['speech2image-seed7.png', 'speech2image-seed8.png']
        assert all(href.startswith('blob:') for _, href in links)
        assert page.is_hidden('#error')
        assert_layout_fits(page)


def test_silent_upload_shows_the_backend_error(browser, web_url):
    silence = wav_bytes(np.zeros(16_000), 16_000)
    with open_page(browser, web_url, DESKTOP, 'web-error-desktop.png') as page:
        page.set_input_files(
            '#file', {'name': 'silence.wav', 'mimeType': 'audio/wav', 'buffer': silence}
        )
        page.wait_for_selector('#error:not([hidden])', timeout=ANSWER_TIMEOUT_S * 1000)
        assert 'no speech: the audio is silent' in page.inner_text('#error')
        assert page.is_hidden('#result')
        assert page.is_enabled('#record')  # the page is usable again


def test_typed_prompt_on_a_phone_screen(browser, web_url):
    with open_page(browser, web_url, PHONE, 'web-typed-phone.png') as page:
        page.click('#settings summary')
        page.fill('#prompt', 'a lighthouse at dusk')
        page.click('#generate')
        page.wait_for_selector('#result:not([hidden])', timeout=ANSWER_TIMEOUT_S * 1000)
        assert page.inner_text('#result-title') == 'Prompt'
        assert page.inner_text('#transcript') == 'a lighthouse at dusk'
        wait_until(page, "document.querySelector('#images img').complete")
        assert rendered_image_widths(page) == [64]
        assert_layout_fits(page)
        image_box = page.locator('#images img').bounding_box()
        assert image_box['width'] > PHONE['width'] / 2  # one image per row, not a thumbnail


# --- the service ------------------------------------------------------------------------------


def test_page_and_its_files_are_served(web_url):
    page = requests.get(web_url, timeout=5)
    assert page.ok and '<title>speech2image</title>' in page.text
    assert "default-src 'self'" in page.headers['Content-Security-Policy']
    for asset in ('app.js', 'style.css'):
        assert requests.get(f'{web_url}/static/{asset}', timeout=5).ok


def test_errors_arrive_as_the_executors_message(web_url):
    answer = requests.post(
        f'{web_url}/api/generate', json={'data': [{'text': 'x' * 1001}]}, timeout=30
    )
    assert answer.status_code == 422
    assert answer.json() == {'error': 'document 0: prompt is 1001 characters, the limit is 1000'}
    too_long = base64.b64encode(wav_bytes(np.full(61 * 16_000, 0.1), 16_000)).decode()
    answer = requests.post(
        f'{web_url}/api/default', json={'data': [{'bytes_': too_long}]}, timeout=30
    )
    assert answer.status_code == 422
    assert answer.json() == {
        'error': "document 0: audio is longer than the 60 s limit: the file's header declares 61.0 s"
    }
    answer = requests.post(f'{web_url}/api/generate', json={'data': 'not a list'}, timeout=30)
    assert answer.status_code == 422
    assert answer.json()['error'] == '"data" must be a list of documents'
    answer = requests.post(f'{web_url}/api/nope', json={'data': []}, timeout=5)
    assert answer.status_code == 404 and 'unknown endpoint' in answer.json()['error']


def test_busy_and_silent_gateways_are_explained():
    """Beyond --max-in-flight, requests are refused at once with "server busy"; a gateway that
    never answers (here a socket that listens and never replies) ends in a timeout."""
    with socket.socket() as silent_gateway:
        silent_gateway.bind(('127.0.0.1', 0))
        silent_gateway.listen()
        gateway = f'http://127.0.0.1:{silent_gateway.getsockname()[1]}'
        flags = ('--gateway', gateway, '--max-in-flight', '1', '--timeout-s', '2')
        with serve_web(*flags) as url:
            first = {}
            sender = threading.Thread(
                target=lambda: first.update(
                    answer=requests.post(f'{url}/api/generate', json={'data': []}, timeout=30)
                )
            )
            sender.start()

            def first_in_flight() -> bool:
                assert sender.is_alive(), 'the first request was answered at once'
                return requests.get(f'{url}/healthz', timeout=5).json()['in_flight'] > 0

            poll_until(first_in_flight, FIRST_IN_FLIGHT_S, 'the first request never got in', POLL_S)
            second = requests.post(f'{url}/api/generate', json={'data': []}, timeout=30)
            sender.join()
    assert second.status_code == 503
    assert second.json() == {
        'error': 'server busy: too many requests at once (the limit is 1); try again in a moment'
    }
    assert first['answer'].status_code == 504
    assert first['answer'].json() == {'error': 'the service did not answer within 2 s'}


def test_unreachable_gateway_and_oversized_uploads_are_explained():
    [closed_port] = free_ports(1)
    with serve_web('--gateway', f'http://127.0.0.1:{closed_port}', '--max-request-mb', '1') as url:
        answer = requests.post(f'{url}/api/default', json={'data': [{'text': 'a'}]}, timeout=10)
        assert answer.status_code == 502
        assert answer.json() == {'error': 'the image service is not reachable; try again later'}
        answer = requests.post(
            f'{url}/api/default', json={'data': [{'bytes_': 'A' * 2**21}]}, timeout=10
        )
        assert answer.status_code == 413
        assert answer.json()['error'].startswith('the upload is too large: the limit is 1 MB')


@pytest.mark.parametrize(
    'body, error',
    [
        (
            {'detail': "RequestError('document 0 (id None): no speech: the audio is silent')"},
            GatewayError('document 0 (id None): no speech: the audio is silent', refused=True),
        ),
        (
            {'detail': 'RequestError("parameter \'num_images\' must be between 1 and 4, got 9.0")'},
            GatewayError("parameter 'num_images' must be between 1 and 4, got 9.0", refused=True),
        ),
        (
            {'detail': '1 validation error for SpeechDoc\nbytes_\n  Value error, not valid base64'},
            GatewayError(
                '1 validation error for SpeechDoc\nbytes_\n  Value error, not valid base64',
                refused=True,
            ),
        ),
        (
            {'detail': [{'loc': ['body', 'data'], 'msg': 'Field required'}]},
            GatewayError('data: Field required', refused=True),
        ),
        (
            {'detail': "OutOfMemoryError('CUDA out of memory')"},
            GatewayError('CUDA out of memory', refused=False),
        ),
        ('not a dict', GatewayError('the service failed without saying why', refused=False)),
    ],
)
def test_read_gateway_error(body, error):
    """The shapes of jina's error bodies seen from its HTTP gateway (Executor error, document
    validation, FastAPI request validation); only the user's mistakes count as refusals."""
    assert read_gateway_error(body) == error


def test_flags_can_be_environment_variables(monkeypatch):
    monkeypatch.setenv('S2I_WEB_MAX_IN_FLIGHT', '2')
    monkeypatch.setenv('S2I_WEB_GATEWAY', 'http://gateway:8080')
    assert parse_args([]).max_in_flight == 2
    assert (
        parse_args(['--gateway', 'http://127.0.0.1:1']).gateway == 'http://127.0.0.1:1'
    )  # flags win
    assert parse_args([]).gateway == 'http://gateway:8080'


def test_the_service_forwards_the_api_key_to_the_gateway(monkeypatch):
    from speech2image.web import gateway_headers

    monkeypatch.delenv('S2I_API_KEY', raising=False)
    assert 'Authorization' not in gateway_headers()
    monkeypatch.setenv('S2I_API_KEY', 'k3y')
    assert gateway_headers()['Authorization'] == 'Bearer k3y'
