"""Leases: rows that several processes claim, each row worked on by one owner at a time.

Three tables are leased, each row with its ``lease_owner`` and ``lease_expires_at``:
``credentials`` (a refresh spends the seller's refresh token), ``stripe_customers`` (the pending
run's creates) and ``alert_deliveries`` (the outbox's posts). The rules, the same for each:

- A row is free when it has no lease, or its lease has run out. A claim takes free rows only:
  never a live lease, and a lease that ran out is taken over (its owner was killed, or slower
  than its lease).
- A lease lasts a given time from its claim, timed by the database's clock (``database_now``):
  processes on several machines over one PostgreSQL agree on it.
- Only its owner renews a lease or lets go of it. The ``Heartbeat`` renews an owner's leases
  while its work is queued; a killed process stops beating, and its leases run out.
- A write made under a lease first asks which rows its owner still ``held``, locking them until
  the transaction ends: a row taken over meanwhile is left to the process that took it.
- A claim is one transaction. On PostgreSQL it reads the rows ``FOR UPDATE SKIP LOCKED`` (rows
  another claim is taking are left to it); on SQLite it holds the database's write lock from
  its first read to its lease. A table whose claims take turns (the outbox, posted oldest
  first) queues them on a named lock on both databases instead.

``lock_for_update`` is the same fork for any read-modify-write of a row: the row locked on
PostgreSQL, the database's write lock on SQLite.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.engine import SessionScope, database_now, lock_for_writing, sqlite_write_lock
from discoveryctl.db.models import AlertDelivery, Base, Credential, StripeCustomer, table_of
from discoveryctl.errors import DiscoveryError

Query = TypeVar("Query", bound=sa.Select[*tuple[Any, ...]])


def lock_for_update(session: Session, query: Query, **options: Any) -> Query:
    """``query``, the rows it reads locked until the transaction ends, for a read-modify-write
    that never loses another writer's change: on PostgreSQL the rows themselves (``FOR
    UPDATE``, with ``options`` as ``with_for_update`` takes them, e.g. ``of=``); on SQLite,
    whose locks are the whole database's, its write lock, taken now, before the read."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(**options)
    sqlite_write_lock(session.connection())
    return query


OWNER_LENGTH = 64
"""The ``lease_owner`` columns' size."""


def new_owner(work: str) -> str:
    """A lease owner's name, unique to one run: the work it does, then the machine and the
    process it runs in, so a lease left behind says whose it was (a long host name, a pod's,
    is cut to fit the column)."""
    process, token = str(os.getpid()), secrets.token_hex(4)
    room = OWNER_LENGTH - len(work) - len(process) - len(token) - 3
    return f"{work}:{socket.gethostname()[: max(room, 0)]}:{process}:{token}"


@dataclass(frozen=True)
class Leased:
    """A leased table: its key, ``owner`` and ``expires_at`` columns, and, for a table whose
    claims take turns, the name of the lock they queue on."""

    table: sa.Table
    id: sa.Column[Any]
    owner: sa.Column[Any]
    expires_at: sa.Column[Any]
    claims_queue_on: str | None = None
    """Set: each claim waits for the one before, on PostgreSQL too (an advisory lock), and
    for a row being written rather than skip it. None: claims skip each other's rows."""

    @classmethod
    def of(cls, model: type[Base], claims_queue_on: str | None = None) -> Leased:
        table = table_of(model)
        columns = table.c
        return cls(
            table, columns.id, columns.lease_owner, columns.lease_expires_at, claims_queue_on
        )

    def free(self, now: datetime) -> sa.ColumnElement[bool]:
        """The row has no live lease at ``now``: never leased, let go, or run out."""
        return sa.or_(self.expires_at.is_(None), self.expires_at <= now)

    def take(
        self,
        session: Session,
        row_id: Any,
        owner: str,
        now: datetime,
        lease: timedelta,
        *also: sa.ColumnElement[bool],
    ) -> bool:
        """Take one row's lease, unless a live one is held or one of ``also`` is false: one
        statement, so nothing it checks can change before it takes. True when taken."""
        taken = session.execute(
            sa.update(self.table)
            .where(self.id == row_id, self.free(now), *also)
            .values({self.owner: owner, self.expires_at: now + lease})
        )
        result = cast("sa.CursorResult[Any]", taken)  # pragma: no mutate  (a type for mypy only)
        return result.rowcount == 1

    def claim(self, session: Session, now: datetime | None = None) -> Claim:
        """Begin a claim in ``session``'s transaction, which holds what it takes until it
        commits: on SQLite the write lock from now on; with ``claims_queue_on``, that lock
        on either database. ``now``: the database's clock unless given."""
        if self.claims_queue_on is not None:
            lock_for_writing(session, self.claims_queue_on)
        elif session.get_bind().dialect.name != "postgresql":
            sqlite_write_lock(session.connection())
        return Claim(session, self, database_now(session) if now is None else now)

    def claim_rows(
        self,
        session: Session,
        query: sa.Select[*tuple[Any, ...]],
        owner: str,
        lease: timedelta,
        now: datetime | None = None,
    ) -> Sequence[sa.Row[*tuple[Any, ...]]]:
        """The free rows ``query`` reads (its ``id`` column among them), leased to ``owner``
        for ``lease``, in one claim."""
        claim = self.claim(session, now)
        rows = session.execute(claim.lock(query.where(self.free(claim.now)))).all()
        claim.take([row.id for row in rows], owner, lease)
        return rows

    def renew(
        self, session: Session, owner: str, lease: timedelta, now: datetime | None = None
    ) -> int:
        """Extend every lease ``owner`` holds to ``lease`` from now, and say how many. A lease
        that ran out is still the owner's until another claim takes it over, so it is
        renewed too; one taken over is another owner's, and left alone."""
        moment = database_now(session) if now is None else now
        renewed = session.execute(
            sa.update(self.table)
            .where(self.owner == owner)
            .values({self.expires_at: moment + lease})
        )
        result = cast("sa.CursorResult[Any]", renewed)  # pragma: no mutate  (a type for mypy only)
        return result.rowcount

    def release(self, session: Session, owner: str, ids: Iterable[Any] | None = None) -> None:
        """Let go of ``owner``'s leases on the rows ``ids`` (None: on every row): rows another
        owner holds are left as they are."""
        query = sa.update(self.table).where(self.owner == owner)
        if ids is not None:
            query = query.where(self.id.in_(list(ids)))
        session.execute(query.values({self.owner: None, self.expires_at: None}))

    def letting_go(self, owner: str) -> Mapping[sa.Column[Any], Any]:
        """Values for an UPDATE of leased rows that also lets go of ``owner``'s leases on them
        (one row version, not two); another owner's lease stays."""
        mine = self.owner == owner
        return {
            self.owner: sa.case((mine, None), else_=self.owner),
            self.expires_at: sa.case((mine, None), else_=self.expires_at),
        }

    def held(self, session: Session, owner: str, ids: Iterable[Any]) -> set[Any]:
        """Which of the rows ``ids`` ``owner`` still holds, locked until the transaction ends
        (``lock_for_update``), so what it writes under them next cannot have been taken
        over. A lease that ran out but was not taken over is still held."""
        query = sa.select(self.id).where(self.id.in_(list(ids)), self.owner == owner)
        return set(session.scalars(lock_for_update(session, query)))


