"""GuardedGateway: jina's gRPC, HTTP and WebSocket gateway behind one ``RequestGuard``.

jina 3.34's gateway has no API key, bound on requests in flight, size cap, request timeout or
drain, and its three protocols answer the same bad request differently (an error over gRPC, a
hang over HTTP, sometimes a silent success over WebSocket). This is its composite gateway (jina's
documented extension point, ``CompositeBaseServer``) built from jina's own three servers, each with
an adapter in front that asks speech2image/request_policy.py what to let through:

- gRPC: a server interceptor. Executor errors travel in jina's response header, and the call
  ends with the matching status code (INVALID_ARGUMENT for the user's mistakes, INTERNAL else).
- HTTP: ASGI middleware on jina's FastAPI app. Bodies are checked before jina parses them;
  Executor errors come back 422 (the user's) or 500 (ours) as ``{"detail": "<message>"}``.
- WebSocket: ASGI middleware too. Each request message is checked, a refused one is answered
  with an error response of its own; and after an error the gateway lets the client close the
  connection first: jina's WebSocket client drops an error that arrives with the server's close.

The streaming call ``/stream`` (speech2image/streaming.py) is the gateway's own on each protocol:
gRPC ``stream_doc`` with endpoint '/stream', HTTP ``POST /stream`` answered with Server-Sent
Events (``POST /stream/cancel`` cancels one by request id), and a WebSocket at ``/stream``.

Loaded by jina from ``gateway.yml`` beside this file (``py_modules``), in the gateway process.
"""

import asyncio
import json
import logging
import time
from contextlib import aclosing
from typing import Callable, Iterable, List, Optional, Tuple

import grpc
from jina.enums import ProtocolType
from jina.serve.runtimes.gateway.gateway import BaseGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.gateway.websocket import WebSocketGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer

from speech2image import defaults
from speech2image.auth import api_key_from_environment
from speech2image.cold_start import cold_start_seconds_from_environment, hold_calls_for_replicas
from speech2image.draining import exit_after
from speech2image.gateway_errors import read_gateway_error
from speech2image.request_endings import (
    cancel_executor_calls_with_their_tasks,
    end_requests_with_their_callers,
)
from speech2image.request_limits import BodyLimits, RequestSlots, read_body, whole_requests
from speech2image.request_policy import (
    REFUSALS_LOG,
    Refusal,
    RequestGuard,
    check_data_request,
    check_endpoint,
    check_json_request,
    check_parameters,
    error_response,
    executor_refusal,
    invalid,
    log_refusal,
    non_finite_number,
    service_failure,
    status_refusal,
    unknown_endpoint,
)
from speech2image.request_shape import data_request_problem
from speech2image.schema import StreamEvent, StreamRequest
from speech2image.streaming import (
    StreamService,
    error_event,
    event_json,
    server_sent_event,
    stream_request_from_json,
)
from speech2image.time_limits import TIMEOUT_ERROR_NAME, answer_timeouts_once

# gRPC calls that carry documents to the Executors: the ones checked and counted.
GRPC_DATA_METHODS = frozenset(
    {
        '/jina.JinaRPC/Call',
        '/jina.JinaSingleDataRequestRPC/process_single_data',
    }
)
# jina's one-document streaming call: the gateway serves '/stream' on it itself.
GRPC_STREAM_DOC_METHOD = '/jina.JinaSingleDocumentRequestRPC/stream_doc'
# Health checks stay open: Kubernetes probes (`jina ping`) and the Flow's readiness use them.
GRPC_HEALTH_PREFIX = '/grpc.health.v1.Health/'
HTTP_HEALTH_PATH = '/'
logger = logging.getLogger(__name__)
# WebSocket close codes (RFC 6455): a text message where binary ones are due, a binary one that
# is no request, a refused handshake; a close frame's reason carries at most 123 bytes.
WS_NORMAL_CLOSURE, WS_UNSUPPORTED_DATA, WS_INVALID_PAYLOAD = 1000, 1003, 1007
WS_POLICY_VIOLATION = 1008
WS_MAX_CLOSE_REASON_BYTES = 123
# jina's WebSocket protocol at '/': binary messages, each a serialised DataRequest.
WS_BINARY_SUBPROTOCOL = 'bytes'
NOT_BINARY_MESSAGE = (
    "send requests as binary messages (serialised jina DataRequests) with subprotocol 'bytes'"
)
# Messages a WebSocket connection may have received and not yet handed on: each is up to the
# request-size cap, so this bounds what one connection buffers.
WS_MAX_QUEUE = 1
# jina's WebSocket client ends its request stream with this message ("end of iteration").
WS_END_OF_ITERATION = bytes(True)
# After an error response, how long the gateway waits for the client to close the WebSocket.
WS_CLOSE_AFTER_ERROR_SECONDS = 2.0


