"""Connecting a seller from the operator's machine: the consent flow around ``consent``.

Two ways back from Amazon: the local callback server (the browser is redirected to it), or
``--paste`` (the operator pastes the address the browser ended on). Both validate the same
way. On the local server only a callback carrying this flow's own ``state`` ends the flow;
anything else gets an error page and the flow keeps waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from discoveryctl.amazon import consent, login_step
from discoveryctl.amazon.callback_server import LOGIN_PATH, CallbackServer, Page, Query
from discoveryctl.amazon.consent import Connected, ConsentStart, Reason
from discoveryctl.config import Config
from discoveryctl.db.engine import SessionScope
from discoveryctl.errors import AppCredentialsRejected, ConfigurationError, OAuthCallbackError
from discoveryctl.providers.lwa import AmazonApp, LwaClient

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")  # the server listens on 127.0.0.1 only


@dataclass
class Flow:
    """One seller's consent flow."""

    session_scope: SessionScope
    config: Config
    app: AmazonApp
    lwa: LwaClient
    user_id: str
    region: str
    marketplace: str | None = None

    def start(self, channel: str) -> ConsentStart:
        """Issue the state, after checking the authorization can be stored at all."""
        return consent.start(
            self.session_scope,
            self.config,
            self.app,
            user_id=self.user_id,
            region=self.region,
            flow=channel,
            marketplace=self.marketplace,
        )

    def finish(self, params: Query, expected_state: str | None) -> Connected:
        """Complete with a callback; with ``expected_state``, only that state is accepted."""
        return consent.complete(
            self.session_scope,
            self.config,
            self.app,
            self.lwa,
            params,
            expected_state=expected_state,
            expected_user=self.user_id,
        )


def check_redirect_uri(redirect_uri: str, tls: tuple[Path, Path] | None) -> None:
    """The local server can only receive a redirect that points at this machine."""
    parts = urlsplit(redirect_uri)
    if parts.hostname not in LOOPBACK_HOSTS:
        raise ConfigurationError(
            f"AMAZON_REDIRECT_URI points at {parts.hostname}, not this machine: "
            "use --paste to paste the final address from the browser instead"
        )
    if parts.scheme == "https" and tls is None:
        raise ConfigurationError(
            "AMAZON_REDIRECT_URI is https: pass --tls-cert and --tls-key for the local "
            "server, or use --paste"
        )
    if parts.scheme == "http" and tls is not None:
        raise ConfigurationError("--tls-cert/--tls-key need an https AMAZON_REDIRECT_URI")


def via_local_server(
    flow: Flow,
    *,
    announce: Callable[[str], None],
    ignored: Callable[[OAuthCallbackError], None],
    timeout: float,
    tls: tuple[Path, Path] | None = None,
) -> Connected:
    """Serve the redirect URI on 127.0.0.1 until this flow's callback arrives."""
    check_redirect_uri(flow.app.redirect_uri, tls)
    outcome: list[Connected | Exception] = []
    completing = threading.Lock()
    start: ConsentStart | None = None

    def on_callback(query: Query) -> Page:
        assert start is not None
        if query.get("state") != [start.state]:
            # Not this flow's callback (any page in the operator's browser can send one):
            # say why on the page and the terminal, store nothing, keep waiting.
            error = consent.diagnose(query, flow.config.jwt_secret(), start.state, flow.user_id)
            ignored(error)
            return Page(400, "Connection failed", error.message)
        with completing:  # handlers run on threads: this flow's callback is handled once
            if outcome:
                return Page(409, "Already handled", "This consent was already handled.")
            try:
                connected = flow.finish(query, start.state)
            except OAuthCallbackError as error:
                outcome.append(error)
                return Page(400, "Connection failed", error.message, finished=True)
            except AppCredentialsRejected as error:
                outcome.append(error)
                rejected = "Amazon rejected this app's credentials."
                return Page(502, "Connection failed", rejected, finished=True)
            except Exception as error:  # e.g. the database failed while storing: say so
                outcome.append(error)
                unsaved = "The connection could not be saved."
                return Page(500, "Connection failed", unsaved, finished=True)
            outcome.append(connected)
            return Page(
                200,
                "Amazon account connected",
                f"Seller {connected.selling_partner_id} is connected. You can close this window.",
                finished=True,
            )

    def on_login(query: Query) -> Page:
        """Amazon's login step: a page to confirm, never a redirect on a GET."""
        assert start is not None
        try:
            asked = login_step.confirmation(flow.app, start.state, flow.config.jwt_secret(), query)
        except OAuthCallbackError as error:
            return Page(400, "Sign-in step failed", error.message)
        return Page(200, "Connect Amazon", html=login_step.page(asked, LOGIN_PATH))

    def on_confirm(form: Query) -> Page:
        """The confirmation's POST: on to Amazon, once, with the page's own token."""
        assert start is not None
        try:
            location = login_step.confirm(
                flow.session_scope, flow.app, flow.config.jwt_secret(), start.state, form
            )
        except OAuthCallbackError as error:
            return Page(400, "Sign-in step failed", error.message)
        return Page(303, "Continue to Amazon", location=location)

    with CallbackServer(
        flow.app.redirect_uri, on_callback, on_login, on_confirm, tls=tls
    ) as server:
        start = flow.start("local")
        announce(start.url)
        server.serve(timeout)
        with completing:  # a callback being handled as time runs out may finish first
            if not outcome:
                message = (
                    f"no callback from Amazon within {timeout:g} s: the seller did not finish "
                    "consent (cancelling on Amazon's page sends nothing back)"
                )
                consent.record_failure(flow.session_scope, Reason.timeout, message, flow.user_id)
                outcome.append(OAuthCallbackError(Reason.timeout, message))  # late ones: refused
    result = outcome[0]
    if isinstance(result, Exception):
        raise result
    return result


def via_paste(
    flow: Flow,
    *,
    announce: Callable[[str], None],
    read_pasted: Callable[[], str],
) -> Connected:
    """The operator pastes the address the browser ended on; it is validated the same way.

    Any state issued to this user is accepted (a paste may come from an earlier attempt that
    the seller finished late), but only once.
    """
    start = flow.start("paste")
    announce(start.url)
    pasted = read_pasted().strip()
    query = urlsplit(pasted).query if "?" in pasted or "://" in pasted else pasted
    return flow.finish(parse_qs(query, keep_blank_values=True), expected_state=None)
