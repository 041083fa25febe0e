"""The Selling Partner API, as far as a health check needs it:
``GET /sellers/v1/marketplaceParticipations`` with the ``x-amz-access-token`` header.

Sources: the operation's model, ``models/sellers-api-model/sellers.json`` in
amzn/selling-partner-api-models (payload, usage plan 0.016 requests a second, burst 15), and
"Usage Plans and Rate Limits in the Selling Partner API"
(https://developer-docs.amazon.com/sp-api/docs/usage-plans-and-rate-limits).
"""

from __future__ import annotations

import uuid
from typing import Any

from discoveryctl.sandbox.asgi import Request, Response, json_response
from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.state import SandboxState

PARTICIPATIONS_PATH = "/sellers/v1/marketplaceParticipations"

DENIED = "Access to requested resource is denied."
TOKEN_INVALID = "The access token you provided is revoked, malformed or invalid."
TOKEN_EXPIRED = "The access token you provided has expired."

RATE_LIMIT = "0.016"
"""The operation's default rate (requests a second) from sellers.json's usage plan."""

_MARKETPLACES = (
    ("ATVPDKIKX0DER", "Amazon.com", "US", "USD", "en_US", "www.amazon.com"),
    ("A2EUQ1WTGCTBG2", "Amazon.ca", "CA", "CAD", "en_CA", "www.amazon.ca"),
)


async def marketplace_participations(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """The marketplaces the seller behind the access token sells in."""
    token = request.header("x-amz-access-token")
    if not token:
        return json_response(
            403,
            {"errors": [{"message": DENIED, "code": "MissingAuthenticationToken"}]},
            _headers(403),
        )
    seller_id, expired = state.access_token_holder(token)
    if seller_id is None:
        return _error(403, "Unauthorized", DENIED, TOKEN_INVALID)
    if expired:
        return _error(403, "Unauthorized", DENIED, TOKEN_EXPIRED)
    if state.take_behaviour(seller_id, "spapi_401") is not None:
        return _error(401, "Unauthorized", DENIED, "")
    if state.take_behaviour(seller_id, "spapi_403_ambiguous") is not None:
        return _error(403, "Unauthorized", DENIED, "")
    quota = state.take_behaviour(seller_id, "spapi_429")
    if quota is not None:
        response = _error(
            429, "QuotaExceeded", "You exceeded your quota for the requested resource.", ""
        )
        if "retry_after" in quota:  # Amazon documents no Retry-After here: only on request
            response.headers.append(("retry-after", str(quota["retry_after"])))
        return response
    return json_response(200, {"payload": _participations(seller_id)}, _headers(200))


def server_error(status: int) -> Response:
    """What SP-API answers when it fails on its side."""
    if status == 503:
        return _error(503, "ServiceUnavailable", "Service temporarily unavailable.", "")
    return _error(
        status, "InternalFailure", "We encountered an internal error. Please try again.", ""
    )


def _participations(seller_id: str) -> list[dict[str, Any]]:
    return [
        {
            "marketplace": {
                "id": marketplace_id,
                "name": name,
                "countryCode": country,
                "defaultCurrencyCode": currency,
                "defaultLanguageCode": language,
                "domainName": domain,
            },
            "participation": {"isParticipating": True, "hasSuspendedListings": False},
            "storeName": f"Sandbox store {seller_id}",
        }
        for marketplace_id, name, country, currency, language, domain in _MARKETPLACES
    ]


def _error(status: int, code: str, message: str, details: str) -> Response:
    return json_response(
        status,
        {"errors": [{"code": code, "message": message, "details": details}]},
        _headers(status),
    )


def _headers(status: int) -> list[tuple[str, str]]:
    headers = [("x-amzn-requestid", str(uuid.uuid4()))]
    # The rate limit comes back "for HTTP status codes 20x, 400 and 404 only" and "should never
    # be expected in the response to a throttled, unauthorized, or unauthenticated request"
    # (Usage Plans and Rate Limits; amzn/selling-partner-api-docs, guides/en-US/
    # usage-plans-rate-limits/Usage-Plans-and-Rate-Limits.md). sellers.json also lists the
    # header on 429 and 5xx answers; the sandbox follows the guide, the stricter of the two.
    if 200 <= status < 300 or status in (400, 404):
        headers.append(("x-amzn-ratelimit-limit", RATE_LIMIT))
    return headers