@dataclass(frozen=True)
class Claim:
    """One claim of a leased table's rows, in one transaction, as of ``now``."""

    session: Session
    leased: Leased
    now: datetime

    def lock(self, query: Query, *again: sa.ColumnElement[bool]) -> Query:
        """``query``, its rows locked for this claim. On PostgreSQL, ``FOR UPDATE SKIP
        LOCKED``: rows another claim is taking are left to it; and ``again`` (conditions read
        before the lock, as a walk does) is asked again under it, on each row as the claim
        before left it. When claims take turns, ``FOR UPDATE``: a row being written is waited
        for and read afresh. On SQLite the claim holds the write lock already: no other
        writer has come in between, nothing to lock or ask again."""
        if self.session.get_bind().dialect.name != "postgresql":
            return query
        skip_locked = self.leased.claims_queue_on is None
        return query.where(*again).with_for_update(skip_locked=skip_locked)

    def take(self, ids: Iterable[Any], owner: str, lease: timedelta) -> None:
        """Lease the rows ``ids``, read and locked by this claim, to ``owner`` for ``lease``."""
        ids = list(ids)
        if ids:
            self.session.execute(
                sa.update(self.leased.table)
                .where(self.leased.id.in_(ids))
                .values({self.leased.owner: owner, self.leased.expires_at: self.now + lease})
            )


CREDENTIALS = Leased.of(Credential)
"""An Amazon authorization, while a refresh spends its refresh token."""
STRIPE_CUSTOMERS = Leased.of(StripeCustomer)
"""A pending Stripe customer, while a run creates it."""
ALERT_DELIVERIES = Leased.of(AlertDelivery, claims_queue_on="alert-delivery")
"""An alert's post to the admin webhook; the outbox is posted oldest first, a resolved state
after its open one, so its claims take turns."""


class Heartbeat:
    """Renews ``owner``'s leases on ``leased`` every third of ``lease``, on a thread of its own,
    from ``with`` to the block's end: work slower than the lease (throttling, timeouts, a slow
    provider) stays this owner's, and no other process takes it meanwhile. A killed process
    stops beating, and its leases run out. A renewal that fails is let pass: the next beat,
    or the write under the lease (``Leased.held``), will tell."""

    def __init__(
        self, session_scope: SessionScope, leased: Leased, owner: str, lease: timedelta
    ) -> None:
        self.session_scope = session_scope
        self.leased = leased
        self.owner = owner
        self.lease = lease
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._beat,
            name="lease-heartbeat",  # pragma: no mutate  (a label in thread dumps, read by no code)
            daemon=True,
        )

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Beat no more (a renewal under way ends first)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stopped.wait(self.lease.total_seconds() / 3):
            with contextlib.suppress(DiscoveryError), self.session_scope() as session:
                self.leased.renew(session, self.owner, self.lease)
