"""The sandbox's Seller Central consent pages, directly and in login-URI mode, and the codes
they hand out, over real sockets."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread
from discoveryctl.sandbox.clock import SandboxClock

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


def consent(client: httpx.Client, sandbox: Sandbox) -> dict[str, str]:
    """Approve consent; the query of the redirect that follows."""
    return redirected_to(client.get("/apps/authorize/consent", params=consent_params(sandbox)))[1]


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
    query = consent(client, sandbox)
    assert exchange(client, sandbox, query["spapi_oauth_code"]).status_code == 200
    replay = exchange(client, sandbox, query["spapi_oauth_code"])
    assert replay.status_code == 400
    assert replay.json() == {
        "error": "invalid_grant",
        "error_description": "The request has an invalid grant parameter : code",
    }


def test_a_code_is_bound_to_its_redirect_uri(client: httpx.Client, sandbox: Sandbox) -> None:
    query = consent(client, sandbox)
    mismatch = exchange(client, sandbox, query["spapi_oauth_code"], "http://127.0.0.1:1/other")
    assert mismatch.status_code == 400
    assert mismatch.json()["error_description"] == (
        "The request has an invalid grant parameter : redirect_uri"
    )
    assert exchange(client, sandbox, query["spapi_oauth_code"]).status_code == 200


def test_codes_expire_after_five_minutes() -> None:
    clock = SandboxClock()
    with (
        run_in_thread(clock=clock) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        codes = [consent(client, sandbox)["spapi_oauth_code"] for _ in range(2)]
        clock.advance(299)
        assert exchange(client, sandbox, codes[0]).status_code == 200
        clock.advance(1)
        response = exchange(client, sandbox, codes[1])
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


def confirm_params(login: dict[str, str], **overrides: str) -> dict[str, str]:
    """What the app's login page adds to ``amazon_callback_uri`` to send the seller back."""
    params = {
        "amazon_state": login["amazon_state"],
        "state": "state-from-the-login-page",
        "redirect_uri": REDIRECT_URI,
        "version": "beta",
    }
    params.update(overrides)
    return {name: value for name, value in params.items() if value != ""}


def test_login_uri_mode_goes_through_the_apps_login_page(login_sandbox: Sandbox) -> None:
    sandbox = login_sandbox
    app_id = sandbox.config.application_id
    with httpx.Client(base_url=sandbox.url) as client:
        first = client.get("/apps/authorize/consent", params=consent_params(sandbox))
        target, login = redirected_to(first)
        assert target == LOGIN_URI
        assert set(login) == {
            "amazon_callback_uri",
            "amazon_state",
            "selling_partner_id",
            "version",
        }
        assert login["amazon_callback_uri"] == f"https://amazon.com/apps/authorize/confirm/{app_id}"
        assert login["version"] == "beta"  # the seller started from the authorization URI
        callback = sandbox.browser_url(login["amazon_callback_uri"])
        assert callback == f"{sandbox.url}/apps/authorize/confirm/{app_id}"

        target, query = redirected_to(client.get(callback, params=confirm_params(login)))
        assert target == REDIRECT_URI
        assert query["state"] == "state-from-the-login-page"
        assert query["selling_partner_id"] == login["selling_partner_id"]
        assert exchange(client, sandbox, query["spapi_oauth_code"]).status_code == 200

        replayed = client.get(callback, params=confirm_params(login))
        assert replayed.status_code == 400
        assert "amazon_state" in replayed.text


def test_a_consent_started_at_amazon_goes_to_the_login_uri_without_a_state_of_the_app_s(
    login_sandbox: Sandbox,
) -> None:
    sandbox = login_sandbox
    app_id = sandbox.config.application_id
    seller = sandbox.state.add_seller().selling_partner_id
    with httpx.Client(base_url=sandbox.url) as client:
        entry = client.get(
            "/apps/manage/authorize",
            params={"application_id": app_id, "selling_partner_id": seller},
        )
        target, login = redirected_to(entry)
        assert target == LOGIN_URI
        # a draft app's re-authorization carries version=beta (both renewal pages, step 1)
        assert set(login) == {
            "amazon_callback_uri",
            "amazon_state",
            "selling_partner_id",
            "version",
        }
        assert (login["selling_partner_id"], login["version"]) == (seller, "beta")
        callback = sandbox.browser_url(login["amazon_callback_uri"])
        target, query = redirected_to(client.get(callback, params=confirm_params(login)))
        assert (target, query["selling_partner_id"]) == (REDIRECT_URI, seller)
        unknown = client.get("/apps/manage/authorize", params={"application_id": "other"})
        assert unknown.status_code == 400


