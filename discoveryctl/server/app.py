"""The HTTP API (docs/behaviour.md §8): the same rows and rules as the CLI, over HTTP.

Every route but ``/health`` and the two Amazon sends the browser to (``amazon_consent``: its
login step and its callback, which the consent state authenticates) takes the caller from a
bearer token's ``sub`` (``discoveryctl.server.tokens``): no route reads a user id from the client,
so one user can never read or change another's rows. Integrations, history and notifications
are shown as the CLI shows them: the views are the core's.

Every answer is JSON in one shape, ``{"success": true, "data": …}`` or ``{"success":
false, "error": …}``, errors included: a ``DiscoveryError`` by its kind
(``server.errors.HTTP_STATUS``), a bad request 400, an unknown route 404, anything unexpected
500 without its details. Amazon's browser redirects end on the front end instead.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, which name
# the dependencies defined inside ``create_app``.
import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as FastApiPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from discoveryctl.config import Config
from discoveryctl.db.engine import HEAD_REVISION, READERS, Database
from discoveryctl.errors import DiscoveryError, NotFound
from discoveryctl.integrations import events, lifecycle
from discoveryctl.integrations import notifications as inbox
from discoveryctl.integrations import reconnect as reconnects
from discoveryctl.integrations.vocabulary import Provider, api_view
from discoveryctl.server import amazon_consent, schemas, tokens
from discoveryctl.server.errors import error_response
from discoveryctl.server.status_feed import Change, StatusFeed
from discoveryctl.support.logging import get_logger

KEEPALIVE = 15.0
"""Seconds between keep-alive comments on an idle stream (proxies drop silent connections)."""


class BearerToken(HTTPBearer):
    """The caller, from the request's bearer token (``tokens.caller_of``). An
    ``HTTPBearer``, so OpenAPI names the scheme on every route that needs it; one dependency
    with nothing below it, checked on the event loop (no thread hop)."""

    def __init__(self, secret: str, audience: str | None, issuer: str | None) -> None:
        super().__init__(
            scheme_name="HTTPBearer",
            description="An HS256 JWT whose `sub` is the user.",
            auto_error=False,
        )
        self._secret, self._audience, self._issuer = secret, audience, issuer

    async def __call__(self, request: Request) -> tokens.Caller:  # type: ignore[override]
        return tokens.caller_of(
            self._secret,
            request.headers.get("authorization"),
            audience=self._audience,
            issuer=self._issuer,
        )


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": meaning, "model": schemas.ErrorAnswer}
    for status, meaning in (
        (401, 'No bearer token the API accepts: `{"success": false, "error": …}`.'),
        (404, "Unknown provider, or the user has no such integration."),
        (400, "The request breaks the route's parameters (the error names which)."),
        (503, "The database is unavailable."),
    )
}


def answers(model: type[Any], *errors: int) -> dict[int | str, dict[str, Any]]:
    """A route's documented answers: ``model`` for 200, and ``errors``."""
    return {200: {"model": model}, **{status: ERRORS[status] for status in errors}}


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

    feed = StatusFeed(database)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The routes' threads, as many as the connections kept for reads: more would wait for
        # a connection, or open and close extra ones under load.
        anyio.to_thread.current_default_thread_limiter().total_tokens = READERS
        await feed.start()
        try:
            yield
        finally:
            try:
                await feed.stop()
            finally:
                database.dispose()

    app = FastAPI(
        title="discoveryctl",
        summary="Integration status of the Discovery stage (Amazon SP-API, Stripe).",
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )

    caller = BearerToken(secret, audience, issuer)
    Who = Annotated[tokens.Caller, Depends(caller)]
    amazon_consent.add_routes(app, config, database, caller, ERRORS, log)

    @app.get(
        "/health",
        summary="The service and its database",
        response_model=None,
        responses=answers(schemas.HealthAnswer, 503),
    )
    def health() -> dict[str, Any]:
        revision = database.current_revision()
        if revision != HEAD_REVISION:
            raise _Unready(f"database schema at {revision or 'nothing'}, not {HEAD_REVISION}")
        return {"success": True, "data": {"status": "ok", "database": revision}}

    @app.get(
        "/api/v1/integrations/status",
        summary="The caller's integrations",
        responses=answers(schemas.IntegrationsAnswer, 401, 503),
    )
    def statuses(who: Who) -> JSONResponse:
        with database.reading() as connection:
            rows = lifecycle.of_user(connection, who.user_id)
        # JSON already: FastAPI's encoder would walk every value again (a third of a request)
        return JSONResponse({"success": True, "data": [api_view(*row) for row in rows]})

    @app.get(
        "/api/v1/integrations/status/{provider}",
        summary="The caller's integration with one provider",
        responses=answers(schemas.IntegrationAnswer, 401, 404, 503),
    )
    def status(provider: str, who: Who) -> JSONResponse:
        known = _provider(provider)
        with database.reading() as connection:
            rows = lifecycle.of_user(connection, who.user_id, known)
        if not rows:
            raise NotFound(f"no {known} integration")
        return JSONResponse({"success": True, "data": api_view(*rows[0])})

    @app.patch(
        "/api/v1/integrations/reconnect/{provider}",
        summary="A reconnect URL for one of the caller's integrations (the attempt is counted)",
        response_model=None,
        responses=answers(schemas.ReconnectAnswer, 401, 404, 503),
    )
    def reconnect(provider: str, who: Who) -> dict[str, Any]:
        known = _provider(provider)
        with database.session() as session:
            integration = lifecycle.find(session, who.user_id, known, for_update=True)
            if integration is None:
                raise NotFound(f"no {known} integration")
            asked = reconnects.request(session, integration, frontend_url=frontend_url)
        return {
            "success": True,
            "data": {
                "reconnectUrl": asked["reconnectUrl"],
                "message": f"Redirect to this URL to reconnect your {known} integration",
            },
        }

    @app.get(
        "/api/v1/integrations/history",
        summary="What happened to the caller's integrations, newest first",
        description=(
            "Each event as `events --json` shows it, of the kinds that concern the user (not "
            "the operators' alerts and their deliveries)."
        ),
        responses=answers(schemas.HistoryAnswer, 400, 401, 404, 503),
    )
    def history(
        who: Who,
        provider: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        known = _provider(provider) if provider is not None else None
        with database.session() as session:
            found = events.history(
                session,
                user_id=who.user_id,
                provider=known,
                kinds=events.SHOWN_TO_USERS,
                limit=limit,
            )
            views = [events.view(event) for event in found]
        return JSONResponse({"success": True, "data": views})

    @app.get(
        "/api/v1/notifications",
        summary="The caller's notifications, newest first (as `notifications --json` shows them)",
        responses=answers(schemas.NotificationsAnswer, 400, 401, 503),
    )
    def notifications_of(
        who: Who,
        unread: bool = False,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> JSONResponse:
        with database.session() as session:
            found = inbox.inbox(session, user_id=who.user_id, unread=unread, limit=limit)
            views = [inbox.view(notification) for notification in found]
        return JSONResponse({"success": True, "data": views})

    @app.post(
        "/api/v1/notifications/{notification_id}/read",
        summary="Mark one of the caller's notifications read (as `notifications ack` does)",
        response_model=None,
        responses=answers(schemas.ReadAnswer, 400, 401, 404, 503),
    )
    def read(
        notification_id: Annotated[int, FastApiPath(ge=1, le=2**63 - 1)], who: Who
    ) -> dict[str, Any]:
        with database.session() as session:
            inbox.acknowledge(session, [notification_id], user_id=who.user_id)
        return {"success": True, "data": {"id": notification_id}}

    @app.get(
        "/api/v1/integrations/events",
        summary="The caller's status changes as they happen (Server-Sent Events)",
        description=(
            "Each change is an `event: status` with the event's id and JSON data (provider, "
            "status, previous_status, reason, changed_at, message). `Last-Event-ID` resumes "
            "after that event. A comment every few seconds keeps idle connections open; the "
            "stream ends with an `event: expired` when the token does."
        ),
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The stream."},
            401: ERRORS[401],
        },
    )
    async def stream(
        who: Who,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        after = _event_id(last_event_id)
        queue = feed.open(who.user_id)

        async def changes() -> AsyncIterator[bytes]:
            sent: set[int] = set()  # ids, not the highest: a late id (PostgreSQL) still goes
            try:
                if after is not None:
                    for change in await asyncio.to_thread(feed.history, who.user_id, after):
                        sent.add(change.id)
                        yield _sse(change)
                while True:
                    left = (who.expires_at - datetime.now(UTC)).total_seconds()
                    if left <= 0:
                        yield b'event: expired\ndata: {"error": "token expired"}\n\n'
                        return
                    try:
                        change = await asyncio.wait_for(queue.get(), min(keepalive, left))
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if change.id not in sent and (after is None or change.id > after):
                        sent.add(change.id)
                        yield _sse(change)
            finally:
                feed.close(who.user_id, queue)

        return StreamingResponse(
            changes(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.exception_handler(DiscoveryError)
    async def discovery_error(_: Request, error: DiscoveryError) -> JSONResponse:
        status_code, body = error_response(error)
        headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
        return JSONResponse(body, status_code=status_code, headers=headers)

    @app.exception_handler(_Unready)
    async def unready(_: Request, error: _Unready) -> JSONResponse:
        return JSONResponse({"success": False, "error": str(error)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}".strip(": ")
        return JSONResponse({"success": False, "error": message}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"success": False, "error": str(error.detail)},
            status_code=error.status_code,
            headers=error.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("api_error", path=request.url.path, error_type=type(error).__name__)
        return JSONResponse({"success": False, "error": "internal error"}, status_code=500)

    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _bad_requests_are_400(fastapi_openapi())
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(AccessLog, log=log)
    return app


def _bad_requests_are_400(schema: dict[str, Any]) -> None:
    """FastAPI documents its own 422 for a request that breaks a route's parameters; this API
    answers 400 in its error shape (``bad_request``): say so."""
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


class _Unready(Exception):
    """``/health``: the database is reachable but not at the schema this version needs."""


def _event_id(raw: str | None) -> int | None:
    """``Last-Event-ID``: the id of the last event a client saw (anything else: none)."""
    if raw is None or not raw.strip().isascii() or not raw.strip().isdigit():
        return None
    return int(raw.strip())


def _sse(change: Change) -> bytes:
    data = json.dumps(change.data, separators=(",", ":"))
    return f"id: {change.id}\nevent: status\ndata: {data}\n\n".encode()


def _provider(raw: str) -> str:
    """A provider the API knows, in any case; anything else is a 404, like a missing row."""
    try:
        return Provider(raw.lower()).value
    except ValueError:
        raise NotFound(f"unknown provider {raw!r}: amazon or stripe") from None
