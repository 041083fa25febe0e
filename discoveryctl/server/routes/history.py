"""``GET /api/v1/integrations/history``: what happened to the caller's integrations."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations.
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from discoveryctl.integrations import events
from discoveryctl.server import schemas
from discoveryctl.server.deps import CurrentCaller, DatabaseDep, known_provider

router = APIRouter(prefix="/api/v1/integrations/history")


@router.get(
    "",
    summary="What happened to the caller's integrations, newest first",
    description=(
        "Each event as `events --json` shows it, of the kinds that concern the user (not "
        "the operators' alerts and their deliveries)."
    ),
    responses=schemas.answers(schemas.HistoryAnswer, 400, 401, 404, 503),
)
def history(
    who: CurrentCaller,
    database: DatabaseDep,
    provider: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    known = known_provider(provider) if provider is not None else None
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
