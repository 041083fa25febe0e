"""The Selling Partner API, as far as the seller check needs it: the answer classified once
(``parse_participations``), and a sync and an async client that share it."""

from __future__ import annotations

import aiohttp
import httpx

from discoveryctl.errors import ProviderError, SpApiTokenRefused, TransientProviderError
from discoveryctl.providers.async_http import Reply, open_session, send, transport_failure
from discoveryctl.providers.lwa import (
    DEFAULT_TIMEOUT,
    AmazonApp,
    excerpt,
    json_object,
    retry_after,
)

# SP-API: the seller check. `GET /sellers/v1/marketplaceParticipations` (sellers.json in
# amzn/selling-partner-api-models; usage plan 0.016 requests a second, burst 15) answers 401,
# or 403 "Unauthorized" with details such as "The access token you provided is revoked,
# malformed or invalid." ("Authorization Errors", SP-API docs) when it refuses the token.
# The same words come back for expired and mis-signed tokens (selling-partner-api-docs
# issues #2147, #2149; selling-partner-api-models #230), so a refusal is not yet a verdict:
# ``SpApiTokenRefused``, which the check confirms with a fresh token (amazon.check). Any other
# 403 proves nothing about the token.
PARTICIPATIONS_PATH = "/sellers/v1/marketplaceParticipations"
_REFUSED_WORDS = ("revoked", "invalid", "malformed", "expired")


def parse_participations(response: Reply) -> int:
    """How many marketplaces the seller participates in, or the classified error."""
    status = response.status_code
    body = json_object(response, "SP-API", "spapi")
    if status == 200:
        payload = body.get("payload")
        if not isinstance(payload, list):
            raise TransientProviderError(
                "SP-API answered 200 without a payload",
                error_type="spapi_bad_response",
                status_code=status,
            )
        return len(payload)
    errors = body.get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = str(first.get("code", ""))
    details = str(first.get("details", ""))
    message = excerpt(" ".join(filter(None, (str(first.get("message", "")), details))))
    if status in (408, 429) or status >= 500:
        raise TransientProviderError(
            f"SP-API answered {status}: {message or code}",
            error_type="spapi_throttled" if status == 429 else "spapi_server_error",
            status_code=status,
            retry_after=retry_after(response),
        )
    expired = "expired" in details.lower()
    token_words = any(word in details.lower() for word in _REFUSED_WORDS)
    if status == 401 or (status == 403 and (expired or (code == "Unauthorized" and token_words))):
        raise SpApiTokenRefused(
            f"SP-API refused the seller's token ({status}): {message}",
            error_type="spapi_token_expired" if expired else "spapi_token_refused",
            status_code=status,
        )
    raise ProviderError(
        f"SP-API answered {status}{f' {code}' if code else ''}: {message or 'no details'}",
        error_type="spapi_forbidden" if status == 403 else "spapi_error",
        status_code=status,
    )


class SpApiClient:
    """The SP-API calls the health check needs, synchronously."""

    def __init__(self, app: AmazonApp, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> None:
        self.app = app
        self._http = httpx.Client(timeout=timeout)

    def __enter__(self) -> SpApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def marketplace_participations(self, region: str, access_token: str) -> int:
        try:
            response = self._http.get(
                # Mutation testing: the sandbox stands in for every region through
                # AMAZON_SPAPI_URL, so no test here tells regions apart (AmazonApp.spapi's
                # per-region hosts are tested on their own); header names are case-insensitive.
                self.app.spapi(region) + PARTICIPATIONS_PATH,  # pragma: no mutate
                headers={"x-amz-access-token": access_token},  # pragma: no mutate
            )
        except httpx.HTTPError as error:
            raise transport_failure(error, "SP-API request failed", "spapi") from None
        return parse_participations(response)


class AsyncSpApiClient:
    """``SpApiClient`` for many sellers at once (``refresh-all --verify``), over aiohttp."""

    def __init__(
        self,
        app: AmazonApp,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        connections: int = 64,  # pragma: no mutate  (pool size: speed, not answers)
    ) -> None:
        self.app = app
        self._session: aiohttp.ClientSession = open_session(timeout, connections)

    async def __aenter__(self) -> AsyncSpApiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._session.close()

    async def marketplace_participations(self, region: str, access_token: str) -> int:
        reply = await send(
            self._session,
            "GET",  # pragma: no mutate  (aiohttp upper-cases the method)
            # Mutation testing: the sandbox stands in for every region through
            # AMAZON_SPAPI_URL, so no test here tells regions apart (AmazonApp.spapi's
            # per-region hosts are tested on their own); header names are case-insensitive.
            self.app.spapi(region) + PARTICIPATIONS_PATH,  # pragma: no mutate
            headers={"x-amz-access-token": access_token},  # pragma: no mutate
            what="SP-API request failed",
            service="spapi",
        )
        return parse_participations(reply)
