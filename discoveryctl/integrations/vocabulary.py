"""What an integration's status means, in the words the seller sees.

No database or HTTP here: the CLI imports this module at start-up for its choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote


class Provider(StrEnum):
    amazon = "amazon"
    stripe = "stripe"


class Status(StrEnum):
    active = "active"
    revoked = "revoked"
    expired = "expired"
    pending = "pending"


class Region(StrEnum):
    na = "na"
    eu = "eu"
    fe = "fe"


# Metadata keys kept on integration_status.metadata.
LAST_SYNCED_AT = "last_synced_at"
CONSECUTIVE_FAILURES = "consecutive_failures"
LAST_ERROR = "last_error"
RECONNECT_ATTEMPTS = "reconnect_attempts"


def message_for(provider: str, status: str, synced: bool = True) -> str:
    """The user-facing message for a status (docs/behaviour.md §4); an active integration
    never synced (imported, not yet refreshed or checked) is not yet known to work."""
    if status == Status.active:
        if not synced:
            return f"Your {provider} integration has not been checked yet"
        return f"Your {provider} integration is working properly"
    if status == Status.revoked:
        return (
            f"Your {provider} integration has been revoked. "
            "Please reconnect your account to restore access."
        )
    if status == Status.expired:
        return (
            f"Your {provider} integration has expired. "
            "Please reconnect your account to restore access."
        )
    return f"Your {provider} integration is being set up"


NEEDS_RECONNECT = (Status.revoked, Status.expired)
"""The statuses in which the seller must connect again: the authorization is gone."""


def needs_reconnect(status: str) -> bool:
    return status in NEEDS_RECONNECT


def consecutive_failures(meta: Mapping[str, Any]) -> int:
    value = meta.get(CONSECUTIVE_FAILURES)
    return value if isinstance(value, int) else 0


def is_unhealthy(status: str, meta: Mapping[str, Any]) -> bool:
    """The one "unhealthy" rule (``lifecycle.unhealthy_clause`` says it in SQL): the seller must
    reconnect, or the integration is failing transiently right now."""
    return needs_reconnect(status) or consecutive_failures(meta) > 0


def reconnect_url(frontend_url: str, provider: str, user_id: str) -> str:
    return (
        f"{frontend_url.rstrip('/')}/integrations/{provider}/connect"
        f"?reconnect=true&userId={quote(user_id, safe='')}"  # pragma: no mutate  (*)
        # (*) safe="XXXX" escapes the same (letters are safe anyway); the tests prove "/" escaped
    )


def isoformat(moment: datetime) -> str:
    """UTC ISO 8601 with a ``Z``, as the API shows times."""
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def api_view(
    id: str,
    user_id: str,
    provider: str,
    status: str,
    updated_at: datetime,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """One integration as the API shows it in ``data`` (docs/behaviour.md §4)."""
    return {
        "id": id,
        "user_id": user_id,
        "provider": provider,
        "status": status,
        "updated_at": isoformat(updated_at),
        "metadata": dict(meta),
        "lastSyncedAt": meta.get(LAST_SYNCED_AT),
        "message": message_for(provider, status, synced=meta.get(LAST_SYNCED_AT) is not None),
    }
