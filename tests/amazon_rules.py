"""Fixtures and shortcuts for the rule tests of one seller's refresh and check
(``test_refresh_rules.py``, ``test_check_rules.py``): sellers written straight into a migrated
SQLite copy (``sqlite_db``), one emulator for a whole test module (its memory wiped before
each test), and what a test reads back: rows, events, notifications, and whether another
writer could get in while a seller was being read."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from discoveryctl.db.engine import Database
from discoveryctl.db.models import Credential, Event, IntegrationStatus, Notification
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.vocabulary import Status
from discoveryctl.providers.lwa import LwaClient
from discoveryctl.providers.spapi import SpApiClient
from discoveryctl.sandbox import Sandbox, run_in_thread
from discoveryctl.support.crypto import Vault

from helpers import FRONTEND, app_for

__all__ = ["FRONTEND"]


@pytest.fixture(scope="module", name="running_sandbox")
def running_sandbox_fixture() -> Iterator[Sandbox]:
    with run_in_thread() as running:
        yield running


@pytest.fixture(name="amazon")
def amazon_fixture(running_sandbox: Sandbox) -> Sandbox:
    """The module's emulator, with nothing in its memory (no seller, no switch, no count)."""
    running_sandbox.state.reset()
    return running_sandbox


@pytest.fixture(name="lwa")
def lwa_fixture(amazon: Sandbox) -> Iterator[LwaClient]:
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http, LwaClient(app_for(amazon), http) as c:
        yield c


@pytest.fixture(name="spapi")
def spapi_fixture(amazon: Sandbox) -> Iterator[SpApiClient]:
    with SpApiClient(app_for(amazon)) as client:
        yield client


@pytest.fixture(name="database")
def database_fixture(sqlite_db: Any) -> Iterator[Database]:
    opened = Database(sqlite_db.url)
    yield opened
    opened.dispose()


@pytest.fixture(name="vault")
def vault_fixture(sqlite_db: Any) -> Vault:
    return Vault([sqlite_db.key])


def grants(amazon: Sandbox) -> int:
    """How many refresh grants LWA handed out."""
    return int(amazon.state.stats()["grants"].get("refresh_token", 0))


def add_seller(
    database: Database,
    vault: Vault,
    user_id: str,
    refresh_token: str = "Atzr|a-refresh-token",
    *,
    status: Status = Status.active,
    authorized_at: datetime | None = None,
    access_token: str | None = None,
    expires_at: datetime | None = None,
    meta: dict[str, Any] | None = None,
    region: str = "na",
    **columns: Any,
) -> int:
    """An Amazon seller, as an import or a consent leaves one; returns its credential's id."""
    with database.session() as session:
        integration = lifecycle.create(session, user_id, "amazon", status, **(meta or {}))
        credential = Credential(
            integration=integration,
            selling_partner_id=f"A{user_id.upper()}",
            region=region,
            refresh_token=vault.encrypt(refresh_token),
            access_token=None if access_token is None else vault.encrypt(access_token),
            access_token_expires_at=expires_at,
            authorized_at=authorized_at or datetime.now(UTC) - timedelta(days=10),
            **columns,
        )
        session.add(credential)
        session.flush()
        return credential.id


def credential_of(database: Database, user_id: str) -> Credential:
    with database.session() as session:
        return session.scalars(
            sa.select(Credential)
            .join(IntegrationStatus, IntegrationStatus.id == Credential.integration_id)
            .where(IntegrationStatus.user_id == user_id)
        ).one()


def integration_of(database: Database, user_id: str) -> IntegrationStatus:
    with database.session() as session:
        return session.scalars(
            sa.select(IntegrationStatus).where(IntegrationStatus.user_id == user_id)
        ).one()


def events_of(database: Database, user_id: str, *kinds: str) -> list[Event]:
    """``user_id``'s events of these kinds, oldest first."""
    with database.session() as session:
        return list(
            session.scalars(
                sa.select(Event)
                .where(Event.user_id == user_id, Event.kind.in_(kinds))
                .order_by(Event.id)
            )
        )


def notifications_of(database: Database, audience: str) -> list[Notification]:
    with database.session() as session:
        return list(
            session.scalars(
                sa.select(Notification)
                .where(Notification.audience == audience)
                .order_by(Notification.id)
            )
        )


def near(moment: datetime | None, expected: datetime, slack: float = 5.0) -> bool:
    """``moment`` is ``expected``, give or take the seconds a test takes."""
    return moment is not None and abs((moment - expected).total_seconds()) <= slack


@contextmanager
def writers_tried_at_reads(path: Path, table: str) -> Iterator[list[bool]]:
    """Each time the code reads ``table`` in the block, another connection tries, at that
    moment, to begin writing to the SQLite file at ``path``; the list says, per read,
    whether it could (a read-modify-write that locks keeps every other writer out)."""
    tried: list[bool] = []

    def try_to_write(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and f"FROM {table}" in statement:
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                tried.append(True)
            except sqlite3.OperationalError:
                tried.append(False)
            finally:
                other.close()

    sa.event.listen(sa.Engine, "after_cursor_execute", try_to_write)
    try:
        yield tried
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", try_to_write)
