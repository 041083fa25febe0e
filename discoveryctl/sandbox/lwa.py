"""Login with Amazon's token endpoint, ``POST /auth/o2/token``: the ``authorization_code`` and
``refresh_token`` grants, with LWA's error bodies and the per-seller behaviours."""

from __future__ import annotations

import uuid
from secrets import compare_digest

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
    if not (
        compare_digest(form["client_id"].encode(), config.client_id.encode())
        and compare_digest(form["client_secret"].encode(), config.client_secret.encode())
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
    if grant_type == "refresh_token":
        outcome = await _refresh(state, config, grant)
    else:
        outcome = await _exchange_code(state, config, grant, form.get("redirect_uri") or None)
    if isinstance(outcome, Response):
        return outcome
    omit = state.take_behaviour(outcome.selling_partner_id, "omit_refresh_token") is not None
    return _granted(outcome, config.access_token_ttl, with_refresh_token=not omit)


async def _refresh(
    state: SandboxState, config: SandboxConfig, refresh_token: str
) -> Tokens | Response:
    seller_id = state.record_refresh_request(refresh_token)
    if seller_id is not None:
        refused = await _apply_behaviours(state, seller_id, "refresh_token")
        if refused is not None:
            return refused
    return state.refresh(refresh_token, config.access_token_ttl) or _invalid_grant("refresh_token")


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
        response = _error(429, "too_many_requests", "The request was throttled; retry later.")
        response.headers.append(("retry-after", str(throttled.get("retry_after", 1))))
        return response
    flaky = state.take_behaviour(seller_id, "flaky")
    if flaky is not None:
        return server_error(flaky.get("status", 503))
    if state.take_behaviour(seller_id, "bad_gateway") is not None:
        return html_response(502, _BAD_GATEWAY_PAGE)
    if state.take_behaviour(seller_id, "revoked") is not None:
        return _invalid_grant(parameter)
    return None


def _granted(tokens: Tokens, ttl: int, *, with_refresh_token: bool) -> Response:
    payload: dict[str, str | int] = {"access_token": tokens.access_token}
    if with_refresh_token:
        payload["refresh_token"] = tokens.refresh_token
    payload |= {"token_type": "bearer", "expires_in": ttl}
    return json_response(200, payload, _headers())


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
