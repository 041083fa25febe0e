"""The one email rule: what `import` and `stripe ensure-customer` accept as an email before
any call to Stripe (which refuses others with 400 `email_invalid`, "Error codes",
https://docs.stripe.com/error-codes#email-invalid)."""

from __future__ import annotations

import re

from discoveryctl.errors import InvalidInput

MAX_LENGTH = 320  # RFC 3696 §3 (64 for the local part, @, 255 for the domain)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def is_email(value: str) -> bool:
    """One ``@``, a dot in the domain, no whitespace, at most 320 characters."""
    return len(value) <= MAX_LENGTH and _EMAIL.fullmatch(value) is not None


def valid_email(value: str) -> str:
    """``value`` if it is an email address; ``InvalidInput`` naming it otherwise."""
    if not is_email(value):
        raise InvalidInput(f"{value[:80]!r} is not an email address")
    return value
