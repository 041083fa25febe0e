"""Integration rows and their transitions: every change leaves an event, and the transitions
that matter to a seller or an admin leave a notification (docs/behaviour.md §4, §5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.leases import lock_for_update
from discoveryctl.db.models import IntegrationStatus, new_id, table_of, utcnow
from discoveryctl.integrations import events, notifications
from discoveryctl.integrations.vocabulary import (
    CONSECUTIVE_FAILURES,
    LAST_ERROR,
    LAST_SYNCED_AT,
    NEEDS_RECONNECT,
    Status,
    consecutive_failures,
    isoformat,
    message_for,
    needs_reconnect,
    reconnect_url,
)

CONNECTION_LOST = "connection_lost"
REPEATED_FAILURES = "repeated_failures"
RECONNECT_REQUESTED = events.Kind.reconnect_requested
DEFAULT_FAILURE_THRESHOLD = 3


def find(
    session: Session, user_id: str, provider: str, *, for_update: bool = False
) -> IntegrationStatus | None:
    """The integration; ``for_update`` locks it until the transaction ends, so that a
    read-modify-write of its status or metadata never loses another writer's change: the row
    on PostgreSQL, the database (its write lock, taken before reading) on SQLite."""
    query = sa.select(IntegrationStatus).where(
        IntegrationStatus.user_id == user_id, IntegrationStatus.provider == provider
    )
    if for_update:
        query = lock_for_update(session, query)
    return session.scalars(query).first()


def find_all(
    session: Session, user_ids: Sequence[str], provider: str, *, for_update: bool = False
) -> dict[str, IntegrationStatus]:
    """``find`` for many users in one query, by user id (users without one are left out)."""
    query = sa.select(IntegrationStatus).where(
        IntegrationStatus.user_id.in_(sorted(set(user_ids))),
        IntegrationStatus.provider == provider,
    )
    if for_update:
        query = lock_for_update(session, query)
    return {integration.user_id: integration for integration in session.scalars(query)}


Query = TypeVar("Query", bound=sa.Select[*tuple[Any, ...]])


@dataclass(frozen=True)
class Filters:
    provider: str | None = None
    user_id: str | None = None
    status: str | None = None

    def apply(self, query: Query) -> Query:
        table = table_of(IntegrationStatus)
        if self.provider is not None:
            query = query.where(table.c.provider == self.provider)
        if self.user_id is not None:
            query = query.where(table.c.user_id == self.user_id)
        if self.status is not None:
            query = query.where(table.c.status == self.status)
        return query


def needs_reconnect_clause() -> sa.ColumnElement[bool]:
    """SQL for ``vocabulary.needs_reconnect``: the authorization is gone."""
    return table_of(IntegrationStatus).c.status.in_(NEEDS_RECONNECT)


def unhealthy_clause() -> sa.ColumnElement[bool]:
    """SQL for ``vocabulary.is_unhealthy``: the seller must reconnect, or it is failing
    right now."""
    failures = table_of(IntegrationStatus).c.metadata[CONSECUTIVE_FAILURES].as_integer()
    return sa.or_(needs_reconnect_clause(), sa.func.coalesce(failures, 0) > 0)


def listing(
    session: Session,
    filters: Filters = Filters(),
    *,
    unhealthy_first: bool = False,
    limit: int | None = None,
) -> Sequence[sa.Row[*tuple[Any, ...]]]:
    """Plain rows (no ORM objects: fast for tens of thousands), ordered by user."""
    table = table_of(IntegrationStatus)
    query = _rows()
    order: list[sa.ColumnElement[Any]] = [table.c.user_id, table.c.provider]
    if unhealthy_first:
        order.insert(0, unhealthy_clause().desc())  # true before false
    query = filters.apply(query.order_by(*order))
    if limit is not None:
        query = query.limit(limit)
    return session.execute(query).all()


def _rows() -> sa.Select[Any]:
    """An integration's fields, as ``health.api_view`` takes them."""
    table = table_of(IntegrationStatus)
    return sa.select(
        table.c.id,
        table.c.user_id,
        table.c.provider,
        table.c.status,
        table.c.updated_at,
        table.c.metadata,
    )


def _of_user(provider: bool) -> sa.Select[Any]:
    table = table_of(IntegrationStatus)
    query = _rows().where(table.c.user_id == sa.bindparam("user_id"))
    if provider:
        query = query.where(table.c.provider == sa.bindparam("provider"))
    # no test can tell it is there: the unique index on (user_id, provider) reads in this order
    return query.order_by(table.c.provider)  # pragma: no mutate


_OF_USER = {False: _of_user(provider=False), True: _of_user(provider=True)}
"""Built once: building a statement costs more than running this one (the API's hot path)."""


