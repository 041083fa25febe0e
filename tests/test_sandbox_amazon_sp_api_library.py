"""python-amazon-sp-api, unchanged, against the sandbox over real sockets: its LWA client
refreshes a token at the sandbox's token endpoint and its Sellers client lists the seller's
marketplace participations at the sandbox's SP-API.

The library has no setting (and no environment variable) for either host. Its LWA client,
``sp_api.auth.AccessTokenClient``, builds the token URL from its class attributes ``scheme``,
``host`` and ``path``, and every SP-API client takes ``auth_token_client_class``: a subclass
naming the sandbox is passed in. An SP-API client takes its endpoint from the ``Marketplaces``
enum (``https://sellingpartnerapi-na.amazon.com``) and reads its ``endpoint`` attribute on every
request: the test sets that attribute. Its Host header is ``endpoint[8:]``, which assumes
``https://``; the sandbox does not look at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest
from sp_api.api import Sellers  # type: ignore[import-untyped]
from sp_api.auth import AccessTokenClient  # type: ignore[import-untyped]
from sp_api.auth.exceptions import AuthorizationError  # type: ignore[import-untyped]
from sp_api.base import Marketplaces  # type: ignore[import-untyped]
from sp_api.base.exceptions import (  # type: ignore[import-untyped]
    SellingApiForbiddenException,
    SellingApiRequestThrottledException,
)

from discoveryctl.sandbox import Sandbox
from discoveryctl.sandbox.state import Seller

PARTICIPATIONS = "GET /sellers/v1/marketplaceParticipations"
TOKEN = "POST /auth/o2/token"


class Library(NamedTuple):
    sellers: Any  # the library's Sellers client (the library has no type hints)
    seller: Seller


@pytest.fixture
def library(sandbox: Sandbox) -> Iterator[Library]:
    """The library's Sellers client for a new seller of the sandbox, closed after the test."""

    class SandboxTokenClient(AccessTokenClient):  # type: ignore[misc]
        scheme = "http://"
        host = urlsplit(sandbox.url).netloc

    seller = sandbox.state.add_seller()
    client = Sellers(
        marketplace=Marketplaces.US,
        refresh_token=seller.refresh_token,
        credentials={
            "lwa_app_id": sandbox.config.client_id,
            "lwa_client_secret": sandbox.config.client_secret,
        },
        auth_token_client_class=SandboxTokenClient,
    )
    client.endpoint = sandbox.url
    yield Library(client, seller)
    client.close()
    client._auth._transport.close()  # Client.close() leaves its LWA client's connections open


def test_the_library_refreshes_a_token_and_lists_the_marketplaces(
    library: Library, sandbox: Sandbox
) -> None:
    seller = library.seller
    auth = library.sellers.auth
    assert auth.access_token.startswith("Atza|")
    assert (auth.token_type, auth.expires_in) == ("bearer", 3600)
    assert auth.refresh_token == seller.refresh_token

    response = library.sellers.get_marketplace_participation()
    marketplaces = [entry["marketplace"]["id"] for entry in response.payload]
    assert marketplaces == ["ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"]
    assert response.payload[0]["participation"]["isParticipating"] is True
    assert response.rate_limit == "0.016"
    stats = sandbox.state.stats()
    assert stats["requests"] == {TOKEN: 1, PARTICIPATIONS: 1}
    assert stats["refreshes_per_seller"] == {seller.selling_partner_id: 1}


def test_the_library_sees_lwa_refuse_a_revoked_seller(library: Library, sandbox: Sandbox) -> None:
    sandbox.state.revoke(library.seller.selling_partner_id)
    with pytest.raises(AuthorizationError) as refused:
        library.sellers.get_marketplace_participation()
    assert (refused.value.status_code, refused.value.error_code) == (400, "invalid_grant")
    assert sandbox.state.stats()["requests"] == {TOKEN: 1}


def test_the_library_sees_lwa_refuse_a_rotated_client_secret(
    library: Library, sandbox: Sandbox
) -> None:
    sandbox.state.rotate_client_secret("rotated-secret")
    with pytest.raises(AuthorizationError) as refused:
        library.sellers.get_marketplace_participation()
    assert (refused.value.status_code, refused.value.error_code) == (401, "invalid_client")


def test_the_library_sees_sp_api_refusals(library: Library, sandbox: Sandbox) -> None:
    seller_id = library.seller.selling_partner_id
    library.sellers.get_marketplace_participation()
    sandbox.state.set_behaviour(seller_id, "spapi_429", times=1)
    with pytest.raises(SellingApiRequestThrottledException) as throttled:
        library.sellers.get_marketplace_participation()
    assert throttled.value.amzn_code == "QuotaExceeded"

    sandbox.state.revoke(seller_id)  # the library still holds the access token it cached
    with pytest.raises(SellingApiForbiddenException) as denied:
        library.sellers.get_marketplace_participation()
    assert denied.value.error[0]["details"] == (
        "The access token you provided is revoked, malformed or invalid."
    )
    assert "x-amzn-RateLimit-Limit" not in denied.value.headers
    assert sandbox.state.stats()["requests"] == {TOKEN: 1, PARTICIPATIONS: 3}