# --- gRPC -------------------------------------------------------------------------------------


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Checks the key on every gRPC call but health checks; checks, counts and times data calls;
    serves '/stream' on jina's one-document streaming call."""

    def __init__(self, guard: RequestGuard, streams: StreamService):
        self.guard = guard
        self.streams = streams

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(GRPC_HEALTH_PREFIX):
            return handler
        metadata = {item[0]: item[1] for item in details.invocation_metadata or ()}
        try:
            self.guard.check_credentials(metadata.get('authorization'))
        except Refusal as error:
            refusal = error  # `error` is unbound after the except block; the lambda runs later
            return replace_behavior(handler, lambda behavior, kind: refused(refusal, kind))
        if details.method in GRPC_DATA_METHODS:
            return replace_behavior(
                handler, lambda behavior, kind: guarded(self.guard, behavior, kind)
            )
        if details.method == GRPC_STREAM_DOC_METHOD:
            return replace_behavior(handler, lambda behavior, kind: streamed(self.streams))
        return handler


def replace_behavior(handler: grpc.RpcMethodHandler, wrap: Callable) -> grpc.RpcMethodHandler:
    """The same method handler with its behaviour replaced by ``wrap(behavior, kind)``."""
    serializers = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    for kind, make in (
        ('unary_unary', grpc.unary_unary_rpc_method_handler),
        ('unary_stream', grpc.unary_stream_rpc_method_handler),
        ('stream_unary', grpc.stream_unary_rpc_method_handler),
        ('stream_stream', grpc.stream_stream_rpc_method_handler),
    ):
        behavior = getattr(handler, kind)
        if behavior is not None:
            return make(wrap(behavior, kind), **serializers)
    return handler


async def abort(refusal: Refusal, request, context, kind: str) -> None:
    """End the call with the refusal's status. A streaming request is read up to its first
    message first: ending the call while the client still writes it fails that write with an
    unhelpful INTERNAL error on the client instead of this status."""
    log_refusal('gRPC', refusal)
    if kind.startswith('stream'):
        async for _ in request:
            break
    await context.abort(refusal.grpc_code, refusal.message)


def refused(refusal: Refusal, kind: str) -> Callable:
    async def refuse(request, context):
        await abort(refusal, request, context, kind)

    return refuse


async def checked_stream(requests, context, slots: RequestSlots):
    """The client's stream of DataRequests, each checked and given a pending slot in ``slots``
    before jina reads it: the pending bound counts requests, however many share one call.

    The first is read (within the guard's ``client_idle_seconds``: a call that sends nothing
    is ended, holding no slot), checked and admitted before jina sees the call, so a refusal (or
    a stream with no request at all) ends it cleanly. A later bad or unadmitted one ends the
    stream early with its status, once the requests before it are answered: aborting while jina
    reads the stream leaves jina counting a request that never ends."""
    guard = slots.guard
    iterator = requests.__aiter__()
    try:
        first = await asyncio.wait_for(iterator.__anext__(), guard.client_idle_seconds)
    except StopAsyncIteration:
        raise invalid('the call carried no request') from None
    except asyncio.TimeoutError:
        raise guard.client_idle() from None
    check_data_request(first)
    slots.admit(first.header.request_id)

    async def the_rest():
        yield first
        async for request in iterator:
            try:
                check_data_request(request)
                slots.admit(request.header.request_id)
            except Refusal as refusal:
                log_refusal('gRPC', refusal)
                context.set_code(refusal.grpc_code)
                context.set_details(refusal.message)
                return
            yield request

    return the_rest()


async def checked_request(request, context, kind: str, slots: RequestSlots):
    """``request`` (a DataRequest, or a stream of them) after ``check_data_request``, each
    holding a slot in ``slots``."""
    if kind.startswith('stream'):
        return await checked_stream(request, context, slots)
    check_data_request(request)
    slots.admit(request.header.request_id)
    return request


def guarded(guard: RequestGuard, behavior: Callable, kind: str) -> Callable:
    """``behavior`` holding one pending slot per request from its admission to its response,
    ended with DEADLINE_EXCEEDED past the guard's request timeout, and ending with the status of
    the first error an Executor answered with (the responses themselves pass unchanged)."""
    if kind.endswith('stream'):

        async def guarded_stream(request, context):
            slots = RequestSlots(guard)
            try:
                try:
                    request = await checked_request(request, context, kind, slots)
                except Refusal as refusal:
                    await abort(refusal, request, context, 'unary')
                    return
                first_error = None
                responses = behavior(request, context).__aiter__()
                deadline = time.monotonic() + guard.request_timeout
                while True:
                    try:
                        response = await asyncio.wait_for(
                            responses.__anext__(), deadline - time.monotonic()
                        )
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        await abort(guard.timed_out(), request, context, 'unary')
                    slots.answered(response.header.request_id)
                    first_error = first_error or status_refusal(response.header.status)
                    yield response
                if first_error is not None:
                    context.set_code(first_error.grpc_code)
                    context.set_details(first_error.message)
            finally:
                slots.release_all()

        return guarded_stream

    async def guarded_unary(request, context):
        try:
            guard.admit()
        except Refusal as refusal:
            return await abort(refusal, request, context, kind)
        try:
            check_data_request(request)
            response = await asyncio.wait_for(behavior(request, context), guard.request_timeout)
            error = status_refusal(response.header.status)
            if error is not None:
                await abort(error, request, context, 'unary')
            return response
        except Refusal as refusal:
            await abort(refusal, request, context, 'unary')
        except asyncio.TimeoutError:
            await abort(guard.timed_out(), request, context, 'unary')
        finally:
            guard.release()

    return guarded_unary


