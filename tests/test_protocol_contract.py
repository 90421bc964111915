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

from devtools.audio_files import apple_samples, wav_bytes
from devtools.offline_flow import ASSETS
from speech2image.client import ServiceError, send
from speech2image.schema import SAMPLE_RATE, SpeechDoc
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
    post_head,
    raw_http_request,
    status_line,
)
from tests.support import gateway_pending_requests

APPLE = (ASSETS / 'apple.wav').read_bytes()
BAD_ID = 'the-bad-one'
WS_REPEATS = 10
# How long a refusal that must come at once may take, on a busy machine.
ANSWER_SECONDS = 10
rng = np.random.default_rng(7)


def bad(**fields) -> List[SpeechDoc]:
    return [SpeechDoc(id=BAD_ID, **fields)]


def prompt() -> List[SpeechDoc]:
    return [SpeechDoc(id='a-prompt', text='a red apple')]


def many_prompts(count: int) -> List[SpeechDoc]:
    return [SpeechDoc(id=f'prompt-{index}', text=f'prompt {index}') for index in range(count)]


def nested(depth: int):
    """An object nested ``depth`` levels deep (1 is ``{"a": 1}``)."""
    value = 1
    for _ in range(depth):
        value = {'a': value}
    return value


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
    'last of 150 documents bad': Case(
        '/transcribe',
        lambda: [*many_prompts(149), SpeechDoc(id=BAD_ID, text=' ')],
        f'document 149 (id {BAD_ID}): no prompt',
    ),
    'over-long negative prompt': Case(
        '/generate',
        prompt,
        "'parameters.negative_prompt' is 1001 characters, the limit is 1000",
        {'negative_prompt': 'x' * 1001},
        names_document=False,
    ),
    'over-long spoken negative prompt': Case(
        '/generate',
        lambda: bad(text='a cat', tags={'spoken_settings': {'negative_prompt': 'x' * 1001}}),
        "spoken settings: parameter 'negative_prompt' is 1001 characters, the limit is 1000",
    ),
    'parameters nested 21 deep': Case(
        '/generate',
        prompt,
        'is nested more than 20 levels deep',
        {'deep': nested(21)},
        names_document=False,
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
    from devtools.web_harness import serve_web

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
    name for name, case in CASES.items() if case.endpoint != '/nope' and len(case.docs()) == 1
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


# --- more than 100 documents: every one answered, on every protocol and client ---------------


MANY = 150  # jina's HTTP gateway and Client split calls into requests of 100 documents


@pytest.mark.parametrize('protocol', ['gRPC', 'HTTP', 'WebSocket', 'web service', 'jina Client'])
def test_every_one_of_150_documents_gets_its_answer(running_flow, web_service, protocol):
    """HTTP used to answer 200 with the first 100 documents only (the rest were computed and
    dropped); the jina Client sent them as two requests."""
    docs = many_prompts(MANY)
    senders = {
        'gRPC': lambda: over_grpc(running_flow.grpc, '/transcribe', docs, {}),
        'HTTP': lambda: over_http(running_flow.http, '/transcribe', docs, {}),
        'WebSocket': lambda: over_websocket(running_flow.websocket, '/transcribe', docs, {}),
        'web service': lambda: over_web_service(web_service, '/transcribe', docs, {}),
    }
    if protocol == 'jina Client':
        for address in (running_flow.grpc, running_flow.http, running_flow.websocket):
            answered = send(address, '/transcribe', docs, {})
            assert [doc.id for doc in answered] == [doc.id for doc in docs], address
        return
    answer = senders[protocol]()
    assert answer.status == OK, answer
    assert [doc['id'] for doc in answer.docs] == [doc.id for doc in docs]
    assert [doc['text'] for doc in answer.docs] == [doc.text for doc in docs]


# --- malformed input: 4xx with a message on every protocol, never a 5xx or a bare close ------


def deep_json(depth: int, leaf: str = '1') -> str:
    """JSON text nesting ``depth`` lists around ``leaf``: deeper than Python can decode at 2,000."""
    return '[' * depth + leaf + ']' * depth


def grpc_request_bytes(endpoint='/generate', parameters=None, **header) -> bytes:
    from tests.protocols import data_request

    request = data_request(endpoint, [SpeechDoc(text='a cat')], parameters or {})
    for name, value in header.items():
        setattr(request.header, name, value)
    return request.SerializeToString()


def junk_docs_bytes() -> bytes:
    from tests.protocols import data_request

    request = data_request('/generate', [SpeechDoc(text='a cat')], {})
    request.proto_with_data.data.docs_bytes = b'not a document list'
    return request.proto_with_data.SerializeToString()


GRPC_MALFORMED = {
    'random bytes': (lambda: bytes(rng.integers(0, 256, 200, dtype=np.uint8)), 'not a jina'),
    'an empty message': (lambda: b'', 'not a jina DataRequest'),
    'junk docs_bytes': (junk_docs_bytes, 'not a jina DataRequest'),
    'a Struct nested 200 deep': (
        lambda: grpc_request_bytes(parameters={'deep': nested(200)}),
        'not a jina DataRequest',
    ),
    'target_executor "("': (
        lambda: grpc_request_bytes(target_executor='('),
        "header.target_executor '(' is not a regular expression",
    ),
}


@pytest.mark.parametrize('name', sorted(GRPC_MALFORMED))
def test_malformed_grpc_messages_get_invalid_argument(running_flow, name):
    from tests.protocols import grpc_raw_call

    message, words = GRPC_MALFORMED[name]
    answer = grpc_raw_call(running_flow.grpc, [message()])
    assert answer.status == INVALID and words in answer.message, answer
    if name == 'random bytes':  # the streaming call's own message
        answer = grpc_raw_call(
            running_flow.grpc, [message()], '/jina.JinaSingleDocumentRequestRPC/stream_doc'
        )
        assert answer.status == INVALID and 'not a jina' in answer.message, answer
    assert_still_serving(running_flow)


HTTP_MALFORMED = {
    'parameters nested 2,000 deep': (
        '{"data": [{"text": "a"}], "parameters": {"p": ' + deep_json(2000) + '}}',
        400,
        'nested too deeply',
    ),
    'tags nested 100,000 deep': (
        '{"data": [{"text": "a", "tags": {"t": ' + deep_json(100_000) + '}}]}',
        400,
        'nested too deeply',
    ),
    'tags nested 21 deep': (
        '{"data": [{"id": "deep", "text": "a", "tags": {"t": ' + deep_json(20) + '}}]}',
        422,
        "document 0 (id deep): 'tags.t",
    ),
    'a lone surrogate in the prompt': (
        '{"data": [{"id": "odd", "text": "a \\ud800 cat"}]}',
        422,
        "document 0 (id odd): 'text' is not Unicode text",
    ),
    'a lone surrogate in a parameter': (
        '{"data": [{"text": "a cat"}], "parameters": {"negative_prompt": "\\udfff"}}',
        422,
        "'parameters.negative_prompt' is not Unicode text",
    ),
    'target_executor "("': (
        '{"data": [{"text": "a"}], "header": {"request_id": "r", "target_executor": "("}}',
        422,
        "header.target_executor '(' is not a regular expression",
    ),
}


@pytest.mark.parametrize('name', sorted(HTTP_MALFORMED))
def test_malformed_http_bodies_get_4xx_naming_the_problem(running_flow, web_service, name):
    import requests

    body, status, words = HTTP_MALFORMED[name]
    for url, key in (
        (f'{running_flow.http}/generate', 'detail'),
        (f'{web_service}/api/generate', 'error'),
    ):
        response = requests.post(
            url, data=body.encode(), headers={'Content-Type': 'application/json'}, timeout=30
        )
        assert response.status_code == status and words in response.json()[key], (
            url,
            response.text,
        )
    assert_still_serving(running_flow)


def test_parameters_and_tags_20_levels_deep_still_reach_the_models(running_flow):
    """The nesting limit is where protobuf still carries a request to the Executors and back."""
    parameters = {'deep': nested(19)}  # 20 levels, the parameters object included
    for answer in (
        over_grpc(running_flow.grpc, '/generate', prompt(), parameters),
        over_http(running_flow.http, '/generate', prompt(), parameters),
        over_websocket(running_flow.websocket, '/generate', prompt(), parameters),
    ):
        assert answer.status == OK and len(answer.docs[0]['matches']) == 1, answer
    import requests

    tags = {'t': nested(19)}
    response = requests.post(
        f'{running_flow.http}/transcribe', json={'data': [{'text': 'a', 'tags': tags}]}, timeout=30
    )
    assert response.status_code == 200 and response.json()['data'][0]['tags'] == tags


WEBSOCKET_MALFORMED = {
    'binary garbage': ('/', ('bytes',), [bytes(range(256)) * 4], 1007, 'not a jina DataRequest'),
    'a JSON text message on / (no subprotocol)': (
        '/',
        (),
        ['{"data": [{"text": "a cat"}]}'],
        1003,
        'send requests as binary messages',
    ),
    'a text message on / (subprotocol bytes)': (
        '/',
        ('bytes',),
        ['{"data": [{"text": "a cat"}]}'],
        1003,
        'send requests as binary messages',
    ),
}


@pytest.mark.parametrize('name', sorted(WEBSOCKET_MALFORMED))
def test_malformed_websocket_messages_close_with_a_code_and_reason(running_flow, name):
    from tests.protocols import websocket_exchange

    path, subprotocols, messages, code, words = WEBSOCKET_MALFORMED[name]
    closed = websocket_exchange(running_flow.websocket + path, messages, subprotocols)
    assert closed.code == code and words in closed.reason, closed
    assert_still_serving(running_flow)


def test_invalid_utf8_on_the_websocket_stream_gets_an_error_event(running_flow):
    import json

    from tests.protocols import websocket_exchange

    closed = websocket_exchange(running_flow.websocket + '/stream', [b'\xff\xfe{"data": []}'], ())
    [event] = [json.loads(message) for message in closed.messages]
    assert event['event'] == 'error' and event['status'] == 400, event
    assert 'not valid JSON' in event['message'] and closed.code == 1000
    assert_still_serving(running_flow)


# --- buffering: refused by declared size, bounded in all, never read whole first -------------


def test_a_body_declared_over_the_cap_is_refused_before_it_is_sent(running_flow):
    """Refused at once by its Content-Length (it used to wait for the 33 MiB to arrive)."""
    with raw_http_request(running_flow.port_http, post_head(33 * 2**20)) as connection:
        connection.settimeout(ANSWER_SECONDS)
        assert status_line(connection) == b'HTTP/1.1 413 Request Entity Too Large'


def test_bodies_still_arriving_are_bounded_all_connections_together(running_flow):
    """Four 32 MiB bodies may arrive at once; a fifth is refused at once, before it sends; once
    they are gone, a request is served. (Each stalled body used to be buffered without bound.)"""
    from speech2image.request_limits import BUFFERED_BODIES

    cap = 32 * 2**20
    stalled = [
        raw_http_request(running_flow.port_http, post_head(cap), b'{"data"')
        for _ in range(BUFFERED_BODIES)
    ]
    try:
        with raw_http_request(running_flow.port_http, post_head(cap)) as fifth:
            fifth.settimeout(ANSWER_SECONDS)
            assert status_line(fifth) == b'HTTP/1.1 503 Service Unavailable'
    finally:
        for connection in stalled:
            connection.close()
    assert_still_serving(running_flow)


def test_a_websocket_frame_over_the_cap_is_refused_by_its_header(running_flow):
    """A frame header declaring 300 MiB is answered with close 1009 before its payload comes
    (it used to be read whole, 230 -> 825 MiB, before being refused)."""
    import base64
    import struct

    key = base64.b64encode(b'0123456789abcdef')
    head = (
        b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
        b'Sec-WebSocket-Key: ' + key + b'\r\nSec-WebSocket-Version: 13\r\n'
        b'Sec-WebSocket-Protocol: bytes\r\n'
    )
    with raw_http_request(running_flow.port_websocket, head) as connection:
        handshake = connection.recv(4096)
        assert handshake.startswith(b'HTTP/1.1 101'), handshake
        # FIN + binary; masked, 64-bit length; the mask; a few bytes of the payload.
        frame = bytes([0x82, 0x80 | 127]) + struct.pack('!Q', 300 * 2**20) + b'mask' + b'x' * 16
        connection.sendall(frame)
        connection.settimeout(ANSWER_SECONDS)
        answer = connection.recv(4096)
    assert answer[0] == 0x88, answer  # a close frame
    assert struct.unpack('!H', answer[2:4])[0] == 1009, answer
    assert_still_serving(running_flow)
