"""The sandbox's SP-API ``marketplaceParticipations`` and its per-seller switches, over real
sockets."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread
from discoveryctl.sandbox.clock import SandboxClock

PATH = "/sellers/v1/marketplaceParticipations"
TOKEN_REJECTED = {
    "errors": [
        {
            "code": "Unauthorized",
            "message": "Access to requested resource is denied.",
            "details": "The access token you provided is revoked, malformed or invalid.",
        }
    ]
}


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url) as http:
        yield http


def access_token(client: httpx.Client, sandbox: Sandbox, refresh_token: str) -> str:
    response = client.post(
        "/auth/o2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": sandbox.config.client_id,
            "client_secret": sandbox.config.client_secret,
        },
    )
    token: str = response.json()["access_token"]
    return token


def participations(client: httpx.Client, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"x-amz-access-token": token}
    return client.get(PATH, headers=headers)


def test_a_live_access_token_lists_the_marketplaces(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    response = participations(client, access_token(client, sandbox, seller.refresh_token))
    assert response.status_code == 200
    payload = response.json()["payload"]
    assert payload[0]["marketplace"]["id"] == "ATVPDKIKX0DER"
    assert payload[0]["marketplace"]["countryCode"] == "US"
    assert {entry["participation"]["isParticipating"] for entry in payload} == {True}
    assert {entry["participation"]["hasSuspendedListings"] for entry in payload} == {False}
    assert response.headers["x-amzn-requestid"]
    assert sandbox.state.stats()["requests"][f"GET {PATH}"] == 1


@pytest.mark.parametrize("token", ["Atza|never-issued", "Atza|", "not-a-token"])
def test_unknown_tokens_are_denied(client: httpx.Client, token: str | None) -> None:
    response = participations(client, token)
    assert response.status_code == 403
    assert response.json() == TOKEN_REJECTED


def test_revoking_a_seller_kills_its_access_tokens(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    other = sandbox.state.add_seller()
    token = access_token(client, sandbox, seller.refresh_token)
    other_token = access_token(client, sandbox, other.refresh_token)
    sandbox.state.revoke(seller.selling_partner_id)
    response = participations(client, token)
    assert (response.status_code, response.json()) == (403, TOKEN_REJECTED)
    assert participations(client, other_token).status_code == 200


def test_access_tokens_expire_after_an_hour() -> None:
    clock = SandboxClock()
    with (
        run_in_thread(clock=clock) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        seller = sandbox.state.add_seller()
        token = access_token(client, sandbox, seller.refresh_token)
        clock.advance(3599)
        assert participations(client, token).status_code == 200
        clock.advance(1)
        response = participations(client, token)
    assert response.status_code == 403
    assert response.json() == {
        "errors": [
            {
                "code": "Unauthorized",
                "message": "Access to requested resource is denied.",
                "details": "The access token you provided has expired.",
            }
        ]
    }


def test_a_missing_access_token(client: httpx.Client) -> None:
    response = client.get("/sellers/v1/marketplaceParticipations")
    assert response.status_code == 403
    assert response.json() == {
        "errors": [
            {
                "message": "Access to requested resource is denied.",
                "code": "MissingAuthenticationToken",
            }
        ]
    }


def test_spapi_401(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    token = access_token(client, sandbox, seller.refresh_token)
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
    response = participations(client, token)
    assert response.status_code == 401
    assert response.json() == {
        "errors": [
            {
                "code": "Unauthorized",
                "message": "Access to requested resource is denied.",
                "details": "",
            }
        ]
    }
    assert participations(client, token).status_code == 200


def test_spapi_403_ambiguous_does_not_mention_the_token(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    token = access_token(client, sandbox, seller.refresh_token)
    sandbox.state.set_behaviour(seller.refresh_token, "spapi_403_ambiguous")
    response = participations(client, token)
    assert response.status_code == 403
    [error] = response.json()["errors"]
    assert error == {
        "code": "Unauthorized",
        "message": "Access to requested resource is denied.",
        "details": "",
    }
    assert participations(client, token).status_code == 403


def test_spapi_429_is_quota_exceeded_with_retry_after(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    token = access_token(client, sandbox, seller.refresh_token)
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_429", times=2, retry_after=3)
    for _ in range(2):
        response = participations(client, token)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert response.json()["errors"][0]["code"] == "QuotaExceeded"
    assert participations(client, token).status_code == 200
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_429", times=1)
    plain = participations(client, token)
    assert plain.status_code == 429
    assert "retry-after" not in plain.headers  # as Amazon: no Retry-After unless asked for


def test_spapi_switches_leave_other_sellers_alone(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    other = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401")
    assert (
        participations(client, access_token(client, sandbox, other.refresh_token)).status_code
        == 200
    )


def test_fail_rate_fails_spapi_too() -> None:
    with (
        run_in_thread(SandboxConfig(fail_rate=1.0)) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        response = participations(client, "Atza|anything")
    assert response.status_code == 500
    assert response.json()["errors"][0]["code"] == "InternalFailure"
    assert "x-amzn-ratelimit-limit" not in response.headers


def test_the_rate_limit_header_comes_only_with_answers_amazon_sends_it_with(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    token = access_token(client, sandbox, seller.refresh_token)
    granted = participations(client, token)
    assert (granted.status_code, granted.headers["x-amzn-ratelimit-limit"]) == (200, "0.016")

    refused = [participations(client, None), participations(client, "Atza|never-issued")]
    for behaviour in ("spapi_401", "spapi_403_ambiguous", "spapi_429"):
        sandbox.state.set_behaviour(seller.selling_partner_id, behaviour, times=1)
        refused.append(participations(client, token))
    assert [r.status_code for r in refused] == [403, 403, 401, 403, 429]
    for response in refused:
        assert "x-amzn-ratelimit-limit" not in response.headers
        assert response.headers["x-amzn-requestid"]
