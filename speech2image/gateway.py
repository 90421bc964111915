"""GuardedGateway: jina's gRPC, HTTP and WebSocket gateway with an API key, a bound on pending
requests, a request-size cap, CORS for one origin, and a drain on SIGTERM.

jina 3.34's gateway has none of these, so this is its composite gateway (jina's documented
extension point, ``CompositeBaseServer``) built from jina's own three servers with one shared
``RequestGuard`` in front of them:

- gRPC: a server interceptor; HTTP and WebSocket: an ASGI middleware on jina's FastAPI apps.
  A refused WebSocket handshake is an HTTP 403 (the ASGI server here cannot send a reason).
- **API key**: read from the ``S2I_API_KEY`` environment variable (never from a flag, so it is not
  in flow.yml, the command line or the logs). Unset: no key is asked for (local development).
  Set: every call but the health checks must send ``Authorization: Bearer <key>``
  (``speech2image`` the client sends it from the same variable).
- **Pending requests**: at most ``max_pending_requests`` data calls (gRPC calls, HTTP POSTs,
  WebSocket connections) at once across the three protocols; one more is refused at once with
  gRPC RESOURCE_EXHAUSTED or HTTP 503, instead of queueing without bound.
- **Request timeout**: a call with no answer after ``request_timeout_seconds`` ends with gRPC
  DEADLINE_EXCEEDED or HTTP 504, however jina's per-Executor timeout and retries play out.
- **Drain**: on SIGTERM new calls are refused (gRPC UNAVAILABLE, HTTP 503) while the ones in
  flight finish, for up to ``drain_seconds``; then jina shuts down.

Loaded by jina from ``gateway.yml`` beside this file (``py_modules``), in the gateway process.
"""

import asyncio
import hmac
import json
import logging
import math
import os
import time
from typing import Callable, Iterable, List, Optional

import grpc
from jina.enums import ProtocolType
from jina.serve.runtimes.gateway.gateway import BaseGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.gateway.websocket import WebSocketGateway
from jina.serve.runtimes.servers.composite import CompositeBaseServer

from speech2image.client import API_KEY_ENV
from speech2image.cold_start import cold_start_seconds_from_environment, hold_calls_for_replicas
from speech2image.draining import DEFAULT_DRAIN_SECONDS

MEBIBYTE = 2**20
DEFAULT_MAX_PENDING_REQUESTS = 64
DEFAULT_MAX_REQUEST_MB = 32
DEFAULT_REQUEST_TIMEOUT_SECONDS = 300.0
DRAIN_POLL_SECONDS = 0.05
# gRPC calls that carry documents to the Executors: the ones counted against the bound.
GRPC_DATA_METHODS = frozenset({
    '/jina.JinaRPC/Call',
    '/jina.JinaSingleDataRequestRPC/process_single_data',
    '/jina.JinaSingleDocumentRequestRPC/stream_doc',
})
# Health checks stay open: Kubernetes probes (`jina ping`) and the Flow's readiness use them.
GRPC_HEALTH_PREFIX = '/grpc.health.v1.Health/'
HTTP_HEALTH_PATH = '/'
# WebSocket close codes (RFC 6455).
WS_POLICY_VIOLATION, WS_TOO_BIG = 1008, 1009

UNAUTHORIZED_MESSAGE = 'missing or wrong API key: send the header "Authorization: Bearer <key>"'


class Refusal(Exception):
    """Why a call is turned away: a message for the client plus the status per protocol."""

    def __init__(self, message: str, grpc_code: grpc.StatusCode, http_status: int):
        super().__init__(message)
        self.message = message
        self.grpc_code = grpc_code
        self.http_status = http_status


