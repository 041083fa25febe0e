"""``GET /api/v1/integrations/status[/{provider}]``: the caller's integrations, as ``status
--json`` shows them.

The API's hot path: one autocommit statement on the connections kept for reads (no
``BEGIN``/``COMMIT`` round trips), built once (``lifecycle.of_user``), answered as ready JSON.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations.
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from discoveryctl.errors import NotFound
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.vocabulary import api_view
from discoveryctl.server import schemas
from discoveryctl.server.deps import CurrentCaller, DatabaseDep, known_provider

router = APIRouter(prefix="/api/v1/integrations/status")


@router.get(
    "",
    summary="The caller's integrations",
    responses=schemas.answers(schemas.IntegrationsAnswer, 401, 503),
)
def statuses(who: CurrentCaller, database: DatabaseDep) -> JSONResponse:
    with database.reading() as connection:
        rows = lifecycle.of_user(connection, who.user_id)
    # JSON already: FastAPI's encoder would walk every value again (a third of a request)
    return JSONResponse({"success": True, "data": [api_view(*row) for row in rows]})


@router.get(
    "/{provider}",
    summary="The caller's integration with one provider",
    responses=schemas.answers(schemas.IntegrationAnswer, 401, 404, 503),
)
def status(provider: str, who: CurrentCaller, database: DatabaseDep) -> JSONResponse:
    known = known_provider(provider)
    with database.reading() as connection:
        rows = lifecycle.of_user(connection, who.user_id, known)
    if not rows:
        raise NotFound(f"no {known} integration")
    return JSONResponse({"success": True, "data": api_view(*rows[0])})