# gRPC status codes of a stream's error event, by its HTTP status: as the unary call ends.
GRPC_CODES = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    if http_status in GRPC_CODES:
        return GRPC_CODES[http_status]
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


def streamed(streams: StreamService) -> Callable:
    """The '/stream' call on jina's ``stream_doc``: a ``StreamRequest`` in, ``StreamEvent``s
    out, each as a response of its own. A refused request ends the call with its status before
    any event; an error event ends it with the status the same error gets from ``/``."""

    async def stream(request, context):
        from jina.types.request.data import SingleDocumentRequest

        try:
            endpoint = stream_doc_endpoint(request)
            if endpoint != defaults.STREAM_ENDPOINT:
                raise unknown_endpoint(endpoint)
            live = streams.open(grpc_stream_request(request))
        except Refusal as refusal:
            log_refusal('gRPC', refusal)
            await context.abort(refusal.grpc_code, refusal.message)
            return
        async with aclosing(live.events()) as events:
            async for event in events:
                response = SingleDocumentRequest()
                response.header.request_id = request.header.request_id
                response.document_cls = StreamEvent
                response.data.doc = event
                # Written, not yielded: a reader that stops reading is dropped after a bound.
                if not await delivered(context.write(response), streams.guard):
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, reader_gone(streams))
                if event.event == 'error':
                    context.set_code(grpc_code(event.status))
                    context.set_details(event.message)

    return stream


async def delivered(sending, guard: RequestGuard) -> bool:
    """Await ``sending`` (one event on its way to a stream's reader); False when the reader
    took none of it within the guard's ``client_idle_seconds`` (it stopped reading)."""
    try:
        await asyncio.wait_for(sending, guard.client_idle_seconds)
    except asyncio.TimeoutError:
        return False
    return True


def reader_gone(streams: StreamService) -> str:
    return (
        f'the stream was closed: its reader took no event for '
        f'{streams.guard.client_idle_seconds:g} s'
    )


def stream_doc_endpoint(request) -> str:
    """The endpoint a ``stream_doc`` call names; a message that is no jina request is refused."""
    from google.protobuf.message import DecodeError

    try:
        return request.header.exec_endpoint
    except (DecodeError, ValueError) as error:
        raise invalid(f'the message is not a jina SingleDocumentRequest: {error}') from None


def grpc_stream_request(request) -> StreamRequest:
    """The ``StreamRequest`` a ``stream_doc`` call carries, checked as ``/`` checks documents.
    Parameters travel in the request's ``parameters`` (a protobuf Struct, as on every other
    call) or, for jina's ``Client.stream_doc``, which sends none, in the document's own."""
    request.document_cls = StreamRequest
    try:
        document = request.data.doc
    except Exception as error:  # noqa: BLE001 - what docarray says is wrong with it
        raise invalid(f'document 0: not a StreamRequest: {error}') from None
    where = non_finite_number(request.proto_wo_data.parameters)
    if where is not None:
        raise invalid(f"'{where}' must be a finite number, got NaN or infinity")
    document.parameters = request.parameters or document.parameters
    check_parameters(document.parameters)
    return document


# --- HTTP and WebSocket -----------------------------------------------------------------------


