"""What is wrong with the shape of a request, before jina parses or routes it: each function
says it in a sentence naming the place (None when nothing is), and speech2image/request_policy.py
refuses with it, 4xx, where jina would have answered 500 or dropped the connection:

- values nested deeper than ``MAX_NESTING_DEPTH`` (JSON that Python cannot even decode past
  about 1,000 levels; protobuf that jina cannot parse past 100 message levels);
- strings that are not Unicode (JSON's "\\ud800", a lone surrogate, cannot be sent on as UTF-8);
- text parameters longer than a prompt may be (``max_chars``);
- a ``target_executor`` that is not a regular expression (jina compiles it to route);
- gRPC or WebSocket messages that are not jina DataRequests at all.
"""

import re
from typing import Any, List, Optional, Tuple

from google.protobuf.struct_pb2 import ListValue, Struct

# Levels of objects and lists a parameter or document field may nest. protobuf refuses to parse
# a message nested deeper than 100 levels, and each JSON level costs about three of them on the
# way to the Executors (seen: parameters nested 60 deep failed there with a DecodeError).
MAX_NESTING_DEPTH = 20


def value_problem(value: Any, where: str, max_chars: Optional[int] = None) -> Optional[str]:
    """What is wrong with the shape of ``value`` (decoded JSON, or a protobuf Struct) named
    ``where``: nested deeper than ``MAX_NESTING_DEPTH``, a string or key that is not Unicode,
    or, given ``max_chars``, a string longer than that. Walked without recursion."""
    pending: List[Tuple[str, Any, int]] = [(where, value, 0)]
    while pending:
        place, item, depth = pending.pop()
        if isinstance(item, (dict, Struct, list, ListValue)):
            if depth >= MAX_NESTING_DEPTH:
                return f"'{place}' is nested more than {MAX_NESTING_DEPTH} levels deep"
            if isinstance(item, (dict, Struct)):
                for key, inner in item.items():
                    if not is_unicode(key):
                        return f"'{place}' has a key that is not Unicode text (a lone surrogate)"
                    pending.append((f'{place}.{key}', inner, depth + 1))
            else:
                pending += [
                    (f'{place}[{index}]', inner, depth + 1) for index, inner in enumerate(item)
                ]
        elif isinstance(item, str):
            if not is_unicode(item):
                return f"'{place}' is not Unicode text: it holds a lone surrogate"
            if max_chars is not None and len(item) > max_chars:
                return f"'{place}' is {len(item)} characters, the limit is {max_chars}"
    return None


def is_unicode(text: Any) -> bool:
    """Whether ``text`` can be written as UTF-8."""
    try:
        str(text).encode()
    except UnicodeEncodeError:
        return False
    return True


def target_executor_problem(target: Any) -> Optional[str]:
    """What is wrong with a request's ``target_executor`` (jina routes the request to the
    Executors whose names match it, a regular expression), or None."""
    if not target:
        return None
    try:
        re.compile(str(target))
    except re.error as error:
        return f'header.target_executor {str(target)[:100]!r} is not a regular expression: {error}'
    return None


def data_request_problem(request) -> Optional[str]:
    """What keeps a jina DataRequest (gRPC or WebSocket, parsed lazily by jina) from being one:
    bytes that do not parse (random bytes, an empty message, nesting past protobuf's limit) or a
    ``docs_bytes`` that holds no document list. Parses it whole; None when it is one."""
    from docarray.proto import DocListProto
    from google.protobuf.message import DecodeError

    try:
        content = request.proto_with_data.data
        if content.WhichOneof('documents') == 'docs_bytes':
            DocListProto.FromString(content.docs_bytes)
    except (DecodeError, ValueError, RecursionError) as error:
        return f'the message is not a jina DataRequest: {error or type(error).__name__}'
    return None
