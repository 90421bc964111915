"""What jina's HTTP gateway says when a request fails, turned back into the server's own words.

Shared by the command-line client and the web service.
"""

import ast
import re
from dataclasses import dataclass
from typing import Any

# jina's HTTP gateway reports an Executor's exception as its repr: RequestError('message').
EXCEPTION_REPR = re.compile(r'^(?P<type>[A-Za-z_][\w.]*)\((?P<args>.*)\)$', re.DOTALL)
# Errors that refuse what the user sent (speech2image.validation.RequestError, pydantic's document
# validation): answered 422, not the 500 the gateway gives every failure.
REFUSAL_TYPES = ('RequestError',)
DOCUMENT_VALIDATION_ERROR = re.compile(r'^\d+ validation errors? for ')


@dataclass
class GatewayError:
    """A failed gateway request: the server's own words, and whether it refused the input."""

    message: str
    refused: bool
    exception: str = ''  # the exception type's name, when jina gave it


def read_gateway_error(body: Any) -> GatewayError:
    """The server's own words from the JSON body of a failed gateway request.

    jina answers ``{"detail": "RequestError('document 0 (id ...): no speech ...')"}`` for an
    Executor's exception, ``{"detail": "<text>"}`` for a document that fails validation, and
    FastAPI's ``{"detail": [{"msg": ...}, ...]}`` for a body of the wrong shape.
    """
    detail = body.get('detail') if isinstance(body, dict) else None
    if isinstance(detail, list):
        return GatewayError('; '.join(map(field_error, detail)), refused=True)
    if not isinstance(detail, str):
        return GatewayError('the service failed without saying why', refused=False)
    if DOCUMENT_VALIDATION_ERROR.match(detail):
        return GatewayError(detail, refused=True)
    match = EXCEPTION_REPR.match(detail)
    if match:
        try:
            args = ast.literal_eval(f'({match["args"]},)')
        except (ValueError, SyntaxError):
            args = ()
        if args and isinstance(args[0], str):
            return GatewayError(
                args[0], refused=match['type'] in REFUSAL_TYPES, exception=match['type']
            )
    return GatewayError(detail, refused=False)


def field_error(item: Any) -> str:
    """One FastAPI validation error, ``{"loc": ["body", "data", 0], "msg": ...}``, as text."""
    if not isinstance(item, dict):
        return str(item)
    where = '.'.join(str(part) for part in item.get('loc', ())[1:])  # [0] is always 'body'
    return f'{where}: {item.get("msg")}' if where else str(item.get('msg'))