class GuardMiddleware:
    """ASGI middleware for jina's FastAPI apps: key check, request checks, pending bound,
    request-size cap, and errors in one shape."""

    def __init__(self, app, guard: RequestGuard, streams: StreamService, body_limits: BodyLimits):
        self.app = app
        self.guard = guard
        self.streams = streams
        self.body_limits = body_limits

    async def __call__(self, scope, receive, send):
        if scope['type'] == 'http':
            await self.http(scope, receive, send)
        elif scope['type'] == 'websocket':
            await self.websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def http(self, scope, receive, send):
        if scope['method'] == 'GET' and scope['path'] == HTTP_HEALTH_PATH:
            return await self.app(scope, receive, send)
        try:
            self.guard.check_credentials(header(scope, b'authorization'))
            if scope['path'] == defaults.DIFFUSION_STREAM_ENDPOINT:  # jina's route to one Executor
                raise unknown_endpoint(scope['path'])
            if scope['method'] != 'POST':
                return await self.app(scope, receive, send)
            if scope['path'] in (defaults.STREAM_ENDPOINT, defaults.STREAM_CANCEL_PATH):
                return await self.http_stream(scope, receive, send)
            check_endpoint(http_endpoint(scope['path']))
            body = await self.read_body(scope, receive)
            check_json_request(header(scope, b'content-type'), body)
            self.guard.admit()
        except Refusal as refusal:
            return await send_refusal(send, refusal)
        response = ErrorRewriter(send)
        try:
            await asyncio.wait_for(
                cancelled_on_hang_up(
                    lambda app_receive: self.app(scope, app_receive, response.send),
                    body,
                    receive,
                    response,
                ),
                self.guard.request_timeout,
            )
        except asyncio.TimeoutError:
            if not response.started:
                await send_refusal(send, self.guard.timed_out())
        finally:
            self.guard.release()

    async def http_stream(self, scope, receive, send):
        """``POST /stream``: the events as Server-Sent Events; ``POST /stream/cancel``:
        ``{"request_id": ...}`` cancels that stream. Refusals come before any event, as errors
        of the usual shape."""
        body = await self.read_body(scope, receive)
        if scope['path'] == defaults.STREAM_CANCEL_PATH:
            return await self.cancel_stream(send, body)
        request = check_json_request(header(scope, b'content-type'), body)
        live = self.streams.open(stream_request_from_json(request))
        await send(
            {
                'type': 'http.response.start',
                'status': 200,
                'headers': [
                    (b'content-type', b'text/event-stream'),
                    (b'cache-control', b'no-cache'),
                    (b'x-accel-buffering', b'no'),  # no buffering in nginx-style proxies
                ],
            }
        )
        # A client that hangs up cancels its stream, and with it the generation.
        hang_up = asyncio.create_task(wait_for_disconnect(receive, live.cancel))
        try:
            async with aclosing(live.events()) as events:
                async for event in events:
                    body = {'type': 'http.response.body', 'body': server_sent_event(event)}
                    if not await delivered(send({**body, 'more_body': True}), self.guard):
                        logger.info(reader_gone(self.streams))
                        return  # uvicorn closes the connection of an unfinished response
            await send({'type': 'http.response.body', 'body': b''})
        finally:
            hang_up.cancel()

    async def read_body(self, scope, receive) -> bytes:
        return await read_body(receive, header(scope, b'content-length'), self.body_limits)

    async def cancel_stream(self, send, body: bytes) -> None:
        try:
            request_id = json.loads(body)['request_id']
        except (ValueError, KeyError, TypeError):
            raise invalid('send {"request_id": "<the id of the accepted event>"}') from None
        if not self.streams.cancel(str(request_id)):
            raise Refusal(
                f'no stream with request id {request_id!r} is running on this gateway',
                grpc.StatusCode.NOT_FOUND,
                404,
            )
        await send_json(send, 200, {'request_id': request_id, 'cancelled': True})

    async def websocket(self, scope, receive, send):
        try:
            self.guard.check_credentials(header(scope, b'authorization'))
            if scope['path'] == defaults.STREAM_ENDPOINT:
                return await self.websocket_stream(receive, send)
            self.guard.check_open()
        except Refusal:
            # Closing before accepting refuses the handshake (HTTP 403): clients fail at once.
            # Accepting first to send the reason makes jina's Python client wait forever.
            await send({'type': 'websocket.close', 'code': WS_POLICY_VIOLATION})
            return
        binary = header(scope, b'sec-websocket-protocol') == WS_BINARY_SUBPROTOCOL
        connection = GuardedWebSocket(receive, send, RequestSlots(self.guard), binary)
        # jina's app is not cancelled when its client hangs up: it would wait for answers
        # nobody reads, and the Executors work on for nobody.
        app = asyncio.ensure_future(self.app(scope, connection.receive, connection.send))
        connection.on_client_close = app.cancel
        try:
            await app
            await connection.linger_after_error()  # the server closes when the app returns
        except asyncio.CancelledError:
            if not connection.client_closed:
                raise  # not the hang-up: the server is stopping
        finally:
            connection.release()

    async def websocket_stream(self, receive, send):
        """The WebSocket at /stream: one request message (JSON, as ``POST /stream``'s body), then
        the events as JSON text messages, the last one final; ``{"cancel": true}`` from the
        client, or its close, cancels. A refused request gets one error event."""
        await receive()  # websocket.connect
        await send({'type': 'websocket.accept'})
        try:
            try:
                message = await asyncio.wait_for(receive(), self.guard.client_idle_seconds)
            except asyncio.TimeoutError:
                raise self.guard.client_idle() from None
            if message['type'] != 'websocket.receive':
                return
            text = message.get('text')
            body = text.encode() if text is not None else message.get('bytes') or b''
            request = check_json_request(defaults.JSON_CONTENT_TYPE, body)  # bad UTF-8 too
            live = self.streams.open(stream_request_from_json(request))
        except Refusal as refusal:
            log_refusal('WebSocket', refusal)
            await send({'type': 'websocket.send', 'text': event_json(error_event(refusal))})
            await send({'type': 'websocket.close', 'code': WS_NORMAL_CLOSURE})
            return
        listener = asyncio.create_task(listen_for_cancel(receive, live.cancel))
        try:
            async with aclosing(live.events()) as events:
                async for event in events:
                    message = {'type': 'websocket.send', 'text': event_json(event)}
                    if not await delivered(send(message), self.guard):
                        reason = reader_gone(self.streams)
                        logger.info(reason)
                        await send(
                            {
                                'type': 'websocket.close',
                                'code': WS_POLICY_VIOLATION,
                                'reason': reason,
                            }
                        )
                        return
            await send({'type': 'websocket.close', 'code': WS_NORMAL_CLOSURE})
        finally:
            listener.cancel()