class RequestGuard:
    """What the three servers of one gateway share: the API key, the pending-call count, the drain.

    All three servers run on the gateway's one asyncio loop, so the count needs no lock.
    """

    def __init__(self, api_key: Optional[str], max_pending: int, request_timeout: float):
        if max_pending < 1:
            raise ValueError(f'max_pending_requests must be at least 1, got {max_pending}')
        self._api_key = api_key.encode() if api_key else None
        self.max_pending = max_pending
        self.request_timeout = request_timeout
        self.pending = 0
        self.draining = False

    def check_credentials(self, authorization: Optional[str]) -> None:
        """Raise ``Refusal`` unless the ``Authorization`` header carries the key (or none is set)."""
        if self._api_key is None:
            return
        scheme, _, token = (authorization or '').partition(' ')
        if scheme.lower() != 'bearer' or not hmac.compare_digest(token.strip().encode(), self._api_key):
            raise Refusal(UNAUTHORIZED_MESSAGE, grpc.StatusCode.UNAUTHENTICATED, 401)

    def admit(self) -> None:
        """Count one more call in flight, or raise ``Refusal`` when draining or full."""
        if self.draining:
            raise Refusal(
                'the gateway is shutting down; retry the request',
                grpc.StatusCode.UNAVAILABLE, 503,
            )
        if self.pending >= self.max_pending:
            raise Refusal(
                f'server busy: {self.max_pending} requests are already in progress; retry later',
                grpc.StatusCode.RESOURCE_EXHAUSTED, 503,
            )
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    def timed_out(self) -> Refusal:
        return Refusal(
            f'no answer within {self.request_timeout:g} s: the service is overloaded or an '
            'Executor is stuck; retry later',
            grpc.StatusCode.DEADLINE_EXCEEDED, 504,
        )

    async def drain(self, seconds: float) -> int:
        """Refuse new calls and wait up to ``seconds`` for the ones in flight; return how many
        were still running when the wait ended (0 after a clean drain)."""
        self.draining = True
        deadline = time.monotonic() + seconds
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return self.pending


def non_finite_parameter(struct) -> Optional[str]:
    """The name of a request parameter holding NaN or infinity in a protobuf ``Struct``, if any.

    jina cannot turn such a number back into JSON: the call fails with an obscure error and the
    gateway then spins at full CPU when it shuts down. So they are refused on the way in."""
    pending = [(name, value) for name, value in struct.fields.items()]
    while pending:
        name, value = pending.pop()
        kind = value.WhichOneof('kind')
        if kind == 'number_value' and not math.isfinite(value.number_value):
            return name
        if kind == 'struct_value':
            pending += [(f'{name}.{key}', item) for key, item in value.struct_value.fields.items()]
        elif kind == 'list_value':
            pending += [(name, item) for item in value.list_value.values]
    return None


def check_parameters(request) -> None:
    """Raise ``Refusal`` for a jina DataRequest whose parameters hold NaN or infinity."""
    name = non_finite_parameter(request.proto_wo_data.parameters)
    if name is not None:
        raise Refusal(f"parameter '{name}' must be a finite number, got NaN or infinity",
                      grpc.StatusCode.INVALID_ARGUMENT, 400)


class RedactCredentials(logging.Filter):
    """uvicorn's WebSocket server logs each handshake header at DEBUG ("< name: value"), the
    Authorization header with the API key included; this replaces that value."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == 'authorization':
            record.args = (args[0], '[redacted]')
        return True


REDACT_CREDENTIALS = RedactCredentials()
# The logger uvicorn hands to the `websockets` library for its connections.
WEBSOCKET_LOGGER = 'uvicorn.error'


def api_key_from_environment() -> Optional[str]:
    return os.environ.get(API_KEY_ENV) or None


# --- gRPC -------------------------------------------------------------------------------------

class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Checks the key on every gRPC call but health checks; counts and times the data calls."""

    def __init__(self, guard: RequestGuard):
        self.guard = guard

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
            return replace_behavior(handler, lambda behavior, kind: guarded(self.guard, behavior, kind))
        return handler


