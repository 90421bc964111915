"""The web page: its service (speech2image.web) and the page itself in a real browser.

The browser is Debian's Chromium, headless, driven by Playwright, with a fake microphone that
plays assets/apple.wav; the page talks to the real Flow on the offline models. Screenshots go to
tests/artifacts/ (ignored by git).
"""

import base64
import io
import json
import re
import socket
import threading
import time
import wave
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pytest
import requests
from playwright.sync_api import sync_playwright

from devtools.offline_flow import ASSETS, ROOT, free_ports
from devtools.web_harness import CHROMIUM, CHROMIUM_FLAGS, SERVICE_STOP_TIMEOUT_S, serve_web
from speech2image.auth import API_KEY_ENV, authorized
from speech2image.gateway_errors import GatewayError, read_gateway_error
from speech2image.request_policy import UNAUTHORIZED_MESSAGE
from speech2image.web import parse_args
from tests.support import diffusion_metric, poll_until

ARTIFACTS = ROOT / 'tests' / 'artifacts'
FAKE_MICROPHONE_RATE = 48_000
# Silence around the spoken prompt, so the recording holds all of it.
LEAD_SILENCE_S, TAIL_SILENCE_S = 0.3, 2.0
SPOKEN_S = 3.03  # assets/apple.wav
ANSWER_TIMEOUT_S = 60
POLL_S = 0.05
# The first request's own timeout bounds how long it can be in flight.
FIRST_IN_FLIGHT_S = 30
DESKTOP = {'width': 1024, 'height': 768}
# Steps for a stream the tests watch or cancel midway: enough that it is not over before they
# look (the offline model does a step in tens of ms), within the Executor's limit of 100.
WATCHED_STEPS = 40
CANCELLED_STEPS = 100
CANCELLED_METRIC = 'speech2image_diffusion_cancelled_requests_total'
PHONE = {'width': 390, 'height': 844}


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


