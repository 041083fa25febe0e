"""The clients `refresh-all` and `check` use, over real sockets against the sandbox: the async
LWA client and both SP-API clients answer as the classifiers say."""

from __future__ import annotations

import asyncio
import socket

import pytest

from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    SellerAuthorizationRevoked,
    TransientProviderError,
)
from discoveryctl.providers.amazon import AmazonApp, AsyncLwaClient, LwaClient
from discoveryctl.providers.spapi import AsyncSpApiClient, SpApiClient
from discoveryctl.sandbox import Sandbox
from discoveryctl.sandbox.lwa import TOKEN_PATH


def app_for(sandbox: Sandbox, **changes: str) -> AmazonApp:
    settings = {
        "client_id": sandbox.config.client_id,
        "client_secret": sandbox.config.client_secret,
        "application_id": sandbox.config.application_id,
        "redirect_uri": sandbox.config.redirect_uris[0],
        "token_url": sandbox.url + TOKEN_PATH,
        "spapi_url": sandbox.url,
    }
    return AmazonApp(**(settings | changes))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_async_lwa_client_refreshes_and_classifies(sandbox: Sandbox) -> None:
    live, gone = sandbox.state.add_seller(), sandbox.state.add_seller()
    sandbox.state.revoke(gone.selling_partner_id)

    async def run() -> None:
        async with AsyncLwaClient(app_for(sandbox)) as lwa:
            grant = await lwa.refresh(live.refresh_token)
            assert sandbox.state.seller_of_access_token(grant.access_token) == (
                live.selling_partner_id
            )
            assert grant.refresh_token == live.refresh_token
            with pytest.raises(SellerAuthorizationRevoked):
                await lwa.refresh(gone.refresh_token)
        async with AsyncLwaClient(app_for(sandbox, client_secret="wrong")) as lwa:
            with pytest.raises(AppCredentialsRejected):
                await lwa.refresh(live.refresh_token)
        url = f"http://127.0.0.1:{closed_port()}{TOKEN_PATH}"
        async with AsyncLwaClient(app_for(sandbox, token_url=url)) as lwa:
            with pytest.raises(TransientProviderError) as caught:
                await lwa.refresh(live.refresh_token)
            assert caught.value.error_type.startswith("lwa_")
            assert caught.value.message.startswith("LWA token request failed: ")

    asyncio.run(run())


def test_both_sp_api_clients_check_a_seller(sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    app = app_for(sandbox)
    with LwaClient(app) as lwa:
        token = lwa.refresh(seller.refresh_token).access_token
    with SpApiClient(app) as spapi:
        assert spapi.marketplace_participations("na", token) == 2
        with pytest.raises(SellerAuthorizationRevoked):
            spapi.marketplace_participations("na", "Atza|never-issued")
        sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_403_ambiguous", times=1)
        with pytest.raises(ProviderError) as caught:
            spapi.marketplace_participations("na", token)
        assert caught.value.error_type == "spapi_forbidden"

    async def run() -> None:
        async with AsyncSpApiClient(app) as spapi:
            assert await spapi.marketplace_participations("na", token) == 2
            sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
            with pytest.raises(SellerAuthorizationRevoked):
                await spapi.marketplace_participations("na", token)

    asyncio.run(run())
    broken = app_for(sandbox, spapi_url=f"http://127.0.0.1:{closed_port()}")
    with SpApiClient(broken) as spapi, pytest.raises(TransientProviderError) as failed:
        spapi.marketplace_participations("na", token)
    assert failed.value.error_type == "spapi_connection_error"
    assert failed.value.message == "SP-API request failed: ConnectError"
