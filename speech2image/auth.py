"""The API key: where it is read from, the header that carries it, and the check.

The key comes from the ``S2I_API_KEY`` environment variable only (never a flag, so it is in no
command line, flow.yml or log). Clients send ``Authorization: Bearer <key>``.
"""

import hmac
import os
from typing import Optional

API_KEY_ENV = 'S2I_API_KEY'
SCHEME = 'bearer'


def api_key_from_environment() -> Optional[str]:
    """The configured key, or None when no key is asked for (local development)."""
    return os.environ.get(API_KEY_ENV) or None


def authorization_header(api_key: str) -> str:
    """The ``Authorization`` header's value that carries ``api_key``."""
    return f'Bearer {api_key}'


def authorized(authorization: Optional[str], api_key: Optional[str]) -> bool:
    """Whether an ``Authorization`` header's value carries ``api_key`` (always, when no key is
    set). Compared in constant time."""
    if api_key is None:
        return True
    scheme, _, token = (authorization or '').partition(' ')
    return scheme.lower() == SCHEME and hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    )
