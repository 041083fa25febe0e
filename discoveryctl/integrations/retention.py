"""Keeping the history from growing without end: events older than a window, OAuth consent
states past their expiry, and admin alert deliveries from before the window, deleted in
short batches so no table stays locked long."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from discoveryctl.db.engine import SessionScope, database_now
from discoveryctl.db.models import AlertDelivery, Event, OAuthState, table_of
from discoveryctl.integrations import events

PRUNE_BATCH = 5_000
"""Events deleted per transaction: each holds the write lock for a moment only."""

MANY_EVENTS = 1_000_000
"""Past this many events, `doctor` suggests pruning."""


@dataclass(frozen=True)
class Pruned:
    events: int
    oauth_states: int
    alert_deliveries: int
    before: datetime  # events older than this went


def prune(
    session_scope: SessionScope,
    older_than: timedelta,
    *,
    batch: int = PRUNE_BATCH,
    progress: Callable[[int], None] | None = None,
) -> Pruned:
    """Delete the events older than ``older_than`` (on the database's clock), a batch per
    transaction, oldest first, and every OAuth state past its expiry; record what went."""
    with session_scope() as session:
        now = database_now(session)
    before = now - older_than
    table = table_of(Event)
    oldest = (
        sa.select(table.c.id)
        .where(table.c.occurred_at < before)
        .order_by(table.c.occurred_at)
        .limit(batch)
    )
    removed = 0
    while True:
        with session_scope() as session:
            done = session.execute(sa.delete(table).where(table.c.id.in_(oldest.scalar_subquery())))
        count = cast("sa.CursorResult[Any]", done).rowcount
        removed += count
        if progress is not None:
            progress(removed)
        if count < batch:
            break
    states = table_of(OAuthState)
    with session_scope() as session:
        done = session.execute(sa.delete(states).where(states.c.expires_at < now))
        expired = cast("sa.CursorResult[Any]", done).rowcount
        deliveries = table_of(AlertDelivery)
        done = session.execute(  # the outbox's finished rows: a handful a day
            sa.delete(deliveries).where(
                sa.or_(
                    deliveries.c.finished_at < before,
                    # never posted (no webhook then): a day on, it never will be
                    sa.and_(deliveries.c.outcome.is_(None), deliveries.c.created_at < before),
                )
            )
        )
        delivered = cast("sa.CursorResult[Any]", done).rowcount
        events.record(
            session,
            events.Kind.events_pruned,
            outcome=events.SUCCESS,
            events=removed,
            oauth_states=expired,
            alert_deliveries=delivered,
            before=before.isoformat(),
        )
    return Pruned(removed, expired, delivered, before)


def size(session: sa.orm.Session) -> tuple[int, datetime | None]:
    """How many events there are, and when the oldest happened."""
    table = table_of(Event)
    count, oldest = session.execute(
        sa.select(sa.func.count(), sa.func.min(table.c.occurred_at))
    ).one()
    return int(count), oldest
