"""Everything a route depends on, in one place: the caller, the database, the status feed, the
server's settings and its log.

``create_app`` builds them once and ``install``s them on the app's state; the routes take them
as the dependencies below (``Annotated`` types, as FastAPI's full-stack template does), never
from a closure. Each is an ``async`` function of the request alone: it runs on the event loop,
with nothing below it, so none costs a route a hop to a thread.

The caller comes from a bearer token's ``sub`` (``discoveryctl.server.tokens``): no route reads
a user id from the client, so one user can never read or change another's rows.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations of these
# dependencies and of the ``Annotated`` types the routes take.
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPBearer

from discoveryctl.config import Config
from discoveryctl.db.engine import Database
from discoveryctl.errors import NotFound
from discoveryctl.integrations.vocabulary import Provider
from discoveryctl.server import tokens
from discoveryctl.server.status_feed import StatusFeed


@dataclass(frozen=True)
class Settings:
    """The server's settings, read once when the app is built (a server without a JWT_SECRET
    refuses to start, not every request)."""

    config: Config
    jwt_secret: str
    jwt_audience: str | None
    jwt_issuer: str | None
    frontend_url: str
    secure_cookies: bool
    """Whether cookies go over HTTPS only: when AMAZON_REDIRECT_URI, where Amazon sends the
    browser back, is HTTPS."""
    keepalive: float
    """Seconds between keep-alive comments on an idle event stream."""


def install(
    app: FastAPI, settings: Settings, database: Database, feed: StatusFeed, log: Any
) -> None:
    """Put what the dependencies below hand out on ``app``'s state."""
    app.state.settings = settings
    app.state.database = database
    app.state.feed = feed
    app.state.log = log


async def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def database_of(request: Request) -> Database:
    """The database: ``reading()`` for one autocommit statement on the connections kept for
    reads, ``session()`` for a transaction."""
    database: Database = request.app.state.database
    return database


async def feed_of(request: Request) -> StatusFeed:
    feed: StatusFeed = request.app.state.feed
    return feed


async def log_of(request: Request) -> Any:
    return request.app.state.log


class BearerToken(HTTPBearer):
    """The caller, from the request's bearer token (``tokens.caller_of``). An
    ``HTTPBearer``, so OpenAPI names the scheme on every route that needs it; one dependency
    with nothing below it, checked on the event loop (no thread hop)."""

    async def __call__(self, request: Request) -> tokens.Caller:  # type: ignore[override]
        settings: Settings = request.app.state.settings
        return tokens.caller_of(
            settings.jwt_secret,
            request.headers.get("authorization"),  # pragma: no mutate  (any case: the same header)
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )


bearer_token = BearerToken(
    scheme_name="HTTPBearer",
    description="An HS256 JWT whose `sub` is the user.",
    auto_error=False,  # unused: ``__call__`` answers every request itself
)

CurrentCaller = Annotated[tokens.Caller, Depends(bearer_token)]
SettingsDep = Annotated[Settings, Depends(settings_of)]
DatabaseDep = Annotated[Database, Depends(database_of)]
FeedDep = Annotated[StatusFeed, Depends(feed_of)]
LogDep = Annotated[Any, Depends(log_of)]


def known_provider(raw: str) -> str:
    """A provider the API knows, in any case; anything else is a 404, like a missing row."""
    try:
        return Provider(raw.lower()).value
    except ValueError:
        raise NotFound(f"unknown provider {raw!r}: amazon or stripe") from None