def test_a_published_app_s_reauthorization_carries_no_version_beta() -> None:
    config = SandboxConfig(login_uri=LOGIN_URI, draft=False)
    with run_in_thread(config) as sandbox, httpx.Client(base_url=sandbox.url) as client:
        seller = sandbox.state.add_seller().selling_partner_id
        params = {"application_id": sandbox.config.application_id, "selling_partner_id": seller}
        _, login = redirected_to(client.get("/apps/manage/authorize", params=params))
    assert "version" not in login


def test_a_consent_started_at_amazon_needs_a_login_uri(sandbox: Sandbox) -> None:
    with httpx.Client(base_url=sandbox.url) as client:
        params = {"application_id": sandbox.config.application_id}
        answer = client.get("/apps/manage/authorize", params=params)
    assert answer.status_code == 400
    assert "no login URI" in answer.text


def test_a_published_app_gets_no_version_beta_on_its_login_page() -> None:
    config = SandboxConfig(login_uri=LOGIN_URI, draft=False)
    with run_in_thread(config) as sandbox, httpx.Client(base_url=sandbox.url) as client:
        params = consent_params(sandbox, version="")
        _, login = redirected_to(client.get("/apps/authorize/consent", params=params))
        assert "version" not in login
        callback = sandbox.browser_url(login["amazon_callback_uri"])
        target, _ = redirected_to(client.get(callback, params=confirm_params(login, version="")))
    assert target == REDIRECT_URI


def test_the_callback_checks_its_parameters_before_using_amazon_state(
    login_sandbox: Sandbox,
) -> None:
    sandbox = login_sandbox
    with httpx.Client(base_url=sandbox.url) as client:
        login = consent(client, sandbox)
        callback = sandbox.browser_url(login["amazon_callback_uri"])

        assert "MD1000" in client.get(callback, params=confirm_params(login, version="")).text
        wrong = confirm_params(login, redirect_uri="http://127.0.0.1:1/x")
        assert "MD5101" in client.get(callback, params=wrong).text
        assert client.get(callback, params=confirm_params(login, state="")).status_code == 400
        forged = confirm_params(login, amazon_state="forged")
        assert client.get(callback, params=forged).status_code == 400
        someone_else = f"{sandbox.url}/apps/authorize/confirm/amzn1.sp.solution.someone-else"
        refused = client.get(someone_else, params=confirm_params(login))
        assert refused.status_code == 400
        assert "could not be found" in refused.text
        no_id = client.get(f"{sandbox.url}/apps/authorize/confirm", params=confirm_params(login))
        assert no_id.status_code == 404

        redirected_to(client.get(callback, params=confirm_params(login)))


def test_amazon_state_expires() -> None:
    clock = SandboxClock()
    config = SandboxConfig(login_uri=LOGIN_URI)
    with (
        run_in_thread(config, clock=clock) as sandbox,
        httpx.Client(base_url=sandbox.url) as client,
    ):
        logins = [consent(client, sandbox) for _ in range(2)]
        callback = sandbox.browser_url(logins[0]["amazon_callback_uri"])
        clock.advance(299)
        redirected_to(client.get(callback, params=confirm_params(logins[0])))
        clock.advance(1)
        response = client.get(callback, params=confirm_params(logins[1]))
    assert response.status_code == 400
    assert "amazon_state" in response.text


def test_browser_url_maps_only_amazons_callback_host(sandbox: Sandbox) -> None:
    assert (
        sandbox.browser_url("https://amazon.com/apps/authorize/confirm/x?a=1&b=2")
        == f"{sandbox.url}/apps/authorize/confirm/x?a=1&b=2"
    )
    assert sandbox.browser_url("https://Amazon.com/x") == f"{sandbox.url}/x"
    for other in (
        "http://amazon.com/x",
        "https://sellercentral.amazon.com/x",
        "https://amazon.com.example.org/x",
        REDIRECT_URI,
    ):
        assert sandbox.browser_url(other) == other


def test_the_callback_host_is_configurable() -> None:
    config = SandboxConfig(login_uri=LOGIN_URI, amazon_callback_base="https://amazon.co.uk/")
    with run_in_thread(config) as sandbox, httpx.Client(base_url=sandbox.url) as client:
        login = consent(client, sandbox)
        assert login["amazon_callback_uri"] == (
            f"https://amazon.co.uk/apps/authorize/confirm/{sandbox.config.application_id}"
        )
        assert sandbox.browser_url("https://amazon.com/x") == "https://amazon.com/x"
        callback = sandbox.browser_url(login["amazon_callback_uri"])
        target, _ = redirected_to(client.get(callback, params=confirm_params(login)))
    assert target == REDIRECT_URI
