"""The API's answers as OpenAPI describes them, field for field.

The routes answer with the core's views (``api_view``, ``events.view``, ``notifications.view``)
as ready JSON; these models only document them, closed (no field beyond these), so a schema
check of real answers (``tests/test_api_schema.py``) catches a view that drifts from its
documentation. ``answers`` puts them, and the error answers, on a route.
"""

# No ``from __future__ import annotations``: pydantic reads the annotations.
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from discoveryctl.integrations.vocabulary import Provider, Region, Status


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorAnswer(_Closed):
    success: Literal[False]
    error: str


class Integration(_Closed):
    """One integration, as `status --json` shows it."""

    id: str
    user_id: str
    provider: Provider
    status: Status
    updated_at: str
    metadata: dict[str, Any]
    lastSyncedAt: str | None
    message: str


class IntegrationAnswer(_Closed):
    success: Literal[True]
    data: Integration


class IntegrationsAnswer(_Closed):
    success: Literal[True]
    data: list[Integration]


class Reconnect(_Closed):
    reconnectUrl: str
    message: str


class ReconnectAnswer(_Closed):
    success: Literal[True]
    data: Reconnect


class Health(_Closed):
    status: Literal["ok"]
    database: str


class HealthAnswer(_Closed):
    success: Literal[True]
    data: Health


class Event(_Closed):
    """One entry of the audit history, as `events --json` shows it."""

    id: int
    occurred_at: str
    user_id: str | None
    provider: str | None
    kind: str
    outcome: Literal["success", "failure", "info"]
    error_type: str | None
    detail: dict[str, Any]


class HistoryAnswer(_Closed):
    success: Literal[True]
    data: list[Event]


class Notification(_Closed):
    """One notification, as `notifications --json` shows it."""

    id: int
    audience: Literal["user", "admin"]
    user_id: str | None
    provider: str | None
    kind: str
    title: str
    message: str
    detail: dict[str, Any]
    created_at: str
    read_at: str | None
    resolved_at: str | None


class NotificationsAnswer(_Closed):
    success: Literal[True]
    data: list[Notification]


class Read(_Closed):
    id: int


class ReadAnswer(_Closed):
    success: Literal[True]
    data: Read


class Consent(_Closed):
    consentUrl: str
    expiresAt: str


class ConsentAnswer(_Closed):
    success: Literal[True]
    data: Consent


class Continue(_Closed):
    continueUrl: str
    expiresAt: str


class ContinueAnswer(_Closed):
    success: Literal[True]
    data: Continue


class AmazonStarted(_Closed):
    """A consent started at Amazon, as its login-URI request carried it (a request body)."""

    amazon_callback_uri: str = Field(max_length=2048)
    amazon_state: str = Field(max_length=2048)
    selling_partner_id: str = Field(max_length=64)
    version: Literal["beta"] | None = None
    marketplace: str | None = Field(default=None, max_length=2)
    region: Region | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": meaning, "model": ErrorAnswer}
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
