"""``GET /api/v1/integrations/events``: the caller's status changes as they happen, as
Server-Sent Events (fed by ``server.status_feed``), resumed after ``Last-Event-ID``, ended when
the caller's token expires."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations.
import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from discoveryctl.server.deps import CurrentCaller, FeedDep, SettingsDep
from discoveryctl.server.schemas import ERRORS
from discoveryctl.server.status_feed import Change

router = APIRouter(prefix="/api/v1/integrations/events")


@router.get(
    "",
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
    who: CurrentCaller,
    feed: FeedDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    after = _event_id(last_event_id)
    keepalive = settings.keepalive
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


def _event_id(raw: str | None) -> int | None:
    """``Last-Event-ID``: the id of the last event a client saw (anything else: none)."""
    if raw is None or not raw.strip().isascii() or not raw.strip().isdigit():
        return None
    return int(raw.strip())


def _sse(change: Change) -> bytes:
    data = json.dumps(change.data, separators=(",", ":"))
    return f"id: {change.id}\nevent: status\ndata: {data}\n\n".encode()
