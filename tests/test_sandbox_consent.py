"""The sandbox's Seller Central consent pages, directly and in login-URI mode, and the codes
they hand out, over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread

REDIRECT_URI = "http://127.0.0.1:8765/callback"
LOGIN_URI = "http://127.0.0.1:8765/login"


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url) as http:
        yield http


def consent_params(sandbox: Sandbox, **overrides: str) -> dict[str, str]:
    params = {
        "application_id": sandbox.config.application_id,
        "state": "opaque-state-123",
        "redirect_uri": REDIRECT_URI,
        "version": "beta",
    }
    params.update(overrides)
    return {name: value for name, value in params.items() if value != ""}


def redirected_to(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """The location of a 302 without its query, and its query parameters."""
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    query = {name: values[0] for name, values in parse_qs(location.query).items()}
    return location._replace(query="").geturl(), query


def exchange(
    client: httpx.Client, sandbox: Sandbox, code: str, redirect_uri: str = REDIRECT_URI
) -> httpx.Response:
    return client.post(
        "/auth/o2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": sandbox.config.client_id,
            "client_secret": sandbox.config.client_secret,
        },
    )


def test_consent_approves_a_new_seller_and_the_code_buys_tokens(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    target, query = redirected_to(
        client.get("/apps/authorize/consent", params=consent_params(sandbox))
    )
    assert target == REDIRECT_URI
    assert set(query) == {"state", "selling_partner_id", "spapi_oauth_code"}
    assert query["state"] == "opaque-state-123"

    tokens = exchange(client, sandbox, query["spapi_oauth_code"])
    assert tokens.status_code == 200
    body = tokens.json()
    assert body["refresh_token"].startswith("Atzr|")
    assert body["access_token"].startswith("Atza|")
    assert (body["token_type"], body["expires_in"]) == ("bearer", 3600)
    participations = client.get(
        "/sellers/v1/marketplaceParticipations",
        headers={"x-amz-access-token": body["access_token"]},
    )
    assert participations.status_code == 200
    assert sandbox.state.stats()["grants"] == {"authorization_code": 1, "refresh_token": 0}


def test_redirect_uri_defaults_to_the_first_registered_one(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    params = consent_params(sandbox, redirect_uri="")
    target, _ = redirected_to(client.get("/apps/authorize/consent", params=params))
    assert target == sandbox.config.redirect_uris[0]


def test_a_redirect_uri_with_its_own_query_keeps_it() -> None:
    registered = "http://127.0.0.1:9000/cb?tenant=7"
    config = SandboxConfig(redirect_uris=(REDIRECT_URI, registered))
    with run_in_thread(config) as sandbox, httpx.Client(base_url=sandbox.url) as client:
        params = consent_params(sandbox, redirect_uri=registered)
        target, query = redirected_to(client.get("/apps/authorize/consent", params=params))
    assert target == "http://127.0.0.1:9000/cb"
    assert query["tenant"] == "7"
    assert query["state"] == "opaque-state-123"


def test_reconsent_by_an_existing_seller_grants_a_fresh_refresh_token(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.revoke(seller.selling_partner_id)
    params = consent_params(sandbox, selling_partner_id=seller.selling_partner_id)
    _, query = redirected_to(client.get("/apps/authorize/consent", params=params))
    assert query["selling_partner_id"] == seller.selling_partner_id

    fresh = exchange(client, sandbox, query["spapi_oauth_code"]).json()["refresh_token"]
    assert fresh != seller.refresh_token
    form = {
        "grant_type": "refresh_token",
        "client_id": sandbox.config.client_id,
        "client_secret": sandbox.config.client_secret,
    }
    assert client.post("/auth/o2/token", data=form | {"refresh_token": fresh}).status_code == 200
    old = client.post("/auth/o2/token", data=form | {"refresh_token": seller.refresh_token})
    assert old.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"application_id": "amzn1.sp.solution.someone-else"}, "could not be found"),
        ({"application_id": ""}, "could not be found"),
        ({"redirect_uri": "http://127.0.0.1:9999/elsewhere"}, "MD5101"),
        ({"redirect_uri": REDIRECT_URI + "#fragment"}, "MD5110"),
        ({"version": ""}, "MD1000"),
        ({"state": ""}, "missing the state parameter"),
    ],
)
def test_consent_errors_are_seller_central_error_pages(
    client: httpx.Client, sandbox: Sandbox, overrides: dict[str, str], expected: str
) -> None:
    response = client.get("/apps/authorize/consent", params=consent_params(sandbox, **overrides))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert expected in response.text
    assert "location" not in response.headers


def test_a_published_app_needs_no_version_beta() -> None:
    with (
        run_in_thread(SandboxConfig(draft=False)) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        response = client.get("/apps/authorize/consent", params=consent_params(sandbox, version=""))
        assert redirected_to(response)[0] == REDIRECT_URI
        assert sandbox.env()["AMAZON_APP_DRAFT"] == "0"


def test_a_code_works_once(client: httpx.Client, sandbox: Sandbox) -> None:
    _, query = redirected_to(client.get("/apps/authorize/consent", params=consent_params(sandbox)))
    assert exchange(client, sandbox, query["spapi_oauth_code"]).status_code == 200
    replay = exchange(client, sandbox, query["spapi_oauth_code"])
    assert replay.status_code == 400
    assert replay.json() == {
        "error": "invalid_grant",
        "error_description": "The request has an invalid grant parameter : code",
    }


def test_a_code_is_bound_to_its_redirect_uri(client: httpx.Client, sandbox: Sandbox) -> None:
    _, query = redirected_to(client.get("/apps/authorize/consent", params=consent_params(sandbox)))
    mismatch = exchange(client, sandbox, query["spapi_oauth_code"], "http://127.0.0.1:1/other")
    assert mismatch.status_code == 400
    assert mismatch.json()["error_description"] == (
        "The request has an invalid grant parameter : redirect_uri"
    )
    assert exchange(client, sandbox, query["spapi_oauth_code"]).status_code == 200


def test_codes_expire() -> None:
    with (
        run_in_thread(SandboxConfig(code_ttl=0)) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        _, query = redirected_to(
            client.get("/apps/authorize/consent", params=consent_params(sandbox))
        )
        response = exchange(client, sandbox, query["spapi_oauth_code"])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_lwa_behaviours_apply_to_the_code_exchange(client: httpx.Client, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "app_rejected", times=1)
    params = consent_params(sandbox, selling_partner_id=seller.selling_partner_id)
    _, query = redirected_to(client.get("/apps/authorize/consent", params=params))
    assert exchange(client, sandbox, query["spapi_oauth_code"]).status_code == 401
    assert exchange(client, sandbox, query["spapi_oauth_code"]).status_code == 200


# -- login-URI mode ---------------------------------------------------------------------------


@pytest.fixture
def login_sandbox() -> Iterator[Sandbox]:
    with run_in_thread(SandboxConfig(login_uri=LOGIN_URI)) as sandbox:
        yield sandbox


def test_login_uri_mode_goes_through_the_apps_login_page(login_sandbox: Sandbox) -> None:
    sandbox = login_sandbox
    with httpx.Client(base_url=sandbox.url) as client:
        first = client.get("/apps/authorize/consent", params=consent_params(sandbox))
        target, login = redirected_to(first)
        assert target == LOGIN_URI
        assert set(login) == {"amazon_callback_uri", "amazon_state", "selling_partner_id"}
        assert login["amazon_callback_uri"] == sandbox.url + "/apps/authorize/confirm"

        confirm_params = {
            "amazon_state": login["amazon_state"],
            "state": "state-from-the-login-page",
            "redirect_uri": REDIRECT_URI,
            "version": "beta",
        }
        target, query = redirected_to(
            client.get(login["amazon_callback_uri"], params=confirm_params)
        )
        assert target == REDIRECT_URI
        assert query["state"] == "state-from-the-login-page"
        assert query["selling_partner_id"] == login["selling_partner_id"]
        assert exchange(client, sandbox, query["spapi_oauth_code"]).status_code == 200

        replayed = client.get(login["amazon_callback_uri"], params=confirm_params)
        assert replayed.status_code == 400
        assert "amazon_state" in replayed.text


def test_the_callback_checks_its_parameters_before_using_amazon_state(
    login_sandbox: Sandbox,
) -> None:
    sandbox = login_sandbox
    with httpx.Client(base_url=sandbox.url) as client:
        _, login = redirected_to(
            client.get("/apps/authorize/consent", params=consent_params(sandbox))
        )
        base = {"amazon_state": login["amazon_state"], "state": "s", "redirect_uri": REDIRECT_URI}
        callback = login["amazon_callback_uri"]

        assert "MD1000" in client.get(callback, params=base).text
        wrong = base | {"version": "beta", "redirect_uri": "http://127.0.0.1:1/x"}
        assert "MD5101" in client.get(callback, params=wrong).text
        no_state = base | {"version": "beta", "state": ""}
        assert client.get(callback, params=no_state).status_code == 400
        unknown = base | {"version": "beta", "amazon_state": "forged"}
        assert client.get(callback, params=unknown).status_code == 400

        redirected_to(client.get(callback, params=base | {"version": "beta"}))


def test_amazon_state_expires() -> None:
    with (
        run_in_thread(SandboxConfig(login_uri=LOGIN_URI, code_ttl=0)) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        _, login = redirected_to(
            client.get("/apps/authorize/consent", params=consent_params(sandbox))
        )
        params = {"amazon_state": login["amazon_state"], "state": "s", "version": "beta"}
        response = client.get(login["amazon_callback_uri"], params=params)
    assert response.status_code == 400
