"""Fuzzing request parsing and parameter checks (hypothesis), in the Executors and through the
gateway: hostile input gets a clear error (RequestError, pydantic's validation error, an HTTP 4xx
with a detail), never a crash, and the Flow keeps serving."""

import base64
import json
import math

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jina import Executor
from whisper.tokenizer import LANGUAGES

from devtools.offline_flow import TINY_SD
from executors.whisper.executor import TASKS
from speech2image.client import ServiceError, send
from speech2image.request_policy import Refusal, check_json_document
from speech2image.schema import SAMPLE_RATE, SpeechDoc
from speech2image.validation import MAX_PROMPT_CHARS, RequestError, check_prompt, choice_parameter

FUZZ = settings(
    max_examples=80,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
THROUGH_THE_FLOW = settings(
    max_examples=20,
    deadline=30_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DIFFUSION_PARAMETERS = (
    'num_images',
    'num_inference_steps',
    'guidance_scale',
    'width',
    'height',
    'seed',
    'negative_prompt',
)
WHISPER_PARAMETERS = ('task', 'language')
HUGE_NUMBERS = st.sampled_from(
    [
        -1,
        0,
        2**31,
        2**63,
        10**100,
        -(10**100),
        1e308,
        -1e308,
        math.inf,
        -math.inf,
        math.nan,
        0.5,
        -0.0,
        7.0,
    ]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | HUGE_NUMBERS | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
PROMPTS = st.text(max_size=1200) | st.sampled_from(
    ['x' * 10_000, '\u202e\u200b\u0000 reversed', '🍎' * 500, 'a\nb\tc', ' ' * 50, 'Ω≈ç√∫˜µ≤≥÷']
)


@pytest.fixture(scope='module')
def diffusion():
    return Executor.load_config(
        'executors/stablediffusion/config.yml', uses_with={'model': str(TINY_SD)}
    )


def parameters_of(names):
    return st.dictionaries(st.sampled_from(names) | st.text(max_size=8), JSON_VALUES, max_size=6)


@FUZZ
@given(parameters=parameters_of(DIFFUSION_PARAMETERS))
def test_diffusion_parameters(diffusion, parameters):
    try:
        settings_ = diffusion.settings_from(parameters)
    except RequestError as error:
        assert str(error).startswith("parameter '")
        return
    assert 1 <= settings_.num_images <= diffusion.max_images
    assert 1 <= settings_.num_inference_steps <= diffusion.max_inference_steps
    assert 0 <= settings_.guidance_scale <= 30 and math.isfinite(settings_.guidance_scale)
    assert 64 <= settings_.width <= diffusion.max_side and settings_.width % 8 == 0
    assert 64 <= settings_.height <= diffusion.max_side and settings_.height % 8 == 0
    assert settings_.seed is None or 0 <= settings_.seed < 2**31


@FUZZ
@given(parameters=parameters_of(WHISPER_PARAMETERS))
def test_whisper_parameters(parameters):
    """Whisper's checks, without loading Whisper here: a forked Flow process would then hang in
    CTranslate2, so in-process Whisper stays in the tests that run last."""
    for name, default, choices in (('task', 'translate', TASKS), ('language', None, LANGUAGES)):
        try:
            value = choice_parameter(parameters, name, default, choices)
        except RequestError as error:
            assert str(error).startswith(f"parameter '{name}' must be one of")
            continue
        assert value == default or value in choices


@FUZZ
@given(prompt=PROMPTS)
def test_prompts(prompt):
    doc = SpeechDoc(text=prompt)
    try:
        checked = check_prompt(0, doc)
    except RequestError as error:
        assert str(error).startswith(f'document 0 (id {doc.id}): ')
        return
    assert checked == prompt.strip() and 0 < len(checked) <= MAX_PROMPT_CHARS


@FUZZ
@given(
    body=st.dictionaries(
        st.sampled_from(['tensor', 'bytes_', 'uri', 'text', 'tags', 'matches', 'id'])
        | st.text(max_size=6),
        JSON_VALUES,
        max_size=5,
    )
)
def test_what_the_gateway_lets_through_is_a_valid_document(body):
    """The gateway checks each HTTP document before jina does (to name it and answer 422): it
    refuses everything the schema refuses, naming the document; and what it lets through is a
    document whose samples are finite float32 (jina fails obscurely on anything else)."""
    try:
        check_json_document(0, body)
    except Refusal as refusal:
        assert refusal.http_status == 422
        assert refusal.message.startswith('document 0'), refusal.message
        return
    doc = SpeechDoc.model_validate(body)  # raises if the gateway let an invalid document through
    if doc.tensor is not None:
        with np.errstate(over='raise'):
            assert np.all(np.isfinite(np.asarray(doc.tensor, dtype=np.float32)))


HOSTILE_REQUESTS = {
    '10,000-character prompt': (
        '/generate',
        [SpeechDoc(text='x' * 10_000)],
        {},
        'prompt is 10000 characters, the limit is 1000',
    ),
    'negative image count': (
        '/generate',
        [SpeechDoc(text='a')],
        {'num_images': -1},
        "'num_images' must be between",
    ),
    'huge step count': (
        '/generate',
        [SpeechDoc(text='a')],
        {'num_inference_steps': 10**15},
        "'num_inference_steps' must be between",
    ),
    'NaN guidance': (
        '/generate',
        [SpeechDoc(text='a')],
        {'guidance_scale': math.nan},
        "'parameters.guidance_scale' must be a finite number",
    ),
    'infinite seed in a nested parameter': (
        '/generate',
        [SpeechDoc(text='a')],
        {'extra': {'deep': [1, math.inf]}},
        r"'parameters.extra.deep\[1\]' must be a finite number",
    ),
    'huge image side': (
        '/generate',
        [SpeechDoc(text='a')],
        {'width': 1 << 20},
        "'width' must be between",
    ),
    'NaN samples': (
        '/',
        [SpeechDoc(tensor=np.full(SAMPLE_RATE, np.nan, dtype=np.float32))],
        {},
        'NaN or infinite',
    ),
    'inf samples': (
        '/',
        [SpeechDoc(tensor=np.full(SAMPLE_RATE, np.inf, dtype=np.float32))],
        {},
        'NaN or infinite',
    ),
    'unknown task': (
        '/transcribe',
        [SpeechDoc(text='a')],
        {'task': 'x' * 50},
        "'task' must be one of",
    ),
    'uri to a remote URL': (
        '/transcribe',
        [SpeechDoc(uri='http://169.254.169.254/latest/meta-data')],
        {},
        'not a URL',
    ),
    'uri escaping the audio dir': (
        '/transcribe',
        [SpeechDoc(uri='../../../../etc/passwd')],
        {},
        'outside the allowed audio directory',
    ),
}


@pytest.mark.parametrize('case', sorted(HOSTILE_REQUESTS))
def test_hostile_requests_through_the_flow(running_flow, case):
    endpoint, docs, parameters, message = HOSTILE_REQUESTS[case]
    with pytest.raises(ServiceError, match=message):
        send(running_flow.grpc, endpoint, docs, parameters)


def test_unicode_prompt_makes_an_image(running_flow):
    [doc] = send(running_flow.grpc, '/generate', [SpeechDoc(text='🍎 Äpfel \u202e évier 林檎')], {})
    assert len(doc.matches) == 1


def test_enormous_request_is_refused_before_it_is_read(running_flow):
    """Over the gateway's 32 MiB cap: gRPC RESOURCE_EXHAUSTED, HTTP 413; neither reaches Whisper."""
    enormous = SpeechDoc(tensor=np.zeros(10_000_000, dtype=np.float32))  # 40 MB
    with pytest.raises(ServiceError, match='larger than max'):
        send(running_flow.grpc, '/transcribe', [enormous], {})
    response = requests.post(
        f'{running_flow.http}/transcribe',
        data=b'{' + b' ' * (40 * 2**20) + b'}',
        headers={'Content-Type': 'application/json'},
        timeout=60,
    )
    assert response.status_code == 413
    assert response.json()['detail'] == 'request is larger than the 32 MiB limit'


DOCUMENT_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        'id': st.text(max_size=12),
        'text': st.none() | st.text(max_size=60) | st.sampled_from(['a red apple', '', '   ']),
        'bytes_': st.binary(max_size=64).map(lambda data: base64.b64encode(data).decode())
        | st.text(max_size=12),
        'tensor': st.lists(st.floats(width=32) | HUGE_NUMBERS, max_size=8),
        'tags': JSON_VALUES,
    },
)
REQUEST_BODIES = st.fixed_dictionaries(
    {'data': st.lists(DOCUMENT_FIELDS, min_size=1, max_size=3)},
    optional={'parameters': parameters_of(DIFFUSION_PARAMETERS + WHISPER_PARAMETERS)},
)


@THROUGH_THE_FLOW
@given(body=REQUEST_BODIES, endpoint=st.sampled_from(['default', 'transcribe', 'generate']))
def test_http_requests_reach_the_executors_and_get_200_or_a_plain_4xx(running_flow, body, endpoint):
    """Bodies shaped like requests (a ``data`` list of document-like objects) get through the
    gateway's checks often enough to reach the Executors; whatever they hold, the answer is the
    documents or a 4xx whose detail is one plain sentence: never a 5xx, never a Python repr."""
    # json.dumps writes NaN and Infinity as bare words, as a hostile client may.
    response = requests.post(
        f'{running_flow.http}/{endpoint}',
        data=json.dumps(body),
        timeout=60,
        headers={'Content-Type': 'application/json'},
    )
    if response.status_code == 200:
        assert len(response.json()['data']) == len(body['data'])
        return
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()['detail']
    assert isinstance(detail, str) and detail
    without_ids = detail
    for document in body['data']:  # a message may quote the client's ids, whatever they hold
        without_ids = without_ids.replace(str(document.get('id', '')), '')
    assert '\n' not in without_ids, detail
    assert not detail.startswith(('RequestError(', 'ValueError(')), detail


def test_the_flow_still_serves_after_the_fuzzing(running_flow):
    [doc] = send(running_flow.grpc, '/generate', [SpeechDoc(text='still here')], {})
    assert len(doc.matches) == 1
