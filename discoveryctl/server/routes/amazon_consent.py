"""The web OAuth routes: a seller connects Amazon from the browser (docs/behaviour.md §8).

The same consent core as ``connect amazon`` (``discoveryctl.amazon.consent``): the same state
(signed, 10 minutes, bound to the user and region, single use), the same reasons, the same
events.

- ``…/amazon/connect`` (bearer token): issues a state for the caller and sends the browser to
  Seller Central's consent page. The state also goes into an ``HttpOnly`` cookie, and the
  callback only accepts the state of the browser that started: a consent link someone else
  started cannot connect a seller to their account (RFC 6749 §10.12, state bound to the user
  agent).
- ``…/amazon/login``: Amazon's login-URI step. With this browser's consent cookie, a page
  naming the user and the selling partner, continued only by its own POST (a token bound to
  this browser's state, once per consent); without one (a consent started at Amazon: the
  yearly re-authorization, the Appstore), to the front end, which signs the seller in and
  continues through ``…/amazon/authorize`` with its bearer token
  (``discoveryctl.amazon.login_step``).
- ``…/amazon/callback``: Amazon's redirect with the code; the browser ends at
  ``FRONTEND_URL/integrations/amazon?status=connected``, or ``?error=<reason>``.

A callback without this browser's state is answered with its reason and nothing else: no
event, no code spent, and the browser's own consent left open (any site can send a browser
here, and the CLI's callback server ignores such callbacks the same way). Only the callback
of the consent this browser started is completed, recorded and ends it.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations.
import contextlib
import secrets
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Cookie, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from discoveryctl.amazon import consent, login_step
from discoveryctl.amazon.consent import Reason
from discoveryctl.db.engine import Database
from discoveryctl.errors import (
    AppCredentialsRejected,
    DiscoveryError,
    InvalidInput,
    OAuthCallbackError,
)
from discoveryctl.integrations.vocabulary import Region, isoformat
from discoveryctl.providers.lwa import LwaClient, app_from
from discoveryctl.server import schemas
from discoveryctl.server.deps import CurrentCaller, DatabaseDep, LogDep, Settings, SettingsDep

COOKIE = "discovery_amazon_consent"
COOKIE_PATH = "/api/v1/integrations/amazon"
"""These routes' prefix: the consent cookie goes to them alone."""
SERVER_ERROR = "server_error"
"""The outcome for anything the consent rules do not name (the database down, a missing key):
RFC 6749 §4.1.2.1's name for it. The log says what it was."""

_NO_REFERRER = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
"""On every answer: the callback's address carries a code and a state."""


def outcome_url(frontend_url: str, page: str = "", **outcome: str) -> str:
    """Where the browser ends: the front end's Amazon page (or one below it), with the
    outcome."""
    path = f"/integrations/amazon/{page}" if page else "/integrations/amazon"
    return f"{frontend_url.rstrip('/')}{path}?{urlencode(outcome)}"


router = APIRouter(prefix=COOKIE_PATH)


@router.get(
    "/connect",
    summary="Start connecting the caller's Amazon account: 302 to Seller Central's consent",
    description=(
        "Issues a consent state for the caller (10 minutes, single use) and redirects to "
        "Seller Central. The state is also set in an `HttpOnly` cookie: the callback must "
        "come back to the same browser. With `Accept: application/json` the answer is "
        '`200 {"success": true, "data": {"consentUrl", "expiresAt"}}` instead, for a front '
        "end that navigates itself."
    ),
    status_code=302,
    response_class=RedirectResponse,
    responses={
        200: {"model": schemas.ConsentAnswer, "description": "When JSON was asked for."},
        302: {"description": "To Seller Central's consent page."},
        401: schemas.ERRORS[401],
        500: {"description": "The server is not set up for Amazon (no app credentials)."},
        503: schemas.ERRORS[503],
    },
)
def connect(
    request: Request,
    who: CurrentCaller,
    database: DatabaseDep,
    settings: SettingsDep,
    region: Region | None = None,
    marketplace: Annotated[
        str | None,
        Query(
            description="The seller's marketplace (two-letter country code, e.g. AU): consent "
            "at its own Seller Central; the region follows from it.",
            max_length=2,
        ),
    ] = None,
) -> Response:
    config = settings.config
    where, market = consent.seller_region(region.value if region else None, marketplace)
    amazon = app_from(config)
    started = consent.start(
        database.session,
        config,
        amazon,
        user_id=who.user_id,
        region=where,
        flow="web",
        marketplace=market,
    )
    data = {"consentUrl": started.url, "expiresAt": isoformat(started.expires_at)}
    answer: Response
    if _wants_json(request.headers.get("accept", "")):
        answer = JSONResponse({"success": True, "data": data}, headers=_NO_REFERRER)
    else:
        answer = _finish(settings, started.url, keep_cookie=True)
    _set_cookie(answer, settings, started.state)
    return answer