def replace_behavior(handler: grpc.RpcMethodHandler, wrap: Callable) -> grpc.RpcMethodHandler:
    """The same method handler with its behaviour replaced by ``wrap(behavior, kind)``."""
    serializers = dict(request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)
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
    if kind.startswith('stream'):
        async for _ in request:
            break
    await context.abort(refusal.grpc_code, refusal.message)


async def checked_stream(requests, context):
    """The client's stream of DataRequests, checked before jina reads them.

    The first is read and checked before jina sees the call, so a refusal ends it cleanly.
    A later bad one ends the stream early with INVALID_ARGUMENT: aborting while jina reads the
    stream leaves jina counting a request that never ends, and its shutdown then spins."""
    iterator = requests.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        return iterator
    check_parameters(first)

    async def the_rest():
        yield first
        async for request in iterator:
            try:
                check_parameters(request)
            except Refusal as refusal:
                context.set_code(refusal.grpc_code)
                context.set_details(refusal.message)
                return
            yield request

    return the_rest()


async def checked_request(request, context, kind: str):
    """``request`` (a DataRequest, or a stream of them) after ``check_parameters``."""
    if kind.startswith('stream'):
        return await checked_stream(request, context)
    check_parameters(request)
    return request


def refused(refusal: Refusal, kind: str) -> Callable:
    async def refuse(request, context):
        await abort(refusal, request, context, kind)

    return refuse


def guarded(guard: RequestGuard, behavior: Callable, kind: str) -> Callable:
    """``behavior`` holding one pending slot from admission to its last response, and ended
    with DEADLINE_EXCEEDED when it runs past the guard's request timeout."""
    if kind.endswith('stream'):
        async def guarded_stream(request, context):
            try:
                guard.admit()
            except Refusal as refusal:
                await abort(refusal, request, context, kind)
                return
            try:
                request = await checked_request(request, context, kind)
            except Refusal as refusal:
                guard.release()
                await abort(refusal, request, context, 'unary')
                return
            responses = behavior(request, context).__aiter__()
            deadline = time.monotonic() + guard.request_timeout
            try:
                while True:
                    try:
                        response = await asyncio.wait_for(
                            responses.__anext__(), deadline - time.monotonic())
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        await abort(guard.timed_out(), request, context, 'unary')
                    yield response
            finally:
                guard.release()

        return guarded_stream

    async def guarded_unary(request, context):
        try:
            guard.admit()
        except Refusal as refusal:
            return await abort(refusal, request, context, kind)
        try:
            request = await checked_request(request, context, kind)
            return await asyncio.wait_for(behavior(request, context), guard.request_timeout)
        except Refusal as refusal:
            await abort(refusal, request, context, 'unary')
        except asyncio.TimeoutError:
            await abort(guard.timed_out(), request, context, 'unary')
        finally:
            guard.release()

    return guarded_unary


# --- HTTP and WebSocket -----------------------------------------------------------------------

class GuardMiddleware:
    """ASGI middleware for jina's FastAPI apps: key check, pending bound, request-size cap."""

    def __init__(self, app, guard: RequestGuard, max_request_bytes: int):
        self.app = app
        self.guard = guard
        self.max_request_bytes = max_request_bytes

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
            if scope['method'] != 'POST':
                return await self.app(scope, receive, send)
            body = await read_body(receive, self.max_request_bytes)
            check_json_numbers(body)
            self.guard.admit()
        except Refusal as refusal:
            return await send_refusal(send, refusal)
        response_started = False

        async def send_tracked(message):
            nonlocal response_started
            response_started = True
            await send(message)

        try:
            await asyncio.wait_for(
                self.app(scope, replay(body, receive), send_tracked), self.guard.request_timeout)
        except asyncio.TimeoutError:
            if not response_started:
                await send_refusal(send, self.guard.timed_out())
        finally:
            self.guard.release()

    async def websocket(self, scope, receive, send):
        try:
            self.guard.check_credentials(header(scope, b'authorization'))
            self.guard.admit()
        except Refusal:
            # Closing before accepting refuses the handshake (HTTP 403): clients fail at once.
            # Accepting first to send the reason makes jina's Python client wait forever.
            await send({'type': 'websocket.close', 'code': WS_POLICY_VIOLATION})
            return
        try:
            await self.app(scope, capped_messages(receive, send, self.max_request_bytes), send)
        finally:
            self.guard.release()


