"""The admin alerts' outbox (``alert_deliveries``): each admin notification's new state gets a
row in the transaction that opens or resolves it, so no crash falls between the two;
``discoveryctl.alerts.delivery`` posts the rows to the admin webhook.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.engine import database_now
from discoveryctl.db.models import AlertDelivery

OPEN = "open"
RESOLVED = "resolved"

DELIVERED = "delivered"
REFUSED = "refused"  # the receiver answered with a final 4xx (or a redirect)
EXPIRED = "expired"  # still undelivered a day after it was raised


_queued_here = False  # a flag, not the ids: a long-running server never grows it


def enqueue(session: Session, notification_id: int, state: str) -> None:
    """Put an admin notification's new state in the outbox, in the caller's transaction.
    Timed by the database's clock, which the drains compare it with."""
    now = database_now(session)
    delivery = AlertDelivery(
        delivery_id=str(uuid.uuid4()),
        notification_id=notification_id,
        state=state,
        created_at=now,
        next_attempt_at=now,
        attempts=0,
    )
    session.add(delivery)
    global _queued_here
    _queued_here = True


def take_queued_here() -> bool:
    """Whether this process put anything in the outbox since it last asked: the commands
    that did drain it as they end, the others leave it alone."""
    global _queued_here
    queued, _queued_here = _queued_here, False
    return queued


def backlog(session: Session) -> tuple[int, str | None, int]:
    """Deliveries waiting, the last error among them, and those given up in the last day."""
    now = database_now(session)
    pending = AlertDelivery.outcome.is_(None)
    count = session.scalar(sa.select(sa.func.count()).where(pending))
    last_error = session.scalar(
        sa.select(AlertDelivery.last_error)
        .where(pending, AlertDelivery.last_error.is_not(None))
        .order_by(AlertDelivery.next_attempt_at.desc())
        .limit(1)
    )
    given_up = session.scalar(
        sa.select(sa.func.count()).where(
            AlertDelivery.outcome.in_([REFUSED, EXPIRED]),
            AlertDelivery.finished_at >= now - timedelta(days=1),
        )
    )
    return int(count or 0), last_error, int(given_up or 0)
