"""User and admin notifications, one open notification per dedupe key.

A notification stays open until the condition behind it resolves (a reconnect, a recovery);
while it is open, the same condition does not notify again.

``batched`` lets a whole batch of sellers (refresh-all) be notified with one query for the
open notifications and one write for the new ones, by the same rules as ``notify``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import Session

from discoveryctl.db.models import Notification, utcnow
from discoveryctl.errors import NotFound
from discoveryctl.integrations import events, outbox
from discoveryctl.integrations.vocabulary import isoformat

USER = "user"
ADMIN = "admin"


def dedupe_key(kind: str, provider: str | None, user_id: str | None) -> str:
    return f"{kind}:{provider or '-'}:{user_id or '-'}"


def notify(
    session: Session,
    *,
    audience: str,
    kind: str,
    title: str,
    message: str,
    user_id: str | None = None,
    provider: str | None = None,
    detail: dict[str, Any] | None = None,
    key: str | None = None,
) -> tuple[Notification, bool]:
    """Create a notification unless one with the same dedupe key is still open.

    Returns the open notification and whether it was created now.
    """
    key = key or dedupe_key(kind, provider, user_id)
    batch: _Batch | None = session.info.get(_BATCH)
    if batch is not None and user_id in batch.users:
        existing = batch.open.get(key)
    else:
        batch = None
        # Looked up first, though the unique index would refuse a second one and the fallback
        # below return the first: a repeat would cost a failed insert, a savepoint's rollback
        # and, on PostgreSQL, an error in the database's log.
        existing = _open(session, key)  # pragma: no mutate  (see above)
    if existing is not None:
        return existing, False
    notification = Notification(
        audience=audience,
        kind=kind,
        title=title,
        message=message,
        user_id=user_id,
        provider=provider,
        detail=detail or {},
        dedupe_key=key,
        created_at=utcnow(),
    )
    if batch is not None:  # written with the batch's others when it ends
        batch.open[key] = notification
        batch.new.append(notification)
        return notification, True
    try:
        with session.begin_nested():
            session.add(notification)
    except exc.IntegrityError:  # another process opened the same one first
        found = _open(session, key)
        assert found is not None
        return found, False
    _record_created(session, notification)
    return notification, True


def _record_created(session: Session, notification: Notification) -> None:
    if notification.audience == ADMIN:
        outbox.enqueue(session, notification.id, outbox.OPEN)
        if notification.resolved_at is not None:  # opened and resolved in one batch
            outbox.enqueue(session, notification.id, outbox.RESOLVED)
    events.record(
        session,
        events.Kind.notification_created,
        user_id=notification.user_id,
        provider=notification.provider,
        audience=notification.audience,
        notification_kind=notification.kind,
        dedupe_key=notification.dedupe_key,
    )


_BATCH = "discoveryctl.integrations.notifications.batch"


@dataclass
class _Batch:
    users: frozenset[str]
    open: dict[str, Notification]  # by dedupe key: open before the batch, or created in it
    new: list[Notification] = field(default_factory=list)


@contextmanager
def batched(session: Session, user_ids: Iterable[str]) -> Iterator[None]:
    """Within it, ``notify`` for these users decides from their open notifications, read in
    one query, and the new ones are written together when it ends (one savepoint for all,
    not one each). Nothing is written if the block raises."""
    users = frozenset(user_ids)
    found = session.scalars(
        sa.select(Notification).where(
            Notification.user_id.in_(sorted(users)), Notification.resolved_at.is_(None)
        )
    ).all()
    batch = _Batch(users, {n.dedupe_key: n for n in found})
    session.info[_BATCH] = batch
    try:
        yield
    finally:
        del session.info[_BATCH]
    _write_new(session, batch.new)


def _write_new(session: Session, new: list[Notification]) -> None:
    if not new:
        return
    try:
        with session.begin_nested():
            session.add_all(new)
        created = new
    except exc.IntegrityError:
        # Another process opened one of the same notifications meanwhile: one at a time, as
        # notify does, each skipped if it is already open.
        created = []
        for notification in new:
            again = _copy(notification)
            try:
                with session.begin_nested():
                    session.add(again)
            except exc.IntegrityError:
                continue
            created.append(again)
    for notification in created:
        _record_created(session, notification)


def _copy(notification: Notification) -> Notification:
    """A fresh row with ``notification``'s content (one rolled back with a savepoint is
    expunged from the session)."""
    return Notification(
        audience=notification.audience,
        kind=notification.kind,
        title=notification.title,
        message=notification.message,
        user_id=notification.user_id,
        provider=notification.provider,
        detail=notification.detail,
        dedupe_key=notification.dedupe_key,
        created_at=notification.created_at,
        resolved_at=notification.resolved_at,  # opened and resolved in the same batch
    )


def resolve(session: Session, key: str) -> int:
    """Close the open notification with this dedupe key, if any."""
    batch: _Batch | None = session.info.get(_BATCH)
    if batch is not None:
        opened = batch.open.pop(key, None)
        if opened is not None and opened in batch.new:  # opened in this batch, not yet written
            opened.resolved_at = utcnow()
            return 1
    resolved = session.execute(
        sa.update(Notification)
        .where(Notification.dedupe_key == key, Notification.resolved_at.is_(None))
        .values(resolved_at=utcnow())
        .returning(Notification.id, Notification.audience)
    ).all()
    for notification_id, audience in resolved:
        if audience == ADMIN:  # the admin webhook hears of it too
            outbox.enqueue(session, notification_id, outbox.RESOLVED)
    return len(resolved)


def _open(session: Session, key: str) -> Notification | None:
    return session.scalars(
        sa.select(Notification).where(
            Notification.dedupe_key == key, Notification.resolved_at.is_(None)
        )
    ).first()


def inbox(
    session: Session, *, user_id: str, unread: bool = False, limit: int = 500
) -> Sequence[Notification]:
    """One user's notifications, newest first: those addressed to them, not the admins' about
    them (the API's notifications route, ``notifications --user``)."""
    query = _newest_first(USER, unread, limit).where(Notification.user_id == user_id)
    return session.scalars(query).all()


def all_user_notifications(
    session: Session, *, unread: bool = False, limit: int = 500
) -> Sequence[Notification]:
    """Every user's notifications, newest first: the operators' view (``notifications``)."""
    return session.scalars(_newest_first(USER, unread, limit)).all()


def admin_inbox(
    session: Session, *, about_user: str | None = None, unread: bool = False, limit: int = 500
) -> Sequence[Notification]:
    """The admins' notifications, newest first (with ``about_user``: those about that user):
    the operators' view (``notifications --admin``)."""
    query = _newest_first(ADMIN, unread, limit)
    if about_user is not None:
        query = query.where(Notification.user_id == about_user)
    return session.scalars(query).all()


def _newest_first(audience: str, unread: bool, limit: int) -> sa.Select[Notification]:
    query = (
        sa.select(Notification)
        .where(Notification.audience == audience)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(limit)
    )
    if unread:
        query = query.where(Notification.read_at.is_(None))
    return query


def view(notification: Notification) -> dict[str, Any]:
    """A notification as the operator and the API see it (``notifications --json``, the
    notifications route)."""
    return {
        "id": notification.id,
        "audience": notification.audience,
        "user_id": notification.user_id,
        "provider": notification.provider,
        "kind": notification.kind,
        "title": notification.title,
        "message": notification.message,
        "detail": notification.detail,
        "created_at": isoformat(notification.created_at),
        "read_at": _moment(notification.read_at),
        "resolved_at": _moment(notification.resolved_at),
    }


def _moment(moment: datetime | None) -> str | None:
    return isoformat(moment) if moment is not None else None


def acknowledge(session: Session, ids: Iterable[int], *, user_id: str) -> list[int]:
    """Mark a user's own notifications read (the API's read route); every id must be one of
    them: another user's, or an admin notification, is as unknown as a missing one."""
    return _mark_read(session, ids, Notification.audience == USER, Notification.user_id == user_id)


def acknowledge_any(session: Session, ids: Iterable[int]) -> list[int]:
    """Mark notifications read, whoever they are addressed to (the operators'
    ``notifications ack``); every id must exist."""
    return _mark_read(session, ids)


def _mark_read(session: Session, ids: Iterable[int], *among: sa.ColumnElement[bool]) -> list[int]:
    """All or nothing: unless every id is found ``among`` the notifications, none is marked."""
    wanted = sorted(set(ids))
    found = session.scalars(
        sa.select(Notification).where(Notification.id.in_(wanted), *among)
    ).all()
    missing = sorted(set(wanted) - {n.id for n in found})
    if missing:
        raise NotFound(f"no notification with id {', '.join(map(str, missing))}")
    now = utcnow()
    for notification in found:
        if notification.read_at is None:
            notification.read_at = now
    return wanted


APP_CREDENTIALS_REJECTED = "app_credentials_rejected"


def alert_app_credentials(session: Session, provider: str, message: str) -> bool:
    """Tell the admins the app's own credentials were refused (once, until resolved)."""
    _, created = notify(
        session,
        audience=ADMIN,
        kind=APP_CREDENTIALS_REJECTED,
        title=f"{provider.capitalize()} rejected the app's credentials",
        message=message,
        provider=provider,
    )
    return created


def app_credentials_accepted(session: Session, provider: str) -> bool:
    """Resolve the app-credentials alert: the provider took them again."""
    return resolve(session, dedupe_key(APP_CREDENTIALS_REJECTED, provider, None)) > 0
