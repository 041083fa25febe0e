"""The web OAuth routes (`…/amazon/connect`, `/login`, `/callback`) on a real uvicorn server,
the sandbox as Amazon and httpx as the seller's browser (its cookie jar included), over real
sockets: the whole flow, each failure reason, and a consent link that is not the browser's."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from api_server import listening, serving

from discoveryctl.amazon.consent import STATE_AUDIENCE
from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread
from discoveryctl.server.routes.amazon_consent import COOKIE

from helpers import amazon_line, state_of, with_params, write_lines

SECRET = "w" * 40
FRONTEND = "https://app.example.com"
LANDING = f"{FRONTEND}/integrations/amazon"
ROUTES = "/api/v1/integrations/amazon"


def bearer(user: str) -> dict[str, str]:
    now = int(time.time())
    value = jwt.encode({"sub": user, "iat": now, "exp": now + 600}, SECRET, "HS256")
    return {"Authorization": f"Bearer {value}"}


@dataclass
class Web:
    api: str
    sandbox: Sandbox
    db: Any

    def connect(self, browser: httpx.Client, user: str, **params: str) -> httpx.Response:
        return browser.get(f"{self.api}{ROUTES}/connect", params=params, headers=bearer(user))

    def consent_url(self, browser: httpx.Client, user: str) -> str:
        started = self.connect(browser, user)
        assert started.status_code == 302, started.text
        location: str = started.headers["location"]
        return location

    def approve(self, browser: httpx.Client, consent_url: str) -> str:
        """Consent at the sandbox: the callback address Amazon sends the browser to."""
        answer = browser.get(consent_url)
        assert answer.status_code == 302, answer.text
        location: str = answer.headers["location"]
        assert location.startswith(f"{self.api}{ROUTES}/callback?"), location
        return location

    def land(self, browser: httpx.Client, url: str) -> dict[str, str]:
        """Follow the browser's redirects to the front end; the outcome in its query."""
        for _ in range(6):
            if url.startswith(FRONTEND):
                assert url.startswith(LANDING + "?"), url
                return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            answer = browser.get(self.sandbox.browser_url(url))
            assert answer.status_code == 302, (url, answer.status_code, answer.text)
            if url.startswith(self.api):
                assert answer.headers["referrer-policy"] == "no-referrer"
            url = answer.headers["location"]
        raise AssertionError(f"no landing on the front end: {url}")

    def failures(self) -> list[str]:
        return [
            r["error_type"]
            for r in self.db.rows(
                "SELECT error_type FROM events WHERE kind = 'oauth_callback_failed' ORDER BY id"
            )
        ]

    def credentials(self) -> list[dict[str, Any]]:
        return self.db.rows("SELECT * FROM credentials")


def start_web(
    db: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None, **config: Any
) -> Iterator[Web]:
    """The sandbox and the API; ``env`` overrides what the sandbox would set for the API."""
    listener = listening()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    if config.pop("login", False):
        config["login_uri"] = f"{base}{ROUTES}/login"
    sandbox = run_in_thread(SandboxConfig(redirect_uris=(f"{base}{ROUTES}/callback",), **config))
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("FRONTEND_URL", FRONTEND)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    try:
        with serving(listener=listener) as api:
            yield Web(api, sandbox, db)
    finally:
        sandbox.stop()


@pytest.fixture
def web(db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    yield from start_web(db, monkeypatch)


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def status_of(web: Web, user: str) -> dict[str, Any]:
    answer = httpx.get(f"{web.api}/api/v1/integrations/status/amazon", headers=bearer(user))
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


# -- the flow ---------------------------------------------------------------------------------


def test_a_seller_connects_from_the_browser(web: Web, browser: httpx.Client) -> None:
    started = web.connect(browser, "alice")
    assert started.status_code == 302
    consent_url = started.headers["location"]
    assert consent_url.startswith(web.sandbox.url + "/apps/authorize/consent?")
    cookie = started.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={state_of(consent_url)};")
    for attribute in ("HttpOnly", "Max-Age=600", f"Path={ROUTES}", "SameSite=lax"):
        assert attribute in cookie, cookie
    assert "Secure" not in cookie  # Amazon sends the browser back over plain HTTP here

    assert web.land(browser, consent_url) == {"status": "connected"}
    assert COOKIE not in browser.cookies  # the state is spent: its cookie goes with it
    data = status_of(web, "alice")
    assert data["status"] == "active"
    (credential,) = web.credentials()
    assert credential["selling_partner_id"] == data["metadata"]["selling_partner_id"]
    events = web.db.rows(
        "SELECT kind, detail FROM events WHERE kind LIKE 'oauth_%' ORDER BY id", default=str
    )
    assert [e["kind"] for e in events] == ["oauth_consent_started", "oauth_callback_succeeded"]
    assert '"flow": "web"' in str(events[0]["detail"]).replace("'", '"')

    # Again, as a reconnect: the same route, the same landing, the new authorization kept.
    assert web.land(browser, web.consent_url(browser, "alice")) == {"status": "connected"}
    assert len(web.credentials()) == 1
    assert web.sandbox.state.stats()["grants"]["authorization_code"] == 2


def confirmation_form(page: httpx.Response) -> dict[str, str]:
    """The hidden fields of the login step's confirmation page."""
    assert page.status_code == 200, (page.status_code, page.headers.get("location"))
    assert page.headers["x-frame-options"] == "DENY"
    fields = re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page.text)
    return {html.unescape(name): html.unescape(value) for name, value in fields}


