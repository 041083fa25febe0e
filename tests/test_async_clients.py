"""The clients `refresh-all` and `check` use, over real sockets against the sandbox: the async
LWA client and both SP-API clients answer as the classifiers say."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    SellerAuthorizationRevoked,
    SpApiTokenRefused,
    TransientProviderError,
)
from discoveryctl.providers.lwa import AsyncLwaClient, LwaClient
from discoveryctl.providers.spapi import AsyncSpApiClient, SpApiClient
from discoveryctl.sandbox import Sandbox
from discoveryctl.sandbox.lwa import TOKEN_PATH

from helpers import app_for


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
            assert caught.value.error_type == "lwa_connection_error"
            assert caught.value.message == "LWA token request failed: ClientConnectorError"

    asyncio.run(run())


def test_both_sp_api_clients_check_a_seller(sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    app = app_for(sandbox)
    with LwaClient(app) as lwa:
        token = lwa.refresh(seller.refresh_token).access_token
    with SpApiClient(app) as spapi:
        assert spapi.marketplace_participations("na", token) == 2
        with pytest.raises(SpApiTokenRefused):
            spapi.marketplace_participations("na", "Atza|never-issued")
        sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_403_ambiguous", times=1)
        with pytest.raises(ProviderError) as caught:
            spapi.marketplace_participations("na", token)
        assert caught.value.error_type == "spapi_forbidden"

    async def run() -> None:
        async with AsyncSpApiClient(app) as spapi:
            assert await spapi.marketplace_participations("na", token) == 2
            sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
            with pytest.raises(SpApiTokenRefused):
                await spapi.marketplace_participations("na", token)

    asyncio.run(run())
    broken = app_for(sandbox, spapi_url=f"http://127.0.0.1:{closed_port()}")
    with SpApiClient(broken) as spapi, pytest.raises(TransientProviderError) as failed:
        spapi.marketplace_participations("na", token)
    assert failed.value.error_type == "spapi_connection_error"
    assert failed.value.message == "SP-API request failed: ConnectError"


@pytest.mark.parametrize("connections", [1, 2])
def test_the_async_clients_never_open_more_connections_than_asked(connections: int) -> None:
    from discoveryctl.sandbox import SandboxConfig, run_in_thread
    from discoveryctl.sandbox.clock import ManualClock

    clock = ManualClock()
    with run_in_thread(SandboxConfig(latency_ms=100), clock=clock) as sandbox:
        sellers = [sandbox.state.add_seller() for _ in range(6)]
        app = app_for(sandbox)

        async def run() -> list[str]:
            async with AsyncLwaClient(app, connections=connections) as lwa:
                grants = await asyncio.gather(*(lwa.refresh(s.refresh_token) for s in sellers))
            lwa_most = clock.most_asleep
            clock.most_asleep = 0
            async with AsyncSpApiClient(app, connections=connections) as spapi:
                await asyncio.gather(
                    *(spapi.marketplace_participations("na", g.access_token) for g in grants)
                )
            return [str(lwa_most), str(clock.most_asleep)]

        assert asyncio.run(run()) == [str(connections)] * 2


def test_every_client_gives_up_at_its_timeout() -> None:
    from discoveryctl.sandbox import SandboxConfig, run_in_thread

    with run_in_thread(SandboxConfig(latency_ms=1500)) as slow:
        seller = slow.state.add_seller()
        app = app_for(slow)
        quick = httpx_timeout(0.3)

        async def run() -> list[str]:
            kinds = []
            async with AsyncLwaClient(app, timeout=quick) as lwa:
                with pytest.raises(TransientProviderError) as caught:
                    await lwa.refresh(seller.refresh_token)
                kinds.append(caught.value.error_type)
            async with AsyncSpApiClient(app, timeout=quick) as spapi:
                with pytest.raises(TransientProviderError) as caught:
                    await spapi.marketplace_participations("na", "Atza|any")
                kinds.append(caught.value.error_type)
                assert caught.value.message.startswith("SP-API request failed: ")
            return kinds

        assert asyncio.run(run()) == ["lwa_timeout", "spapi_timeout"]
        with (
            SpApiClient(app, timeout=quick) as spapi,
            pytest.raises(TransientProviderError) as caught,
        ):
            spapi.marketplace_participations("na", "Atza|any")
        assert caught.value.error_type == "spapi_timeout"
        assert caught.value.message == "SP-API request failed: ReadTimeout"


def httpx_timeout(seconds: float) -> Any:
    import httpx

    return httpx.Timeout(seconds)


def test_an_async_client_of_its_own_is_closed_with_it_and_a_given_one_is_not(
    sandbox: Sandbox,
) -> None:
    import aiohttp

    seller = sandbox.state.add_seller()
    app = app_for(sandbox)

    async def run() -> None:
        async with AsyncLwaClient(app) as own:
            await own.refresh(seller.refresh_token)
        with pytest.raises(RuntimeError, match="Session is closed"):
            await own.refresh(seller.refresh_token)
        async with aiohttp.ClientSession() as given:
            async with AsyncLwaClient(app, given) as lwa:
                await lwa.refresh(seller.refresh_token)
            assert not given.closed
            await AsyncLwaClient(app, given).refresh(seller.refresh_token)

    asyncio.run(run())
