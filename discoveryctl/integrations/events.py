"""The audit history: an append-only record of every attempt, outcome and transition."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.models import Event, table_of, utcnow
from discoveryctl.integrations.vocabulary import isoformat, message_for
from discoveryctl.support.redaction import redact

SUCCESS = "success"
FAILURE = "failure"
INFO = "info"


class Kind(StrEnum):
    """Every kind of event. Rates are counted from these names, so a kind is never spelled
    out by hand: a typo would read as a 0 % rate, not as an error."""

    # integrations
    integration_created = "integration_created"
    status_changed = "status_changed"
    credentials_imported = "credentials_imported"
    seller_switched = "seller_switched"
    reconnect_requested = "reconnect_requested"
    notification_created = "notification_created"
    alert_delivered = "alert_delivered"
    alert_delivery_failed = "alert_delivery_failed"
    # Amazon: consent, refreshes, checks
    oauth_consent_started = "oauth_consent_started"
    oauth_callback_succeeded = "oauth_callback_succeeded"
    oauth_callback_failed = "oauth_callback_failed"
    token_refreshed = "token_refreshed"
    token_refresh_failed = "token_refresh_failed"
    token_refresh_retried = "token_refresh_retried"
    seller_checked = "seller_checked"
    seller_check_failed = "seller_check_failed"
    # Stripe
    stripe_customer_pending = "stripe_customer_pending"
    stripe_customer_attempt = "stripe_customer_attempt"
    stripe_customer_created = "stripe_customer_created"
    stripe_customer_adopted = "stripe_customer_adopted"
    stripe_customer_failed = "stripe_customer_failed"
    stripe_customer_refused = "stripe_customer_refused"
    stripe_create_in_flight = "stripe_create_in_flight"
    stripe_lookup_undecided = "stripe_lookup_undecided"
    stripe_idempotency_key_replaced = "stripe_idempotency_key_replaced"
    stripe_duplicate_customer = "stripe_duplicate_customer"
    # housekeeping
    keys_rotated = "keys_rotated"
    events_pruned = "events_pruned"


SHOWN_TO_USERS: frozenset[str] = frozenset(
    {
        Kind.integration_created,
        Kind.status_changed,
        Kind.credentials_imported,
        Kind.seller_switched,
        Kind.reconnect_requested,
        Kind.oauth_consent_started,
        Kind.oauth_callback_succeeded,
        Kind.oauth_callback_failed,
        Kind.token_refreshed,
        Kind.token_refresh_failed,
        Kind.token_refresh_retried,
        Kind.seller_checked,
        Kind.seller_check_failed,
        Kind.stripe_customer_pending,
        Kind.stripe_customer_attempt,
        Kind.stripe_customer_created,
        Kind.stripe_customer_adopted,
        Kind.stripe_customer_failed,
        Kind.stripe_customer_refused,
    }
)
"""The kinds a user's own history shows them (the API's history route): what happened to
their integrations. Not the operators' side of it: notifications raised (an admin alert names
its audience and key; users read theirs on the notifications route), alert deliveries, a
replaced idempotency key, another caller's create in flight, an undecided lookup, a duplicate
Stripe customer."""


OUTCOMES: dict[Kind, frozenset[str]] = {
    **dict.fromkeys(Kind, frozenset({INFO})),
    Kind.status_changed: frozenset({INFO, FAILURE}),  # failure: revoked or expired
    **dict.fromkeys(
        (
            Kind.credentials_imported,
            Kind.oauth_callback_succeeded,
            Kind.token_refreshed,
            Kind.seller_checked,
            Kind.stripe_customer_created,
            Kind.stripe_customer_adopted,
            Kind.keys_rotated,
            Kind.events_pruned,
            Kind.alert_delivered,
        ),
        frozenset({SUCCESS}),
    ),
    **dict.fromkeys(
        (
            Kind.seller_switched,
            Kind.oauth_callback_failed,
            Kind.token_refresh_failed,
            Kind.token_refresh_retried,
            Kind.seller_check_failed,
            Kind.stripe_customer_attempt,
            Kind.stripe_customer_failed,
            Kind.stripe_customer_refused,
            Kind.stripe_duplicate_customer,
            Kind.alert_delivery_failed,
        ),
        frozenset({FAILURE}),
    ),
}
"""The outcomes each kind is recorded with: an attempt is a success or a failure, never
"info", so every rate counts it."""


def record(
    session: Session,
    kind: Kind,
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
    kind: Kind,
    *,
    outcome: str = INFO,
    user_id: str | None = None,
    provider: str | None = None,
    error_type: str | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """One event as a row for ``record_all`` (the same row ``record`` stores), timed now."""
    if outcome not in OUTCOMES[kind]:
        raise ValueError(f"a {kind} event is never recorded as {outcome!r}")
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
    user_id: str,
    provider: str | None = None,
    since: datetime | None = None,
    kinds: Collection[str] | None = None,
    limit: int = 1000,
) -> Sequence[Event]:
    """One user's events, newest first (with ``kinds``: of those kinds alone): the API's history
    route, ``events --user``."""
    query = _newest_first(provider, since, limit).where(Event.user_id == user_id)
    if kinds is not None:
        query = query.where(Event.kind.in_(sorted(kinds)))
    return session.scalars(query).all()


def all_history(
    session: Session,
    *,
    provider: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> Sequence[Event]:
    """Every user's events and the operators' own, newest first: the operators' view
    (``events``)."""
    return session.scalars(_newest_first(provider, since, limit)).all()


def _newest_first(provider: str | None, since: datetime | None, limit: int) -> sa.Select[Event]:
    query = sa.select(Event).order_by(Event.occurred_at.desc(), Event.id.desc()).limit(limit)
    if provider is not None:
        query = query.where(Event.provider == provider)
    if since is not None:
        query = query.where(Event.occurred_at >= since)
    return query


def view(event: Event) -> dict[str, Any]:
    """An event as the operator and the API see it (``events --json``, the history route)."""
    return {
        "id": event.id,
        "occurred_at": isoformat(event.occurred_at),
        "user_id": event.user_id,
        "provider": event.provider,
        "kind": event.kind,
        "outcome": event.outcome,
        "error_type": event.error_type,
        "detail": event.detail,
    }


def status_change_view(event: sa.Row[Any]) -> dict[str, Any]:
    """A ``status_changed`` event, a row as ``newer_than`` gives it, as the API's live stream
    sends it."""
    detail = event.detail or {}
    provider, status = event.provider or "", str(detail.get("to", ""))
    return {
        "provider": provider,
        "status": status,
        "previous_status": detail.get("from"),
        "reason": detail.get("reason"),
        "changed_at": isoformat(event.occurred_at),
        "message": message_for(provider, status),
    }


_EVENTS = table_of(Event)
_ROWS: sa.Select[Any] = sa.select(
    _EVENTS.c.id,
    _EVENTS.c.user_id,
    _EVENTS.c.provider,
    _EVENTS.c.kind,
    _EVENTS.c.occurred_at,
    _EVENTS.c.detail,
)
_NEWER = (
    _ROWS.where(_EVENTS.c.id > sa.bindparam("after"))
    .order_by(_EVENTS.c.id)
    .limit(sa.bindparam("limit"))
)
_WITH_IDS = _ROWS.where(_EVENTS.c.id.in_(sa.bindparam("ids", expanding=True))).order_by(
    _EVENTS.c.id
)
_CHANGES_OF = (
    _ROWS.where(
        _EVENTS.c.user_id == sa.bindparam("user_id"),
        _EVENTS.c.id > sa.bindparam("after"),
        _EVENTS.c.kind == Kind.status_changed,
    )
    .order_by(_EVENTS.c.id)
    .limit(sa.bindparam("limit"))
)
_LAST_ID = sa.select(sa.func.max(_EVENTS.c.id))
"""Built once: the live stream's poller runs them twice a second, and building costs more than
running them."""


def status_changes_of(
    connection: sa.Connection | Session, user_id: str, *, after: int, limit: int = 1000
) -> Sequence[sa.Row[Any]]:
    """One user's status changes recorded after event id ``after``, oldest first, as
    ``newer_than`` gives them: what a stream resumed from ``Last-Event-ID`` missed."""
    return connection.execute(
        _CHANGES_OF, {"user_id": user_id, "after": after, "limit": limit}
    ).all()


def newer_than(
    connection: sa.Connection | Session, after: int, *, limit: int = 5000
) -> Sequence[sa.Row[Any]]:
    """The events after id ``after``, oldest first, by the primary key (only what is new), as
    rows of id, user_id, provider, kind, occurred_at and detail."""
    return connection.execute(_NEWER, {"after": after, "limit": limit}).all()


def with_ids(connection: sa.Connection | Session, ids: Sequence[int]) -> Sequence[sa.Row[Any]]:
    """The events among ``ids`` that exist (now), as ``newer_than`` gives them."""
    return connection.execute(_WITH_IDS, {"ids": list(ids)}).all()


def last_id(connection: sa.Connection | Session) -> int:
    """The newest event's id (0 for none)."""
    return int(connection.execute(_LAST_ID).scalar() or 0)
