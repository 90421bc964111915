"""One request, sent the way each kind of user sends it, and its answer in one shape.

``Answer`` holds what a client can observe: success or the status class of the error, the
message, the documents. The senders below speak each protocol at the wire (raw gRPC stub, HTTP
JSON, raw WebSocket frames) so the tests see the real status, and through the clients users run
(the jina Client via ``speech2image.client.send``, the ``speech2image`` CLI, the web service).
"""

import asyncio
import base64
import json
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import aiohttp
import grpc
import numpy as np
import requests
from docarray import DocList
from jina.proto import jina_pb2_grpc
from jina.types.request.data import DataRequest

from speech2image.defaults import HTTP_ROOT_ENDPOINT, STREAM_ENDPOINT
from speech2image.request_policy import NOT_FOUND_NAME, USER_ERROR_NAME
from speech2image.schema import SpeechDoc, StreamEvent, StreamRequest
from speech2image.streaming import event_json

# Status classes, one name for what each protocol says.
OK, INVALID, NOT_FOUND = 'ok', 'invalid', 'not found'
GRPC_CLASSES = {
    grpc.StatusCode.OK: OK,
    grpc.StatusCode.INVALID_ARGUMENT: INVALID,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
}
HTTP_CLASSES = {200: OK, 422: INVALID, 404: NOT_FOUND}
# A stream's error event says the HTTP status the same error gets from '/'.
EVENT_CLASSES = {422: INVALID, 404: NOT_FOUND}
WEBSOCKET_CLASSES = {USER_ERROR_NAME: INVALID, NOT_FOUND_NAME: NOT_FOUND}
ANSWER_TIMEOUT_S = 60
WS_END_OF_ITERATION = bytes(True)


@dataclass
class Answer:
    status: str  # OK, INVALID, NOT_FOUND, or the protocol's own word for anything else
    message: str = ''
    docs: List[Dict[str, Any]] = field(default_factory=list)


def data_request(endpoint: str, docs: List[SpeechDoc], parameters: Dict) -> DataRequest:
    request = DataRequest()
    request.header.exec_endpoint = endpoint
    request.data.docs = DocList[SpeechDoc](docs)
    if parameters:
        request.parameters = parameters
    return request


def over_grpc(address: str, endpoint: str, docs: List[SpeechDoc], parameters: Dict) -> Answer:
    """jina's own gRPC call (``JinaRPC/Call``), as the jina Client makes it, without the client."""
    with grpc.insecure_channel(address.removeprefix('grpc://')) as channel:
        call = jina_pb2_grpc.JinaRPCStub(channel).Call(
            iter([data_request(endpoint, docs, parameters)]), timeout=ANSWER_TIMEOUT_S
        )
        try:
            responses = list(call)
        except grpc.RpcError as error:
            return Answer(GRPC_CLASSES.get(error.code(), error.code().name), error.details())
    for response in responses:
        response.document_array_cls = DocList[SpeechDoc]
    return Answer(OK, '', [doc.dict() for response in responses for doc in response.data.docs])


def grpc_raw_call(
    address: str, messages: List[bytes], method: str = '/jina.JinaRPC/Call', metadata=()
) -> Answer:
    """Bytes sent as they are on a gRPC streaming call (jina's ``Call`` unless told), as a
    hostile or broken client may: the status class and details, or OK and how many responses."""
    with grpc.insecure_channel(address.removeprefix('grpc://')) as channel:
        if method == '/jina.JinaRPC/Call':
            call = channel.stream_stream(method)(
                iter(messages), timeout=ANSWER_TIMEOUT_S, metadata=metadata
            )
        else:
            [message] = messages
            call = channel.unary_stream(method)(
                message, timeout=ANSWER_TIMEOUT_S, metadata=metadata
            )
        try:
            return Answer(OK, str(len(list(call))))
        except grpc.RpcError as error:
            return Answer(GRPC_CLASSES.get(error.code(), error.code().name), error.details())


@dataclass
class Closed:
    """What a WebSocket client saw: the messages (text, or bytes), then the close code and reason."""

    messages: List[Any]
    code: int
    reason: str


