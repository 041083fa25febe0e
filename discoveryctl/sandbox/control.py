"""``/_sandbox/…``: the endpoints tests and operators use to set the emulator up and read what
it saw. JSON in and out, no authentication (the server only listens on 127.0.0.1)."""

from __future__ import annotations

from typing import Any

from discoveryctl.sandbox.asgi import Request, Response, json_response
from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.state import SandboxState


async def add_seller(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``POST /_sandbox/sellers`` ``{"selling_partner_id"?}``: a new seller, its refresh token."""
    body = _json_object(request)
    if isinstance(body, Response):
        return body
    seller_id = body.get("selling_partner_id")
    if seller_id is not None and (not isinstance(seller_id, str) or not seller_id):
        return _error(400, "selling_partner_id must be a non-empty string")
    try:
        seller = state.add_seller(seller_id)
    except ValueError as error:
        return _error(409, str(error))
    return json_response(
        201,
        {"selling_partner_id": seller.selling_partner_id, "refresh_token": seller.refresh_token},
    )


async def revoke_seller(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``POST /_sandbox/sellers/{id}/revoke``: the seller withdraws the app's authorization."""
    seller_id = request.path_params["id"]
    try:
        state.revoke(seller_id)
    except KeyError as error:
        return _error(404, error.args[0])
    return json_response(200, {"selling_partner_id": seller_id, "revoked": True})


async def set_behaviour(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``POST /_sandbox/behaviours`` ``{"target", "behaviour", "params"?}``; the target is a
    seller id, one of its refresh tokens, or ``"stripe"``."""
    body = _json_object(request)
    if isinstance(body, Response):
        return body
    target, behaviour, params = body.get("target"), body.get("behaviour"), body.get("params", {})
    if (
        not isinstance(target, str)
        or not isinstance(behaviour, str)
        or not isinstance(params, dict)
    ):
        return _error(400, 'expected {"target": str, "behaviour": str, "params": {…}}')
    try:
        resolved = state.set_behaviour(target, behaviour, **params)
    except KeyError as error:
        return _error(404, error.args[0])
    except ValueError as error:
        return _error(400, str(error))
    return json_response(200, {"target": resolved, "behaviour": behaviour, "params": params})


async def set_app_switches(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """``POST /_sandbox/app`` ``{"client_secret"?, "lwa_rate_limit"?}``: LWA's app-wide switches.

    ``client_secret``: from now on the only secret LWA accepts, for every seller (``null``: the
    configured one again). ``lwa_rate_limit`` ``{"per_second", "burst"?}``: throttle token
    requests per client id (``null``: no limit)."""
    body = _json_object(request)
    if isinstance(body, Response):
        return body
    secret, rate_limit = body.get("client_secret"), _rate_limit(body.get("lwa_rate_limit"))
    if (
        set(body) - {"client_secret", "lwa_rate_limit"}
        or rate_limit is None
        or (secret is not None and (not isinstance(secret, str) or not secret))
    ):
        return _error(
            400,
            'expected {"client_secret"?: non-empty str or null, '
            '"lwa_rate_limit"?: {"per_second": number > 0, "burst"?: int >= 1} or null}',
        )
    if "lwa_rate_limit" in body:
        state.limit_lwa_rate(*rate_limit)
    if "client_secret" in body:
        state.rotate_client_secret(secret)
    return Response(204)


def _rate_limit(limit: Any) -> tuple[float | None, int] | None:
    """The ``(per_second, burst)`` a ``lwa_rate_limit`` value asks for (``null``: no limit);
    ``None`` when it is malformed."""
    if limit is None:
        return None, 1
    if not isinstance(limit, dict) or set(limit) - {"per_second", "burst"}:
        return None
    per_second, burst = limit.get("per_second"), limit.get("burst", 1)
    if not isinstance(per_second, int | float) or isinstance(per_second, bool):
        return None
    if type(burst) is not int or per_second <= 0 or burst < 1:
        return None
    return float(per_second), burst


async def clear_behaviours(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """``DELETE /_sandbox/behaviours[?target=…[&behaviour=…]]``: switch behaviours off."""
    target, behaviour = request.query.get("target"), request.query.get("behaviour")
    if behaviour is not None and target is None:
        return _error(400, "behaviour needs a target")
    try:
        state.clear_behaviour(target, behaviour)
    except KeyError as error:
        return _error(404, error.args[0])
    return Response(204)


async def forget_idempotency_keys(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """``DELETE /_sandbox/idempotency-keys``: Stripe pruned every key (as after 24 hours)."""
    state.forget_idempotency_keys()
    return Response(204)


async def stats(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``GET /_sandbox/stats``."""
    return json_response(200, state.stats())


async def reset(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``POST /_sandbox/reset``: forget everything."""
    state.reset()
    return Response(204)


def _json_object(request: Request) -> dict[str, Any] | Response:
    try:
        body = request.json()
    except ValueError:
        return _error(400, "the body is not valid JSON")
    if body is None:
        return {}
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})