async def cancelled_on_hang_up(run_app: Callable, body: bytes, receive, response) -> None:
    """``run_app(app_receive)``, jina's app on the request ``body``, cancelled if the client
    hangs up before the ``response`` (an ``ErrorRewriter``) is complete: jina's HTTP app is not
    cancelled when its client goes, and would keep the Executors working for nobody. The app
    gets ``body`` and then, should it read on, the disconnect."""
    hung_up = asyncio.Event()
    body_given = False

    async def app_receive():
        nonlocal body_given
        if not body_given:
            body_given = True
            return {'type': 'http.request', 'body': body, 'more_body': False}
        await hung_up.wait()
        return {'type': 'http.disconnect'}

    app = asyncio.ensure_future(run_app(app_receive))

    def on_disconnect():
        hung_up.set()
        if not response.complete:
            app.cancel()

    listener = asyncio.create_task(wait_for_disconnect(receive, on_disconnect))
    try:
        await app
    except asyncio.CancelledError:
        if not hung_up.is_set():
            raise  # cancelled from outside (the request timeout), not by the hang-up
    finally:
        listener.cancel()


async def wait_for_disconnect(receive, on_disconnect: Callable[[], None]) -> None:
    """Call ``on_disconnect`` once the HTTP client has gone (its request body is read)."""
    while (await receive())['type'] != 'http.disconnect':
        pass
    on_disconnect()


async def listen_for_cancel(receive, cancel: Callable[[], None]) -> None:
    """Call ``cancel`` on a WebSocket message ``{"cancel": true}`` or the client's close."""
    while True:
        message = await receive()
        if message['type'] == 'websocket.disconnect':
            return cancel()
        try:
            wants_cancel = json.loads(message.get('text') or message.get('bytes') or '{}')
        except ValueError:
            continue
        if isinstance(wants_cancel, dict) and wants_cancel.get('cancel') is True:
            return cancel()


def header(scope, name: bytes) -> Optional[str]:
    for key, value in scope['headers']:
        if key.lower() == name:
            return value.decode('latin-1')
    return None


def http_endpoint(path: str) -> str:
    """The Flow endpoint an HTTP path names: jina serves '/' at /default, the rest at their name."""
    return path if path != defaults.HTTP_ROOT_ENDPOINT else '/'


def replay(body: bytes, receive):
    """An ASGI ``receive`` that hands out ``body`` once, then defers to the real one."""
    sent = False

    async def receive_again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {'type': 'http.request', 'body': body, 'more_body': False}

    return receive_again


class ErrorRewriter:
    """An ASGI ``send`` that passes successes through and turns jina's error answers (500 with
    ``{"detail": "RequestError('...')"}``, FastAPI's 422 list) into the gateway's own shape:
    the user's mistakes 422, the service's failures 500, ``{"detail": "<message>"}``."""

    def __init__(self, send):
        self._send = send
        self.started = False
        self.complete = False  # the last of the body is sent
        self._error_status = None
        self._error_body = b''

    async def send(self, message):
        if message['type'] == 'http.response.body' and not message.get('more_body'):
            self.complete = True
        if message['type'] == 'http.response.start':
            self.started = True
            if message['status'] >= 400:
                self._error_status = message['status']
                return
        elif message['type'] == 'http.response.body' and self._error_status is not None:
            self._error_body += message.get('body', b'')
            if not message.get('more_body'):
                await send_refusal(self._send, self.refusal())
            return
        await self._send(message)

    def refusal(self) -> Refusal:
        try:
            error = read_gateway_error(json.loads(self._error_body))
        except ValueError:
            return service_failure(
                self._error_body.decode(errors='replace') or 'the service failed'
            )
        if self._error_status < 500 and not error.refused:
            return Refusal(error.message, grpc.StatusCode.INVALID_ARGUMENT, self._error_status)
        if error.exception == TIMEOUT_ERROR_NAME:  # an Executor ran out of time: 504
            return executor_refusal(error.exception, error.message)
        return executor_refusal('RequestError' if error.refused else 'Exception', error.message)


async def send_refusal(send, refusal: Refusal) -> None:
    """An HTTP error response in the shape jina's own HTTP errors have: ``{"detail": ...}``."""
    log_refusal('HTTP', refusal)
    headers = []
    if refusal.http_status == 401:
        headers.append((b'www-authenticate', b'Bearer'))
    if refusal.http_status == 503:
        headers.append((b'retry-after', b'1'))
    await send_json(send, refusal.http_status, {'detail': refusal.message}, headers)


