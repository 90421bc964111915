"""Checks of what users send, shared by both Executors, with errors that name what was wrong.

An Executor raises ``RequestError``; jina fails that request with the message and keeps serving.
"""

import math
from typing import Any, Mapping, Optional

from speech2image.defaults import MAX_PROMPT_CHARS
from speech2image.schema import SpeechDoc


class RequestError(ValueError):
    """A request the service refuses; the message is shown to the user as is."""


def document_error(index: int, doc: SpeechDoc, reason: str) -> RequestError:
    """An error that says which document of the request failed, by position and by the id the
    client gave it (a document sent over HTTP without one has none)."""
    name = f'document {index}' if doc.id is None else f'document {index} (id {doc.id})'
    return RequestError(f'{name}: {reason}')


def check_prompt(index: int, doc: SpeechDoc) -> str:
    """Return the document's prompt, stripped; raise if it is missing, empty or too long."""
    text = (doc.text or '').strip()
    if not text:
        raise document_error(index, doc, 'no prompt: text is empty and there is no audio')
    if len(text) > MAX_PROMPT_CHARS:
        raise document_error(
            index, doc, f'prompt is {len(text)} characters, the limit is {MAX_PROMPT_CHARS}'
        )
    return text


def number_text(value: Any) -> str:
    """A number as a person writes it: integral values without a fraction (gRPC and JSON carry
    ``-n 9`` as 9.0, which is 9 to whoever typed it); anything else as its repr."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def range_error(name: str, low: Any, high: Any, value: Any) -> RequestError:
    """The error for a number outside [low, high], every number written as a person would."""
    return RequestError(
        f"parameter '{name}' must be between {number_text(low)} and {number_text(high)}, "
        f'got {number_text(value)}'
    )


def text_parameter(parameters: Mapping[str, Any], name: str) -> Optional[str]:
    """Read a free-text request parameter (a negative prompt), capped like the prompt."""
    value = parameters.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"parameter '{name}' must be a string, got {value!r}")
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(
            f"parameter '{name}' is {len(value)} characters, the limit is {MAX_PROMPT_CHARS}"
        )
    return value


def int_parameter(
    parameters: Mapping[str, Any], name: str, default: Optional[int], low: int, high: int
) -> Optional[int]:
    """Read an integer request parameter within [low, high].

    gRPC carries parameters as a protobuf Struct, where every number is a double, so integral
    floats (2.0) are accepted; bools, fractions and strings are not.
    """
    value = parameters.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"parameter '{name}' must be an integer, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RequestError(f"parameter '{name}' must be an integer, got {value!r}")
    if not low <= value <= high:
        raise range_error(name, low, high, value)
    return int(value)


def float_parameter(
    parameters: Mapping[str, Any], name: str, default: float, low: float, high: float
) -> float:
    """Read a finite float request parameter within [low, high]."""
    value = parameters.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"parameter '{name}' must be a number, got {value!r}")
    if not low <= value <= high:
        raise range_error(name, low, high, value)
    return float(value)


def bool_parameter(parameters: Mapping[str, Any], name: str, default: bool) -> bool:
    """Read a true/false request parameter."""
    value = parameters.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"parameter '{name}' must be true or false, got {value!r}")
    return value


def choice_parameter(
    parameters: Mapping[str, Any], name: str, default: Optional[str], choices
) -> Optional[str]:
    """Read a string request parameter that must be one of ``choices``."""
    value = parameters.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        shown = ', '.join(sorted(choices)) if len(choices) <= 10 else f'{len(choices)} known codes'
        raise RequestError(f"parameter '{name}' must be one of {shown}; got {value!r}")
    return value
