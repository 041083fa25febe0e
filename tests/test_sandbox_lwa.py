"""The sandbox's Login with Amazon token endpoint, its per-seller behaviours and the control
endpoints, over real sockets."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread
from discoveryctl.sandbox.clock import ManualClock, SandboxClock

INVALID_REFRESH_GRANT = {
    "error": "invalid_grant",
    "error_description": "The request has an invalid grant parameter : refresh_token. "
    "User may have revoked or didn't grant the permission.",
}
INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed"}


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url) as http:
        yield http


def token_form(sandbox: Sandbox, refresh_token: str) -> dict[str, str]:
    return {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": sandbox.config.client_id,
        "client_secret": sandbox.config.client_secret,
    }


def refresh(
    client: httpx.Client, sandbox: Sandbox, refresh_token: str, /, **overrides: str
) -> httpx.Response:
    form = token_form(sandbox, refresh_token) | overrides
    return client.post("/auth/o2/token", data={k: v for k, v in form.items() if v != ""})


def test_refresh_grant_returns_a_bearer_access_token_and_the_same_refresh_token(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    response = refresh(client, sandbox, seller.refresh_token)
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["access_token", "refresh_token", "token_type", "expires_in"]
    assert body["access_token"].startswith("Atza|")
    assert body["refresh_token"] == seller.refresh_token
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert response.headers["cache-control"] == "no-store"
    assert seller.refresh_token.startswith("Atzr|")
    assert re.fullmatch(r"A[0-9A-Z]{13}", seller.selling_partner_id)


def test_each_refresh_mints_a_new_access_token(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    first = refresh(client, sandbox, seller.refresh_token).json()["access_token"]
    second = refresh(client, sandbox, seller.refresh_token).json()["access_token"]
    assert first != second


def test_expires_in_follows_the_configured_access_token_lifetime() -> None:
    with (
        run_in_thread(SandboxConfig(access_token_ttl=120)) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        seller = sandbox.state.add_seller()
        assert refresh(client, sandbox, seller.refresh_token).json()["expires_in"] == 120


@pytest.mark.parametrize("field", ["client_id", "client_secret"])
@pytest.mark.parametrize("value", ["wrong", "wröng"])
def test_wrong_client_credentials_are_invalid_client(
    client: httpx.Client, sandbox: Sandbox, field: str, value: str
) -> None:
    seller = sandbox.state.add_seller()
    response = refresh(client, sandbox, seller.refresh_token, **{field: value})
    assert response.status_code == 401
    assert response.json() == INVALID_CLIENT


def test_unknown_refresh_token_is_invalid_grant(client: httpx.Client, sandbox: Sandbox) -> None:
    response = refresh(client, sandbox, "Atzr|never-issued")
    assert response.status_code == 400
    assert response.json() == INVALID_REFRESH_GRANT


def test_revoked_seller_gets_invalid_grant(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    other = sandbox.state.add_seller()
    sandbox.state.revoke(seller.selling_partner_id)
    response = refresh(client, sandbox, seller.refresh_token)
    assert response.status_code == 400
    assert response.json() == INVALID_REFRESH_GRANT
    assert refresh(client, sandbox, other.refresh_token).status_code == 200


@pytest.mark.parametrize("missing", ["grant_type", "client_id", "client_secret", "refresh_token"])
def test_missing_parameters_are_invalid_request(
    client: httpx.Client, sandbox: Sandbox, missing: str
) -> None:
    seller = sandbox.state.add_seller()
    response = refresh(client, sandbox, seller.refresh_token, **{missing: ""})
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_request",
        "error_description": f"The request is missing a required parameter : {missing}",
    }


def test_a_code_grant_without_a_redirect_uri_is_granted_as_real_clients_send_it(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller_id = sandbox.state.consenting_seller(None)
    code = sandbox.state.issue_code(seller_id, sandbox.config.redirect_uris[0], ttl=300)
    form = {  # python-amazon-sp-api's authorize_auth_code sends exactly these
        "grant_type": "authorization_code",
        "code": code,
        "client_id": sandbox.config.client_id,
        "client_secret": sandbox.config.client_secret,
    }
    response = client.post("/auth/o2/token", data=form)
    assert response.status_code == 200, response.text
    assert set(response.json()) >= {"access_token", "refresh_token", "expires_in"}
    assert client.post("/auth/o2/token", data=form).status_code == 400  # a code works once


def test_a_code_grant_naming_another_redirect_uri_is_invalid_grant(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller_id = sandbox.state.consenting_seller(None)
    code = sandbox.state.issue_code(seller_id, sandbox.config.redirect_uris[0], ttl=300)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": sandbox.config.client_id,
        "client_secret": sandbox.config.client_secret,
    }
    response = client.post("/auth/o2/token", data=form | {"redirect_uri": "http://evil/cb"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "The request has an invalid grant parameter : redirect_uri",
    }
    accepted = client.post(
        "/auth/o2/token", data=form | {"redirect_uri": sandbox.config.redirect_uris[0]}
    )
    assert accepted.status_code == 200  # the code was not spent by the refused request


def test_unsupported_grant_type(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    response = refresh(client, sandbox, seller.refresh_token, grant_type="password")
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_unknown_authorization_code_is_invalid_grant(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    response = client.post(
        "/auth/o2/token",
        data={
            "grant_type": "authorization_code",
            "code": "ANeverIssuedCode1234",
            "redirect_uri": sandbox.config.redirect_uris[0],
            "client_id": sandbox.config.client_id,
            "client_secret": sandbox.config.client_secret,
        },
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "The request has an invalid grant parameter : code",
    }


# -- behaviours -------------------------------------------------------------------------------


def test_revoked_behaviour_until_cleared(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "revoked")
    for _ in range(2):
        response = refresh(client, sandbox, seller.refresh_token)
        assert (response.status_code, response.json()) == (400, INVALID_REFRESH_GRANT)
    sandbox.state.clear_behaviour(seller.selling_partner_id, "revoked")
    assert refresh(client, sandbox, seller.refresh_token).status_code == 200


def test_flaky_fails_the_next_n_refreshes_then_recovers(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.refresh_token, "flaky", times=2)
    statuses = [refresh(client, sandbox, seller.refresh_token).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_flaky_with_a_chosen_status(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "flaky", times=1, status=500)
    response = refresh(client, sandbox, seller.refresh_token)
    assert response.status_code == 500
    assert response.json()["error"] == "server_error"


def test_throttled_answers_429_with_retry_after_only_when_asked(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "throttled", times=1, retry_after=7)
    response = refresh(client, sandbox, seller.refresh_token)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert refresh(client, sandbox, seller.refresh_token).status_code == 200
    sandbox.state.set_behaviour(seller.selling_partner_id, "throttled", times=1)
    plain = refresh(client, sandbox, seller.refresh_token)
    assert plain.status_code == 429
    assert plain.json()["error"] == "too_many_requests"
    assert "retry-after" not in plain.headers  # nothing documents one on LWA


def test_throttled_without_times_stays_on(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "throttled")
    statuses = {refresh(client, sandbox, seller.refresh_token).status_code for _ in range(3)}
    assert statuses == {429}


def test_bad_gateway_answers_an_html_page(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "bad_gateway", times=1)
    response = refresh(client, sandbox, seller.refresh_token)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()
    assert refresh(client, sandbox, seller.refresh_token).status_code == 200


def test_omit_refresh_token_answers_without_one(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "omit_refresh_token")
    body = refresh(client, sandbox, seller.refresh_token).json()
    assert "refresh_token" not in body
    assert body["access_token"].startswith("Atza|")
    assert body["expires_in"] == 3600


def test_app_rejected_is_invalid_client_for_that_seller_only(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    other = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "app_rejected")
    response = refresh(client, sandbox, seller.refresh_token)
    assert (response.status_code, response.json()) == (401, INVALID_CLIENT)
    assert refresh(client, sandbox, other.refresh_token).status_code == 200


def test_app_unauthorized_is_unauthorized_client(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "app_unauthorized", times=1)
    response = refresh(client, sandbox, seller.refresh_token)
    assert (response.status_code, response.json()) == (
        400,
        {
            "error": "unauthorized_client",
            "error_description": "Not authorized for requested operation",
        },
    )
    assert refresh(client, sandbox, seller.refresh_token).status_code == 200


class HeldClock(ManualClock):
    """A ManualClock whose injected delays wait at a gate: opened by the test (``open()``),
    or by itself once ``gather`` requests are waiting at the same time. A server that served
    one request at a time would never get there: the held request times out with a 500."""

    def __init__(self, gather: int | None = None) -> None:
        super().__init__()
        self.gather = gather
        self.gate = threading.Event()
        self.waiting = 0

    def open(self) -> None:
        self.gate.set()

    async def sleep(self, seconds: float) -> None:
        self.waiting += 1  # only the server's event loop sleeps: no lock needed
        if self.gather is not None and self.waiting >= self.gather:
            self.gate.set()
        for _ in range(1000):
            if self.gate.is_set():
                break
            await asyncio.sleep(0.01)
        else:
            raise TimeoutError("the delay was never released")
        await super().sleep(seconds)


def test_slow_delays_one_seller_without_blocking_others() -> None:
    clock = HeldClock()
    with run_in_thread(clock=clock) as sandbox:
        slow = sandbox.state.add_seller()
        fast = sandbox.state.add_seller()
        sandbox.state.set_behaviour(slow.selling_partner_id, "slow", ms=600)

        async def both() -> tuple[int, bool, int]:
            async with httpx.AsyncClient(base_url=sandbox.url, timeout=10) as client:
                slow_request = asyncio.create_task(
                    client.post("/auth/o2/token", data=token_form(sandbox, slow.refresh_token))
                )
                while not clock.waiting:  # the slow request is held in its delay
                    await asyncio.sleep(0.01)
                fast_response = await client.post(
                    "/auth/o2/token", data=token_form(sandbox, fast.refresh_token)
                )
                slow_still_waiting = not slow_request.done()
                clock.open()
                return (
                    fast_response.status_code,
                    slow_still_waiting,
                    (await slow_request).status_code,
                )

        fast_status, slow_still_waiting, slow_status = asyncio.run(both())
    assert (fast_status, slow_status) == (200, 200)
    assert slow_still_waiting  # the fast seller was answered while the slow one waited
    assert clock.sleeps == [0.6]  # only the slow seller was delayed, by its 600 ms


def test_configured_latency_delays_every_request_at_once() -> None:
    clock = HeldClock(gather=8)
    with run_in_thread(SandboxConfig(latency_ms=300), clock=clock) as slow_sandbox:
        tokens = [slow_sandbox.state.add_seller().refresh_token for _ in range(8)]

        async def fire() -> list[int]:
            async with httpx.AsyncClient(base_url=slow_sandbox.url, timeout=30) as client:
                responses = await asyncio.gather(
                    *(
                        client.post("/auth/o2/token", data=token_form(slow_sandbox, token))
                        for token in tokens
                    )
                )
            return [r.status_code for r in responses]

        statuses = asyncio.run(fire())
    assert statuses == [200] * 8
    assert clock.sleeps == [0.3] * 8
    assert clock.most_asleep == 8  # the eight delays overlapped


def test_fail_rate_one_fails_every_grant() -> None:
    with (
        run_in_thread(SandboxConfig(fail_rate=1.0)) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        seller = sandbox.state.add_seller()
        response = refresh(client, sandbox, seller.refresh_token)
        assert response.status_code == 500
        assert response.json()["error"] == "server_error"
        assert sandbox.state.stats()["grants"]["refresh_token"] == 0


def test_a_rotated_client_secret_fails_every_seller_until_it_is_rotated_back(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sellers = [sandbox.state.add_seller() for _ in range(2)]
    rotated = client.post("/_sandbox/app", json={"client_secret": "rotated-secret"})
    assert rotated.status_code == 204
    for seller in sellers:
        response = refresh(client, sandbox, seller.refresh_token)
        assert (response.status_code, response.json()) == (401, INVALID_CLIENT)
    for seller in sellers:
        fresh = refresh(client, sandbox, seller.refresh_token, client_secret="rotated-secret")
        assert fresh.status_code == 200
    assert sandbox.state.stats()["grants"]["refresh_token"] == 2

    assert client.post("/_sandbox/app", json={"client_secret": None}).status_code == 204
    for seller in sellers:
        assert refresh(client, sandbox, seller.refresh_token).status_code == 200
        stale = refresh(client, sandbox, seller.refresh_token, client_secret="rotated-secret")
        assert stale.status_code == 401


def test_a_rotated_client_secret_also_fails_the_code_exchange(sandbox: Sandbox) -> None:
    sandbox.state.rotate_client_secret("rotated-secret")
    with httpx.Client(base_url=sandbox.url) as client:
        response = client.post(
            "/auth/o2/token",
            data={
                "grant_type": "authorization_code",
                "code": "ANeverIssuedCode1234",
                "redirect_uri": sandbox.config.redirect_uris[0],
                "client_id": sandbox.config.client_id,
                "client_secret": sandbox.config.client_secret,
            },
        )
    assert (response.status_code, response.json()) == (401, INVALID_CLIENT)


def test_refresh_token_rotation_keeps_the_old_token_valid(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "rotate_refresh_token", times=1)
    rotated = refresh(client, sandbox, seller.refresh_token).json()["refresh_token"]
    assert rotated.startswith("Atzr|")
    assert rotated != seller.refresh_token
    again = refresh(client, sandbox, rotated)
    assert (again.status_code, again.json()["refresh_token"]) == (200, rotated)
    assert refresh(client, sandbox, seller.refresh_token).status_code == 200


def test_refresh_token_rotation_can_revoke_the_old_token(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.refresh_token, "rotate_refresh_token", revoke_old=1)
    rotated = refresh(client, sandbox, seller.refresh_token).json()["refresh_token"]
    old = refresh(client, sandbox, seller.refresh_token)
    assert (old.status_code, old.json()) == (400, INVALID_REFRESH_GRANT)
    assert refresh(client, sandbox, rotated).json()["refresh_token"] not in (
        rotated,
        seller.refresh_token,
    )


def test_expires_in_as_a_string(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "expires_in_string", times=1)
    assert refresh(client, sandbox, seller.refresh_token).json()["expires_in"] == "3600"
    assert refresh(client, sandbox, seller.refresh_token).json()["expires_in"] == 3600


def test_the_lwa_rate_limit_throttles_each_client_id() -> None:
    clock = SandboxClock()
    with (
        run_in_thread(clock=clock) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        seller = sandbox.state.add_seller()
        limit = {"lwa_rate_limit": {"per_second": 0.5, "burst": 2}}
        assert client.post("/_sandbox/app", json=limit).status_code == 204
        responses = [refresh(client, sandbox, seller.refresh_token) for _ in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert responses[2].json()["error"] == "too_many_requests"
        assert "retry-after" not in responses[2].headers
        other_client = refresh(client, sandbox, seller.refresh_token, client_id="another-app")
        assert other_client.status_code == 401  # its own bucket, then its own failure
        clock.advance(2)
        assert refresh(client, sandbox, seller.refresh_token).status_code == 200
        assert refresh(client, sandbox, seller.refresh_token).status_code == 429

        assert client.post("/_sandbox/app", json={"lwa_rate_limit": None}).status_code == 204
        statuses = {refresh(client, sandbox, seller.refresh_token).status_code for _ in range(5)}
        assert statuses == {200}
        assert sandbox.state.stats()["grants"]["refresh_token"] == 8


@pytest.mark.parametrize(
    "body",
    [
        {"client_secret": ""},
        {"client_secret": 7},
        {"lwa_rate_limit": {"per_second": 0}},
        {"lwa_rate_limit": {"per_second": True}},
        {"lwa_rate_limit": {"per_second": 1, "burst": 0}},
        {"lwa_rate_limit": {"per_second": 1, "colour": 1}},
        {"lwa_rate_limit": 5},
        {"client_id": "other"},
        [1],
    ],
)
def test_control_rejects_bad_app_switches(
    client: httpx.Client, sandbox: Sandbox, body: Any
) -> None:
    seller = sandbox.state.add_seller()
    response = client.post("/_sandbox/app", json=body)
    assert response.status_code == 400
    assert "error" in response.json()
    assert refresh(client, sandbox, seller.refresh_token).status_code == 200  # nothing changed


@pytest.mark.parametrize(
    ("behaviour", "params"),
    [
        ("levitate", {}),
        ("slow", {}),
        ("flaky", {"times": 0}),
        ("flaky", {"status": 404}),
        ("flaky", {"colour": 1}),
        ("stripe_429", {}),
    ],
)
def test_set_behaviour_rejects_bad_requests(
    sandbox: Sandbox, behaviour: str, params: dict[str, Any]
) -> None:
    seller = sandbox.state.add_seller()
    with pytest.raises(ValueError):
        sandbox.state.set_behaviour(seller.selling_partner_id, behaviour, **params)


def test_set_behaviour_on_an_unknown_seller(sandbox: Sandbox) -> None:
    with pytest.raises(KeyError):
        sandbox.state.set_behaviour("ANOSUCHSELLER1", "revoked")


# -- control endpoints ------------------------------------------------------------------------


def test_control_creates_sellers(client: httpx.Client, sandbox: Sandbox) -> None:
    created = client.post("/_sandbox/sellers")
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"selling_partner_id", "refresh_token"}
    assert refresh(client, sandbox, body["refresh_token"]).status_code == 200

    named = client.post("/_sandbox/sellers", json={"selling_partner_id": "ASELLER0000001"})
    assert (named.status_code, named.json()["selling_partner_id"]) == (201, "ASELLER0000001")
    again = client.post("/_sandbox/sellers", json={"selling_partner_id": "ASELLER0000001"})
    assert again.status_code == 409
    assert client.post("/_sandbox/sellers", content=b"{nope").status_code == 400


def test_control_sets_and_clears_behaviours(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    response = client.post(
        "/_sandbox/behaviours",
        json={"target": seller.refresh_token, "behaviour": "flaky", "params": {"times": 5}},
    )
    assert response.status_code == 200
    assert response.json() == {
        "target": seller.selling_partner_id,
        "behaviour": "flaky",
        "params": {"times": 5},
    }
    assert refresh(client, sandbox, seller.refresh_token).status_code == 503
    cleared = client.delete(
        "/_sandbox/behaviours", params={"target": seller.selling_partner_id, "behaviour": "flaky"}
    )
    assert cleared.status_code == 204
    assert refresh(client, sandbox, seller.refresh_token).status_code == 200

    client.post(
        "/_sandbox/behaviours", json={"target": seller.selling_partner_id, "behaviour": "revoked"}
    )
    assert client.delete("/_sandbox/behaviours").status_code == 204
    assert refresh(client, sandbox, seller.refresh_token).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"target": "ANOSUCHSELLER1", "behaviour": "revoked"}, 404),
        ({"target": "stripe", "behaviour": "revoked"}, 400),
        ({"target": "stripe", "behaviour": "stripe_slow", "params": {"ms": "fast"}}, 400),
        ({"behaviour": "revoked"}, 400),
        ([1, 2], 400),
    ],
)
def test_control_rejects_bad_behaviours(client: httpx.Client, body: Any, status: int) -> None:
    response = client.post("/_sandbox/behaviours", json=body)
    assert response.status_code == status
    assert "error" in response.json()


def test_control_revokes_a_seller(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    response = client.post(f"/_sandbox/sellers/{seller.selling_partner_id}/revoke")
    assert response.json() == {"selling_partner_id": seller.selling_partner_id, "revoked": True}
    assert refresh(client, sandbox, seller.refresh_token).json() == INVALID_REFRESH_GRANT
    assert client.post("/_sandbox/sellers/ANOSUCHSELLER1/revoke").status_code == 404


def test_stats_count_requests_grants_and_refreshes_per_seller(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "flaky", times=1)
    for _ in range(3):
        refresh(client, sandbox, seller.refresh_token)
    refresh(client, sandbox, "Atzr|unknown")
    stats = client.get("/_sandbox/stats").json()
    assert stats == sandbox.state.stats()
    assert stats["requests"] == {"POST /auth/o2/token": 4}
    assert stats["grants"] == {"authorization_code": 0, "refresh_token": 2}
    assert stats["refreshes_per_seller"] == {seller.selling_partner_id: 3}
    assert stats["customers_per_user"] == {}


def test_reset_forgets_everything(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    refresh(client, sandbox, seller.refresh_token)
    assert client.post("/_sandbox/reset").status_code == 204
    assert refresh(client, sandbox, seller.refresh_token).json() == INVALID_REFRESH_GRANT
    assert sandbox.state.stats()["grants"] == {"authorization_code": 0, "refresh_token": 0}


def test_reset_brings_back_the_configured_secret_and_lifts_the_rate_limit(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.state.rotate_client_secret("rotated-secret")
    sandbox.state.limit_lwa_rate(0.001, burst=1)
    assert client.post("/_sandbox/reset").status_code == 204
    seller = sandbox.state.add_seller()
    statuses = [refresh(client, sandbox, seller.refresh_token).status_code for _ in range(2)]
    assert statuses == [200, 200]


def test_oversized_bodies_are_refused(client: httpx.Client) -> None:
    response = client.post("/auth/o2/token", content=b"x" * (2 << 20))
    assert response.status_code == 413


def test_unknown_paths_and_methods(client: httpx.Client) -> None:
    assert client.get("/auth/o2/nowhere").status_code == 404
    wrong_method = client.get("/auth/o2/token")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