def login_link(web: Web, browser: httpx.Client, user: str) -> str:
    """Start a consent for ``user`` in ``browser`` and consent at Amazon: the login-URI link
    Amazon sends the browser to."""
    to_login = browser.get(web.consent_url(browser, user))
    assert to_login.status_code == 302
    login: str = to_login.headers["location"]
    assert urlsplit(login).path == f"{ROUTES}/login"
    return login


def test_login_uri_mode_from_the_browser(
    db: Any, monkeypatch: pytest.MonkeyPatch, browser: httpx.Client
) -> None:
    for web in start_web(db, monkeypatch, login=True):
        page = browser.get(login_link(web, browser, "bob"))
        form = confirmation_form(page)  # a page to confirm, never a redirect on a GET
        seller = form["selling_partner_id"]
        assert f'<strong id="seller">{seller}</strong>' in page.text
        assert '<strong id="user">bob</strong>' in page.text
        back_to_amazon = browser.post(f"{web.api}{ROUTES}/login", data=form)
        assert back_to_amazon.status_code == 303
        confirm = back_to_amazon.headers["location"]
        assert confirm.startswith(
            f"https://amazon.com/apps/authorize/confirm/{web.sandbox.config.application_id}?"
        )
        huge = browser.post(f"{web.api}{ROUTES}/login", content=b"a=" + b"x" * 100_000)
        assert huge.headers["location"] == f"{LANDING}?error=invalid_login_request"
        again = browser.post(f"{web.api}{ROUTES}/login", data=form)  # once per consent
        assert again.headers["location"] == f"{LANDING}?error=login_reused"
        assert web.land(browser, confirm) == {"status": "connected"}
        assert status_of(web, "bob")["status"] == "active"