def header(scope, name: bytes) -> Optional[str]:
    for key, value in scope['headers']:
        if key.lower() == name:
            return value.decode('latin-1')
    return None


def too_large(limit: int) -> Refusal:
    return Refusal(
        f'request is larger than the {limit / MEBIBYTE:g} MiB limit',
        grpc.StatusCode.RESOURCE_EXHAUSTED, 413,
    )


async def read_body(receive, limit: int) -> bytes:
    """The whole request body, refused past ``limit`` bytes (jina reads it all anyway)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message['type'] == 'http.disconnect':
            break
        chunk = message.get('body', b'')
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get('more_body'):
            break
    return b''.join(chunks)


NON_STANDARD_NUMBERS = (b'NaN', b'Infinity')


def check_json_numbers(body: bytes) -> None:
    """Refuse JSON with NaN or Infinity, which Python's parser accepts (see ``check_parameters``)."""
    if not any(token in body for token in NON_STANDARD_NUMBERS):
        return

    def refuse(token):
        raise Refusal(f'request body is not standard JSON: {token} is not a number',
                      grpc.StatusCode.INVALID_ARGUMENT, 400)

    try:
        json.loads(body, parse_constant=refuse)
    except ValueError:
        pass  # not JSON at all: the gateway's own parser says so


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


def capped_messages(receive, send, limit: int):
    """An ASGI ``receive`` that closes the WebSocket on a message over ``limit`` bytes."""

    async def receive_capped():
        message = await receive()
        if message['type'] == 'websocket.receive':
            size = len(message.get('bytes') or b'') + len((message.get('text') or '').encode())
            if size > limit:
                await send({'type': 'websocket.close', 'code': WS_TOO_BIG,
                            'reason': too_large(limit).message})
                return {'type': 'websocket.disconnect', 'code': WS_TOO_BIG}
        return message

    return receive_capped


async def send_refusal(send, refusal: Refusal) -> None:
    """An HTTP error response in the shape jina's own HTTP errors have: ``{"detail": ...}``."""
    body = json.dumps({'detail': refusal.message}).encode()
    headers = [(b'content-type', b'application/json'), (b'content-length', str(len(body)).encode())]
    if refusal.http_status == 401:
        headers.append((b'www-authenticate', b'Bearer'))
    if refusal.http_status == 503:
        headers.append((b'retry-after', b'1'))
    await send({'type': 'http.response.start', 'status': refusal.http_status, 'headers': headers})
    await send({'type': 'http.response.body', 'body': body})


def guarded_app(app, guard: RequestGuard, max_request_bytes: int, cors_origins: List[str]):
    """Put the guard in front of a FastAPI app, and CORS for ``cors_origins`` in front of both
    (outermost, so that refusals carry CORS headers and preflights need no key)."""
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(GuardMiddleware, guard=guard, max_request_bytes=max_request_bytes)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=['GET', 'POST'],
            allow_headers=['authorization', 'content-type'],
        )
    return app


# --- the servers ------------------------------------------------------------------------------

class GuardedGRPCGateway(GRPCGateway):
    def __init__(self, guard: RequestGuard, **kwargs):
        super().__init__(**kwargs)
        # jina passes this list to grpc.aio.server(interceptors=...); it holds the tracing ones.
        self.grpc_tracing_server_interceptors = [
            GuardInterceptor(guard), *(self.grpc_tracing_server_interceptors or [])
        ]


