"""``/api/v1/notifications``: the caller's notifications, and marking one read."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations.
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from discoveryctl.integrations import notifications as inbox
from discoveryctl.server import schemas
from discoveryctl.server.deps import CurrentCaller, DatabaseDep

router = APIRouter(prefix="/api/v1/notifications")


@router.get(
    "",
    summary="The caller's notifications, newest first (as `notifications --json` shows them)",
    responses=schemas.answers(schemas.NotificationsAnswer, 400, 401, 503),
)
def notifications_of(
    who: CurrentCaller,
    database: DatabaseDep,
    unread: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> JSONResponse:
    with database.session() as session:
        found = inbox.inbox(session, user_id=who.user_id, unread=unread, limit=limit)
        views = [inbox.view(notification) for notification in found]
    return JSONResponse({"success": True, "data": views})


@router.post(
    "/{notification_id}/read",
    summary="Mark one of the caller's notifications read (as `notifications ack` does)",
    response_model=None,
    responses=schemas.answers(schemas.ReadAnswer, 400, 401, 404, 503),
)
def read(
    notification_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    who: CurrentCaller,
    database: DatabaseDep,
) -> dict[str, Any]:
    with database.session() as session:
        inbox.acknowledge(session, [notification_id], user_id=who.user_id)
    return {"success": True, "data": {"id": notification_id}}
