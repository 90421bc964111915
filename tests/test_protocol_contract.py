"""One contract on every protocol: a bad request gets the same clear error over gRPC, HTTP,
WebSocket, the web service and the CLI, with the status class a client expects, naming the
document (by the id the client gave it) and what was wrong; then the Flow still serves. The
streaming call /stream gives the same errors, on each protocol, as an error event or a refusal.

Each case is sent at the wire (raw gRPC stub, HTTP JSON, raw WebSocket frames), so the real
status is seen, and through the jina Client over WebSocket ``WS_REPEATS`` times: jina's WebSocket
client used to turn some errors into successes with no documents, intermittently.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, List

import numpy as np
import pytest

from devtools.offline_flow import ASSETS
from speech2image.client import ServiceError, send
from speech2image.schema import SAMPLE_RATE, SpeechDoc
from tests.audio_files import apple_samples, wav_bytes
from tests.protocols import (
    INVALID,
    NOT_FOUND,
    OK,
    STREAM_SENDERS,
    over_cli,
    over_grpc,
    over_http,
    over_web_service,
    over_websocket,
)
from tests.support import gateway_pending_requests

APPLE = (ASSETS / 'apple.wav').read_bytes()
BAD_ID = 'the-bad-one'
WS_REPEATS = 10
rng = np.random.default_rng(7)


def bad(**fields) -> List[SpeechDoc]:
    return [SpeechDoc(id=BAD_ID, **fields)]


def prompt() -> List[SpeechDoc]:
    return [SpeechDoc(id='a-prompt', text='a red apple')]


def huge_wav_header() -> bytes:
    """One second of audio in a WAV whose header claims a billion samples."""
    data = bytearray(wav_bytes(apple_samples()[:SAMPLE_RATE]))
    data[40:44] = (10**9 * 2).to_bytes(4, 'little')  # the data chunk's size, in bytes
    return bytes(data)


@dataclass(frozen=True)
class Case:
    endpoint: str
    docs: Callable[[], List[SpeechDoc]]
    message: str  # a substring of the error message
    parameters: Dict = field(default_factory=dict)
    status: str = INVALID
    names_document: bool = True  # the message names BAD_ID


CASES = {
    'garbage bytes': Case(
        '/',
        lambda: bad(bytes_=bytes(rng.integers(0, 256, 3000, dtype=np.uint8))),
        'bytes_ is not a decodable audio file',
    ),
    'empty bytes': Case('/', lambda: bad(bytes_=b''), 'bytes_ is empty'),
    'truncated file': Case('/', lambda: bad(bytes_=APPLE[: len(APPLE) // 3]), 'truncated'),
    'silence': Case(
        '/',
        lambda: bad(bytes_=wav_bytes(np.zeros(2 * SAMPLE_RATE, np.float32))),
        'no speech: the audio is silent',
    ),
    'noise': Case(
        '/',
        lambda: bad(tensor=rng.normal(0, 0.1, 2 * SAMPLE_RATE).astype(np.float32)),
        'no speech detected',
    ),
    'too long': Case(
        '/',
        lambda: bad(tensor=np.tile(apple_samples(), 21)),
        'longer than the 60 s limit: the tensor holds',
    ),
    'header claims hours': Case(
        '/', lambda: bad(bytes_=huge_wav_header()), "the file's header declares 62500.0 s"
    ),
    'tensor of the wrong dtype': Case(
        '/',
        lambda: bad(tensor=np.zeros(SAMPLE_RATE, np.int32)),
        'tensor dtype must be float32 or int16',
    ),
    'tensor of the wrong shape': Case(
        '/', lambda: bad(tensor=np.zeros((2, SAMPLE_RATE), np.float32)), 'got shape'
    ),
    'NaN samples': Case(
        '/',
        lambda: bad(tensor=np.full(SAMPLE_RATE, np.nan, np.float32)),
        'contains NaN or infinite',
    ),
    'nothing to transcribe or draw': Case('/', lambda: bad(), 'no prompt'),
    'empty prompt': Case('/generate', lambda: bad(text='  '), 'no prompt'),
    'over-long prompt': Case(
        '/generate', lambda: bad(text='x' * 1001), 'prompt is 1001 characters, the limit is 1000'
    ),
    'second of two documents bad': Case(
        '/',
        lambda: [SpeechDoc(id='good', bytes_=APPLE), SpeechDoc(id=BAD_ID, bytes_=b'nope')],
        f'document 1 (id {BAD_ID})',
    ),
    'empty request': Case(
        '/generate', lambda: [], 'the request has no documents', names_document=False
    ),
    'unknown endpoint': Case(
        '/nope',
        prompt,
        "unknown endpoint '/nope': this service has /, /transcribe, /generate, /info",
        status=NOT_FOUND,
        names_document=False,
    ),
    'unknown task': Case(
        '/',
        lambda: [SpeechDoc(bytes_=APPLE)],
        "'task' must be one of",
        {'task': 'summarise'},
        names_document=False,
    ),
    'unknown language': Case(
        '/transcribe',
        lambda: [SpeechDoc(bytes_=APPLE)],
        "'language' must be one of",
        {'language': 'xx'},
        names_document=False,
    ),
    'infinite parameter': Case(
        '/generate',
        prompt,
        "'parameters.num_images' must be a finite",
        {'num_images': float('inf')},
        names_document=False,
    ),
    **{
        f'{name}={value!r}': Case(
            '/generate', prompt, f"parameter '{name}' must be", {name: value}, names_document=False
        )
        for name, value in [
            ('num_images', 99),
            ('num_images', 0),
            ('num_images', '2'),
            ('num_images', 1.5),
            ('num_inference_steps', 0),
            ('num_inference_steps', 101),
            ('guidance_scale', 31),
            ('guidance_scale', 'high'),
            ('width', 60),
            ('height', 2048),
            ('width', 100),
            ('seed', -1),
            ('seed', '42'),
            ('seed', 2**31),
            ('image_format', 'gif'),
        ]
    },
}


def assert_refused(answer, case: Case, protocol: str):
    assert answer.status == case.status, f'{protocol}: {answer}'
    assert case.message in answer.message, f'{protocol}: {answer.message!r}'
    if case.names_document:
        assert BAD_ID in answer.message, (
            f'{protocol} does not name the document: {answer.message!r}'
        )


def assert_still_serving(running_flow):
    answer = over_grpc(running_flow.grpc, '/generate', prompt(), {})
    assert answer.status == OK and len(answer.docs[0]['matches']) == 1, answer


@pytest.fixture(scope='module')
def web_service(running_flow):
    from tests.test_web import serve_web

    with serve_web('--gateway', running_flow.http) as url:
        yield url


@pytest.mark.parametrize('name', sorted(CASES))
def test_every_protocol_gives_the_same_clear_error(running_flow, web_service, name):
    case = CASES[name]
    assert_refused(
        over_grpc(running_flow.grpc, case.endpoint, case.docs(), case.parameters), case, 'gRPC'
    )
    assert_refused(
        over_http(running_flow.http, case.endpoint, case.docs(), case.parameters), case, 'HTTP'
    )
    assert_refused(
        over_websocket(running_flow.websocket, case.endpoint, case.docs(), case.parameters),
        case,
        'WebSocket',
    )
    if case.endpoint != '/nope':  # the web service has its own list of endpoints (tested below)
        assert_refused(
            over_web_service(web_service, case.endpoint, case.docs(), case.parameters),
            case,
            'web service',
        )
    assert_still_serving(running_flow)


# The cases a stream can carry: one document, to an endpoint /stream runs ('/stream' is '/').
STREAM_CASES = sorted(
    name
    for name, case in CASES.items()
    if case.endpoint != '/nope' and name not in ('empty request', 'second of two documents bad')
)


@pytest.mark.parametrize('name', STREAM_CASES)
def test_the_stream_gives_the_same_clear_error_on_every_protocol(running_flow, name):
    case = CASES[name]
    for protocol, send_stream in STREAM_SENDERS.items():
        [doc] = case.docs()
        answer = send_stream(running_flow, doc, case.parameters)
        assert_refused(answer, case, f'{protocol} /stream')
        # Refused before admission: no event (gRPC, HTTP) or one error event (WebSocket);
        # after: accepted first, one error event last, no images.
        if answer.kinds[:1] == ['accepted']:
            assert answer.kinds.count('error') == 1 and answer.kinds[-1] == 'error'
            assert 'done' not in answer.kinds
        else:
            assert answer.kinds in ([], ['error']), answer.kinds
    assert_still_serving(running_flow)


def test_the_stream_takes_one_document_and_only_its_own_endpoint(running_flow):
    import requests

    from tests.protocols import stream_body

    response = requests.post(
        f'{running_flow.http}/stream',
        data=stream_body(SpeechDoc(text='a'), {})[:-1] + b', "data": [{}, {}]}',
        headers={'Content-Type': 'application/json'},
        timeout=30,
    )
    assert response.status_code == 422
    assert 'a stream takes exactly one document in "data", got 2' in response.json()['detail']
    # The diffusion Executor's own streaming endpoint is the gateway's business, not a client's.
    for method in ('GET', 'POST'):
        response = requests.request(method, f'{running_flow.http}/generate_stream', timeout=30)
        assert response.status_code == 404, (method, response.text)
    answer = over_grpc(running_flow.grpc, '/generate_stream', prompt(), {})
    assert answer.status == NOT_FOUND


@pytest.mark.parametrize('name', sorted(CASES))
def test_the_jina_client_over_websocket_never_loses_an_error(running_flow, name):
    case = CASES[name]
    for attempt in range(WS_REPEATS):
        with pytest.raises(ServiceError) as raised:
            answered = send(running_flow.websocket, case.endpoint, case.docs(), case.parameters)
            pytest.fail(f'attempt {attempt}: an error came back as a success: {answered}')
        assert case.message in str(raised.value)


# Each protocol, and audio, typed-prompt and parameter mistakes, once each: a CLI run is slow.
@pytest.mark.parametrize(
    'protocol, case_name, args',
    [
        ('grpc', 'garbage bytes', ['garbage.wav']),
        ('http', 'truncated file', ['truncated.wav']),
        ('websocket', 'silence', ['silence.wav']),
        ('websocket', 'empty prompt', ['--text', '  ']),
        ('http', 'num_images=99', ['--text', 'a red apple', '-n', '99']),
    ],
)
def test_the_cli_exits_non_zero_with_the_message(running_flow, tmp_path, protocol, case_name, args):
    (tmp_path / 'garbage.wav').write_bytes(bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    (tmp_path / 'truncated.wav').write_bytes(APPLE[: len(APPLE) // 3])
    (tmp_path / 'silence.wav').write_bytes(wav_bytes(np.zeros(2 * SAMPLE_RATE, np.float32)))
    address = getattr(running_flow, protocol)
    result = over_cli(address, args, tmp_path)
    assert result.returncode == 1, result
    assert 'error:' in result.stderr
    flat = ' '.join(result.stderr.split())  # rich wraps long lines
    assert CASES[case_name].message in flat, result.stderr
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize(
    'content_type, body, status, message',
    [
        ('audio/wav', APPLE, 415, 'send the request as application/json'),
        ('multipart/form-data; boundary=x', b'--x--', 415, 'send the request as application/json'),
        ('text/plain', b'hello', 415, 'not text/plain'),
        ('application/json', b'{"data": [{"text": "a cat"}]', 400, 'not valid JSON'),
        ('application/json', b'[1, 2]', 422, 'must be a JSON object'),
        ('application/json', b'{"data": {"text": "a cat"}}', 422, '"data" must be a list'),
        (
            'application/json',
            b'{"data": [{"text": "a cat"}], "parameters": {"num_images": 1e400}}',
            422,
            "'parameters.num_images' must be a finite number",
        ),
        (
            'application/json',
            b'{"data": [{"text": "a cat"}], "parameters": {"seed": NaN}}',
            422,
            "'parameters.seed' must be a finite number",
        ),
        (
            'application/json',
            b'{"data": [{"id": "b64", "bytes_": "!!!"}]}',
            422,
            'document 0 (id b64): bytes_: binary field is not valid base64',
        ),
    ],
)
def test_http_bodies_that_are_not_a_request_get_4xx_naming_the_problem(
    running_flow, content_type, body, status, message
):
    import requests

    response = requests.post(
        f'{running_flow.http}/generate',
        data=body,
        headers={'Content-Type': content_type},
        timeout=30,
    )
    assert response.status_code == status, response.text
    assert message in response.json()['detail']
    assert_still_serving(running_flow)


def test_the_web_service_refuses_what_is_not_json_and_unknown_endpoints(web_service):
    import requests

    response = requests.post(
        f'{web_service}/api/generate',
        data=b'hello',
        headers={'Content-Type': 'text/plain'},
        timeout=30,
    )
    assert response.status_code == 415 and 'application/json' in response.json()['error']
    response = requests.post(f'{web_service}/api/nope', json={'data': [{'text': 'x'}]}, timeout=30)
    assert (
        response.status_code == 404 and 'default, transcribe, generate' in response.json()['error']
    )


def test_an_executor_failure_is_5xx_not_the_users_fault():
    """The other side of the contract: what is not the user's mistake is never 4xx."""
    from speech2image.request_policy import executor_refusal

    assert executor_refusal('RequestError', 'x').http_status == 422
    assert executor_refusal('ValidationError', 'x').http_status == 422
    assert executor_refusal('RuntimeError', 'CUDA out of memory').http_status == 500
    assert executor_refusal('RuntimeError', 'x').grpc_code.name == 'INTERNAL'


def test_refused_requests_are_answered_at_once_and_hold_no_slot(running_flow):
    """Twice the pending-request bound of empty and overflowing requests, all at once: each is
    refused within seconds, none is counted as pending afterwards, and a good request is served
    (an empty request used to hang for 120 s holding a slot, and 64 of them locked everyone out)."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from speech2image.defaults import MAX_PENDING_REQUESTS

    bodies = [b'{"data": []}', b'{"data": [{"text": "a"}], "parameters": {"seed": 1e400}}']

    def refused(index: int) -> int:
        return requests.post(
            f'{running_flow.http}/generate',
            data=bodies[index % 2],
            headers={'Content-Type': 'application/json'},
            timeout=10,
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(refused, range(2 * MAX_PENDING_REQUESTS)))
    assert statuses == [422] * len(statuses)
    assert gateway_pending_requests(running_flow.port_monitoring) == 0
    assert_still_serving(running_flow)