async def send_json(send, status: int, content, headers=()) -> None:
    """A whole HTTP response with a JSON body."""
    body = json.dumps(content).encode()
    headers = [
        (b'content-type', b'application/json'),
        (b'content-length', str(len(body)).encode()),
        *headers,
    ]
    await send({'type': 'http.response.start', 'status': status, 'headers': headers})
    await send({'type': 'http.response.body', 'body': body})


class GuardedWebSocket:
    """The ASGI ``receive`` and ``send`` of one WebSocket connection to jina's app.

    ``receive`` gives each request message a pending slot (``slots``) until its response goes
    out, and answers a request that ``check_data_request`` or the pending bound refuses with an
    error response instead of passing it on; a message that is no jina DataRequest (a text
    message, binary garbage) closes the connection with a code and reason that say so. A
    connection that sends no request holds no slot and is closed after the guard's
    ``client_idle_seconds``. Once the client has sent its last request (jina's end-of-iteration
    message), its close is still listened for, so that a client that hangs up cancels what it
    asked for (``on_client_close``).
    After an error response, the server's close waits until the client has closed (at most
    ``WS_CLOSE_AFTER_ERROR_SECONDS``): jina's client loses an error whose response and close
    arrive together, and returns no documents as if the request had succeeded."""

    def __init__(self, receive, send, slots: RequestSlots, binary: bool):
        self._receive = receive
        self._send = send
        self.slots = slots
        self.guard = slots.guard
        self.binary = binary  # the client asked for jina's 'bytes' subprotocol
        self.requested = False  # it has sent a request
        self.connected = False
        self.error_sent = False
        self.client_closed = False
        self.closed = False
        self.on_client_close: Callable[[], None] = lambda: None
        self._close_listener: Optional[asyncio.Task] = None

    def release(self) -> None:
        """Give back the slots the connection still holds; stop listening for the close."""
        self.slots.release_all()
        if self._close_listener is not None:
            self._close_listener.cancel()

    async def next_message(self):
        """The client's next message; before its first request, within ``client_idle_seconds``
        (else the connection is closed, and the app hears the close)."""
        if self.requested or not self.connected:
            message = await self._receive()
        else:
            try:
                message = await asyncio.wait_for(self._receive(), self.guard.client_idle_seconds)
            except asyncio.TimeoutError:
                idle = self.guard.client_idle()
                await self._send(
                    {'type': 'websocket.close', 'code': WS_POLICY_VIOLATION, 'reason': idle.message}
                )
                message = {'type': 'websocket.disconnect', 'code': WS_POLICY_VIOLATION}
        self.connected = True
        if message['type'] == 'websocket.disconnect':
            self.client_closed = True
            self.on_client_close()
        return message

    async def receive(self):
        while True:
            message = await self.next_message()
            if message['type'] != 'websocket.receive':
                return message
            data = message.get('bytes')
            if message.get('text') is not None or not self.binary:
                return await self.close_refused(WS_UNSUPPORTED_DATA, invalid(NOT_BINARY_MESSAGE))
            if data == WS_END_OF_ITERATION:
                # jina reads no more: listen for the client's close in its stead.
                self._close_listener = asyncio.create_task(self.listen_for_close())
                return message
            if not data:  # b'' is jina's dry run
                return message
            self.requested = True
            refusal, request = self.refusal_for(data)
            if refusal is None:
                return message
            if request is None:
                return await self.close_refused(WS_INVALID_PAYLOAD, refusal)
            log_refusal('WebSocket', refusal)
            self.error_sent = True
            response = error_response(request, refusal)
            await self._send({'type': 'websocket.send', 'bytes': response.SerializeToString()})

    async def listen_for_close(self) -> None:
        """Read (and drop) what the client sends after its last request, until it closes."""
        while not self.client_closed:
            await self.next_message()

    def refusal_for(self, data: bytes):
        """(the ``Refusal`` of a request message the Flow must not get, or None; the request, or
        None when the message is no DataRequest). An admitted request takes a slot."""
        from jina.types.request.data import DataRequest

        request = DataRequest(data)
        problem = data_request_problem(request)
        if problem is not None:
            return invalid(problem), None
        try:
            check_data_request(request)
            self.slots.admit(request.header.request_id)
        except Refusal as refusal:
            return refusal, request
        return None, request

    async def close_refused(self, code: int, refusal: Refusal):
        """Close the connection for a message that is no request; jina's app sees the client
        leave."""
        log_refusal('WebSocket', refusal)
        await self._send(
            {'type': 'websocket.close', 'code': code, 'reason': close_reason(refusal.message)}
        )
        self.closed = self.client_closed = True
        return {'type': 'websocket.disconnect', 'code': code}

    async def send(self, message):
        if self.closed:  # closed for a bad message: what jina still answers has nowhere to go
            return
        if message['type'] == 'websocket.send' and message.get('bytes'):
            request_id, failed = response_header(message['bytes'])
            self.slots.answered(request_id)
            self.error_sent = self.error_sent or failed
        elif message['type'] == 'websocket.close':
            await self.linger_after_error()
            if self.client_closed:
                return
        await self._send(message)

    async def linger_after_error(self) -> None:
        """After an error response, wait until the client closes (reading and dropping what it
        still sends), for a bounded time, so that the server's close does not overtake the
        error."""
        if not self.error_sent or self.client_closed:
            return
        closed = self._close_listener or asyncio.ensure_future(self.listen_for_close())
        try:
            await asyncio.wait_for(asyncio.shield(closed), WS_CLOSE_AFTER_ERROR_SECONDS)
        except asyncio.TimeoutError:
            pass