def websocket_exchange(
    url: str, messages: List[Any], subprotocols=('bytes',), headers=None
) -> Closed:
    """Send ``messages`` (str as text, bytes as binary) on a WebSocket at ``url``, then read what
    comes back until the server closes."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    received = []
    with connect(
        url.replace('websocket://', 'ws://'),
        subprotocols=list(subprotocols) or None,
        additional_headers=headers,
        open_timeout=ANSWER_TIMEOUT_S,
        close_timeout=5,
        max_size=None,
    ) as websocket:
        try:
            for message in messages:
                websocket.send(message)
            while True:
                received.append(websocket.recv(timeout=ANSWER_TIMEOUT_S))
        except ConnectionClosed as closed:
            frame = closed.rcvd
            return Closed(received, frame.code if frame else 1006, frame.reason if frame else '')


def raw_http_request(port: int, head: bytes, body: bytes = b'') -> socket.socket:
    """A connection to 127.0.0.1:``port`` that sent ``head`` (request line and headers) and
    ``body``, left open; reads on it time out after ANSWER_TIMEOUT_S."""
    connection = socket.create_connection(('127.0.0.1', port), timeout=ANSWER_TIMEOUT_S)
    connection.sendall(head + b'\r\n' + body)
    return connection


def post_head(length: int, path: str = '/generate') -> bytes:
    """The head of a JSON POST declaring a body of ``length`` bytes."""
    return (
        f'POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
        f'Content-Length: {length}\r\n'
    ).encode()


def status_line(connection: socket.socket) -> bytes:
    """The status line of the response that arrives on ``connection``."""
    return connection.recv(4096).split(b'\r\n', 1)[0]


def json_document(doc: SpeechDoc) -> Dict[str, Any]:
    """A document as a browser or curl sends it: base64 bytes, samples as a list, its tags."""
    body: Dict[str, Any] = {'id': doc.id}
    if doc.text is not None:
        body['text'] = doc.text
    if doc.tags:
        body['tags'] = doc.tags
    if doc.bytes_ is not None:
        body['bytes_'] = base64.b64encode(bytes(doc.bytes_)).decode()
    if doc.tensor is not None:
        body['tensor'] = np.asarray(doc.tensor).tolist()
    if doc.tags:
        body['tags'] = doc.tags
    return body


def json_body(docs: List[SpeechDoc], parameters: Dict) -> bytes:
    """The HTTP body; non-finite numbers as Python writes them (NaN, Infinity), as a careless
    client would."""
    return json.dumps(
        {'data': [json_document(doc) for doc in docs], 'parameters': parameters}
    ).encode()


def http_path(endpoint: str) -> str:
    return HTTP_ROOT_ENDPOINT if endpoint == '/' else endpoint


def over_http(base_url: str, endpoint: str, docs: List[SpeechDoc], parameters: Dict) -> Answer:
    """A JSON POST, as curl or a browser makes it."""
    return post_json(f'{base_url}{http_path(endpoint)}', docs, parameters, 'detail')


def over_web_service(
    web_url: str, endpoint: str, docs: List[SpeechDoc], parameters: Dict
) -> Answer:
    """What the web page sends: ``POST /api/<endpoint>`` to speech2image.web."""
    return post_json(f'{web_url}/api{http_path(endpoint)}', docs, parameters, 'error')


def post_json(url: str, docs: List[SpeechDoc], parameters: Dict, error_key: str) -> Answer:
    """POST the request as JSON; the answer, with the error message read from ``error_key``."""
    response = requests.post(
        url,
        data=json_body(docs, parameters),
        headers={'Content-Type': 'application/json'},
        timeout=ANSWER_TIMEOUT_S,
    )
    status = HTTP_CLASSES.get(response.status_code, str(response.status_code))
    payload = response.json()
    if response.status_code == 200:
        return Answer(OK, '', payload['data'])
    return Answer(status, payload[error_key])


def over_websocket(address: str, endpoint: str, docs: List[SpeechDoc], parameters: Dict) -> Answer:
    """jina's WebSocket exchange at the frame level: the request, the end-of-iteration mark,
    then every response until the server closes."""
    return asyncio.run(
        _over_websocket(address.replace('websocket://', 'ws://'), endpoint, docs, parameters)
    )


async def _over_websocket(url: str, endpoint: str, docs, parameters) -> Answer:
    request = data_request(endpoint, docs, parameters)
    timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.ws_connect(f'{url}/', protocols=('bytes',)) as websocket:
            await websocket.send_bytes(request.SerializeToString())
            await websocket.send_bytes(WS_END_OF_ITERATION)
            async for message in websocket:
                if message.type != aiohttp.WSMsgType.BINARY:
                    break
                response = DataRequest(message.data)
                status = response.header.status
                if status.code == status.ERROR:
                    name = WEBSOCKET_CLASSES.get(status.exception.name, status.exception.name)
                    return Answer(
                        name,
                        status.exception.args[0] if status.exception.args else status.description,
                    )
                response.document_array_cls = DocList[SpeechDoc]
                return Answer(OK, '', [doc.dict() for doc in response.data.docs])
    return Answer('closed without an answer')


def over_cli(address: str, args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    """The ``speech2image`` command line client, as a user runs it."""
    return subprocess.run(
        [
            sys.executable,
            '-m',
            'speech2image.client',
            '--host',
            address,
            '--out',
            str(cwd / 'out'),
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=ANSWER_TIMEOUT_S * 2,
    )


# --- the streaming call ----------------------------------------------------------------------


@dataclass
class StreamAnswer:
    """What a streaming client observes: the events (as JSON objects) and the status class of
    the refusal or of the final error event (OK when the stream ended with ``done``)."""

    status: str
    message: str = ''
    events: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def kinds(self) -> List[str]:
        return [event['event'] for event in self.events]


def stream_answer(events: List[Dict[str, Any]]) -> StreamAnswer:
    """The answer a stream's events give: its error event's status and message, else OK."""
    last = events[-1] if events else {'event': 'none'}
    if last['event'] == 'error':
        return StreamAnswer(
            EVENT_CLASSES.get(last['status'], str(last['status'])), last['message'], events
        )
    return StreamAnswer(OK if last['event'] == 'done' else last['event'], '', events)


def stream_over_grpc(address: str, doc: SpeechDoc, parameters: Dict) -> StreamAnswer:
    """jina's ``stream_doc`` call with endpoint '/stream', on a raw stub. An error event must
    end the call with the status class the event names."""
    from jina.types.request.data import SingleDocumentRequest

    request = SingleDocumentRequest()
    request.header.exec_endpoint = STREAM_ENDPOINT
    request.document_cls = StreamRequest
    request.data.doc = StreamRequest(**doc.model_dump())
    if parameters:
        request.parameters = parameters
    events = []
    with grpc.insecure_channel(address.removeprefix('grpc://')) as channel:
        stub = jina_pb2_grpc.JinaSingleDocumentRequestRPCStub(channel)
        try:
            for response in stub.stream_doc(request, timeout=ANSWER_TIMEOUT_S):
                response.document_cls = StreamEvent
                events.append(json.loads(event_json(response.data.doc)))
        except grpc.RpcError as error:
            answer = stream_answer(events)
            code_class = GRPC_CLASSES.get(error.code(), error.code().name)
            if events and events[-1]['event'] == 'error':
                assert code_class == answer.status, (error.code(), events[-1])
                return answer
            return StreamAnswer(code_class, error.details(), events)
    return stream_answer(events)


def stream_body(doc: SpeechDoc, parameters: Dict) -> bytes:
    return json_body([doc], parameters)


def post_stream(base_url: str, doc: SpeechDoc, parameters: Dict) -> requests.Response:
    """``POST /stream``, its answer streamed (a context manager)."""
    return requests.post(
        f'{base_url}{STREAM_ENDPOINT}',
        data=stream_body(doc, parameters),
        headers={'Content-Type': 'application/json'},
        stream=True,
        timeout=ANSWER_TIMEOUT_S,
    )


def sse_events(response: requests.Response) -> Iterator[Dict[str, Any]]:
    """The events of a streamed Server-Sent Events answer as they arrive: each one's JSON, on
    its ``data:`` line."""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith('data: '):
            yield json.loads(line.removeprefix('data: '))


def stream_over_http(base_url: str, doc: SpeechDoc, parameters: Dict) -> StreamAnswer:
    """``POST /stream``, read as Server-Sent Events."""
    with post_stream(base_url, doc, parameters) as response:
        if response.status_code != 200:
            status = HTTP_CLASSES.get(response.status_code, str(response.status_code))
            return StreamAnswer(status, response.json()['detail'])
        assert response.headers['content-type'] == 'text/event-stream'
        events = list(sse_events(response))
    return stream_answer(events)


def stream_over_websocket(address: str, doc: SpeechDoc, parameters: Dict) -> StreamAnswer:
    """The WebSocket at /stream: the request as one text message, then one message per event
    until the server closes."""
    from websockets.sync.client import connect

    url = address.replace('websocket://', 'ws://') + STREAM_ENDPOINT
    with connect(url, open_timeout=ANSWER_TIMEOUT_S, max_size=None) as websocket:
        websocket.send(stream_body(doc, parameters).decode())
        events = [json.loads(message) for message in websocket]
    return stream_answer(events)


STREAM_SENDERS = {
    'gRPC': lambda flow, doc, parameters: stream_over_grpc(flow.grpc, doc, parameters),
    'HTTP': lambda flow, doc, parameters: stream_over_http(flow.http, doc, parameters),
    'WebSocket': lambda flow, doc, parameters: stream_over_websocket(
        flow.websocket, doc, parameters
    ),
}


# --- a conversation turn (speech2image/conversation.py) --------------------------------------

# One request to '/' over each protocol, for the tests that send a document every way.
SENDERS = {
    'gRPC': lambda flow, doc, parameters: over_grpc(flow.grpc, '/', [doc], parameters),
    'HTTP': lambda flow, doc, parameters: over_http(flow.http, '/', [doc], parameters),
    'WebSocket': lambda flow, doc, parameters: over_websocket(
        flow.websocket, '/', [doc], parameters
    ),
}


def image_bytes(image) -> bytes:
    """An image's bytes as any protocol answers them (raw in Python, base64 in JSON)."""
    data = image['bytes_']
    return base64.b64decode(data) if isinstance(data, str) else bytes(data)


def conversation_turn(
    flow, way: Tuple[str, str], said: str, conversation: Any, parameters: Optional[Dict] = None
) -> Tuple[str, str, Optional[Dict[str, Any]]]:
    """Send ``said`` with ``conversation``, ``way`` = (request or stream, protocol); returns
    (status, message, the answered document as {text, tags, images})."""
    kind, protocol = way
    doc = SpeechDoc(text=said, tags={'conversation': conversation})
    if kind == 'request':
        answer = SENDERS[protocol](flow, doc, parameters or {})
        if answer.status != OK:
            return answer.status, answer.message, None
        [answered] = answer.docs
        return OK, '', {**answered, 'images': answered['matches']}
    answer = STREAM_SENDERS[protocol](flow, doc, parameters or {})
    return answer.status, answer.message, answer.events[-1] if answer.status == OK else None
