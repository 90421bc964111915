"""What the gateway lets through, and what every refusal says, whatever the protocol.

The gateway's three adapters (speech2image/gateway.py: a gRPC interceptor, and ASGI middleware
for HTTP and WebSocket) all ask this module, so one request gets one answer on every protocol:

- ``RequestGuard``: the API key, the bound on requests in flight, the request timeout, the drain.
- ``check_data_request`` / ``check_json_request``: refuse, before any Executor sees it, what jina
  would hang on or fail obscurely: a request with no documents (jina waits for an answer that
  never comes), parameters that are not finite numbers (jina cannot turn them back into JSON and
  then spins on shutdown), an endpoint the Flow does not have (jina's catch-all would run the
  whole pipeline for it), a body that is not JSON.
- ``executor_refusal``: an Executor's error as the client should see it: the user's mistake
  (``RequestError``, a document that fails the schema) is 4xx, anything else 5xx.

A ``Refusal`` carries its message and its status on each protocol: a gRPC code, an HTTP status,
and, for the error responses the gateway writes itself, the exception name jina clients show.
"""

import asyncio
import json
import logging
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import grpc
from google.protobuf.struct_pb2 import ListValue, Struct

from speech2image import auth
from speech2image.defaults import (
    CLIENT_IDLE_SECONDS,
    ENDPOINTS,
    HTTP_ROOT_ENDPOINT,
    JSON_CONTENT_TYPE,
    MAX_PROMPT_CHARS,
    MEBIBYTE,
)
from speech2image.request_shape import (
    MAX_NESTING_DEPTH,
    data_request_problem,
    target_executor_problem,
    value_problem,
)
from speech2image.time_limits import TIMEOUT_ERROR_NAME

DRAIN_POLL_SECONDS = 0.05
# What jina's clients and gateway send besides the Flow's own endpoints: the readiness dry run.
JINA_INTERNAL_ENDPOINTS = ('_jina_dry_run_',)
# Endpoint names as they travel in a request (jina's '/default' is its name for '/').
KNOWN_ENDPOINTS = frozenset((*ENDPOINTS, HTTP_ROOT_ENDPOINT, *JINA_INTERNAL_ENDPOINTS))
# Exceptions raised by Executors (or by jina while it validates documents) for what the user sent.
USER_ERROR_TYPES = ('RequestError', 'ValidationError')
# The name jina clients show for errors the gateway writes itself (WebSocket): an unknown
# endpoint, another mistake of the user's, or the service's failure.
NOT_FOUND_NAME, USER_ERROR_NAME, SERVICE_ERROR_NAME = 'NotFound', 'RequestError', 'ServiceError'

FLOAT32_MAX = 3.4028234663852886e38
UNAUTHORIZED_MESSAGE = 'missing or wrong API key: send the header "Authorization: Bearer <key>"'
NO_DOCUMENTS_MESSAGE = 'the request has no documents: send at least one in "data"'
# Every error answer the gateway gives is one line of this log (speech2image/gateway.py gives
# it the gateway's handlers), its message cut to LOGGED_MESSAGE_CHARS.
REFUSALS_LOG = logging.getLogger('speech2image.refusals')
LOGGED_MESSAGE_CHARS = 300


class Refusal(Exception):
    """Why a call is turned away: a message for the client plus the status per protocol."""

    def __init__(self, message: str, grpc_code: grpc.StatusCode, http_status: int):
        super().__init__(message)
        self.message = message
        self.grpc_code = grpc_code
        self.http_status = http_status

    @property
    def exception_name(self) -> str:
        """How a jina client names this error: an unknown endpoint, the user's mistake, or the
        service's failure."""
        if self.http_status == 404:
            return NOT_FOUND_NAME
        return USER_ERROR_NAME if self.http_status < 500 else SERVICE_ERROR_NAME


def log_refusal(protocol: str, refusal: Refusal) -> None:
    """One line for an error answer: no traceback, for what a client sent is not our fault
    (the service's own failures are logged with theirs where they happen)."""
    REFUSALS_LOG.info(
        f'{protocol} request answered {refusal.http_status}: '
        f'{refusal.message[:LOGGED_MESSAGE_CHARS]}'
    )


