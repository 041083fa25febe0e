"""Login with Amazon's token endpoint, ``POST /auth/o2/token``: the ``authorization_code`` and
``refresh_token`` grants, with LWA's error bodies, the per-seller behaviours and the app-wide
switches (a rotated client secret, a rate limit per client id).

Sources: SP-API developer guide, "Connecting to the Selling Partner API" step 1
(https://developer-docs.amazon.com/sp-api/docs/connecting-to-the-selling-partner-api); Login
with Amazon, "Authorization Code Grant", sections Access Token Response and Access Token Errors
(https://developer.amazon.com/docs/login-with-amazon/authorization-code-grant.html),
"Access Tokens" (https://developer.amazon.com/docs/login-with-amazon/access-token.html) and
"Refresh Tokens" (https://developer.amazon.com/docs/login-with-amazon/refresh-token.html).
"""

from __future__ import annotations

import uuid
from secrets import compare_digest
from typing import Literal

from discoveryctl.sandbox.asgi import Request, Response, html_response, json_response
from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.state import SandboxState, Tokens

TOKEN_PATH = "/auth/o2/token"

_GRANT_PARAMETER = {"authorization_code": "code", "refresh_token": "refresh_token"}
_BAD_GATEWAY_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center></body></html>"
)


async def token(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """Exchange a consent code or a refresh token for tokens."""
    form = request.form
    for name in ("grant_type", "client_id", "client_secret"):
        if not form.get(name):
            return _missing(name)
    # No public source says how LWA throttles token requests, nor what it answers then: this
    # optional limit (off unless switched on) answers 429 with LWA's usual error body and,
    # as nothing documents one, no Retry-After.
    if not state.admit_lwa_request(form["client_id"]):
        return _throttled(None)
    # A wrong client id or secret is invalid_client (LWA, Access Token Errors), whoever the
    # seller: a rotated secret (state.rotate_client_secret) fails every seller at once.
    accepted_secret = state.client_secret(config.client_secret)
    another_app = any(
        compare_digest(form["client_id"].encode(), other_id.encode())
        and compare_digest(form["client_secret"].encode(), other_secret.encode())
        for other_id, other_secret in config.other_apps
    )
    if not another_app and not (
        compare_digest(form["client_id"].encode(), config.client_id.encode())
        and compare_digest(form["client_secret"].encode(), accepted_secret.encode())
    ):
        return _invalid_client()
    grant_type = form["grant_type"]
    parameter = _GRANT_PARAMETER.get(grant_type)
    if parameter is None:
        return _error(
            400,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        )
    grant = form.get(parameter)
    if not grant:
        return _missing(parameter)
    if another_app:
        # Another app's valid credentials with this app's code or refresh token: the grant
        # "was issued to another client" (RFC 6749 §5.2, invalid_grant), as LWA answers a
        # refresh token it does not take (LWA, "Refresh Tokens" / Access Token Errors).
        return _invalid_grant(parameter)
    if grant_type == "refresh_token":
        outcome = await _refresh(state, config, grant)
    else:
        # A code grant that names a redirect URI must name the one the code was issued for
        # (RFC 6749 §4.1.3). One that names none is accepted: the example request of the SP-API
        # guide's Website Authorization Workflow (step 4) sends none, nor do clients that work
        # against LWA (python-amazon-sp-api's `authorize_auth_code` posts grant_type, code,
        # client_id and client_secret alone), although the guide's table and LWA's page list
        # the parameter
        # (https://developer.amazon.com/docs/amazon-data-portability/lwa-access-token.html).
        redirect_uri = form.get("redirect_uri") or None
        outcome = await _exchange_code(state, config, grant, redirect_uri)
    if isinstance(outcome, Response):
        return outcome
    seller_id = outcome.selling_partner_id
    omit = state.take_behaviour(seller_id, "omit_refresh_token") is not None
    # RFC 6749 §5.1 makes expires_in a number, and every Amazon example found shows 3600: no
    # public source shows LWA answering the string "3600" (Amazon Pay Later's "Access Token
    # API" types it String in a table, no more); this switch is for clients that must cope
    # with servers that do.
    as_string = state.take_behaviour(seller_id, "expires_in_string") is not None
    expires_in = str(config.access_token_ttl) if as_string else config.access_token_ttl
    return _granted(outcome, expires_in, with_refresh_token=not omit)


async def _refresh(
    state: SandboxState, config: SandboxConfig, refresh_token: str
) -> Tokens | Response:
    seller_id = state.record_refresh_request(refresh_token)
    rotate: Literal["no", "keep_old", "revoke_old"] = "no"
    if seller_id is not None:
        refused = await _apply_behaviours(state, seller_id, "refresh_token")
        if refused is not None:
            return refused
        # LWA: a refresh token can be traded "for a new access token and a new refresh token"
        # (Access Tokens), and refresh tokens "are valid indefinitely, unless the user has
        # removed" the app (Refresh Tokens): so after a rotation the old one stays valid.
        # revoke_old=1 kills it instead, which no public source describes.
        rotation = state.take_behaviour(seller_id, "rotate_refresh_token")
        if rotation is not None:
            rotate = "revoke_old" if rotation.get("revoke_old") else "keep_old"
    tokens = state.refresh(refresh_token, config.access_token_ttl, rotate)
    return tokens or _invalid_grant("refresh_token")


async def _exchange_code(
    state: SandboxState, config: SandboxConfig, code: str, redirect_uri: str | None
) -> Tokens | Response:
    seller_id = state.seller_of_code(code)
    if seller_id is not None:
        refused = await _apply_behaviours(state, seller_id, "code")
        if refused is not None:
            return refused
    outcome = state.exchange_code(code, redirect_uri, config.access_token_ttl)
    if outcome == "redirect_mismatch":
        return _invalid_grant("redirect_uri")
    if outcome == "invalid_code":
        return _invalid_grant("code")
    return outcome


def server_error(status: int) -> Response:
    """What LWA answers when it fails on its side."""
    if status == 503:
        return _error(503, "temporarily_unavailable", "The service is temporarily unavailable.")
    return _error(status, "server_error", "The server encountered an unexpected error.")


async def _apply_behaviours(state: SandboxState, seller_id: str, parameter: str) -> Response | None:
    """Wait or refuse as the seller's behaviours say; ``None`` to carry on normally."""
    slow = state.take_behaviour(seller_id, "slow")
    if slow is not None:
        await state.clock.sleep(slow["ms"] / 1000)
    if state.take_behaviour(seller_id, "app_rejected") is not None:
        return _invalid_client()
    if state.take_behaviour(seller_id, "app_unauthorized") is not None:
        return _error(400, "unauthorized_client", "Not authorized for requested operation")
    throttled = state.take_behaviour(seller_id, "throttled")
    if throttled is not None:
        return _throttled(throttled.get("retry_after"))
    flaky = state.take_behaviour(seller_id, "flaky")
    if flaky is not None:
        return server_error(flaky.get("status", 503))
    if state.take_behaviour(seller_id, "bad_gateway") is not None:
        return html_response(502, _BAD_GATEWAY_PAGE)
    if state.take_behaviour(seller_id, "revoked") is not None:
        return _invalid_grant(parameter)
    return None


def _granted(tokens: Tokens, expires_in: int | str, *, with_refresh_token: bool) -> Response:
    # Atza|/Atzr| tokens, "bearer", expires_in (LWA "Access Tokens"); Cache-Control: no-store and
    # Pragma: no-cache as in the example answer of the SP-API guide's Website Authorization
    # Workflow, step 4. No refresh token with omit_refresh_token: LWA can answer without one
    # (Amazon Data Portability, "Use the refresh token to get new tokens",
    # https://developer.amazon.com/docs/amazon-data-portability/use-refresh-token.html).
    payload: dict[str, str | int] = {"access_token": tokens.access_token}
    if with_refresh_token:
        payload["refresh_token"] = tokens.refresh_token
    payload |= {"token_type": "bearer", "expires_in": expires_in}
    return json_response(200, payload, _headers())


def _throttled(retry_after: int | None) -> Response:
    """429 with LWA's error body. No public source documents LWA's throttling answer, nor a
    Retry-After on it: the header is only sent when a test asks for one."""
    response = _error(429, "too_many_requests", "The request was throttled; retry later.")
    if retry_after is not None:
        response.headers.append(("retry-after", str(retry_after)))
    return response


def _missing(name: str) -> Response:
    return _error(400, "invalid_request", f"The request is missing a required parameter : {name}")


def _invalid_client() -> Response:
    return _error(401, "invalid_client", "Client authentication failed")


def _invalid_grant(parameter: str) -> Response:
    description = f"The request has an invalid grant parameter : {parameter}"
    if parameter == "refresh_token":
        description += ". User may have revoked or didn't grant the permission."
    return _error(400, "invalid_grant", description)


def _error(status: int, error: str, description: str) -> Response:
    return json_response(status, {"error": error, "error_description": description}, _headers())


def _headers() -> list[tuple[str, str]]:
    return [
        ("cache-control", "no-store"),
        ("pragma", "no-cache"),
        ("x-amzn-requestid", str(uuid.uuid4())),
    ]
