"""The LWA client over real sockets: each of the sandbox's LWA switches, and a dead or silent
endpoint, classified as docs/behaviour.md §5 says (the same decisions as
``test_lwa_classification.py``, reached through HTTP)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    SellerAuthorizationRevoked,
    TransientProviderError,
)
from discoveryctl.providers.lwa import LwaClient
from discoveryctl.sandbox import Sandbox

from helpers import app_for


@pytest.fixture
def lwa(sandbox: Sandbox) -> Iterator[LwaClient]:
    with httpx.Client(timeout=httpx.Timeout(2.0)) as http, LwaClient(app_for(sandbox), http) as c:
        yield c


def test_a_live_refresh_token_is_refreshed(sandbox: Sandbox, lwa: LwaClient) -> None:
    seller = sandbox.state.add_seller()
    grant = lwa.refresh(seller.refresh_token)
    assert grant.access_token.startswith("Atza|")
    assert grant.refresh_token == seller.refresh_token
    assert grant.expires_in == sandbox.config.access_token_ttl
    assert sandbox.state.seller_of_access_token(grant.access_token) == seller.selling_partner_id


def test_expires_in_sent_as_a_string_refreshes(sandbox: Sandbox, lwa: LwaClient) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "expires_in_string", times=1)
    assert lwa.refresh(seller.refresh_token).expires_in == 3600


def test_a_rotated_refresh_token_comes_back(sandbox: Sandbox, lwa: LwaClient) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "rotate_refresh_token", times=1)
    grant = lwa.refresh(seller.refresh_token)
    assert grant.refresh_token is not None
    assert grant.refresh_token != seller.refresh_token


def test_an_omitted_refresh_token_is_none(sandbox: Sandbox, lwa: LwaClient) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "omit_refresh_token", times=1)
    assert lwa.refresh(seller.refresh_token).refresh_token is None


def test_a_revoked_seller_is_revoked(sandbox: Sandbox, lwa: LwaClient) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.revoke(seller.selling_partner_id)
    with pytest.raises(SellerAuthorizationRevoked) as caught:
        lwa.refresh(seller.refresh_token)
    assert caught.value.status_code == 400
    assert caught.value.error_type == "oauth_token_revoked"


def test_an_unknown_refresh_token_is_revoked(lwa: LwaClient) -> None:
    with pytest.raises(SellerAuthorizationRevoked):
        lwa.refresh("Atzr|never-issued")


@pytest.mark.parametrize("behaviour", ["app_rejected", "app_unauthorized"])
def test_the_app_s_credentials_refused_blame_the_app(
    sandbox: Sandbox, lwa: LwaClient, behaviour: str
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, behaviour, times=1)
    with pytest.raises(AppCredentialsRejected):
        lwa.refresh(seller.refresh_token)
    assert lwa.refresh(seller.refresh_token).access_token  # the seller itself is fine


def test_a_wrong_client_secret_is_the_app_s_problem(sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    marker = "amzn1.oa2-cs.v1.marker-secret-0123456789"
    with (
        httpx.Client(timeout=2.0) as http,
        LwaClient(app_for(sandbox, client_secret=marker), http) as lwa,
        pytest.raises(AppCredentialsRejected) as caught,
    ):
        lwa.refresh(seller.refresh_token)
    assert caught.value.status_code == 401
    assert marker not in str(caught.value)
    assert marker not in repr(lwa.app)


@pytest.mark.parametrize(
    ("behaviour", "params", "status", "error_type"),
    [
        ("throttled", {"retry_after": 3}, 429, "lwa_throttled"),
        ("flaky", {"status": 500}, 500, "lwa_server_error"),
        ("flaky", {"status": 503}, 503, "lwa_server_error"),
        ("bad_gateway", {}, 502, "lwa_bad_response"),
    ],
)
def test_throttling_and_server_trouble_are_transient(
    sandbox: Sandbox,
    lwa: LwaClient,
    behaviour: str,
    params: dict[str, int],
    status: int,
    error_type: str,
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, behaviour, times=1, **params)
    with pytest.raises(TransientProviderError) as caught:
        lwa.refresh(seller.refresh_token)
    assert (caught.value.status_code, caught.value.error_type) == (status, error_type)
    if behaviour == "throttled":
        assert caught.value.retry_after == 3.0
    assert lwa.refresh(seller.refresh_token).access_token  # the next try goes through


def test_a_slow_answer_past_the_timeout_is_transient(sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "slow", ms=1500, times=1)
    with (
        httpx.Client(timeout=0.3) as http,
        LwaClient(app_for(sandbox), http) as lwa,
        pytest.raises(TransientProviderError) as caught,
    ):
        lwa.refresh(seller.refresh_token)
    assert caught.value.error_type == "lwa_timeout"
    assert caught.value.message == "LWA token request failed: ReadTimeout"


def test_a_client_of_its_own_gives_up_at_its_timeout(sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "slow", ms=1500, times=1)
    with (
        LwaClient(app_for(sandbox), timeout=httpx.Timeout(0.3)) as lwa,
        pytest.raises(TransientProviderError) as caught,
    ):
        lwa.refresh(seller.refresh_token)
    assert caught.value.error_type == "lwa_timeout"


def test_a_client_of_its_own_is_closed_with_it(sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    with LwaClient(app_for(sandbox)) as lwa:
        assert lwa.refresh(seller.refresh_token).access_token
    with pytest.raises(RuntimeError, match="client has been closed"):
        lwa.refresh(seller.refresh_token)


def test_a_client_it_was_given_is_left_open(sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    with httpx.Client(timeout=2.0) as http:
        with LwaClient(app_for(sandbox), http) as lwa:
            lwa.refresh(seller.refresh_token)
        assert not http.is_closed


def test_a_closed_port_is_a_transient_connection_error(sandbox: Sandbox) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        httpx.Client(timeout=2.0) as http,
        LwaClient(
            app_for(sandbox, token_url=f"http://127.0.0.1:{port}/auth/o2/token"), http
        ) as lwa,
        pytest.raises(TransientProviderError) as caught,
    ):
        lwa.refresh("Atzr|any")
    assert caught.value.error_type == "lwa_connection_error"
    assert caught.value.message == "LWA token request failed: ConnectError"
    assert caught.value.status_code is None


def test_a_page_that_is_not_lwa_is_not_a_verdict_on_anyone(sandbox: Sandbox) -> None:
    """A wrong token URL (the sandbox's 404 page): neither revoked nor retried forever."""
    with (
        httpx.Client(timeout=2.0) as http,
        LwaClient(app_for(sandbox, token_url=sandbox.url + "/no/such/path"), http) as lwa,
        pytest.raises(ProviderError) as caught,
    ):
        lwa.refresh("Atzr|any")
    assert type(caught.value) is ProviderError
    assert caught.value.status_code == 404


def test_a_code_is_exchanged_once(sandbox: Sandbox, lwa: LwaClient) -> None:
    seller_id = sandbox.state.consenting_seller(None)
    code = sandbox.state.issue_code(seller_id, sandbox.config.redirect_uris[0], ttl=300)
    grant = lwa.exchange_code(code)
    assert grant.refresh_token is not None
    with pytest.raises(SellerAuthorizationRevoked):
        lwa.exchange_code(code)  # LWA's answer to a spent code is invalid_grant


def test_the_exchange_names_the_app_s_redirect_uri(sandbox: Sandbox, lwa: LwaClient) -> None:
    """A code issued for another redirect URI is refused: the exchange says which one it is
    for (RFC 6749 §4.1.3), rather than leaving LWA to accept it without."""
    seller_id = sandbox.state.consenting_seller(None)
    code = sandbox.state.issue_code(seller_id, "https://elsewhere.example.com/cb", ttl=300)
    with pytest.raises(SellerAuthorizationRevoked):
        lwa.exchange_code(code)
    assert sandbox.state.stats()["grants"]["authorization_code"] == 0
