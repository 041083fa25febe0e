"""The login step's rules (``discoveryctl.amazon.login_step``), called directly on a migrated
SQLite file: what a login request must carry, the confirmation's token and its once-per-consent
rule, and a consent started at Amazon bound to the signed-in user in the right region. Fast
enough for mutation testing; the same flows over real sockets are in test_api_consent.py,
test_connect.py and test_browser.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import sqlalchemy as sa

from discoveryctl.amazon import consent, login_step
from discoveryctl.amazon.login_step import LoginRequest, login_request, login_token
from discoveryctl.config import Config
from discoveryctl.db.engine import Database
from discoveryctl.errors import InvalidInput, OAuthCallbackError
from discoveryctl.providers.lwa import AmazonApp

from helpers import amazon_line, write_lines

SECRET = "s" * 40
APP = AmazonApp(
    client_id="amzn1.application-oa2-client.x",
    client_secret="amzn1.oa2-cs.v1.secret",
    application_id="amzn1.sp.solution.app",
    redirect_uri="https://app.example.com/api/v1/integrations/amazon/callback",
)
CONFIRM = "https://amazon.com/apps/authorize/confirm/amzn1.sp.solution.app"
ASKED = {
    "amazon_callback_uri": [CONFIRM],
    "amazon_state": ["amazon-state-1"],
    "selling_partner_id": ["A1B2C3D4E5F6G7"],
}


@pytest.fixture
def database(sqlite_db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    opened = Database(sqlite_db.url)
    yield opened
    opened.dispose()


def reason(error: pytest.ExceptionInfo[OAuthCallbackError]) -> str:
    return str(error.value.reason)


def issue(database: Database, user: str = "ula", region: str = "na") -> str:
    with database.session() as session:
        started = consent.begin(session, APP, SECRET, user_id=user, region=region, flow="web")
    return started.state


def confirmed_at(database: Database) -> list[Any]:
    with database.engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT login_confirmed_at FROM oauth_states"))
        return [r[0] for r in rows]


# -- the login request -------------------------------------------------------------------


def test_a_login_request_is_what_amazon_sends() -> None:
    asked = login_request(ASKED)
    assert asked == LoginRequest(CONFIRM, "amazon-state-1", "A1B2C3D4E5F6G7", beta=False)
    assert asked.fields() == {
        "amazon_callback_uri": CONFIRM,
        "amazon_state": "amazon-state-1",
        "selling_partner_id": "A1B2C3D4E5F6G7",
    }
    beta = login_request({**ASKED, "version": ["beta"]})
    assert beta.beta is True
    assert beta.fields()["version"] == "beta"
    assert login_request({**ASKED, "version": ["other"]}).beta is False


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("amazon_callback_uri", "invalid_login_request"),
        ("amazon_state", "invalid_login_request"),
        ("selling_partner_id", "missing_selling_partner_id"),
    ],
)
def test_a_login_request_without_a_part_is_refused(missing: str, expected: str) -> None:
    with pytest.raises(OAuthCallbackError) as error:
        login_request({k: v for k, v in ASKED.items() if k != missing})
    assert reason(error) == expected
    assert error.value.message == MESSAGES[expected]


MESSAGES = {
    "invalid_login_request": "the login request lacks amazon_callback_uri or amazon_state "
    "(invalid_login_request)",
    "missing_selling_partner_id": "the login request carries no selling_partner_id "
    "(missing_selling_partner_id)",
}


def test_a_selling_partner_id_amazon_does_not_issue_is_refused() -> None:
    with pytest.raises(OAuthCallbackError) as error:
        login_request({**ASKED, "selling_partner_id": ["A1\x1b[31m"]})
    assert reason(error) == "invalid_selling_partner_id"
    assert error.value.message == (
        "the login request's selling_partner_id A1 [31m is not one Amazon issues "
        "(invalid_selling_partner_id)"
    )


# -- the confirmation ------------------------------------------------------------------------


def test_the_token_is_an_hmac_of_the_state_and_amazon_s_step() -> None:
    mac = hmac.new(SECRET.encode(), b"login-step\0state-1\0amazon-1", hashlib.sha256)
    expected = base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")
    assert login_token("state-1", SECRET, "amazon-1") == expected


def test_the_token_binds_the_state_the_secret_and_amazon_s_step() -> None:
    token = login_token("state-1", SECRET, "amazon-1")
    assert token == login_token("state-1", SECRET, "amazon-1")
    assert len(token) == 43 and "=" not in token  # 256 bits, URL-safe, unpadded
    others = {
        login_token("state-2", SECRET, "amazon-1"),
        login_token("state-1", "t" * 40, "amazon-1"),
        login_token("state-1", SECRET, "amazon-2"),
        login_token("state-1\0amazon", SECRET, "1"),  # no ambiguity at the separator
    }
    assert token not in others and len(others) == 4


def test_the_confirmation_names_the_user_and_the_seller_and_carries_the_token(
    database: Database,
) -> None:
    state = issue(database)
    shown = login_step.confirmation(APP, state, SECRET, ASKED)
    assert (shown.user_id, shown.selling_partner_id) == ("ula", "A1B2C3D4E5F6G7")
    assert shown.fields == login_request(ASKED).fields()
    assert shown.token == login_token(state, SECRET, "amazon-state-1")
    page = login_step.page(shown, "/login")
    assert f'name="login_token" value="{shown.token}"' in page
    assert '<strong id="user">ula</strong>' in page
    assert '<form method="post" action="/login">' in page
    assert confirmed_at(database) == [None]  # showing the page records nothing


def test_the_page_is_this_and_nothing_more() -> None:
    shown = login_step.Confirmation("ula", "A1", {"amazon_state": "s", "version": "beta"}, "t")
    assert login_step.page(shown, "/login") == (
        '<!doctype html><html><head><meta charset="utf-8"><title>Connect Amazon</title>'
        "</head><body><h1>Connect Amazon</h1>"
        '<p>Connect the Amazon seller account <strong id="seller">A1</strong> to '
        '<strong id="user">ula</strong>?</p>'
        "<p>Continue only if you started this from your own account just now.</p>"
        '<form method="post" action="/login">'
        '<input type="hidden" name="amazon_state" value="s">'
        '<input type="hidden" name="version" value="beta">'
        '<input type="hidden" name="login_token" value="t">'
        '<button type="submit" id="continue">Continue to Amazon</button></form>'
        "</body></html>"
    )


def test_the_page_escapes_what_it_shows() -> None:
    shown = login_step.Confirmation("<b>u</b>", "A1", {"amazon_state": '"><x>'}, "t")
    page = login_step.page(shown, '/login?"x')
    assert "<b>u</b>" not in page and "&lt;b&gt;u&lt;/b&gt;" in page
    assert '"><x>' not in page
    assert 'action="/login?&quot;x"' in page


def test_a_confirmation_for_a_way_back_that_is_not_amazon_s_is_refused(
    database: Database,
) -> None:
    state = issue(database)
    with pytest.raises(OAuthCallbackError) as error:
        login_step.confirmation(
            APP, state, SECRET, {**ASKED, "amazon_callback_uri": ["https://evil.test/x"]}
        )
    assert reason(error) == "invalid_login_request"
    assert error.value.message == (
        "amazon_callback_uri does not point at Amazon (invalid_login_request)"
    )


def test_the_confirmation_continues_once_and_only_with_its_token(database: Database) -> None:
    state = issue(database)
    form = {**ASKED, "login_token": [login_token(state, SECRET, "amazon-state-1")]}
    other = issue(database, "ola")  # another consent, unconfirmed throughout
    for wrong in ({**ASKED}, {**ASKED, "login_token": ["x" * 43]}):
        with pytest.raises(OAuthCallbackError) as error:
            login_step.confirm(database.session, APP, SECRET, state, wrong)
        assert reason(error) == "login_not_confirmed"
        assert error.value.message == (
            "the sign-in step was not confirmed on the page this browser was shown "
            "(login_not_confirmed)"
        )
    assert confirmed_at(database) == [None, None]
    location = login_step.confirm(database.session, APP, SECRET, state, form)
    assert location == (
        f"{CONFIRM}?amazon_state=amazon-state-1&state={state}"
        f"&redirect_uri={quote(APP.redirect_uri, safe='')}"
    )
    assert confirmed_at(database)[1] is None and confirmed_at(database)[0] is not None
    with pytest.raises(OAuthCallbackError) as error:
        login_step.confirm(database.session, APP, SECRET, state, form)
    assert reason(error) == "login_reused"
    assert error.value.message == (
        "this consent's sign-in step was already confirmed (login_reused)"
    )
    login_step.confirm(  # the other consent's own confirmation still works
        database.session,
        APP,
        SECRET,
        other,
        {**ASKED, "login_token": [login_token(other, SECRET, "amazon-state-1")]},
    )


def test_the_way_back_keeps_amazon_s_beta_and_the_marketplace_s_host(database: Database) -> None:
    with database.session() as session:
        state = consent.begin(
            session, APP, SECRET, user_id="ida", region="eu", flow="web", marketplace="IN"
        ).state
    relative = {**ASKED, "amazon_callback_uri": ["/apps/authorize/confirm/x"], "version": ["beta"]}
    form = {**relative, "login_token": [login_token(state, SECRET, "amazon-state-1")]}
    location = login_step.confirm(database.session, APP, SECRET, state, form)
    assert location.startswith("https://sellercentral.amazon.in/apps/authorize/confirm/x?")
    assert parse_qs(urlsplit(location).query)["version"] == ["beta"]


def test_a_consent_whose_callback_came_cannot_be_confirmed(database: Database) -> None:
    state = issue(database)
    with database.session() as session:
        consent.consume(session, consent.read_state(state, SECRET))
    form = {**ASKED, "login_token": [login_token(state, SECRET, "amazon-state-1")]}
    with pytest.raises(OAuthCallbackError) as error:
        login_step.confirm(database.session, APP, SECRET, state, form)
    assert reason(error) == "login_reused"


def test_a_confirmation_with_another_secret_s_state_is_refused(database: Database) -> None:
    state = issue(database)
    with pytest.raises(OAuthCallbackError) as error:
        login_step.confirm(database.session, APP, "t" * 40, state, ASKED)
    assert reason(error) == "invalid_state"


# -- a consent started at Amazon ---------------------------------------------------------


def started_at_amazon(
    database: Database, user: str, params: dict[str, list[str]] = ASKED, **where: str | None
) -> tuple[str, str]:
    started, location = login_step.start_at_amazon(
        database.session,
        Config(),
        APP,
        user_id=user,
        params=params,
        region=where.get("region"),
        marketplace=where.get("marketplace"),
    )
    claims = consent.read_state(started.state, SECRET)
    assert claims.user_id == user
    return claims.region, location


def test_a_consent_started_at_amazon_is_the_signed_in_user_s_confirmed_at_once(
    database: Database,
) -> None:
    region, location = started_at_amazon(database, "vera")
    assert region == "na"  # no Amazon account yet, nothing asked: North America
    assert location.startswith(CONFIRM + "?amazon_state=amazon-state-1&state=")
    (state,) = parse_qs(urlsplit(location).query)["state"]
    assert consent.read_state(state, SECRET).user_id == "vera"
    with database.engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT user_id, flow, login_confirmed_at FROM oauth_states")
        ).one()
    assert (row.user_id, row.flow) == ("vera", "amazon_started")
    assert row.login_confirmed_at is not None


def test_a_re_authorization_keeps_the_user_s_region_unless_asked(
    database: Database, cli: Any, tmp_path: Any
) -> None:
    lines = write_lines(tmp_path / "in.jsonl", amazon_line("wes", region="fe"))
    assert cli("import", str(lines)).exit_code == 0
    assert started_at_amazon(database, "wes")[0] == "fe"
    assert started_at_amazon(database, "wes", region="eu")[0] == "eu"
    assert started_at_amazon(database, "wes", marketplace="IN")[0] == "eu"
    relative = {**ASKED, "amazon_callback_uri": ["/apps/authorize/confirm/x"]}
    _, location = started_at_amazon(database, "wes", relative, marketplace="IN")
    assert location.startswith("https://sellercentral.amazon.in/apps/authorize/confirm/x?")
    assert started_at_amazon(database, "xia")[0] == "na"  # another user's region is not hers


def test_a_consent_started_at_amazon_that_cannot_continue_records_nothing(
    database: Database,
) -> None:
    evil = {**ASKED, "amazon_callback_uri": ["https://evil.test/x"]}
    with pytest.raises(OAuthCallbackError):
        started_at_amazon(database, "yan", evil)
    with pytest.raises(InvalidInput):
        started_at_amazon(database, "yan", marketplace="AU", region="na")
    with database.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM oauth_states")).scalar() == 0
        assert connection.execute(sa.text("SELECT count(*) FROM events")).scalar() == 0
