"""The HTTP API (docs/behaviour.md §8): the same rows and rules as the CLI, over HTTP.

This module builds the app: its routers (``server.routes``, one module per resource), what
they depend on (``server.deps``), the error answers, the access log and the status feed's
lifespan.

Every route but ``/health`` and the two Amazon sends the browser to (``amazon_consent``: its
login step and its callback, which the consent state authenticates) takes the caller from a
bearer token's ``sub`` (``deps.CurrentCaller``): no route reads a user id from the client, so
one user can never read or change another's rows. Integrations, history and notifications are
shown as the CLI shows them: the views are the core's.

Every answer is JSON in one shape, ``{"success": true, "data": …}`` or ``{"success":
false, "error": …}``, errors included: a ``DiscoveryError`` by its kind
(``server.errors.HTTP_STATUS``), a bad request 400, an unknown route 404, anything unexpected
500 without its details. Amazon's browser redirects end on the front end instead.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from discoveryctl.config import Config
from discoveryctl.db.engine import READERS, Database
from discoveryctl.errors import DiscoveryError
from discoveryctl.server import deps
from discoveryctl.server.errors import Unready, error_response
from discoveryctl.server.routes import (
    amazon_consent,
    health,
    history,
    notifications,
    reconnect,
    status,
    stream,
)
from discoveryctl.server.schemas import ERRORS
from discoveryctl.server.status_feed import StatusFeed
from discoveryctl.support.logging import get_logger

KEEPALIVE = 15.0
"""Seconds between keep-alive comments on an idle stream (proxies drop silent connections)."""


def create_app(config: Config | None = None, *, keepalive: float = KEEPALIVE) -> FastAPI:
    """The API over the database ``config`` names, signing checks with its JWT_SECRET."""
    config = config or Config()
    secret = config.jwt_secret()  # a server without one refuses to start, not every request
    audience, issuer = config.get("JWT_AUDIENCE"), config.get("JWT_ISSUER")
    if config.uses_default_database:
        config.check_default_database()
    database = Database(config.database_url, config.sqlite_creation())
    database.ensure_head(may_upgrade=config.uses_default_database)
    frontend_url = config.frontend_url
    log = get_logger()

    app = FastAPI(
        title="discoveryctl",
        summary="Integration status of the Discovery stage (Amazon SP-API, Stripe).",
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
        exception_handlers=_ANSWERS,
    )
    settings = deps.Settings(
        config=config,
        jwt_secret=secret,
        jwt_audience=audience,
        jwt_issuer=issuer,
        frontend_url=frontend_url,
        secure_cookies=urlsplit(config.get("AMAZON_REDIRECT_URI") or "").scheme == "https",
        keepalive=keepalive,
    )
    deps.install(app, settings, database, StatusFeed(database), log)

    for resource in (amazon_consent, health, status, reconnect, history, notifications, stream):
        app.include_router(resource.router)

    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _bad_requests_are_400(fastapi_openapi())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(AccessLog, log=log)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The status feed's poller runs while the app serves; the database is closed after it."""
    database: Database = app.state.database
    feed: StatusFeed = app.state.feed
    # The routes' threads, as many as the connections kept for reads: more would wait for a
    # connection, or open and close extra ones under load.
    anyio.to_thread.current_default_thread_limiter().total_tokens = READERS
    await feed.start()
    try:
        yield
    finally:
        try:
            await feed.stop()
        finally:
            database.dispose()


async def _discovery_error(_: Request, error: DiscoveryError) -> JSONResponse:
    status_code, body = error_response(error)
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return JSONResponse(body, status_code=status_code, headers=headers)


async def _unready(_: Request, error: Unready) -> JSONResponse:
    return JSONResponse({"success": False, "error": str(error)}, status_code=503)


async def _bad_request(_: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = f"{where}: {first.get('msg', 'invalid request')}".strip(": ")
    return JSONResponse({"success": False, "error": message}, status_code=400)


async def _http_error(_: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": str(error.detail)},
        status_code=error.status_code,
        headers=error.headers,
    )


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log = await deps.log_of(request)
    log.error("api_error", path=request.url.path, error_type=type(error).__name__)
    return JSONResponse({"success": False, "error": "internal error"}, status_code=500)


_ANSWERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    DiscoveryError: _discovery_error,
    Unready: _unready,
    RequestValidationError: _bad_request,
    HTTPException: _http_error,
    Exception: _unexpected,
}
"""Every error answered in the API's shape: a ``DiscoveryError`` by its kind, the health
check's 503, a bad request 400, Starlette's own (an unknown route 404, a wrong method 405) as
they are, anything else 500 without its details (the log says what)."""


def _bad_requests_are_400(schema: dict[str, Any]) -> None:
    """FastAPI documents its own 422 for a request that breaks a route's parameters; this API
    answers 400 in its error shape (``_bad_request``): say so."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}}
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {"description": ERRORS[400]["description"], "content": error}
    for unused in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(unused, None)


class AccessLog:
    """One log line a request: method, path (never the query string, where OAuth codes and
    states travel), status, milliseconds; never a header. Plain ASGI: Starlette's
    ``BaseHTTPMiddleware`` would cost every request a task and a stream of its own."""

    def __init__(self, app: ASGIApp, log: Any) -> None:
        self._app = app
        self._log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # unless the app answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            self._log.info(
                "api_request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - began) * 1000, 1),
            )
