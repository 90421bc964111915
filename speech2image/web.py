"""The web page: speak (or upload, or type) a prompt in the browser, see the images.

    python -m speech2image.web                           # page on :54325, gateway on :54323
    python -m speech2image.web --gateway http://gateway:8080   # e.g. on Kubernetes

A small aiohttp service that serves the static page (``speech2image/webpage/``) and forwards the
page's requests, ``POST /api/<endpoint>``, to the Flow's HTTP gateway. The browser thus talks to one
origin only, and the gateway need not be reachable from outside. On the way back it turns the
gateway's errors into ``{"error": "<the Executor's message>"}``, refuses work beyond
``--max-in-flight`` requests with "server busy", and bounds uploads and waiting time.

The service holds no key of its own. When the gateway requires an API key (``S2I_API_KEY`` in
the gateway's environment), each person enters it on the page, which sends it with each call as
``Authorization: Bearer <key>``; the service passes that header on and nothing else, so an
anonymous caller is refused by the gateway (401) however the page is exposed.

``POST /api/info`` is the Flow's ``/info``: the models served, the size the image model is made
for and one step's cost, which the page shows and sizes its menu by.

``POST /api/stream`` is relayed to the gateway's streaming call ``POST /stream`` as it happens:
its Server-Sent Events (accepted, transcript, progress, preview, then done, error or cancelled)
reach the page one by one, unbuffered. ``POST /api/stream/cancel`` forwards
``{"request_id": ...}`` to ``/stream/cancel``; a browser that goes away closes the gateway
stream, which cancels the generation.

Every flag can also be given as an ``S2I_WEB_*`` environment variable: ``--gateway`` is
``S2I_WEB_GATEWAY``.
"""

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from aiohttp import ClientConnectionError, ClientPayloadError, ClientSession, ClientTimeout, web

from speech2image import defaults
from speech2image.auth import API_KEY_ENV, api_key_from_environment
from speech2image.gateway_errors import read_gateway_error
from speech2image.settings import apply_environment

ENV_PREFIX = 'S2I_WEB_'
PAGE_DIR = Path(__file__).resolve().parent / 'webpage'
# The page's names for the Flow's endpoints: the gateway's HTTP paths without their slash.
ENDPOINTS = tuple(
    (defaults.HTTP_ROOT_ENDPOINT if name == '/' else name).strip('/') for name in defaults.ENDPOINTS
)
# The gateway's streaming call and its cancel, as the page names them: /api/stream...
STREAM_NAME = defaults.STREAM_ENDPOINT.strip('/')
STREAM_CANCEL_NAME = defaults.STREAM_CANCEL_PATH.strip('/')
SSE_CONTENT_TYPE = 'text/event-stream'
SSE_HEADERS = {
    'Content-Type': SSE_CONTENT_TYPE,
    'Cache-Control': 'no-cache',
    'X-Accel-Buffering': 'no',  # no buffering in nginx-style proxies in front of this service
}
# The page loads only its own files; images and recordings are blob: URLs made by the page.
SECURITY_HEADERS = {
    'Content-Security-Policy': "default-src 'self'; img-src 'self' blob:; media-src 'self' blob:",
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
}
logger = logging.getLogger('speech2image.web')


@dataclass
class Settings:
    """How the service forwards requests; see ``parse_args`` for each field's meaning."""

    gateway: str
    max_in_flight: int
    timeout_s: float
    max_request_mb: int


@dataclass
class Load:
    """Requests being forwarded right now (one event loop: no lock needed)."""

    in_flight: int = 0


SETTINGS = web.AppKey('settings', Settings)
SESSION = web.AppKey('session', ClientSession)
LOAD = web.AppKey('load', Load)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Serve the speech2image web page.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        '--host',
        default=defaults.HOST,
        help='address the page is served on (0.0.0.0: every interface)',
    )
    parser.add_argument(
        '--port', type=int, default=defaults.PORT_WEB, help='port the page is served on'
    )
    parser.add_argument(
        '--gateway',
        default=f'http://{defaults.HOST}:{defaults.PORT_HTTP}',
        help="base URL of the Flow's HTTP gateway",
    )
    parser.add_argument(
        '--max-in-flight',
        type=int,
        default=4,
        help='requests forwarded at once; more are answered "server busy"',
    )
    parser.add_argument(
        '--timeout-s',
        type=float,
        default=600,
        help='longest wait for the gateway to answer one request',
    )
    parser.add_argument(
        '--max-request-mb',
        type=int,
        default=32,
        help='largest request the page may send (base64 audio is 4/3 of the file)',
    )
    apply_environment(parser, ENV_PREFIX)
    return parser.parse_args(argv)


