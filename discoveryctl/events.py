"""The audit history: an append-only record of every attempt, outcome and transition."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.models import Event, table_of, utcnow
from discoveryctl.redaction import redact

SUCCESS = "success"
FAILURE = "failure"
INFO = "info"


def record(
    session: Session,
    kind: str,
    *,
    outcome: str = INFO,
    user_id: str | None = None,
    provider: str | None = None,
    error_type: str | None = None,
    **detail: Any,
) -> Event:
    """Append one event; ``detail`` is redacted before it is stored."""
    event = Event(
        **entry(
            kind,
            outcome=outcome,
            user_id=user_id,
            provider=provider,
            error_type=error_type,
            **detail,
        )
    )
    session.add(event)
    return event


def entry(
    kind: str,
    *,
    outcome: str = INFO,
    user_id: str | None = None,
    provider: str | None = None,
    error_type: str | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """One event as a row for ``record_all`` (the same row ``record`` stores), timed now."""
    return {
        "occurred_at": utcnow(),
        "kind": kind,
        "outcome": outcome,
        "user_id": user_id,
        "provider": provider,
        "error_type": error_type,
        "detail": redact(detail),
    }


def add_all(session: Session, entries: Sequence[dict[str, Any]]) -> None:
    """Append many events (rows from ``entry``) with the session's next flush, in order with
    the others it adds (``record``): written together, not one statement each."""
    session.add_all([Event(**row) for row in entries])


def record_all(session: Session, entries: Sequence[dict[str, Any]]) -> None:
    """Append many events (rows from ``entry``) with one statement."""
    if entries:
        session.execute(sa.insert(table_of(Event)), list(entries))


def history(
    session: Session,
    *,
    user_id: str | None = None,
    provider: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> Sequence[Event]:
    """The newest events first."""
    query = sa.select(Event).order_by(Event.occurred_at.desc(), Event.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(Event.user_id == user_id)
    if provider is not None:
        query = query.where(Event.provider == provider)
    if since is not None:
        query = query.where(Event.occurred_at >= since)
    return session.scalars(query).all()
