"""The web consent flows in a real browser: Chromium (Debian's package), driven by Playwright,
so cookies, ``SameSite`` and redirects are the browser's own. The API and the sandbox run on
127.0.0.1 over real sockets; the front end is a few pages served at ``FRONTEND_URL`` (the
API's own origin, as when a proxy serves both), and Amazon's ``https://amazon.com`` host is
answered by the sandbox, as ``Sandbox.browser_url`` maps it.

Three flows: a seller connects from the front end (login-URI mode: a page to confirm, then
Amazon); the yearly re-authorization started at Seller Central reconnects the signed-in user;
a login link somebody else started, opened while a consent is under way, connects nothing,
whatever a page elsewhere posts."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import httpx
import jwt
import pytest
from api_server import listening, serving

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread

CHROMIUM = os.environ.get("DISCOVERY_TEST_CHROMIUM") or shutil.which("chromium")
SECRET = "b" * 40
ROUTES = "/api/v1/integrations/amazon"

if CHROMIUM is None:
    message = "no Chromium (Debian's `chromium` package): the browser tests did not run"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)

from playwright.sync_api import (  # noqa: E402
    Browser,
    BrowserContext,
    Page,
    Route,
    sync_playwright,
)


def bearer(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 600}, SECRET, "HS256")


@dataclass
class Site:
    api: str
    sandbox: Sandbox
    db: Any

    @property
    def frontend(self) -> str:
        return self.api  # the front end and the API on one origin

    def status(self, user: str) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.api}/api/v1/integrations/status",
            headers={"Authorization": f"Bearer {bearer(user)}"},
        )
        data: list[dict[str, Any]] = answer.json()["data"]
        return data


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def site(db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    listener = listening()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config = SandboxConfig(
        redirect_uris=(f"{base}{ROUTES}/callback",), login_uri=f"{base}{ROUTES}/login"
    )
    with run_in_thread(config) as sandbox:
        for name, value in sandbox.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("JWT_SECRET", SECRET)
        monkeypatch.setenv("FRONTEND_URL", base)
        with serving(listener=listener, wrap=front_end) as api:
            yield Site(api, sandbox, db)


FRONT_END = "/integrations/amazon"
SESSION = "frontend_session"


def signed_in_as(site: Site, browser: Browser, user: str) -> BrowserContext:
    """A browser in which ``user`` is signed in to the front end (its own session cookie)."""
    context = browser.new_context()
    context.add_cookies([{"name": SESSION, "value": user, "url": site.frontend}])
    return context


def front_end(api: Any) -> Any:
    """The front end's pages in front of the API, on its origin, as a SaaS serves them at
    ``FRONTEND_URL``: signed in as the user of its own session cookie (``signed_in_as``), it
    starts a consent, or confirms one started at Amazon, with that user's bearer token; its
    outcome page shows the query."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(FRONT_END):
            await api(scope, receive, send)
            return
        cookies = SimpleCookie(dict(scope["headers"]).get(b"cookie", b"").decode())
        user = json.dumps(bearer(cookies[SESSION].value))
        if path == f"{FRONT_END}/start":
            script = (
                f"fetch('{ROUTES}/connect', {{headers: {{Authorization: 'Bearer ' + {user}, "
                "Accept: 'application/json'}}).then(r => r.json())"
                ".then(j => { location = j.data.consentUrl; });"
            )
        elif path == f"{FRONT_END}/authorize":
            script = (
                "const asked = Object.fromEntries(new URLSearchParams(location.search));"
                f"fetch('{ROUTES}/authorize', {{method: 'POST', headers: {{Authorization: "
                f"'Bearer ' + {user}, 'Content-Type': 'application/json', Accept: "
                "'application/json'}, body: JSON.stringify(asked)}).then(r => r.json())"
                ".then(j => { location = j.data.continueUrl; });"
            )
        else:
            script = "document.body.dataset.outcome = location.search;"
        body = f"<!doctype html><html><body><script>{script}</script></body></html>".encode()
        headers = [(b"content-type", b"text/html"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def amazon_host(site: Site, page: Page) -> None:
    """``https://amazon.com`` (where Amazon's login step sends the seller back) is answered
    by the sandbox, redirects included."""

    def serve(route: Route) -> None:
        answer = route.fetch(url=site.sandbox.browser_url(route.request.url), max_redirects=0)
        route.fulfill(response=answer)

    page.route(lambda url: url.startswith("https://amazon.com/"), serve)


def outcome(page: Page) -> str:
    try:
        page.wait_for_url("**/integrations/amazon?*", timeout=15_000)
    except Exception as error:
        raise AssertionError(f"stuck at {page.url}: {page.content()[:500]}") from error
    return page.url.split("?", 1)[1]


def test_a_seller_connects_from_the_front_end(site: Site, browser: Browser) -> None:
    context = signed_in_as(site, browser, "bea")
    page = context.new_page()
    amazon_host(site, page)
    page.goto(f"{site.frontend}/integrations/amazon/start")
    page.wait_for_url(f"**{ROUTES}/login?*")  # the login step: a page, not a redirect
    assert page.inner_text("#user") == "bea"
    seller = page.inner_text("#seller")
    page.click("#continue")
    assert outcome(page) == "status=connected"
    (row,) = site.status("bea")
    assert (row["status"], row["metadata"]["selling_partner_id"]) == ("active", seller)
    cookie_names = {c["name"] for c in context.cookies()}
    assert "discovery_amazon_consent" not in cookie_names  # spent with the consent
    context.close()


def test_the_re_authorization_started_at_seller_central_reconnects_the_signed_in_user(
    site: Site, browser: Browser
) -> None:
    first = signed_in_as(site, browser, "rae")
    page = first.new_page()
    amazon_host(site, page)
    page.goto(f"{site.frontend}/integrations/amazon/start")
    page.wait_for_url(f"**{ROUTES}/login?*")
    seller = page.inner_text("#seller")
    page.click("#continue")
    assert outcome(page) == "status=connected"
    first.close()

    # A year on: Seller Central's Manage Your Apps → Re-authorize, in a fresh browser.
    later = signed_in_as(site, browser, "rae")  # the front end signs her in
    page = later.new_page()
    amazon_host(site, page)
    entry = f"{site.sandbox.url}/apps/manage/authorize"
    page.goto(
        f"{entry}?application_id={site.sandbox.config.application_id}&selling_partner_id={seller}"
    )
    assert outcome(page) == "status=connected"
    (row,) = site.status("rae")
    assert (row["status"], row["metadata"]["selling_partner_id"]) == ("active", seller)
    assert site.sandbox.state.stats()["grants"]["authorization_code"] == 2
    later.close()


def test_a_login_link_someone_else_started_connects_nothing(site: Site, browser: Browser) -> None:
    # Mallory consents for her own seller and keeps the login link Amazon sends her to.
    mallory = signed_in_as(site, browser, "mallory").new_page()
    mallory.goto(f"{site.frontend}/integrations/amazon/start")
    mallory.wait_for_url(f"**{ROUTES}/login?*")
    bait, her_seller = mallory.url, mallory.inner_text("#seller")

    # Victor has a consent of his own under way when he opens her link.
    context = signed_in_as(site, browser, "victor")
    victor = context.new_page()
    victor.route(f"{site.sandbox.url}/apps/authorize/consent*", lambda r: r.abort())
    victor.goto(f"{site.frontend}/integrations/amazon/start")
    victor.wait_for_timeout(500)  # his consent cookie is set; he does not go on to Amazon
    assert "discovery_amazon_consent" in {c["name"] for c in context.cookies()}
    victor.goto(bait)
    assert victor.inner_text("#seller") == her_seller  # a page naming her seller, no redirect
    assert victor.inner_text("#user") == "victor"
    assert f"{ROUTES}/login" in victor.url

    # A page elsewhere posts the form for him, without the page's own token.
    fields = victor.eval_on_selector_all(
        "input[type=hidden]",
        "els => els.filter(e => e.name !== 'login_token').map(e => [e.name, e.value])",
    )
    inputs = "".join(f'<input name="{n}" value="{v}">' for n, v in fields)
    evil = "http://evil.localhost/post"
    victor.route(
        evil,
        lambda r: r.fulfill(
            content_type="text/html",
            body=f'<form method="post" action="{site.api}{ROUTES}/login">{inputs}</form>'
            "<script>document.forms[0].submit()</script>",
        ),
    )
    victor.goto(evil)
    assert outcome(victor) == "error=missing_state"  # the browser keeps its Lax cookie home
    assert site.status("victor") == [] and site.status("mallory") == []
    assert site.db.rows("SELECT * FROM credentials") == []
    assert site.sandbox.state.stats()["grants"]["authorization_code"] == 0
    context.close()
