"""Amazon's login-URI step, continued only by the person in front of it (docs/behaviour.md §5).

An app registered with a login URI gets the seller's browser there, between Seller Central and
the callback, with ``amazon_callback_uri``, ``amazon_state`` and ``selling_partner_id`` (SP-API
"Website authorization workflow", step 2,
https://developer-docs.amazon.com/sp-api/docs/website-authorization-workflow). The app sends the
browser back to ``amazon_callback_uri`` with its own ``state``, and Amazon then redirects to the
redirect URI with the code.

Two ways in:

- **A consent this browser started** (``connect amazon``, or the API's connect route): the step
  never continues on a GET. It shows a page naming the user and the selling partner, and
  continues only on a POST carrying ``login_token`` — a MAC of this browser's state and Amazon's
  step — once per state. A login link someone else started, opened in a browser that has a
  consent open, shows that page and goes no further.
- **A consent started at Amazon** (*Manage Your Apps → Authorize / Re-authorize*, which every
  seller meets once a year, and the Appstore's *Authorize now*): Amazon sends the browser to the
  login URI with no state of ours ("Renew Authorizations",
  https://developer-docs.amazon.com/sp-api/docs/renew-authorizations: "every 365 days";
  "Renew Selling Partner Appstore Authorization Workflow", step 1,
  https://developer-docs.amazon.com/sp-api/docs/selling-partner-appstore-authorization-workflow-renew:
  "Amazon loads your Login URI … with amazon_callback_uri, amazon_state, selling_partner_id").
  The web flow sends it to the front end, which signs the seller in and confirms with the
  caller's bearer token (``start_at_amazon``): the consent is bound to that signed-in user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from discoveryctl.amazon import consent
from discoveryctl.amazon.consent import ConsentStart, Reason, StateClaims, single
from discoveryctl.config import Config
from discoveryctl.db.engine import SessionScope
from discoveryctl.db.models import Credential, IntegrationStatus, OAuthState, utcnow
from discoveryctl.errors import OAuthCallbackError
from discoveryctl.providers.lwa import AmazonApp, login_continue_url
from discoveryctl.support.user_ids import valid_user_id

FORM_FIELDS = ("amazon_callback_uri", "amazon_state", "selling_partner_id", "version")
"""What the login step carries from Amazon's request to the confirmation and on."""


@dataclass(frozen=True)
class LoginRequest:
    """Amazon's login-URI request, checked."""

    amazon_callback_uri: str
    amazon_state: str
    selling_partner_id: str
    beta: bool  # Amazon adds version=beta to a draft app's test workflow

    def fields(self) -> dict[str, str]:
        """The request as the confirmation form carries it on."""
        carried = {
            "amazon_callback_uri": self.amazon_callback_uri,
            "amazon_state": self.amazon_state,
            "selling_partner_id": self.selling_partner_id,
        }
        if self.beta:
            carried["version"] = "beta"
        return carried


def login_request(params: Mapping[str, Any]) -> LoginRequest:
    """Amazon's parameters, or why they are not a login request Amazon sends."""
    callback = single(params, "amazon_callback_uri")
    amazon_state = single(params, "amazon_state")
    if callback is None or amazon_state is None:
        raise OAuthCallbackError(
            Reason.invalid_login_request,
            "the login request lacks amazon_callback_uri or amazon_state",
        )
    seller = consent.selling_partner(params, "login request")
    return LoginRequest(callback, amazon_state, seller, single(params, "version") == "beta")


def continue_url(app: AmazonApp, request: LoginRequest, state: str, claims: StateClaims) -> str:
    """Back to Amazon with our state; never anywhere but Amazon's hosts for the region."""
    try:
        return login_continue_url(
            app,
            claims.region,
            request.amazon_callback_uri,
            request.amazon_state,
            state,
            beta=request.beta,
            marketplace=claims.marketplace,
        )
    except ValueError:
        raise OAuthCallbackError(
            Reason.invalid_login_request, "amazon_callback_uri does not point at Amazon"
        ) from None


def _check_way_back(app: AmazonApp, request: LoginRequest, claims: StateClaims) -> None:
    """Refuse, before anything is shown or recorded, a request whose way back is not
    Amazon's (the state in the URL does not change that answer)."""
    continue_url(app, request, "", claims)  # pragma: no mutate  (a placeholder state)


