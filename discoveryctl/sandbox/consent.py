"""Seller Central's consent pages: ``/apps/authorize/consent`` and, in login-URI mode, the
``/apps/authorize/confirm/{application_id}`` callback the app sends the seller back to.

The seller approves at once. The checks and their error pages follow Seller Central: an unknown
application, a redirect URI with a fragment (MD5110) or not registered on the app (MD5101), a
draft app without ``version=beta`` (MD1000), and a missing ``state`` (the three codes from SP-API
"Authorization Errors", https://developer-docs.amazon.com/sp-api/docs/authorization-errors; the
unknown application and the missing state have no code or page there: those two pages are the
sandbox's own).

Sources for the redirect to the redirect URI: SP-API "Website Authorization Workflow"
(https://developer-docs.amazon.com/sp-api/docs/website-authorization-workflow; earlier text in
amzn/selling-partner-api-docs, guides/en-US/developer-guide/SellingPartnerApiDeveloperGuide.md).
For the login-URI steps: SP-API "Selling Partner Appstore Authorization Workflow", steps 2 and 3
(https://developer-docs.amazon.com/sp-api/docs/selling-partner-appstore-authorization-workflow;
the guide's "Amazon Seller Central Partner Network authorization workflow"), and for a start at
Amazon the renewal pages cited at ``authorize_at_amazon``. The current Website Authorization
Workflow page has the login-URI request too (step 5 of its table); the guide's text of it does
not.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlencode, urlsplit, urlunsplit

from discoveryctl.sandbox.asgi import Request, Response, html_response, redirect
from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.state import SandboxState

CONFIRM_PATH = "/apps/authorize/confirm/{application_id}"


async def consent(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """The authorization URI: approve and send the seller to the redirect URI with a code, or
    (login-URI mode) to the app's login URI first."""
    if request.query.get("application_id") != config.application_id:
        return _unknown_application()
    checked = _check_authorization(request, config)
    if isinstance(checked, Response):
        return checked
    redirect_uri, app_state = checked
    seller_id = state.consenting_seller(request.query.get("selling_partner_id") or None)
    if config.login_uri is None:
        return _approve(state, config, seller_id, redirect_uri, app_state)
    amazon_state = state.open_amazon_state(seller_id, config.code_ttl)
    # Amazon loads the login URI with amazon_callback_uri, amazon_state and selling_partner_id,
    # the callback being https://amazon.com/apps/authorize/confirm/<application id>; and "if
    # this a test workflow (started by navigating to your OAuth authorization URI) Amazon
    # includes the version=beta parameter" (Selling Partner Appstore Authorization Workflow,
    # step 2, with the example URI; Website Authorization Workflow, step 5 of its table, for
    # the three parameters).
    login = {
        "amazon_callback_uri": callback_uri(config),
        "amazon_state": amazon_state,
        "selling_partner_id": seller_id,
    }
    if request.query.get("version") == "beta":
        login["version"] = "beta"
    return redirect(_with_query(config.login_uri, login))


MANAGE_YOUR_APPS_PATH = "/apps/manage/authorize"


