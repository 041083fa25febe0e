"""Redaction of secrets: tokens, codes, keys and ``Authorization`` headers (docs/behaviour.md §7).

Used by the log pipeline and before anything is written to the audit history.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"

_SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "code",
        "spapi_oauth_code",
        "state",
        "amazon_state",
        "token",
        "password",
        "secret",
        "api_key",
        "cookie",
        "set-cookie",
        "x-amz-access-token",
    }
)
_SENSITIVE_SUFFIXES = ("_token", "_secret", "_password", "_key")
_NOT_SENSITIVE = frozenset({"idempotency_key", "dedupe_key"})

# Values that are secrets wherever they appear: LWA tokens (``Atza|``, ``Atzr|``), LWA client
# secrets (``amzn1.oa2-cs.v1.…``), Stripe secret and restricted keys, bearer headers.
SECRET_VALUES = re.compile(
    r"Atz[ar]\|[^\s\"'&,]+"
    r"|amzn1\.oa2-cs\.[^\s\"'&,]+"
    r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]+"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
)


def is_sensitive_key(key: str) -> bool:
    lowered = key.lower()
    if lowered in _NOT_SENSITIVE:
        return False
    return lowered in _SENSITIVE_KEYS or lowered.endswith(_SENSITIVE_SUFFIXES)


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-looking keys and values replaced."""
    if isinstance(value, str):
        return SECRET_VALUES.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_sensitive_key(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_text(text: str) -> str:
    """``text`` with every token-looking value replaced."""
    return SECRET_VALUES.sub(REDACTED, text)