def invalid(message: str) -> Refusal:
    """The request is well-formed but refused for what it holds (gRPC INVALID_ARGUMENT, HTTP 422)."""
    return Refusal(message, grpc.StatusCode.INVALID_ARGUMENT, 422)


def service_failure(message: str) -> Refusal:
    """The service failed the request (gRPC INTERNAL, HTTP 500)."""
    return Refusal(message, grpc.StatusCode.INTERNAL, 500)


def too_large(limit: int) -> Refusal:
    return Refusal(
        f'request is larger than the {limit / MEBIBYTE:g} MiB limit',
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        413,
    )


def unknown_endpoint(endpoint: str) -> Refusal:
    return Refusal(
        f'unknown endpoint {endpoint!r}: this service has {", ".join(ENDPOINTS)}',
        grpc.StatusCode.NOT_FOUND,
        404,
    )


class RequestGuard:
    """What the three servers of one gateway share: the API key, the pending-call count, the drain.

    All three servers run on the gateway's one asyncio loop, so the count needs no lock.
    """

    def __init__(
        self,
        api_key: Optional[str],
        max_pending: int,
        request_timeout: float,
        client_idle_seconds: float = CLIENT_IDLE_SECONDS,
    ):
        if max_pending < 1:
            raise ValueError(f'max_pending_requests must be at least 1, got {max_pending}')
        self._api_key = api_key
        self.max_pending = max_pending
        self.request_timeout = request_timeout
        # How long a client may do nothing: send no request on a call or connection it opened,
        # or read none of a stream's events.
        self.client_idle_seconds = client_idle_seconds
        self.pending = 0
        self.draining = False

    def check_credentials(self, authorization: Optional[str]) -> None:
        """Raise ``Refusal`` unless the ``Authorization`` header carries the key (or none is set)."""
        if not auth.authorized(authorization, self._api_key):
            raise Refusal(UNAUTHORIZED_MESSAGE, grpc.StatusCode.UNAUTHENTICATED, 401)

    def check_open(self) -> None:
        """Raise ``Refusal`` when the gateway is draining."""
        if self.draining:
            raise Refusal(
                'the gateway is shutting down; retry the request', grpc.StatusCode.UNAVAILABLE, 503
            )

    def admit(self) -> None:
        """Count one more request in flight, or raise ``Refusal`` when draining or full."""
        self.check_open()
        if self.pending >= self.max_pending:
            raise Refusal(
                f'server busy: {self.max_pending} requests are already in progress; retry later',
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                503,
            )
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    def timed_out(self) -> Refusal:
        return Refusal(
            f'no answer within {self.request_timeout:g} s: the service is overloaded or an '
            'Executor is stuck; retry later',
            grpc.StatusCode.DEADLINE_EXCEEDED,
            504,
        )

    def client_idle(self) -> Refusal:
        """A call or connection that sent no request within ``client_idle_seconds``."""
        return Refusal(
            f'no request within {self.client_idle_seconds:g} s of opening the call; '
            'send the request when you open it',
            grpc.StatusCode.DEADLINE_EXCEEDED,
            408,
        )

    async def drain(self, seconds: float) -> int:
        """Refuse new calls and wait up to ``seconds`` for the ones in flight; return how many
        were still running when the wait ended (0 after a clean drain)."""
        self.draining = True
        deadline = time.monotonic() + seconds
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return self.pending


# --- checks of a request --------------------------------------------------------------------


def check_endpoint(endpoint: str) -> None:
    if endpoint not in KNOWN_ENDPOINTS:
        raise unknown_endpoint(endpoint)