def error_response(status: int, message: str) -> web.Response:
    """The JSON error the page shows: ``{"error": message}``."""
    return web.json_response({'error': message}, status=status)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PAGE_DIR / 'index.html')


async def healthz(request: web.Request) -> web.Response:
    """Liveness of this service alone (the gateway has its own probe), and its load."""
    return web.json_response({'status': 'ok', 'in_flight': request.app[LOAD].in_flight})


async def forward(request: web.Request) -> web.Response:
    """Forward the page's JSON request to the gateway endpoint named in the path."""
    endpoint = request.match_info['endpoint']
    if endpoint not in ENDPOINTS:
        return error_response(
            404, f'unknown endpoint {endpoint!r}; use one of {", ".join(ENDPOINTS)}'
        )
    settings = request.app[SETTINGS]
    return await within_bounds(request, lambda: send_to_gateway(request, endpoint, settings))


def not_json(request: web.Request) -> Optional[web.Response]:
    """The error for a request that is not JSON, or None."""
    if request.content_type == defaults.JSON_CONTENT_TYPE:
        return None
    return error_response(
        415, f'send the request as {defaults.JSON_CONTENT_TYPE}, not {request.content_type}'
    )


def busy(request: web.Request) -> Optional[web.Response]:
    """The error for a request beyond ``--max-in-flight``, or None."""
    limit = request.app[SETTINGS].max_in_flight
    if request.app[LOAD].in_flight >= limit:
        return error_response(
            503,
            f'server busy: too many requests at once (the limit is {limit}); try again in a moment',
        )
    return None


async def within_bounds(request: web.Request, handle) -> web.StreamResponse:
    """``await handle()``, counted in flight, unless the request is not JSON or one too many."""
    refused = not_json(request) or busy(request)
    if refused is not None:
        return refused
    load = request.app[LOAD]
    load.in_flight += 1
    try:
        return await handle()
    finally:
        load.in_flight -= 1


def too_large(settings: Settings) -> web.Response:
    """The error for an upload beyond ``--max-request-mb``."""
    return error_response(
        413,
        f'the upload is too large: the limit is {settings.max_request_mb} MB '
        'of base64 audio, about 3/4 of that as a file',
    )


async def send_to_gateway(request: web.Request, endpoint: str, settings: Settings) -> web.Response:
    """Post the request body to the gateway; its answer, or an error the page can show."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return too_large(settings)
    session = request.app[SESSION]
    try:
        async with session.post(
            f'{settings.gateway}/{endpoint}',
            data=body,
            headers=gateway_headers(request),
            timeout=ClientTimeout(total=settings.timeout_s),
        ) as answer:
            if answer.status == 200:
                return web.Response(body=await answer.read(), content_type='application/json')
            return await gateway_refusal(answer, endpoint)
    except GATEWAY_FAILURES as error:
        return error_response(*gateway_failure(error, settings))


async def stream(request: web.Request) -> web.StreamResponse:
    """``POST /api/stream``: the gateway's ``/stream``, its events relayed as they arrive."""
    settings = request.app[SETTINGS]
    return await within_bounds(request, lambda: relay_stream(request, settings))


