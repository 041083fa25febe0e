"""``GET /health``: the service and its database, for load balancers (no token)."""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations.
from typing import Any

from fastapi import APIRouter

from discoveryctl.db.engine import HEAD_REVISION
from discoveryctl.server import schemas
from discoveryctl.server.deps import DatabaseDep
from discoveryctl.server.errors import Unready

router = APIRouter()


@router.get(
    "/health",
    summary="The service and its database",
    response_model=None,
    responses=schemas.answers(schemas.HealthAnswer, 503),
)
def health(database: DatabaseDep) -> dict[str, Any]:
    revision = database.current_revision()
    if revision != HEAD_REVISION:
        raise Unready(f"database schema at {revision or 'nothing'}, not {HEAD_REVISION}")
    return {"success": True, "data": {"status": "ok", "database": revision}}