async def authorize_at_amazon(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """A consent started at Amazon: the seller chose *Authorize* or *Re-authorize* in Seller
    Central's *Manage Your Apps* (or *Authorize now* in the Appstore) and "Login to [your
    application name] now", and Amazon "loads your Login URI … with the following query
    parameters": amazon_callback_uri, amazon_state, selling_partner_id ("Renew Selling Partner
    Appstore Authorization Workflow", step 1,
    https://developer-docs.amazon.com/sp-api/docs/selling-partner-appstore-authorization-workflow-renew;
    "Renew Your Website Authorization", step 1,
    https://developer-docs.amazon.com/sp-api/docs/website-authorization-workflow-renew;
    "Renew Authorizations", https://developer-docs.amazon.com/sp-api/docs/renew-authorizations:
    every 365 days; for *Authorize Now*, "Selling Partner Appstore Authorization Workflow",
    steps 1 and 2,
    https://developer-docs.amazon.com/sp-api/docs/selling-partner-appstore-authorization-workflow).
    The address of that button is not public: this path is the sandbox's own. No ``state`` of
    the app's; ``version=beta`` only for an app in DRAFT status ("If the application is in
    DRAFT status, Amazon includes the version=beta parameter", both renewal pages, step 1): a
    published app's workflow has none (Appstore workflow, step 2)."""
    if request.query.get("application_id") != config.application_id:
        return _unknown_application()
    if config.login_uri is None:
        return _error_page(None, "This application has no login URI to continue at.")
    seller_id = state.consenting_seller(request.query.get("selling_partner_id") or None)
    login = {
        "amazon_callback_uri": callback_uri(config),
        "amazon_state": state.open_amazon_state(seller_id, config.code_ttl),
        "selling_partner_id": seller_id,
    }
    if config.draft:
        login["version"] = "beta"
    return redirect(_with_query(config.login_uri, login))


def callback_uri(config: SandboxConfig) -> str:
    """The ``amazon_callback_uri`` login-URI mode hands the app: absolute, on Amazon's host."""
    path = CONFIRM_PATH.replace("{application_id}", config.application_id)
    return config.amazon_callback_base.rstrip("/") + path


async def confirm(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """The ``amazon_callback_uri`` of login-URI mode: check the application id in the path and
    the single-use ``amazon_state``, then send the seller to the redirect URI with a code.

    The parameters are those of "Selling Partner Appstore Authorization Workflow", step 3
    (https://developer-docs.amazon.com/sp-api/docs/selling-partner-appstore-authorization-workflow):
    ``redirect_uri`` (optional, the first registered one by default), ``amazon_state``,
    ``state``. As on the consent page, a draft app needs ``version=beta`` here too: "if you
    include the version=beta parameter, the workflow authorizes an application in Draft state"
    (same step), and the test workflow "adds the version=beta parameter to the Amazon callback
    URI". That ``amazon_state`` is single-use and lives as long as a code has no public source:
    the pages only call it a guard against cross-site request forgery and give no lifetime."""
    if request.path_params["application_id"] != config.application_id:
        return _unknown_application()
    checked = _check_authorization(request, config)
    if isinstance(checked, Response):
        return checked
    redirect_uri, app_state = checked
    seller_id = state.close_amazon_state(request.query.get("amazon_state", ""))
    if seller_id is None:
        return _error_page(
            None, "The authorization request is invalid or has expired (amazon_state)."
        )
    return _approve(state, config, seller_id, redirect_uri, app_state)


def _check_authorization(request: Request, config: SandboxConfig) -> tuple[str, str] | Response:
    """The redirect URI and state to answer with, or the error page Seller Central shows."""
    # redirect_uri is optional: "the default is the first OAuth Redirect URI that you specified"
    # (Website Authorization Workflow, step 1 in the guide; Appstore workflow, step 3). MD5110
    # ("the URL Redirect contains fragments"), MD5101 (no match with the app's redirect URLs)
    # and MD1000 (a draft app without version=beta) are from "Authorization Errors".
    redirect_uri = request.query.get("redirect_uri") or config.redirect_uris[0]
    if "#" in redirect_uri:
        return _error_page("MD5110", "The redirect URI must not contain a fragment.")
    if redirect_uri not in config.redirect_uris:
        return _error_page(
            "MD5101", "The redirect URI does not match any redirect URI registered for this app."
        )
    if config.draft and request.query.get("version") != "beta":
        return _error_page(
            "MD1000", "This application is in draft state: add version=beta to authorize it."
        )
    # The workflows list state as a parameter (only redirect_uri is marked optional); what
    # Seller Central shows without it is unpublished: this page is the sandbox's own.
    app_state = request.query.get("state")
    if not app_state:
        return _error_page(None, "The authorization request is missing the state parameter.")
    return redirect_uri, app_state


def _approve(
    state: SandboxState, config: SandboxConfig, seller_id: str, redirect_uri: str, app_state: str
) -> Response:
    code = state.issue_code(seller_id, redirect_uri, config.code_ttl)
    return redirect(
        _with_query(
            redirect_uri,
            {"state": app_state, "selling_partner_id": seller_id, "spapi_oauth_code": code},
        )
    )


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


def _unknown_application() -> Response:
    # No public source: "Authorization Errors" lists no code for an unknown application id.
    return _error_page(None, "The application you are trying to authorize could not be found.")


def _error_page(code: str | None, message: str) -> Response:
    detail = f"<p>Error code: {code}</p>" if code else ""
    return html_response(
        400,
        "<!doctype html><html><head><title>Amazon Seller Central - Error</title></head>"
        f"<body><h1>We're sorry</h1><p>{escape(message)}</p>{detail}</body></html>",
        [("cache-control", "no-store")],
    )