def _set_cookie(answer: Response, settings: Settings, state: str) -> None:
    """This browser's consent: its state in an ``HttpOnly`` cookie for these routes alone."""
    answer.set_cookie(
        COOKIE,
        state,
        max_age=int(consent.STATE_LIFETIME.total_seconds()),
        path=COOKIE_PATH,
        secure=settings.secure_cookies,
        httponly=True,
        samesite="lax",  # sent on Amazon's top-level redirects back to us
    )


@router.get(
    "/login",
    summary="Amazon's login-URI step: a page to confirm, or the front end's sign-in",
    status_code=200,
    response_class=HTMLResponse,
    responses={
        200: {"description": "The confirmation page (a consent this browser started)."},
        302: {
            "description": "A consent started at Amazon (no consent cookie): to "
            "`FRONTEND_URL/integrations/amazon/authorize` with Amazon's parameters, where "
            "the seller signs in and confirms; or to the front end with `?error=`."
        },
    },
)
def login(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    log: LogDep,
    state: Annotated[str | None, Cookie(alias=COOKIE)] = None,
) -> Response:
    config = settings.config
    query = parse_qs(request.url.query, keep_blank_values=True)
    try:
        if state is None:  # started at Amazon: the front end signs the seller in
            asked = login_step.login_request(query)
            to = f"{outcome_url(config.frontend_url, 'authorize')}{urlencode(asked.fields())}"
            return _finish(settings, to, keep_cookie=True)
        confirmation = login_step.confirmation(app_from(config), state, config.jwt_secret(), query)
    except OAuthCallbackError as error:
        return _failed(settings, error.reason)
    except Exception as error:
        return _server_error(settings, database, log, error, state, "consent_login_failed")
    return HTMLResponse(
        login_step.page(confirmation, f"{COOKIE_PATH}/login"),
        headers={**_NO_REFERRER, **login_step.PAGE_HEADERS},
    )


MAX_FORM_BYTES = 16 * 1024