async def relay_stream(request: web.Request, settings: Settings) -> web.StreamResponse:
    """Post the body to the gateway's ``/stream`` and pass its Server-Sent Events on to the page
    chunk by chunk. A refusal before the first event is the usual ``{"error": ...}``; a failure
    after it ends the stream with an ``error`` event. The page going away ends the relay, and
    closing the gateway connection cancels the stream there."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return too_large(settings)
    relay = None
    try:
        async with request.app[SESSION].post(
            f'{settings.gateway}/{STREAM_NAME}',
            data=body,
            headers=gateway_headers(request),
            timeout=ClientTimeout(total=settings.timeout_s),
        ) as answer:
            if answer.status != 200:
                return await gateway_refusal(answer, STREAM_NAME)
            relay = web.StreamResponse(headers=SSE_HEADERS)
            await relay.prepare(request)
            async for chunk in answer.content.iter_any():
                if not await pass_on(relay, chunk):
                    logger.info('the page left a stream; closing it at the gateway')
                    return relay
    except GATEWAY_FAILURES as error:
        status, message = gateway_failure(error, settings)
        if relay is None:
            return error_response(status, message)
        await pass_on(relay, server_sent_error(status, message))
    return relay


async def pass_on(relay: web.StreamResponse, chunk: bytes) -> bool:
    """Write ``chunk`` to the page at once; False when the page has gone."""
    try:
        await relay.write(chunk)
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one
        return False
    return True


def server_sent_error(status: int, message: str) -> bytes:
    """A final ``error`` event in the gateway's Server-Sent Events format
    (speech2image.streaming, not imported: it loads jina), for a relay that fails midway."""
    data = json.dumps({'event': 'error', 'status': status, 'message': message})
    return f'event: error\ndata: {data}\n\n'.encode()


async def cancel_stream(request: web.Request) -> web.Response:
    """``POST /api/stream/cancel``, ``{"request_id": ...}``: the gateway's ``/stream/cancel``.
    Not counted in flight: a cancel must get through when the page is at its limit."""
    refused = not_json(request)
    if refused is not None:
        return refused
    return await send_to_gateway(request, STREAM_CANCEL_NAME, request.app[SETTINGS])


async def gateway_refusal(answer, endpoint: str) -> web.Response:
    """The page's error for the gateway's error answer ``answer`` (its own words, its status:
    the gateway answers the user's mistakes 4xx and its own failures 5xx already)."""
    error = read_gateway_error(await answer.json(content_type=None))
    logger.info('gateway failed /%s (%s): %s', endpoint, answer.status, error.message)
    return error_response(answer.status, error.message)


# What can go wrong talking to the gateway; ValueError: a body that is not JSON, e.g. a proxy's
# HTML error page.
GATEWAY_FAILURES = (asyncio.TimeoutError, ClientConnectionError, ClientPayloadError, ValueError)


def gateway_failure(error: Exception, settings: Settings) -> Tuple[int, str]:
    """The status and message the page gets for one of ``GATEWAY_FAILURES``."""
    if isinstance(error, asyncio.TimeoutError):
        return 504, f'the service did not answer within {settings.timeout_s:g} s'
    if isinstance(error, ClientConnectionError):
        logger.warning('gateway %s unreachable: %s', settings.gateway, error)
        return 502, 'the image service is not reachable; try again later'
    if isinstance(error, ClientPayloadError):
        logger.warning('gateway %s broke off a stream: %s', settings.gateway, error)
        return 502, 'the image service broke off the stream; try again'
    return 502, 'the image service answered with something that is not JSON'


async def gateway_session(app: web.Application):
    """One HTTP client session for the service's lifetime (connection reuse)."""
    app[SESSION] = ClientSession()
    yield
    await app[SESSION].close()


def gateway_headers(request: web.Request) -> dict:
    """Headers for the gateway: JSON, and the page's own ``Authorization`` header when it sent
    one (the key its user entered). Never a key of this service's: lending one would let anyone
    who reaches the page through a gateway that requires a key."""
    headers = {'Content-Type': defaults.JSON_CONTENT_TYPE}
    if 'Authorization' in request.headers:
        headers['Authorization'] = request.headers['Authorization']
    return headers


def warn_of_an_unused_key() -> None:
    """Say at start that ``S2I_API_KEY`` in this service's environment is not used (an older
    deployment mounted it to be forwarded)."""
    if api_key_from_environment():
        logger.warning(
            '%s is set, but this service never sends a key of its own: each person enters the '
            "key on the page, and the gateway checks it; remove it from this service's "
            'environment',
            API_KEY_ENV,
        )


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def create_app(settings: Settings) -> web.Application:
    """The page at ``/``, its files under ``/static/``, the gateway's endpoints (and its
    ``/stream``) under ``/api/``."""
    app = web.Application(client_max_size=settings.max_request_mb * defaults.MEBIBYTE)
    app[SETTINGS] = settings
    app[LOAD] = Load()
    app.cleanup_ctx.append(gateway_session)
    app.on_response_prepare.append(add_security_headers)
    app.router.add_get('/', index)
    app.router.add_get('/healthz', healthz)
    app.router.add_static('/static/', PAGE_DIR)
    # Before /api/{endpoint}, which would otherwise take /api/stream.
    app.router.add_post(f'/api/{STREAM_NAME}', stream)
    app.router.add_post(f'/api/{STREAM_CANCEL_NAME}', cancel_stream)
    app.router.add_post('/api/{endpoint}', forward)
    return app


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    settings = Settings(
        args.gateway.rstrip('/'), args.max_in_flight, args.timeout_s, args.max_request_mb
    )
    logger.info(
        'serving the page on http://%s:%d, forwarding to %s', args.host, args.port, settings.gateway
    )
    warn_of_an_unused_key()
    # A page that goes away cancels its handler, and with it the gateway request it waits on.
    web.run_app(
        create_app(settings),
        host=args.host,
        port=args.port,
        print=None,
        handler_cancellation=True,
    )


if __name__ == '__main__':
    main(sys.argv[1:])