def login_token(state: str, jwt_secret: str, amazon_state: str) -> str:
    """What the confirmation must carry: a MAC (HMAC-SHA256 under ``JWT_SECRET``) of this
    browser's state and Amazon's step, so only the page this browser was shown can confirm."""
    message = b"login-step\0" + state.encode() + b"\0" + amazon_state.encode()
    digest = hmac.new(jwt_secret.encode(), message, hashlib.sha256).digest()
    # Mutation testing: a 32-byte digest's last character is never X (4 bits and 2 zero bits).
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()  # pragma: no mutate


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation page shows and carries."""

    user_id: str
    selling_partner_id: str
    fields: dict[str, str]
    token: str


def confirmation(
    app: AmazonApp, state: str, jwt_secret: str, params: Mapping[str, Any]
) -> Confirmation:
    """The page a GET of the login step answers with: who would be connected to which
    selling partner, and the form that continues (nothing is recorded or spent). A request
    that could not continue to Amazon is refused here already."""
    claims = consent.read_state(state, jwt_secret)
    request = login_request(params)
    _check_way_back(app, request, claims)
    return Confirmation(
        user_id=claims.user_id,
        selling_partner_id=request.selling_partner_id,
        fields=request.fields(),
        token=login_token(state, jwt_secret, request.amazon_state),
    )


def confirm(
    session_scope: SessionScope,
    app: AmazonApp,
    jwt_secret: str,
    state: str,
    form: Mapping[str, Any],
) -> str:
    """The confirmation's POST: where the browser goes next, once per state, and only with
    the token of the page this browser was shown."""
    claims = consent.read_state(state, jwt_secret)
    request = login_request(form)
    token = single(form, "login_token")
    expected = login_token(state, jwt_secret, request.amazon_state)
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise OAuthCallbackError(
            Reason.login_not_confirmed,
            "the sign-in step was not confirmed on the page this browser was shown",
        )
    location = continue_url(app, request, state, claims)
    with session_scope() as session:
        _mark_confirmed(session, claims)
    return location


def start_at_amazon(
    session_scope: SessionScope,
    config: Config,
    app: AmazonApp,
    *,
    user_id: str,
    params: Mapping[str, Any],
    region: str | None,
    marketplace: str | None,
) -> tuple[ConsentStart, str]:
    """A consent started at Amazon (no state of ours), confirmed by the signed-in ``user_id``:
    a state for that user, its login step confirmed at once, and where the browser goes next.

    The region is the one asked for, else the user's current Amazon region (a yearly
    re-authorization), else North America."""
    request = login_request(params)
    if region is None and marketplace is None:
        with session_scope() as session:
            region = session.scalar(  # (a credential is an Amazon integration's)
                sa.select(Credential.region)
                .join(IntegrationStatus)
                .where(IntegrationStatus.user_id == valid_user_id(user_id))
            )
    where, market = consent.seller_region(region, marketplace)
    # Mutation testing: the check reads the region alone (the allow-list is per region).
    placeholder = StateClaims("", user_id, where, market)  # pragma: no mutate
    _check_way_back(app, request, placeholder)
    started = consent.start(
        session_scope,
        config,
        app,
        user_id=user_id,
        region=where,
        flow="amazon_started",
        marketplace=market,
    )
    claims = consent.read_state(started.state, config.jwt_secret())
    location = continue_url(app, request, started.state, claims)
    with session_scope() as session:
        _mark_confirmed(session, claims)
    return started, location


def _mark_confirmed(session: Session, claims: StateClaims) -> None:
    """The step is confirmed once per state, and never after its callback."""
    result = session.execute(
        sa.update(OAuthState)
        .where(
            OAuthState.id == claims.state_id,
            OAuthState.login_confirmed_at.is_(None),
            OAuthState.consumed_at.is_(None),
        )
        .values(login_confirmed_at=utcnow())
    )
    rowcount = cast("CursorResult[Any]", result).rowcount  # pragma: no mutate  (types only)
    if rowcount != 1:
        raise OAuthCallbackError(
            Reason.login_reused, "this consent's sign-in step was already confirmed"
        )


def page(confirmation: Confirmation, action: str) -> str:
    """The confirmation page (HTML): whom this connects to which selling partner, and one
    button that posts the form back to ``action``."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in (*confirmation.fields.items(), ("login_token", confirmation.token))
    )
    user, seller = escape(confirmation.user_id), escape(confirmation.selling_partner_id)
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Connect Amazon</title>'
        "</head><body><h1>Connect Amazon</h1>"
        f'<p>Connect the Amazon seller account <strong id="seller">{seller}</strong> to '
        f'<strong id="user">{user}</strong>?</p>'
        "<p>Continue only if you started this from your own account just now.</p>"
        f'<form method="post" action="{escape(action)}">{hidden}'
        '<button type="submit" id="continue">Continue to Amazon</button></form>'
        "</body></html>"
    )


PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    # The page must not be framed (a confirmation clicked through an invisible frame would
    # be no confirmation), and loads nothing.
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
"""The confirmation page's headers, on every surface that serves it."""