def wait_for_final_images(page, count: int) -> None:
    """Until the stream's final images (not its previews) have all loaded."""
    wait_until(
        page,
        '(images => images.length === %d && images.every(i => i.complete && i.naturalWidth))'
        "([...document.querySelectorAll('#images figure:not(.preview) img')])" % count,
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
        wait_for_final_images(page, 2)
        assert 'red apple' in page.inner_text('#transcript').lower()
        assert 'from recording' in page.inner_text('#transcript-info')
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
        # The page sends one document: its number and id mean nothing to a person.
        assert 'document 0' not in page.inner_text('#error')
        assert page.is_hidden('#result')
        assert page.is_enabled('#record')  # the page is usable again


def test_typed_prompt_on_a_phone_screen(browser, web_url):
    with open_page(browser, web_url, PHONE, 'web-typed-phone.png') as page:
        page.click('#settings summary')
        page.fill('#prompt', 'a lighthouse at dusk')
        page.click('#generate')
        wait_for_final_images(page, 1)
        assert page.inner_text('#result-title') == 'Prompt'
        assert page.inner_text('#transcript') == 'a lighthouse at dusk'
        assert rendered_image_widths(page) == [64]
        assert_layout_fits(page)
        image_box = page.locator('#images img').bounding_box()
        assert image_box['width'] > PHONE['width'] / 2  # one image per row, not a thumbnail


# What the page went through while it streamed, recorded in the page: a snapshot of the progress
# bar and the transcript at each change of the bar, and at each image that finished loading
# ("preview" or "final"); and each status line shown.
RECORD_PAGE_STATES = """() => {
  window.pageStates = [];
  window.statusTexts = [];
  const progress = document.getElementById('progress');
  const snapshot = (what) => window.pageStates.push({
    what,
    transcript: document.getElementById('result').hidden
      ? '' : document.getElementById('transcript').textContent,
    step: progress.hasAttribute('value') ? progress.value : null,
    steps: progress.max,
  });
  new MutationObserver(() => snapshot('progress')).observe(progress, { attributes: true });
  document.getElementById('images').addEventListener(
    'load', (event) => snapshot(event.target.closest('figure').className || 'final'), true);
  const status = document.getElementById('status-text');
  // Each text the page set, from the records: two set in one task reach one callback.
  new MutationObserver((records) => records.forEach((record) => record.addedNodes.forEach(
    (node) => window.statusTexts.push(node.textContent)))).observe(status, { childList: true });
}"""


def test_the_page_shows_the_transcript_then_previews_then_the_images(browser, web_url):
    """An upload streams: the transcript is on the page while the bar shows real steps part way,
    a preview image is shown before the final one, which replaces it."""
    with open_page(browser, web_url, DESKTOP, 'web-streaming-desktop.png') as page:
        page.evaluate(RECORD_PAGE_STATES)
        page.click('#settings summary')
        page.fill('[name=num_inference_steps]', str(WATCHED_STEPS))
        page.set_input_files('#file', str(ASSETS / 'apple.wav'))
        wait_for_final_images(page, 1)
        states = page.evaluate('window.pageStates')
        captions = page.eval_on_selector_all(
            '#images figcaption', 'cs => cs.map(c => c.textContent)'
        )
        assert page.eval_on_selector_all('#images figure.preview', 'fs => fs.length') == 0
        assert page.is_hidden('#status')
    bar = [state for state in states if state['what'] == 'progress' and state['step'] is not None]
    assert {state['steps'] for state in bar} == {WATCHED_STEPS}
    assert len({state['step'] for state in bar}) > 1  # it moved with the steps
    assert any(
        'red apple' in state['transcript'].lower() and 0 < state['step'] < WATCHED_STEPS
        for state in bar
    ), states
    loads = [state for state in states if state['what'] != 'progress']
    assert loads[0]['what'] == 'preview' and loads[0]['step'] < WATCHED_STEPS, loads
    assert loads[-1]['what'] == 'final', loads
    assert f'{WATCHED_STEPS} steps' in captions[0]


def test_cancel_stops_the_generation_and_the_next_request_starts_at_once(
    browser, web_url, running_flow
):
    cancelled_before = diffusion_metric(running_flow, CANCELLED_METRIC)
    with open_page(browser, web_url, DESKTOP, 'web-cancelled-desktop.png') as page:
        page.click('#settings summary')
        page.fill('[name=num_inference_steps]', str(CANCELLED_STEPS))
        page.fill('#prompt', 'a slow painting')
        page.click('#generate')
        wait_until(page, "document.getElementById('progress').value >= 1")  # painting
        page.click('#cancel')
        page.wait_for_selector('#notice:not([hidden])', timeout=ANSWER_TIMEOUT_S * 1000)
        cancelled = re.fullmatch(
            r'Cancelled after step (\d+) of (\d+)\.', page.inner_text('#notice')
        )
        assert cancelled, page.inner_text('#notice')
        assert int(cancelled[1]) < int(cancelled[2]) == CANCELLED_STEPS
        assert page.eval_on_selector_all('#images figure', 'fs => fs.length') == 0
        assert page.is_hidden('#status') and page.is_hidden('#error')
        poll_until(
            lambda: diffusion_metric(running_flow, CANCELLED_METRIC) == cancelled_before + 1,
            ANSWER_TIMEOUT_S,
            'the diffusion Executor did not count the cancelled request',
        )
        # The next request: nothing ahead of it at the gateway, and it runs to its images.
        page.evaluate(RECORD_PAGE_STATES)
        page.fill('[name=num_inference_steps]', '2')
        page.fill('#prompt', 'a quick sketch')
        page.click('#generate')
        wait_for_final_images(page, 1)
        assert page.is_hidden('#notice')
        statuses = page.evaluate('window.statusTexts')
    assert 'Reading the prompt…' in statuses, statuses
    assert not [text for text in statuses if 'ahead' in text], statuses


def test_closing_the_page_mid_stream_cancels_the_generation(browser, web_url, running_flow):
    cancelled_before = diffusion_metric(running_flow, CANCELLED_METRIC)
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(web_url)
        page.click('#settings summary')
        page.fill('[name=num_inference_steps]', str(CANCELLED_STEPS))
        page.fill('#prompt', 'a painting nobody waits for')
        page.click('#generate')
        wait_until(page, "document.getElementById('progress').value >= 1")
    finally:
        context.close()
    poll_until(
        lambda: diffusion_metric(running_flow, CANCELLED_METRIC) == cancelled_before + 1,
        ANSWER_TIMEOUT_S,
        'the diffusion Executor did not count the abandoned request',
    )


def served_info(web_url: str) -> dict:
    """What the service says of the image model it serves (the Flow's /info via the page's)."""
    answer = requests.post(f'{web_url}/api/info', json={'data': [{}]}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()['data'][0]['tags']['diffusion']


def test_the_page_says_which_model_draws_and_offers_the_sizes_it_is_made_for(browser, web_url):
    """The Size menu comes from the service: the model's own size, then larger squares up to the
    service's cap (read, not assumed); a larger choice is warned of with an estimate, before
    Generate."""
    info = served_info(web_url)
    native = info['native_width']
    assert (native, info['native_height']) == (64, 64)  # what the offline model is made for
    assert info['step_seconds'] > 0
    sizes = [native * factor for factor in (1, 2, 4, 8) if native * factor <= info['max_side']]
    with open_page(browser, web_url, DESKTOP, 'web-sizes-desktop.png') as page:
        wait_until(page, "!!document.getElementById('service').textContent.includes('drawn by')")
        said = page.inner_text('#service')
        assert f'Pictures are drawn by {Path(info["model"]).name}, made for 64 × 64' in said
        page.click('#settings summary')
        options = page.eval_on_selector_all(
            '[name=size] option', 'options => options.map(o => [o.value, o.textContent])'
        )
        assert [value for value, _ in options] == ['', *(f'{side}x{side}' for side in sizes)]
        assert 'made for this model' in options[1][1]
        assert page.is_hidden('#size-warning')
        largest = sizes[-1]
        page.select_option('[name=size]', f'{largest}x{largest}')
        warning = page.inner_text('#size-warning')
        times = (largest // native) ** 2
        assert (
            f'{largest} × {largest} is {times} times the pixels this model is made for' in warning
        )
        assert 'at least' in warning and ' on this server' in warning
        page.select_option('[name=size]', f'{native}x{native}')
        assert page.is_hidden('#size-warning')


def test_the_page_shows_which_setting_won_and_where_it_came_from(browser, web_url):
    """Speech says two pictures with seed 42, the form says seed 7: the images use seed 7, and
    the page says so, and that speech said 42."""
    with open_page(browser, web_url, DESKTOP, 'web-provenance-desktop.png') as page:
        page.click('#settings summary')
        page.fill('[name=seed]', '7')
        page.set_input_files('#file', str(ASSETS / 'fox_command.wav'))
        wait_for_final_images(page, 2)
        said = page.inner_text('#spoken')
        captions = page.eval_on_selector_all(
            '#images figcaption', 'cs => cs.map(c => c.textContent)'
        )
    assert 'seed 7 (from the form; speech said 42)' in said, said
    assert 'images 2 (from speech)' in said, said
    assert 'seed 7' in captions[0] and 'seed 8' in captions[1]


def test_with_no_gateway_the_page_says_so_at_load(browser):
    """Before anything is pressed: the page asks the service at load, and says it is not there."""
    [closed_port] = free_ports(1)
    with serve_web('--gateway', f'http://127.0.0.1:{closed_port}') as url:
        context = browser.new_context(viewport=DESKTOP)
        try:
            page = context.new_page()
            page.goto(url)
            wait_until(page, "document.getElementById('service').className === 'problem'", 10)
            said = page.inner_text('#service')
        finally:
            context.close()
    assert said.startswith(
        'The image service is not ready: the image service is not reachable; try again later.'
    ), said


# The test streams of the page's SSE parser: every kind of line it must read.
SSE_TEXT = (
    'event: accepted\ndata: {"event": "accepted"}\n\n'
    ': a comment line\n\n'
    'event: preview\ndata: line one\ndata:line two, café\n\n'
    'data:  unnamed, one space kept\n\n'
    'event: no data\n\n'
    'event: done\ndata: {}\n\n'
)
SSE_EVENTS = [
    {'event': 'accepted', 'data': '{"event": "accepted"}'},
    {'event': 'preview', 'data': 'line one\nline two, café'},
    {'event': 'message', 'data': ' unnamed, one space kept'},
    {'event': 'done', 'data': '{}'},
]
# In the page: parse the chunks as readEvents does, one after the other; or every split of one
# text into two chunks.
PARSE_CHUNKS = """chunks => {
  let rest = '';
  const events = [];
  for (const chunk of chunks) {
    const parsed = parseServerSentEvents(rest + chunk);
    rest = parsed.rest;
    events.push(...parsed.events);
  }
  return { events, rest };
}"""
PARSE_EVERY_SPLIT = """text => [...text].map((_, cut) => {
  const first = parseServerSentEvents(text.slice(0, cut));
  const second = parseServerSentEvents(first.rest + text.slice(cut));
  return { events: [...first.events, ...second.events], rest: second.rest };
})"""


def test_the_pages_server_sent_events_parser(browser, web_url):
    with open_page(browser, web_url, DESKTOP, 'web-parser.png') as page:
        for text in (SSE_TEXT, SSE_TEXT.replace('\n', '\r\n')):
            whole = {'events': SSE_EVENTS, 'rest': ''}
            assert page.evaluate(PARSE_CHUNKS, [text]) == whole
            splits = page.evaluate(PARSE_EVERY_SPLIT, text)
            assert [split for split in splits if split != whole] == []
            assert page.evaluate(PARSE_CHUNKS, list(text)) == whole  # one character at a time
        # Lines ended by a lone CR; an unfinished event waits for the rest of its text.
        carriage_returns = page.evaluate(PARSE_CHUNKS, [SSE_TEXT.replace('\n', '\r') + 'data: x'])
        assert carriage_returns == {'events': SSE_EVENTS, 'rest': 'data: x'}


# --- the service ------------------------------------------------------------------------------


def server_sent_events(answer: requests.Response) -> Iterator[Tuple[str, dict]]:
    """Each event of a streamed answer as it arrives: its SSE name and its JSON data."""
    name = None
    for line in answer.iter_lines(decode_unicode=True):
        if line.startswith('event: '):
            name = line[len('event: ') :]
        elif line.startswith('data: '):
            yield name, json.loads(line[len('data: ') :])


def post_stream(url: str, document: dict, **parameters) -> requests.Response:
    """``POST /api/stream`` with one document, its answer streamed (a context manager)."""
    body = {'data': [document], 'parameters': parameters}
    return requests.post(f'{url}/api/stream', json=body, stream=True, timeout=ANSWER_TIMEOUT_S)


def read_until_progress(events: Iterator[Tuple[str, dict]]) -> dict:
    """Read events up to the first progress; returns the accepted event."""
    name, accepted = next(events)
    assert name == 'accepted', accepted
    for name, event in events:
        assert name not in ('done', 'error', 'cancelled'), event
        if name == 'progress':
            return accepted
    raise AssertionError('the stream ended without progress')


def test_the_stream_relay_passes_the_events_on_in_order(web_url):
    with post_stream(web_url, {'text': 'a red apple'}, num_inference_steps=10, seed=1) as answer:
        assert answer.status_code == 200
        assert answer.headers['Content-Type'] == 'text/event-stream'
        events = list(server_sent_events(answer))
    assert all(name == event['event'] for name, event in events)
    assert [(event['event'], event.get('step')) for _, event in events] == [
        ('accepted', None),
        ('transcript', None),
        *[
            kind
            for step in range(1, 11)
            for kind in [('progress', step)] + [('preview', step)] * (step in (2, 4, 6, 8))
        ],
        ('done', None),
    ]
    request_id = events[0][1]['request_id']
    assert all(event['request_id'] == request_id for _, event in events)
    assert events[1][1]['text'] == 'a red apple'
    [preview] = events[4][1]['images']
    assert preview['mime_type'] == 'image/jpeg' and preview['tags'] == {'image': 0}
    [image] = events[-1][1]['images']
    assert image['mime_type'] == 'image/png' and image['tags']['seed'] == 1


def test_a_stream_is_cancelled_by_its_request_id(web_url, running_flow):
    """The events reach the page as they happen (the accepted event comes in time to cancel
    the stream with its id), and the cancel reaches the generation."""
    cancelled_before = diffusion_metric(running_flow, CANCELLED_METRIC)
    with post_stream(web_url, {'text': 'a slow painting'}, num_inference_steps=100) as answer:
        events = server_sent_events(answer)
        request_id = read_until_progress(events)['request_id']
        cancel = requests.post(
            f'{web_url}/api/stream/cancel', json={'request_id': request_id}, timeout=10
        )
        assert cancel.status_code == 200
        assert cancel.json() == {'request_id': request_id, 'cancelled': True}
        rest = list(events)
    name, cancelled = rest[-1]
    assert name == cancelled['event'] == 'cancelled'
    assert cancelled['request_id'] == request_id
    assert cancelled['message'] == 'cancelled by the client'
    assert {name for name, _ in rest[:-1]} <= {'progress', 'preview'}  # no images
    poll_until(
        lambda: diffusion_metric(running_flow, CANCELLED_METRIC) == cancelled_before + 1,
        ANSWER_TIMEOUT_S,
        'the diffusion Executor did not count the cancelled request',
    )
    again = requests.post(
        f'{web_url}/api/stream/cancel', json={'request_id': request_id}, timeout=10
    )
    assert again.status_code == 404
    assert again.json() == {
        'error': f'no stream with request id {request_id!r} is running on this gateway'
    }


def test_a_page_that_goes_away_cancels_its_stream(web_url, running_flow):
    cancelled_before = diffusion_metric(running_flow, CANCELLED_METRIC)
    with post_stream(web_url, {'text': 'a slow painting'}, num_inference_steps=100) as answer:
        read_until_progress(server_sent_events(answer))
    # Leaving the block closed the connection mid-stream.
    poll_until(
        lambda: diffusion_metric(running_flow, CANCELLED_METRIC) == cancelled_before + 1,
        ANSWER_TIMEOUT_S,
        'the diffusion Executor did not count the abandoned request',
    )
    poll_until(
        lambda: requests.get(f'{web_url}/healthz', timeout=5).json()['in_flight'] == 0,
        ANSWER_TIMEOUT_S,
        'the web service still counts the abandoned stream',
    )


def test_refused_streams_keep_the_error_shape(web_url):
    """Refusals before the first event are plain errors, as for the other endpoints."""
    two = {'data': [{'text': 'a'}, {'text': 'b'}]}
    answer = requests.post(f'{web_url}/api/stream', json=two, timeout=30)
    assert answer.status_code == 422
    assert answer.json() == {'error': 'a stream takes exactly one document in "data", got 2'}
    answer = requests.post(
        f'{web_url}/api/stream',
        data='{"data": [',
        timeout=30,
        headers={'Content-Type': 'application/json'},
    )
    assert answer.status_code == 400
    assert answer.json()['error'].startswith('the request body is not valid JSON')
    answer = requests.post(f'{web_url}/api/stream', data='text', timeout=30)
    assert answer.status_code == 415
    assert answer.json()['error'].startswith('send the request as application/json')
    answer = requests.post(f'{web_url}/api/stream/cancel', json={}, timeout=30)
    assert answer.status_code == 422
    assert answer.json() == {'error': 'send {"request_id": "<the id of the accepted event>"}'}


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


@pytest.mark.parametrize('endpoint', ['generate', 'stream'])
def test_busy_and_silent_gateways_are_explained(endpoint):
    """Beyond --max-in-flight, requests are refused at once with "server busy" (a cancel is not
    counted: it gets through); a gateway that never answers (here a socket that listens and
    never replies) ends in a timeout, before any event of a stream."""
    with socket.socket() as silent_gateway:
        silent_gateway.bind(('127.0.0.1', 0))
        silent_gateway.listen()
        gateway = f'http://127.0.0.1:{silent_gateway.getsockname()[1]}'
        flags = ('--gateway', gateway, '--max-in-flight', '1', '--timeout-s', '2')
        with serve_web(*flags) as url:
            first = {}
            sender = threading.Thread(
                target=lambda: first.update(
                    answer=requests.post(f'{url}/api/{endpoint}', json={'data': []}, timeout=30)
                )
            )
            sender.start()

            def first_in_flight() -> bool:
                assert sender.is_alive(), 'the first request was answered at once'
                return requests.get(f'{url}/healthz', timeout=5).json()['in_flight'] > 0

            poll_until(first_in_flight, FIRST_IN_FLIGHT_S, 'the first request never got in', POLL_S)
            second = requests.post(f'{url}/api/{endpoint}', json={'data': []}, timeout=30)
            cancel = requests.post(f'{url}/api/stream/cancel', json={'request_id': 'r'}, timeout=30)
            sender.join()
    assert cancel.status_code == 504  # forwarded, and the gateway did not answer
    assert second.status_code == 503
    assert second.json() == {
        'error': 'server busy: too many requests at once (the limit is 1); try again in a moment'
    }
    assert first['answer'].status_code == 504
    assert first['answer'].json() == {'error': 'the service did not answer within 2 s'}


# The start of an event stream, as the gateway sends it: headers, then one chunk with one event.
STREAM_START = (
    b'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n'
)
ACCEPTED_EVENT = b'event: accepted\ndata: {"event": "accepted", "request_id": "r1"}\n\n'


def break_off_a_stream(listener: socket.socket) -> None:
    """Answer one request with the start of an event stream, then hang up mid-stream."""
    connection, _ = listener.accept()
    with connection:
        connection.recv(2**16)
        chunk = b'%x\r\n%s\r\n' % (len(ACCEPTED_EVENT), ACCEPTED_EVENT)
        connection.sendall(STREAM_START + chunk)


def test_a_stream_the_gateway_breaks_off_ends_with_an_error_event():
    """After the first event the page reads events only: a failure midway is the last one."""
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen()
        gateway = threading.Thread(target=break_off_a_stream, args=(listener,), daemon=True)
        gateway.start()
        with serve_web('--gateway', f'http://127.0.0.1:{listener.getsockname()[1]}') as url:
            with post_stream(url, {'text': 'a red apple'}) as answer:
                assert answer.status_code == 200
                events = list(server_sent_events(answer))
        gateway.join(timeout=SERVICE_STOP_TIMEOUT_S)
    assert events == [
        ('accepted', {'event': 'accepted', 'request_id': 'r1'}),
        (
            'error',
            {
                'event': 'error',
                'status': 502,
                'message': 'the image service broke off the stream; try again',
            },
        ),
    ]


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
            GatewayError(
                'document 0 (id None): no speech: the audio is silent',
                refused=True,
                exception='RequestError',
            ),
        ),
        (
            {'detail': 'RequestError("parameter \'num_images\' must be between 1 and 4, got 9.0")'},
            GatewayError(
                "parameter 'num_images' must be between 1 and 4, got 9.0",
                refused=True,
                exception='RequestError',
            ),
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
            GatewayError('CUDA out of memory', refused=False, exception='OutOfMemoryError'),
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


KEY = 'k3y'
FAKE_INFO = {
    'model': '/models/fake-model',
    'description': 'A fake model.',
    'native_width': 64,
    'native_height': 64,
    'width': 64,
    'height': 64,
    'max_side': 128,
    'num_images': 1,
    'num_inference_steps': 2,
    'step_seconds': 0.01,
}


@contextmanager
def keyed_gateway() -> Iterator[Tuple[str, List[Tuple[str, Optional[str]]]]]:
    """A stand-in for the gateway with ``S2I_API_KEY=KEY``, checking the key as the gateway does
    (speech2image.auth) and answering 401 with its message; yields its URL and the (path,
    Authorization header) of every call it got."""
    calls: List[Tuple[str, Optional[str]]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get('Content-Length', 0)))
            authorization = self.headers.get('Authorization')
            calls.append((self.path, authorization))
            if not authorized(authorization, KEY):
                self.answer(401, {'detail': UNAUTHORIZED_MESSAGE})
            else:
                self.answer(200, {'data': [{'tags': {'diffusion': FAKE_INFO}}]})

        def answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(('127.0.0.1', 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_port}', calls
    finally:
        server.shutdown()
        server.server_close()


def test_the_service_never_lends_its_key(tmp_path):
    """With S2I_API_KEY in the web service's environment (as k8s/web.yml once mounted it), an
    anonymous call reaches the gateway with no key and is refused; a caller's own key passes on
    as sent; the service says at start that its key is not used."""
    log = tmp_path / 'web.log'
    with keyed_gateway() as (gateway, calls):
        with serve_web('--gateway', gateway, env={API_KEY_ENV: KEY}, log=log) as url:
            for endpoint in ('generate', 'default', 'info', 'stream', 'stream/cancel'):
                body = {'request_id': 'r'} if endpoint == 'stream/cancel' else {'data': [{}]}
                anonymous = requests.post(f'{url}/api/{endpoint}', json=body, timeout=30)
                assert anonymous.status_code == 401, endpoint
                assert anonymous.json() == {'error': UNAUTHORIZED_MESSAGE}
            keyed = requests.post(
                f'{url}/api/info',
                json={'data': [{}]},
                headers={'Authorization': f'Bearer {KEY}'},
                timeout=30,
            )
            assert keyed.status_code == 200
    assert [authorization for _, authorization in calls] == [None] * 5 + [f'Bearer {KEY}']
    said = log.read_text()
    assert f'{API_KEY_ENV} is set, but this service never sends a key of its own' in said
    assert KEY not in said


def test_the_pages_users_enter_the_key_themselves(browser):
    """A gateway that wants a key: the page asks its user for it, and sends what they typed."""
    with keyed_gateway() as (gateway, calls):
        with serve_web('--gateway', gateway, env={API_KEY_ENV: KEY}) as url:
            with open_page(browser, url, DESKTOP, 'web-key-desktop.png') as page:
                page.wait_for_selector('#key-form:not([hidden])', timeout=10_000)
                assert page.inner_text('#service') == 'This service needs an API key.'
                page.fill('#api-key', 'wrong')
                page.click('#key-form button')
                wait_until(
                    page, "document.getElementById('service').textContent.includes('refused')", 10
                )
                assert (
                    page.inner_text('#service') == f'That key was refused: {UNAUTHORIZED_MESSAGE}.'
                )
                page.fill('#api-key', KEY)
                page.click('#key-form button')
                wait_until(page, "document.getElementById('key-form').hidden", 10)
                assert page.inner_text('#service').startswith('Pictures are drawn by fake-model')
    assert [authorization for _, authorization in calls] == [None, 'Bearer wrong', f'Bearer {KEY}']


def test_the_page_talks_about_one_picture(browser, web_url):
    """Typed turns refine the current picture: the strip shows each turn with what was said and
    what changed; "New picture" forgets them, so an edit then has no picture to edit."""
    turns = [
        ('a red ball on the left', 'new picture'),
        ('make it blue', 'changed: colour red -> blue'),
        ('move it to the right', 'changed: position left -> right'),
    ]
    with open_page(browser, web_url, DESKTOP, 'web-conversation.png') as page:
        for count, (said, _) in enumerate(turns, 1):
            page.fill('#prompt', said)
            page.click('#generate')
            wait_until(
                page,
                "!document.getElementById('generate').disabled && "
                f"document.querySelectorAll('#strip li').length === {count}",
            )
        assert page.inner_text('#understood') == turns[-1][1]
        assert page.inner_text('#transcript') == 'a blue ball on the right'
        strip = page.eval_on_selector_all(
            '#strip li',
            'items => items.map(item => [item.querySelector(".turn-said").textContent, '
            'item.querySelector(".turn-changed").textContent, '
            'item.querySelector("img").naturalWidth])',
        )
        assert strip == [
            [f'{number}. “{said}”', changed, 64] for number, (said, changed) in enumerate(turns, 1)
        ]
        page.click('#new-picture')
        assert page.is_hidden('#turns')
        page.fill('#prompt', 'make it blue')
        page.click('#generate')
        wait_until(page, "!document.getElementById('error').hidden")
        assert 'there is none yet: say what to draw first' in page.inner_text('#error')
