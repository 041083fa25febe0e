"""The emulator's ASGI application: one table of routes, dispatched on method and path, with
the configured latency and random failures in front of LWA, SP-API and Stripe."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from discoveryctl.sandbox import consent, control, lwa, spapi, stripe
from discoveryctl.sandbox.asgi import (
    BodyTooLarge,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    json_response,
    read_request,
    send_response,
)
from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.state import SandboxState

Handler = Callable[[Request, SandboxConfig, SandboxState], Awaitable[Response]]
Surface = Literal["consent", "lwa", "spapi", "stripe", "control"]


@dataclass(frozen=True)
class Route:
    """One endpoint; ``template`` may hold one ``{name}`` path segment."""

    method: str
    template: str
    surface: Surface
    handler: Handler

    @property
    def name(self) -> str:
        """How the route is counted in the statistics, e.g. ``"POST /auth/o2/token"``."""
        return f"{self.method} {self.template}"


ROUTES = (
    Route("GET", "/apps/authorize/consent", "consent", consent.consent),
    Route("GET", consent.CONFIRM_PATH, "consent", consent.confirm),
    Route("GET", consent.MANAGE_YOUR_APPS_PATH, "consent", consent.authorize_at_amazon),
    Route("POST", lwa.TOKEN_PATH, "lwa", lwa.token),
    Route("GET", spapi.PARTICIPATIONS_PATH, "spapi", spapi.marketplace_participations),
    Route("POST", stripe.CUSTOMERS_PATH, "stripe", stripe.create_customer),
    Route("GET", stripe.CUSTOMERS_PATH, "stripe", stripe.list_customers),
    Route("GET", stripe.SEARCH_PATH, "stripe", stripe.search_customers),
    Route("GET", stripe.CUSTOMER_PATH, "stripe", stripe.retrieve_customer),
    Route("POST", "/_sandbox/sellers", "control", control.add_seller),
    Route("POST", "/_sandbox/sellers/{id}/revoke", "control", control.revoke_seller),
    Route("POST", "/_sandbox/behaviours", "control", control.set_behaviour),
    Route("POST", "/_sandbox/app", "control", control.set_app_switches),
    Route("DELETE", "/_sandbox/behaviours", "control", control.clear_behaviours),
    Route("DELETE", "/_sandbox/idempotency-keys", "control", control.forget_idempotency_keys),
    Route("GET", "/_sandbox/stats", "control", control.stats),
    Route("POST", "/_sandbox/reset", "control", control.reset),
)

_SERVER_ERRORS: dict[Surface, Callable[[int], Response]] = {
    "lwa": lwa.server_error,
    "spapi": spapi.server_error,
    "stripe": stripe.server_error,
}


class SandboxApp:
    """The ASGI application serving every emulated surface from one ``SandboxState``."""

    def __init__(self, config: SandboxConfig, state: SandboxState) -> None:
        self.config = config
        self.state = state
        self._exact = {(r.method, r.template): r for r in ROUTES if "{" not in r.template}
        self._templated = [r for r in ROUTES if "{" in r.template]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            request = await read_request(scope, receive)
        except BodyTooLarge:
            await send_response(send, json_response(413, {"error": "request body too large"}))
            return
        route = self._route(request)
        if route is None:
            self.state.record_request(f"{request.method} {request.path}")
            response = self._not_routed(request.path)
        else:
            if route.surface != "control":
                self.state.record_request(route.name)
            response = await self._respond(route, request)
        await send_response(send, response)

    async def _respond(self, route: Route, request: Request) -> Response:
        server_error = _SERVER_ERRORS.get(route.surface)
        if server_error is not None:
            if self.config.latency_ms:
                await self.state.clock.sleep(self.config.latency_ms / 1000)
            if self.config.fail_rate and random.random() < self.config.fail_rate:
                return server_error(500)
        return await route.handler(request, self.config, self.state)

    def _route(self, request: Request) -> Route | None:
        """The route for the request, filling in ``request.path_params``."""
        route = self._exact.get((request.method, request.path))
        if route is not None:
            return route
        for route in self._templated:
            params = _match(route.template, request.path)
            if route.method == request.method and params is not None:
                request.path_params = params
                return route
        return None

    def _not_routed(self, path: str) -> Response:
        allowed = sorted(r.method for r in ROUTES if _match(r.template, path) is not None)
        if allowed:
            return json_response(
                405, {"error": "method not allowed"}, [("allow", ", ".join(allowed))]
            )
        return json_response(404, {"error": f"no such endpoint: {path}"})


def _match(template: str, path: str) -> dict[str, str] | None:
    """The ``{name}`` segments of ``path`` if it fits ``template``, else ``None``."""
    wanted, given = template.split("/"), path.split("/")
    if len(wanted) != len(given):
        return None
    params: dict[str, str] = {}
    for pattern, segment in zip(wanted, given, strict=True):
        if pattern.startswith("{") and segment:
            params[pattern[1:-1]] = segment
        elif pattern != segment:
            return None
    return params
