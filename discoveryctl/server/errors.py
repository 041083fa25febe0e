"""How an error reaches an HTTP client: its kind decides the status, and nothing else does.

The body is the API's error shape (docs/behaviour.md §8), ``{"success": false, "error":
message}``. The app's exception handlers (``server.app``) answer with these.
"""

from __future__ import annotations

from typing import Any

from discoveryctl.errors import DiscoveryError, ErrorKind

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.configuration: 500,  # the server is set up wrongly; not the client's doing
    ErrorKind.database_unavailable: 503,
    ErrorKind.database_conflict: 409,
    ErrorKind.input: 400,
    ErrorKind.not_found: 404,
    ErrorKind.provider: 502,  # Amazon or Stripe answered in a way nobody planned for
    ErrorKind.seller: 409,  # the seller's authorization is gone: reconnect first
    ErrorKind.app_credentials: 502,
    ErrorKind.transient: 503,
    ErrorKind.consent: 400,
    ErrorKind.unauthenticated: 401,
    ErrorKind.attention: 200,  # an outcome, not a failure: the body says what needs a look
    ErrorKind.interrupted: 503,
}
"""The one place an error's kind becomes an HTTP status."""


def error_response(error: DiscoveryError) -> tuple[int, dict[str, Any]]:
    """The status and JSON body for ``error``."""
    return HTTP_STATUS[error.kind], {"success": False, "error": error.message}


class Unready(Exception):
    """``/health``: the database is reachable but not at the schema this version needs (503)."""
