"""``PATCH /api/v1/integrations/reconnect/{provider}``: a reconnect URL for one of the caller's
integrations, the attempt counted as ``reconnect`` counts it."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations.
from typing import Any

from fastapi import APIRouter

from discoveryctl.errors import NotFound
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations import reconnect as reconnects
from discoveryctl.server import schemas
from discoveryctl.server.deps import CurrentCaller, DatabaseDep, SettingsDep, known_provider

router = APIRouter(prefix="/api/v1/integrations/reconnect")


@router.patch(
    "/{provider}",
    summary="A reconnect URL for one of the caller's integrations (the attempt is counted)",
    response_model=None,
    responses=schemas.answers(schemas.ReconnectAnswer, 401, 404, 503),
)
def reconnect(
    provider: str, who: CurrentCaller, database: DatabaseDep, settings: SettingsDep
) -> dict[str, Any]:
    known = known_provider(provider)
    with database.session() as session:
        integration = lifecycle.find(session, who.user_id, known, for_update=True)
        if integration is None:
            raise NotFound(f"no {known} integration")
        asked = reconnects.request(session, integration, frontend_url=settings.frontend_url)
    return {
        "success": True,
        "data": {
            "reconnectUrl": asked["reconnectUrl"],
            "message": f"Redirect to this URL to reconnect your {known} integration",
        },
    }
