"""The admin webhook's signature, Stripe's webhook scheme ("Verify webhook signatures
manually", Stripe docs): a header ``Discovery-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>">`` keyed with DISCOVERY_ADMIN_WEBHOOK_SECRET; ``verify`` is the receiver's side.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Discovery-Signature"
TOLERANCE = 300
"""Seconds either side of its timestamp a receiver should accept a signature for (Stripe's
default tolerance), so a captured request cannot be replayed later."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Discovery-Signature`` header's value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, now: float, tolerance: int = TOLERANCE
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` and was made within ``tolerance``
    seconds of ``now``: what a receiver checks before trusting a delivery."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    raw = parts.get("t", [""])[0]
    if not (raw.isascii() and raw.isdigit()):
        return False
    timestamp = int(raw)
    if abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body).encode()
    return any(
        hmac.compare_digest(expected, given.encode("utf-8", "replace"))
        for given in parts.get("v1", [])
    )


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