async def _form(request: Request) -> dict[str, list[str]]:
    """A posted form (``application/x-www-form-urlencoded``), read up to 16 KiB and no further:
    a longer one is no confirmation this page sent, and reads as empty."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


@router.post(
    "/login",
    summary="The login step confirmed: 303 back to Amazon, once per consent",
    status_code=303,
    response_class=RedirectResponse,
    responses={303: {"description": "Back to Amazon, or to the front end with `?error=`."}},
)
def confirm_login(
    database: DatabaseDep,
    settings: SettingsDep,
    log: LogDep,
    form: Annotated[dict[str, list[str]], Depends(_form)],
    state: Annotated[str | None, Cookie(alias=COOKIE)] = None,
) -> RedirectResponse:
    config = settings.config
    try:
        if state is None:
            raise OAuthCallbackError(Reason.missing_state, "this browser started no consent")
        amazon = app_from(config)
        location = login_step.confirm(database.session, amazon, config.jwt_secret(), state, form)
    except OAuthCallbackError as error:
        return _failed(settings, error.reason, status=303)
    except Exception as error:
        return _server_error(settings, database, log, error, state, "consent_login_failed")
    return _finish(settings, location, keep_cookie=True, status=303)


@router.post(
    "/authorize",
    summary="Continue a consent started at Amazon (Manage Your Apps, the Appstore)",
    description=(
        "For the front end, once the seller has signed in and confirmed: the login-URI "
        "parameters Amazon sent (`amazon_callback_uri`, `amazon_state`, "
        "`selling_partner_id`, `version`), optionally `marketplace` or `region` (default: the "
        "caller's current Amazon region). Issues a consent state for the caller (also set in "
        'the `HttpOnly` cookie) and answers `200 {"success": true, "data": {"continueUrl", '
        '"expiresAt"}}`: the front end sends the browser to `continueUrl`.'
    ),
    responses={
        200: {"model": schemas.ContinueAnswer},
        400: {"description": "Not a login request Amazon sends, or no such marketplace."},
        401: schemas.ERRORS[401],
        503: schemas.ERRORS[503],
    },
)
def authorize(
    who: CurrentCaller,
    database: DatabaseDep,
    settings: SettingsDep,
    body: schemas.AmazonStarted,
) -> JSONResponse:
    config = settings.config
    params = body.model_dump(exclude_none=True, exclude={"marketplace", "region"})
    try:
        started, location = login_step.start_at_amazon(
            database.session,
            config,
            app_from(config),
            user_id=who.user_id,
            params=params,
            region=body.region.value if body.region else None,
            marketplace=body.marketplace,
        )
    except OAuthCallbackError as error:
        raise InvalidInput(error.message) from None
    data = {"continueUrl": location, "expiresAt": isoformat(started.expires_at)}
    answer = JSONResponse({"success": True, "data": data}, headers=_NO_REFERRER)
    _set_cookie(answer, settings, started.state)
    return answer


@router.get(
    "/callback",
    summary="Amazon's redirect with the authorization code: 302 to the front end",
    description=(
        "Ends at `FRONTEND_URL/integrations/amazon?status=connected`, or `?error=<reason>` "
        "with the same reasons as `discoveryctl connect` (`state_reused`, `expired_state`, "
        "`access_denied`, …; `server_error` when the server could not finish)."
    ),
    status_code=302,
    response_class=RedirectResponse,
    responses={302: {"description": "To the front end, with the outcome."}},
)
def callback(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    log: LogDep,
    state: Annotated[str | None, Cookie(alias=COOKIE)] = None,
) -> RedirectResponse:
    config = settings.config
    query = parse_qs(request.url.query, keep_blank_values=True)
    if not _same_state(query.get("state"), state):
        # Not this browser's consent (a link somebody else started, or any page sending
        # the browser here): say why, record nothing, spend nothing, and leave this
        # browser's own consent open, as the CLI's callback server does.
        error = consent.diagnose(query, config.jwt_secret(), state or "", None)
        return _failed(settings, error.reason)
    try:
        amazon = app_from(config)
        with LwaClient(amazon) as lwa:
            consent.complete(database.session, config, amazon, lwa, query, expected_state=state)
    except OAuthCallbackError as error:
        return _failed(settings, error.reason, keep_cookie=False)
    except AppCredentialsRejected:
        return _failed(settings, Reason.app_credentials_rejected, keep_cookie=False)
    except Exception as error:  # the browser still lands on the front end, told it failed
        return _server_error(settings, database, log, error, state, "consent_callback_failed")
    return _finish(
        settings, outcome_url(config.frontend_url, status="connected"), keep_cookie=False
    )


def _finish(
    settings: Settings, to: str, *, keep_cookie: bool, status: int = 302
) -> RedirectResponse:
    response = RedirectResponse(to, status_code=status, headers=_NO_REFERRER)
    if not keep_cookie:
        response.delete_cookie(
            COOKIE, path=COOKIE_PATH, secure=settings.secure_cookies, httponly=True
        )
    return response


def _failed(
    settings: Settings, reason: str, *, keep_cookie: bool = True, status: int = 302
) -> RedirectResponse:
    """To the front end with ``reason``; the consent under way, if any, stays open unless its
    state was spent (any site can send a browser to these routes)."""
    to = outcome_url(settings.config.frontend_url, error=reason)
    return _finish(settings, to, keep_cookie=keep_cookie, status=status)


def _server_error(
    settings: Settings,
    database: Database,
    log: Any,
    error: Exception,
    state: str | None,
    where: str,
) -> RedirectResponse:
    message = error.message if isinstance(error, DiscoveryError) else type(error).__name__
    log.error(where, error_type=type(error).__name__, message=message)
    with contextlib.suppress(Exception):  # the database may be what failed
        secret = settings.config.jwt_secret()
        user = consent.read_state(state, secret).user_id if state else None
        consent.record_failure(database.session, SERVER_ERROR, message, user)
    return _failed(settings, SERVER_ERROR)


def _same_state(sent: list[str] | None, kept: str | None) -> bool:
    """Whether the callback carries exactly the state this browser's cookie holds."""
    if kept is None or sent is None or len(sent) != 1:
        return False
    return secrets.compare_digest(sent[0].encode(), kept.encode())


def _wants_json(accept: str) -> bool:
    return "application/json" in accept and "text/html" not in accept