def test_a_login_step_someone_else_started_connects_nothing(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mallory consents for her own seller account and sends the login link Amazon gave her
    to Victor, who has a consent of his own open: his user must not end up with her seller."""
    for web in start_web(db, monkeypatch, login=True):
        with httpx.Client(timeout=10) as mallory:
            bait = login_link(web, mallory, "mallory")
            her_form = confirmation_form(mallory.get(bait))
        with httpx.Client(timeout=10) as victor:
            web.consent_url(victor, "victor")  # his own consent under way
            page = victor.get(bait)
            shown = confirmation_form(page)  # a page naming him and her seller: no redirect
            assert '<strong id="user">victor</strong>' in page.text
            assert shown["selling_partner_id"] == her_form["selling_partner_id"]
            post = f"{web.api}{ROUTES}/login"
            forged = {k: v for k, v in shown.items() if k != "login_token"}
            for attempt in (forged, {**forged, "login_token": her_form["login_token"]}):
                refused = victor.post(post, data=attempt)  # a page elsewhere posting for him
                assert refused.headers["location"] == f"{LANDING}?error=login_not_confirmed"
        assert web.credentials() == []
        assert web.sandbox.state.stats()["grants"]["authorization_code"] == 0
        assert status_of_nobody(web, "victor") and status_of_nobody(web, "mallory")


def test_the_yearly_re_authorization_started_at_amazon_reconnects_the_signed_in_user(
    db: Any, monkeypatch: pytest.MonkeyPatch, browser: httpx.Client
) -> None:
    for web in start_web(db, monkeypatch, login=True):
        # Rae connected a year ago, from the EU marketplace of Germany.
        started = web.connect(browser, "rae", marketplace="DE")
        login = browser.get(started.headers["location"]).headers["location"]
        form = confirmation_form(browser.get(login))
        confirm = browser.post(f"{web.api}{ROUTES}/login", data=form).headers["location"]
        assert web.land(browser, confirm) == {"status": "connected"}
        seller = status_of(web, "rae")["metadata"]["selling_partner_id"]

        # Amazon asks her to re-authorize: she starts at Seller Central, in a new browser.
        with httpx.Client(timeout=10) as fresh:
            entry = fresh.get(
                f"{web.sandbox.url}/apps/manage/authorize",
                params={
                    "application_id": web.sandbox.config.application_id,
                    "selling_partner_id": seller,
                },
            )
            assert entry.status_code == 302
            to_front_end = fresh.get(entry.headers["location"])  # our login URI, no cookie
            assert to_front_end.status_code == 302
            where = urlsplit(to_front_end.headers["location"])
            assert f"{where.scheme}://{where.netloc}{where.path}" == f"{LANDING}/authorize"
            amazon_asked = {k: v[0] for k, v in parse_qs(where.query).items()}
            assert amazon_asked["selling_partner_id"] == seller
            # The front end signs her in and confirms with her bearer token.
            answer = fresh.post(
                f"{web.api}{ROUTES}/authorize",
                json=amazon_asked,
                headers={**bearer("rae"), "Accept": "application/json"},
            )
            assert answer.status_code == 200, answer.text
            assert COOKIE in fresh.cookies  # this browser's consent, for the callback
            assert web.land(fresh, answer.json()["data"]["continueUrl"]) == {"status": "connected"}
        data = status_of(web, "rae")
        assert (data["status"], data["metadata"]["region"]) == ("active", "eu")
        assert len(web.credentials()) == 1
        assert web.sandbox.state.stats()["grants"]["authorization_code"] == 2
        flows = web.db.rows(
            "SELECT flow FROM oauth_states WHERE user_id = 'rae' ORDER BY created_at"
        )
        assert [f["flow"] for f in flows] == ["web", "amazon_started"]


def test_a_consent_started_at_amazon_needs_the_signed_in_caller_and_amazon_s_request(
    db: Any, monkeypatch: pytest.MonkeyPatch, browser: httpx.Client
) -> None:
    for web in start_web(db, monkeypatch, login=True):
        asked = {
            "amazon_callback_uri": f"https://amazon.com/apps/authorize/confirm/{'x' * 8}",
            "amazon_state": "amazon-state",
            "selling_partner_id": "A1B2C3D4E5F6G7",
        }
        route = f"{web.api}{ROUTES}/authorize"
        assert browser.post(route, json=asked).status_code == 401
        evil = {**asked, "amazon_callback_uri": "https://evil.example.com/steal"}
        refused = browser.post(route, json=evil, headers=bearer("una"))
        assert refused.status_code == 400
        assert refused.json()["error"] == (
            "amazon_callback_uri does not point at Amazon (invalid_login_request)"
        )
        assert web.db.rows("SELECT * FROM oauth_states") == []  # nothing issued
        unknown = browser.post(route, json={**asked, "extra": 1}, headers=bearer("una"))
        assert unknown.status_code == 400  # a field Amazon does not send
        assert web.credentials() == []


def test_the_cookie_is_secure_when_amazon_sends_the_browser_back_over_https(
    db: Any, monkeypatch: pytest.MonkeyPatch, browser: httpx.Client
) -> None:
    https = {"AMAZON_REDIRECT_URI": f"https://api.example.com{ROUTES}/callback"}
    for web in start_web(db, monkeypatch, env=https):
        started = web.connect(browser, "kim")
        assert started.status_code == 302
        assert "Secure" in started.headers["set-cookie"]
        assert "redirect_uri=https" in started.headers["location"]


def test_a_front_end_may_ask_for_the_consent_url_as_json(web: Web, browser: httpx.Client) -> None:
    answer = browser.get(
        f"{web.api}{ROUTES}/connect",
        params={"region": "eu"},
        headers={**bearer("carol"), "Accept": "application/json"},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is True
    assert set(body["data"]) == {"consentUrl", "expiresAt"}
    assert body["data"]["expiresAt"].endswith("Z")
    assert browser.cookies[COOKIE] == state_of(body["data"]["consentUrl"])
    (state,) = web.db.rows("SELECT user_id, region, flow FROM oauth_states")
    assert state == {"user_id": "carol", "region": "eu", "flow": "web"}
    assert web.land(browser, body["data"]["consentUrl"]) == {"status": "connected"}


# -- refusals ---------------------------------------------------------------------------------


def forged_state(user: str, *, expired: bool = False) -> str:
    now = int(time.time())
    claims = {
        "sub": user,
        "region": "na",
        "jti": "j" * 43,
        "aud": STATE_AUDIENCE,
        "iat": now - 3600,
        "exp": now - 60 if expired else now + 600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


CALLBACK_FAILURES = {
    "missing_code": lambda url: with_params(url, spapi_oauth_code=None),
    "missing_state": lambda url: with_params(url, state=None),
    "invalid_state": lambda url: with_params(url, state=state_of(url)[:-3] + "abc"),
    "expired_state": lambda url: with_params(url, state=forged_state("dave", expired=True)),
    "access_denied": lambda url: with_params(
        url, error="access_denied", error_description="The user denied the request"
    ),
    "code_exchange_failed": lambda url: with_params(url, spapi_oauth_code="ANforgedcode"),
    "missing_selling_partner_id": lambda url: with_params(url, selling_partner_id=None),
    "invalid_selling_partner_id": lambda url: with_params(url, selling_partner_id="A" * 65),
}


NOT_THIS_BROWSER_S = {"missing_state", "invalid_state", "expired_state"}
"""Callbacks without the state this browser's cookie holds: refused, but not recorded."""


@pytest.mark.parametrize("reason", sorted(CALLBACK_FAILURES))
def test_each_failure_reason_lands_on_the_front_end(
    web: Web, browser: httpx.Client, reason: str
) -> None:
    callback = web.approve(browser, web.consent_url(browser, "dave"))
    assert web.land(browser, CALLBACK_FAILURES[reason](callback)) == {"error": reason}
    assert web.credentials() == []
    assert status_of_nobody(web, "dave")
    if reason in NOT_THIS_BROWSER_S:
        # Any page can send a browser here: nothing is recorded, and this browser's own
        # consent is still open, so the real callback still connects.
        assert web.failures() == []
        assert web.land(browser, callback) == {"status": "connected"}
    else:
        assert web.failures() == [reason]
        assert COOKIE not in browser.cookies  # this consent is over


def status_of_nobody(web: Web, user: str) -> bool:
    answer = httpx.get(f"{web.api}/api/v1/integrations/status", headers=bearer(user))
    return bool(answer.json() == {"success": True, "data": []})


def test_a_replayed_callback_is_refused(web: Web, browser: httpx.Client) -> None:
    callback = web.approve(browser, web.consent_url(browser, "erin"))
    state = browser.cookies[COOKIE]
    assert web.land(browser, callback) == {"status": "connected"}
    browser.cookies.set(COOKIE, state)  # even with the browser's own cookie put back
    assert web.land(browser, callback) == {"error": "state_reused"}
    assert web.failures() == ["state_reused"]
    assert len(web.credentials()) == 1


def test_a_consent_link_someone_else_started_connects_nothing(web: Web) -> None:
    """Mallory starts a connect and sends her consent link to Alice: whatever Alice's
    browser holds, her seller account must not end up connected to Mallory's user."""
    with httpx.Client(timeout=10) as mallory:
        bait = web.consent_url(mallory, "mallory")
    with httpx.Client(timeout=10) as alice:  # no consent of her own
        assert web.land(alice, bait) == {"error": "invalid_state"}
    with httpx.Client(timeout=10) as alice:  # her own consent under way
        own = web.consent_url(alice, "alice")
        assert web.land(alice, bait) == {"error": "invalid_state"}
        assert web.credentials() == []
        assert web.sandbox.state.stats()["grants"]["authorization_code"] == 0  # no code spent
        assert web.failures() == []  # nothing recorded: anybody could send these
        assert web.land(alice, own) == {"status": "connected"}  # hers still works
    assert status_of_nobody(web, "mallory")


def test_the_login_step_needs_an_amazon_address(web: Web, browser: httpx.Client) -> None:
    login = f"{web.api}{ROUTES}/login"
    params = {
        "amazon_callback_uri": f"https://amazon.com/apps/authorize/confirm/{'x' * 8}",
        "amazon_state": "amazon-state",
        "selling_partner_id": "A1B2C3D4E5F6G7",
    }
    without = browser.get(f"{login}?{urlencode({**params, 'amazon_state': ''})}")
    assert without.headers["location"] == f"{LANDING}?error=invalid_login_request"
    web.consent_url(browser, "fay")
    elsewhere = {**params, "amazon_callback_uri": "https://evil.example.com/steal"}
    assert web.land(browser, f"{login}?{urlencode(elsewhere)}") == {
        "error": "invalid_login_request"
    }
    assert web.credentials() == []
    assert COOKIE in browser.cookies  # a bad login request does not end the consent


def test_connect_needs_a_token(web: Web, browser: httpx.Client) -> None:
    answer = browser.get(f"{web.api}{ROUTES}/connect")
    assert answer.status_code == 401
    assert answer.json() == {"success": False, "error": "missing bearer token"}
    assert COOKIE not in browser.cookies
    assert web.db.rows("SELECT * FROM oauth_states") == []
    unknown = browser.get(f"{web.api}{ROUTES}/connect?region=mars", headers=bearer("gus"))
    assert unknown.status_code == 400
    assert unknown.json()["success"] is False
    assert web.db.rows("SELECT * FROM oauth_states") == []


def test_rejected_app_credentials_land_with_their_reason_and_alert_the_admins(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch, browser: httpx.Client
) -> None:
    for web in start_web(db, monkeypatch, env={"AMAZON_LWA_CLIENT_SECRET": "wrong-secret"}):
        assert web.land(browser, web.consent_url(browser, "liz")) == {
            "error": "app_credentials_rejected"
        }
        assert web.failures() == ["app_credentials_rejected"]
        assert web.credentials() == []
        admin = cli("notifications", "--admin", "--json").json()
        assert [n["kind"] for n in admin] == ["app_credentials_rejected"]


def test_a_server_that_cannot_store_the_authorization_spends_no_code(
    web: Web, cli: Any, browser: httpx.Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another machine wrote a credential under another key after the consent began: the
    server cannot read the stored tokens, so it stops before exchanging the code, and the
    browser still lands on the front end, told."""
    from cryptography.fernet import Fernet

    callback = web.approve(browser, web.consent_url(browser, "hal"))
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    imported = cli("import", str(write_lines(tmp_path / "in.jsonl", amazon_line("ivy"))))
    assert imported.exit_code == 0, imported.stderr
    assert web.land(browser, callback) == {"error": "server_error"}
    assert web.sandbox.state.stats()["grants"]["authorization_code"] == 0
    assert web.failures() == ["server_error"]
    (failure,) = web.db.rows("SELECT user_id, detail FROM events WHERE error_type = 'server_error'")
    assert failure["user_id"] == "hal"
    assert [c["selling_partner_id"] for c in web.credentials()] == [
        amazon_line("ivy")["selling_partner_id"]
    ]


def test_no_code_or_state_reaches_a_log_line(
    web: Web, browser: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    callback = web.approve(browser, web.consent_url(browser, "jim"))
    assert web.land(browser, callback) == {"status": "connected"}
    time.sleep(0.1)
    err = capfd.readouterr().err
    assert f"{ROUTES}/callback" in err
    query = parse_qs(urlsplit(callback).query)
    for secret in (query["spapi_oauth_code"][0], query["state"][0]):
        assert secret not in err


def test_a_marketplace_s_seller_connects_in_its_region(web: Web, browser: httpx.Client) -> None:
    started = web.connect(browser, "inda", marketplace="in")
    assert started.status_code == 302, started.text
    assert web.land(browser, started.headers["location"]) == {"status": "connected"}
    assert status_of(web, "inda")["metadata"]["region"] == "eu"


def test_a_marketplace_s_consent_url_is_its_own_seller_central(
    db: Any, monkeypatch: pytest.MonkeyPatch, browser: httpx.Client
) -> None:
    for web in start_web(db, monkeypatch, env={"AMAZON_SELLER_CENTRAL_URL": ""}):
        answer = browser.get(
            f"{web.api}{ROUTES}/connect",
            params={"marketplace": "SG"},
            headers={**bearer("sana"), "Accept": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        url = answer.json()["data"]["consentUrl"]
        assert url.startswith("https://sellercentral.amazon.sg/apps/authorize/consent?")
        (state,) = web.db.rows("SELECT region FROM oauth_states")
        assert state == {"region": "fe"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"marketplace": "XX"}, "'XX' is not an Amazon marketplace"),
        ({"marketplace": "AU", "region": "na"}, "marketplace AU is in the fe region, not na"),
    ],
)
def test_a_marketplace_that_is_not_one_is_refused(
    web: Web, browser: httpx.Client, params: dict[str, str], message: str
) -> None:
    answer = web.connect(browser, "xavi", **params)
    assert answer.status_code == 400
    assert message in answer.json()["error"]
    assert web.db.rows("SELECT * FROM oauth_states") == []