def close_reason(message: str) -> str:
    """``message`` cut to what a WebSocket close frame carries (123 bytes of UTF-8)."""
    reason = message.encode()[:WS_MAX_CLOSE_REASON_BYTES]
    return reason.decode(errors='ignore')


def response_header(data: bytes) -> Tuple[str, bool]:
    """(request id, whether it is an error) of a serialised jina DataRequest, from its header
    alone; ('', False) for what is none (a dry run's status)."""
    from jina.types.request.data import DataRequest

    try:
        header = DataRequest(data).header
        return header.request_id, status_refusal(header.status) is not None
    except Exception:  # noqa: BLE001 - not a DataRequest (a dry-run status): not an error
        return '', False


class RedactCredentials(logging.Filter):
    """uvicorn's WebSocket server logs each handshake header at DEBUG ("< name: value"), the
    Authorization header with the API key included; this replaces that value."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == 'authorization':
            record.args = (args[0], '[redacted]')
        return True


REDACT_CREDENTIALS = RedactCredentials()
# jina's gateway asks each Executor for its endpoints every second until it answers, with a
# warning at each try: while the Executors load their models that is the expected start, not a
# fault. After the grace an Executor that still does not answer is one, and the warnings pass.
EXECUTOR_START_WARNING = 'Getting endpoints failed'
EXECUTOR_START_GRACE_SECONDS = 300.0


class QuietExecutorStart(logging.Filter):
    """Turns jina's start-up retries ("Getting endpoints failed ... Connection refused. Waiting
    for another trial") into one line saying what happens, for EXECUTOR_START_GRACE_SECONDS
    after the first; later ones pass as jina wrote them."""

    def __init__(self):
        super().__init__()
        self.first_seen: Optional[float] = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(EXECUTOR_START_WARNING):
            return True
        now = time.monotonic()
        if self.first_seen is None:
            self.first_seen = now
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg = (
                'waiting for the Executors to start (they load their models); jina asks them '
                f'every second and warns again if one has not answered in '
                f'{EXECUTOR_START_GRACE_SECONDS:g} s'
            )
            record.args = ()
            return True
        return now - self.first_seen > EXECUTOR_START_GRACE_SECONDS


# The logger uvicorn hands to the `websockets` library for its connections.
WEBSOCKET_LOGGER = 'uvicorn.error'


def guarded_app(
    app,
    guard: RequestGuard,
    streams: StreamService,
    body_limits: BodyLimits,
    cors_origins: List[str],
):
    """Put the guard in front of a FastAPI app, and CORS for ``cors_origins`` in front of both
    (outermost, so that refusals carry CORS headers and preflights need no key)."""
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(GuardMiddleware, guard=guard, streams=streams, body_limits=body_limits)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=['GET', 'POST'],
            allow_headers=['authorization', 'content-type'],
        )
    return app


# --- the servers ------------------------------------------------------------------------------


class GuardedGRPCGateway(GRPCGateway):
    def __init__(self, guard: RequestGuard, streams: StreamService, **kwargs):
        super().__init__(**kwargs)
        # jina passes this list to grpc.aio.server(interceptors=...); it holds the tracing ones.
        self.grpc_tracing_server_interceptors = [
            GuardInterceptor(guard, streams),
            *(self.grpc_tracing_server_interceptors or []),
        ]


class GuardedASGIGateway:
    """What the HTTP and WebSocket servers add to jina's: the guard's middleware on their app."""

    def __init__(
        self,
        guard: RequestGuard,
        streams: StreamService,
        body_limits: BodyLimits,
        cors_origins: List[str],
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.guard, self.streams = guard, streams
        self.body_limits, self.cors_origins = body_limits, cors_origins

    def guarded(self, app):
        return guarded_app(app, self.guard, self.streams, self.body_limits, self.cors_origins)


class GuardedHTTPGateway(GuardedASGIGateway, HTTPGateway):
    @property
    def app(self):
        return self.guarded(super().app)


class GuardedWebSocketGateway(GuardedASGIGateway, WebSocketGateway):
    # jina's WebSocket server builds its app in setup_server() and assigns it to self.app.
    @property
    def app(self):
        return self._app

    @app.setter
    def app(self, app):
        self._app = self.guarded(app)

    async def setup_server(self):
        """jina's server, reading no message over the size cap: jina sets uvicorn's limit to
        1 GiB (a 300 MiB message was read whole before it was refused), so the limit is set on
        the server's configuration, which each connection reads when it opens. The websockets
        library then refuses a message by the size its frame header declares (close 1009)."""
        await super().setup_server()
        self.server.config.ws_max_size = self.body_limits.max_bytes
        self.server.config.ws_max_queue = WS_MAX_QUEUE


SERVER_CLASSES = {
    ProtocolType.GRPC: GuardedGRPCGateway,
    ProtocolType.HTTP: GuardedHTTPGateway,
    ProtocolType.WEBSOCKET: GuardedWebSocketGateway,
}


def log_refusals_to(jina_logger) -> None:
    """Write the refusals' log lines (request_policy.REFUSALS_LOG) where the gateway's own go."""
    REFUSALS_LOG.handlers = list(jina_logger.logger.handlers)
    REFUSALS_LOG.setLevel(jina_logger.logger.level)
    REFUSALS_LOG.propagate = False


class GuardedGateway(CompositeBaseServer, BaseGateway):
    """jina's composite gateway (one server per protocol) behind one ``RequestGuard``."""

    def __init__(
        self,
        max_pending_requests: int = defaults.MAX_PENDING_REQUESTS,
        max_request_mb: float = defaults.MAX_REQUEST_MB,
        cors_origins: Iterable[str] = (),
        drain_seconds: float = defaults.DRAIN_SECONDS,
        request_timeout_seconds: float = defaults.REQUEST_TIMEOUT_SECONDS,
        client_idle_seconds: float = defaults.CLIENT_IDLE_SECONDS,
        body_timeout_seconds: float = defaults.BODY_TIMEOUT_SECONDS,
        **kwargs,
    ):
        """
        :param max_pending_requests: data calls in flight at once, over all protocols.
        :param max_request_mb: largest request accepted, in MiB (gRPC message, HTTP body,
            WebSocket message).
        :param cors_origins: origins browsers may call this gateway from; none allows no other
            origin than the gateway's own.
        :param drain_seconds: how long SIGTERM waits for calls in flight before shutting down;
            the process ends ``SHUTDOWN_GRACE_SECONDS`` later whatever is still running.
        :param request_timeout_seconds: a gRPC call or HTTP request with no answer by then ends
            with gRPC DEADLINE_EXCEEDED or HTTP 504, whatever the Executors are doing (retries
            included); WebSocket connections are long-lived and not timed.
        :param client_idle_seconds: a call or connection that sends no request by then, or a
            stream reader that takes no event for that long, is closed (its slot freed).
        :param body_timeout_seconds: an HTTP request whose body has not all arrived by then is
            answered 408.
        """
        super().__init__(**kwargs)
        logging.getLogger(WEBSOCKET_LOGGER).addFilter(REDACT_CREDENTIALS)
        # The gateway's logger, which jina's topology graph logs its start-up retries with.
        self.logger.logger.addFilter(QuietExecutorStart())
        log_refusals_to(self.logger)
        api_key = api_key_from_environment()
        self.guard = RequestGuard(
            api_key, max_pending_requests, request_timeout_seconds, client_idle_seconds
        )
        whole_requests(self.streamer)
        streams = StreamService(self.guard, self.streamer)
        end_requests_with_their_callers(self.streamer)
        cancel_executor_calls_with_their_tasks()
        answer_timeouts_once(self.streamer._connection_pool)
        self.drain_seconds = drain_seconds
        max_request_bytes = int(max_request_mb * defaults.MEBIBYTE)
        body_limits = BodyLimits(max_request_bytes, body_timeout_seconds)
        self.servers = []
        for server_kwargs in self._server_kwargs:
            server_kwargs['grpc_server_options'] = {
                **(server_kwargs.get('grpc_server_options') or {}),
                'grpc.max_receive_message_length': max_request_bytes,
            }
            protocol = server_kwargs['runtime_args']['protocol']
            server_class = SERVER_CLASSES[protocol]
            if server_class is not GuardedGRPCGateway:
                server_kwargs.update(body_limits=body_limits, cors_origins=list(cors_origins))
            self.servers.append(server_class(guard=self.guard, streams=streams, **server_kwargs))
        # Scale to zero: calls wait (bounded) for an Executor with no replica yet (cold_start.py).
        hold_calls_for_replicas(
            self.streamer._connection_pool, cold_start_seconds_from_environment()
        )
        self.gateways = self.servers  # the name jina's older code reads
        self.logger.info(
            f'API key {"required" if api_key else "not required"}; '
            f'at most {max_pending_requests} pending requests of up to {max_request_mb:g} MiB'
        )

    async def shutdown(self):
        """Drain, then let jina stop the servers and close the connections to the Executors.
        jina's own shutdown waits for whatever is still running, without bound: so the process
        ends ``SHUTDOWN_GRACE_SECONDS`` after the drain, however far that got."""
        left = await self.guard.drain(self.drain_seconds)
        if left:
            self.logger.warning(
                f'{left} requests still running after {self.drain_seconds:g} s of drain'
            )
        exit_after(defaults.SHUTDOWN_GRACE_SECONDS, self.logger)
        await super().shutdown()