class GuardedHTTPGateway(HTTPGateway):
    def __init__(self, guard: RequestGuard, max_request_bytes: int, cors_origins: List[str], **kwargs):
        super().__init__(**kwargs)
        self.guard, self.max_request_bytes, self.cors_origins = guard, max_request_bytes, cors_origins

    @property
    def app(self):
        return guarded_app(super().app, self.guard, self.max_request_bytes, self.cors_origins)


class GuardedWebSocketGateway(WebSocketGateway):
    def __init__(self, guard: RequestGuard, max_request_bytes: int, cors_origins: List[str], **kwargs):
        super().__init__(**kwargs)
        self.guard, self.max_request_bytes, self.cors_origins = guard, max_request_bytes, cors_origins

    # jina's WebSocket server builds its app in setup_server() and assigns it to self.app.
    @property
    def app(self):
        return self._app

    @app.setter
    def app(self, app):
        self._app = guarded_app(app, self.guard, self.max_request_bytes, self.cors_origins)


SERVER_CLASSES = {
    ProtocolType.GRPC: GuardedGRPCGateway,
    ProtocolType.HTTP: GuardedHTTPGateway,
    ProtocolType.WEBSOCKET: GuardedWebSocketGateway,
}


class GuardedGateway(CompositeBaseServer, BaseGateway):
    """jina's composite gateway (one server per protocol) behind one ``RequestGuard``."""

    def __init__(
        self,
        max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS,
        max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
        cors_origins: Iterable[str] = (),
        drain_seconds: float = DEFAULT_DRAIN_SECONDS,
        request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
        **kwargs,
    ):
        """
        :param max_pending_requests: data calls in flight at once, over all protocols.
        :param max_request_mb: largest request accepted, in MiB (gRPC message, HTTP body,
            WebSocket message).
        :param cors_origins: origins browsers may call this gateway from; none allows no other
            origin than the gateway's own.
        :param drain_seconds: how long SIGTERM waits for calls in flight before shutting down.
        :param request_timeout_seconds: a gRPC call or HTTP request with no answer by then ends
            with gRPC DEADLINE_EXCEEDED or HTTP 504, whatever the Executors are doing (retries
            included); WebSocket connections are long-lived and not timed.
        """
        super().__init__(**kwargs)
        logging.getLogger(WEBSOCKET_LOGGER).addFilter(REDACT_CREDENTIALS)
        self.guard = RequestGuard(
            api_key_from_environment(), max_pending_requests, request_timeout_seconds
        )
        self.drain_seconds = drain_seconds
        max_request_bytes = int(max_request_mb * MEBIBYTE)
        self.servers = []
        for server_kwargs in self._server_kwargs:
            server_kwargs['grpc_server_options'] = {
                **(server_kwargs.get('grpc_server_options') or {}),
                'grpc.max_receive_message_length': max_request_bytes,
            }
            protocol = server_kwargs['runtime_args']['protocol']
            server_class = SERVER_CLASSES[protocol]
            if server_class is not GuardedGRPCGateway:
                server_kwargs.update(max_request_bytes=max_request_bytes,
                                     cors_origins=list(cors_origins))
            self.servers.append(server_class(guard=self.guard, **server_kwargs))
        # Scale to zero: calls wait (bounded) for an Executor with no replica yet (cold_start.py).
        hold_calls_for_replicas(self.streamer._connection_pool, cold_start_seconds_from_environment())
        self.gateways = self.servers  # the name jina's older code reads
        self.logger.info(
            f'API key {"required" if api_key_from_environment() else "not required"}; '
            f'at most {max_pending_requests} pending requests of up to {max_request_mb:g} MiB'
        )

    async def shutdown(self):
        """Drain, then let jina stop the servers and close the connections to the Executors."""
        left = await self.guard.drain(self.drain_seconds)
        if left:
            self.logger.warning(f'{left} requests still running after {self.drain_seconds:g} s of drain')
        await super().shutdown()