def of_user(
    connection: sa.Connection | Session, user_id: str, provider: str | None = None
) -> Sequence[sa.Row[*tuple[Any, ...]]]:
    """One user's integrations (with ``provider``: that one), as ``listing`` gives them."""
    if provider is None:
        return connection.execute(_OF_USER[False], {"user_id": user_id}).all()
    return connection.execute(_OF_USER[True], {"user_id": user_id, "provider": provider}).all()


def counts(session: Session, filters: Filters = Filters()) -> tuple[dict[str, int], int]:
    """How many integrations are in each status, and how many need attention."""
    table = table_of(IntegrationStatus)
    query = filters.apply(
        sa.select(
            table.c.status,
            sa.func.count(),
            sa.func.count().filter(unhealthy_clause()),
        ).group_by(table.c.status)
    )
    by_status: dict[str, int] = {}
    unhealthy = 0
    for status, count, failing in session.execute(query):
        by_status[status] = int(count)
        unhealthy += int(failing)
    return by_status, unhealthy


def create(
    session: Session, user_id: str, provider: str, status: Status, **meta: Any
) -> IntegrationStatus:
    now = utcnow()
    integration = IntegrationStatus(
        id=new_id(),
        user_id=user_id,
        provider=provider,
        status=status,
        created_at=now,
        updated_at=now,
        meta=dict(meta),
    )
    session.add(integration)
    events.record(
        session,
        events.Kind.integration_created,
        user_id=user_id,
        provider=provider,
        status=str(status),
    )
    return integration


def update_meta(integration: IntegrationStatus, **changes: Any) -> None:
    """Replace metadata keys (a new dict, so the JSON column sees the change)."""
    merged = {**integration.meta, **changes}
    integration.meta = {k: v for k, v in merged.items() if v is not None}
    integration.updated_at = utcnow()


def change_status(
    session: Session,
    integration: IntegrationStatus,
    status: Status,
    *,
    reason: str,
    frontend_url: str,
    error_type: str | None = None,
) -> bool:
    """Move an integration to ``status``; returns False when it was already there.

    Losing the connection notifies the seller with the reconnect URL; coming back resolves
    that notification and any repeated-failure alert.
    """
    previous = integration.status
    if previous == status:
        return False
    integration.status = status
    integration.updated_at = utcnow()
    user_id, provider = integration.user_id, integration.provider
    events.record(
        session,
        events.Kind.status_changed,
        outcome=events.FAILURE if needs_reconnect(status) else events.INFO,
        user_id=user_id,
        provider=provider,
        error_type=error_type,
        **{"from": previous, "to": str(status), "reason": reason},
    )
    if needs_reconnect(status):
        url = reconnect_url(frontend_url, provider, user_id)
        notifications.notify(
            session,
            audience=notifications.USER,
            kind=CONNECTION_LOST,
            title=f"{provider.capitalize()} connection lost",
            message=message_for(provider, status),
            user_id=user_id,
            provider=provider,
            detail={"reconnectUrl": url, "status": str(status)},
        )
    elif status == Status.active:
        update_meta(integration, **{CONSECUTIVE_FAILURES: None, LAST_ERROR: None})
        _resolve_alerts(session, user_id, provider)
    return True


def record_success(session: Session, integration: IntegrationStatus, **detail: Any) -> None:
    """A provider call for this integration worked: it is in sync, failures are forgotten."""
    failures = consecutive_failures(integration.meta)
    update_meta(
        integration,
        **{LAST_SYNCED_AT: isoformat(utcnow()), CONSECUTIVE_FAILURES: None, LAST_ERROR: None},
    )
    if failures:
        _resolve_alerts(session, integration.user_id, integration.provider)


def record_transient_failure(
    session: Session,
    integration: IntegrationStatus,
    *,
    error_type: str,
    message: str,
    threshold: int = DEFAULT_FAILURE_THRESHOLD,
) -> int:
    """Count a transient failure without touching the status; alert admins at ``threshold``."""
    failures = consecutive_failures(integration.meta) + 1
    update_meta(
        integration,
        **{
            CONSECUTIVE_FAILURES: failures,
            LAST_ERROR: {"type": error_type, "message": message, "at": isoformat(utcnow())},
        },
    )
    if failures >= threshold:
        notifications.notify(
            session,
            audience=notifications.ADMIN,
            kind=REPEATED_FAILURES,
            title=f"{integration.provider.capitalize()} failing repeatedly",
            message=(
                f"{failures} consecutive {error_type} failures for user "
                f"{integration.user_id}: {message}"
            ),
            user_id=integration.user_id,
            provider=integration.provider,
            detail={"consecutive_failures": failures, "error_type": error_type},
        )
    return failures


def _resolve_alerts(session: Session, user_id: str, provider: str) -> None:
    for kind in (CONNECTION_LOST, REPEATED_FAILURES, RECONNECT_REQUESTED):
        notifications.resolve(session, notifications.dedupe_key(kind, provider, user_id))