def non_finite_number(value: Any, path: str = 'parameters') -> Optional[str]:
    """Where in parameters a number is not finite, if anywhere: ``value`` is decoded JSON (dicts,
    lists, numbers), or the protobuf ``Struct`` a gRPC or WebSocket request carries them in.
    Numbers too large for a double count as infinite: that is what they become on the way."""
    pending: List[Tuple[str, Any]] = [(path, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, (dict, Struct)):
            pending += [(f'{where}.{key}', inner) for key, inner in item.items()]
        elif isinstance(item, (list, ListValue)):
            pending += [(f'{where}[{index}]', inner) for index, inner in enumerate(item)]
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            try:
                if not math.isfinite(float(item)):
                    return where
            except OverflowError:
                return where
    return None


def check_parameters(parameters: Any) -> None:
    """Refuse parameters that are not an object, nested too deep, with text that is not Unicode
    or longer than a prompt (every text a model reads is capped alike), or that hold NaN,
    infinity or an overflow."""
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise invalid(f'"parameters" must be an object, got {type(parameters).__name__}')
    check_shape(value_problem(parameters, 'parameters', MAX_PROMPT_CHARS))
    where = non_finite_number(parameters)
    if where is not None:
        raise invalid(
            f"'{where}' must be a finite number, got NaN, infinity or a number too "
            'large for a 64-bit float'
        )


def document_count(request) -> int:
    """How many documents a jina DataRequest carries, without building them (serialised as one
    blob they count as one: it is never empty)."""
    content = request.proto_with_data.data
    kind = content.WhichOneof('documents')
    if kind == 'docs':
        return len(content.docs.docs)
    return 1 if kind == 'docs_bytes' and content.docs_bytes else 0


def check_shape(problem: Optional[str]) -> None:
    """Refuse what ``speech2image.request_shape`` found wrong, if anything."""
    if problem is not None:
        raise invalid(problem)


def check_data_request(request) -> None:
    """Raise ``Refusal`` for a jina DataRequest (gRPC or WebSocket) the Flow must not get."""
    check_shape(data_request_problem(request))
    endpoint = request.header.exec_endpoint
    check_endpoint(endpoint)
    check_shape(target_executor_problem(request.header.target_executor))
    parameters = request.proto_wo_data.parameters
    check_shape(value_problem(parameters, 'parameters', MAX_PROMPT_CHARS))
    where = non_finite_number(parameters)
    if where is not None:
        raise invalid(f"'{where}' must be a finite number, got NaN or infinity")
    if endpoint not in JINA_INTERNAL_ENDPOINTS and document_count(request) == 0:
        raise invalid(NO_DOCUMENTS_MESSAGE)


def check_json_request(content_type: Optional[str], body: bytes) -> Dict[str, Any]:
    """Raise ``Refusal`` for an HTTP request body the Flow must not get: not JSON (415 for
    another content type, 400 for bad syntax), not an object with a non-empty ``data`` list,
    or parameters that are not finite numbers (422). Returns the decoded body."""
    media_type = (content_type or '').split(';')[0].strip().lower()
    if media_type != JSON_CONTENT_TYPE:
        raise Refusal(
            f'send the request as {JSON_CONTENT_TYPE} ({{"data": [...], "parameters": {{...}}}}), '
            f'not {media_type or "a body without a Content-Type"}; audio goes base64-encoded in '
            '"bytes_"',
            grpc.StatusCode.INVALID_ARGUMENT,
            415,
        )
    try:
        request = json.loads(body)  # NaN and Infinity parse, and are refused below by name
    except RecursionError:
        raise Refusal(
            f'the request body is nested too deeply: parameters and document fields may nest '
            f'{MAX_NESTING_DEPTH} levels',
            grpc.StatusCode.INVALID_ARGUMENT,
            400,
        ) from None
    except ValueError as error:
        raise Refusal(
            f'the request body is not valid JSON: {error}', grpc.StatusCode.INVALID_ARGUMENT, 400
        ) from None
    if not isinstance(request, dict):
        raise invalid(
            f'the request must be a JSON object with "data", got {type(request).__name__}'
        )
    if request.get('exec_endpoint') is not None:  # jina's HTTP client posts every endpoint here
        check_endpoint(str(request['exec_endpoint']))
    if isinstance(request.get('header'), dict):
        check_shape(target_executor_problem(request['header'].get('target_executor')))
    data = request.get('data')
    if not isinstance(data, list):
        raise invalid('"data" must be a list of documents')
    if not data:
        raise invalid(NO_DOCUMENTS_MESSAGE)
    check_parameters(request.get('parameters'))
    for index, document in enumerate(data):
        check_json_document(index, document)
    return request


def check_json_document(index: int, document: Any) -> None:
    """Refuse one document of an HTTP request that does not fit the schema, naming it and the
    field (jina's own check answers with pydantic's multi-line report and status 500)."""
    from pydantic import ValidationError

    from speech2image.schema import SpeechDoc

    if not isinstance(document, dict):
        raise invalid(f'document {index}: must be an object, got {type(document).__name__}')
    name = f'document {index} (id {document["id"]})' if 'id' in document else f'document {index}'
    if document.get('tensor') is not None:
        check_json_tensor(name, document['tensor'])
    for key, value in document.items():
        if key == 'tensor':
            continue
        problem = value_problem(value, key)
        if problem is not None:
            raise invalid(f'{name}: {problem}')
        if non_finite_number(value) is not None:
            raise invalid(f'{name}: {key} contains NaN or infinite numbers')
    try:
        SpeechDoc.model_validate(document)
    except ValidationError as error:
        problems = '; '.join(
            f'{".".join(map(str, item["loc"])) or "document"}: '
            f'{item["msg"].removeprefix("Value error, ")}'
            for item in error.errors()
        )
        raise invalid(f'{name}: {problems}') from None


# --- an Executor's error, as the client sees it ----------------------------------------------


def check_json_tensor(name: str, tensor: Any) -> None:
    """Refuse a JSON ``tensor`` that is not an array of finite numbers a float32 holds: docarray
    would build an object array from it and jina fail obscurely (seen: the number 10^100).
    Checked with numpy: a minute of audio is a million numbers, too many for a Python loop."""
    import numpy as np

    try:
        samples = np.asarray(tensor, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise invalid(f'{name}: tensor must be an array of numbers') from None
    if samples.size and not np.all(np.isfinite(samples)):
        raise invalid(f'{name}: tensor contains NaN or infinite numbers')
    if samples.size and np.abs(samples).max() > FLOAT32_MAX:
        raise invalid(
            f'{name}: tensor holds numbers beyond what a float32 holds (±{FLOAT32_MAX:.3g})'
        )


def executor_refusal(exception_name: str, message: str) -> Refusal:
    """An Executor's exception (its type's name and message) as a ``Refusal``: the user's
    mistake is 4xx (gRPC INVALID_ARGUMENT, HTTP 422), a call to an Executor that ran out of
    time (speech2image/time_limits.py) DEADLINE_EXCEEDED / 504, anything else 5xx (INTERNAL,
    500)."""
    if exception_name in USER_ERROR_TYPES:
        return invalid(message)
    if exception_name == TIMEOUT_ERROR_NAME:
        return Refusal(message, grpc.StatusCode.DEADLINE_EXCEEDED, 504)
    return service_failure(message)


def status_refusal(status) -> Optional[Refusal]:
    """The ``Refusal`` for a jina response header's ``StatusProto``, or None for a success."""
    from jina.proto import jina_pb2

    if status.code != jina_pb2.StatusProto.ERROR:
        return None
    exception = status.exception
    message = exception.args[0] if exception.args else status.description
    return executor_refusal(exception.name, message)


def error_response(request, refusal: Refusal):
    """A jina DataRequest answering ``request`` with ``refusal``, as jina answers an Executor's
    exception: status ERROR, the exception's name and message, the request's id."""
    from jina.proto import jina_pb2
    from jina.types.request.data import DataRequest

    response = DataRequest()
    response.header.request_id = request.header.request_id
    response.header.exec_endpoint = request.header.exec_endpoint
    response.header.status.code = jina_pb2.StatusProto.ERROR
    response.header.status.description = refusal.message
    response.header.status.exception.name = refusal.exception_name
    response.header.status.exception.args.append(refusal.message)
    return response
