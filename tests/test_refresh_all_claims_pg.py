"""refresh-all's claims where only PostgreSQL can show them: the claim asks again, under its
row locks, whether each seller is still due (another run may have refreshed one between the
walk and the lock), and takes them in id order whatever order the table's pages hold them in.
On SQLite a claim holds the write lock from its walk to its lease, so neither can differ
there. Direct calls (``claim_batch``), the clock given; fast enough for ``make mutate``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from refresh_all_seeds import NOW, add_seller

from discoveryctl.amazon.refresh_all import claim_batch
from discoveryctl.db.engine import Database
from discoveryctl.support.crypto import Vault

HOUR = timedelta(hours=1)


@pytest.fixture
def database(db: Any) -> Iterator[Database]:
    if db.kind != "postgres":
        pytest.skip("SQLite's write lock keeps every other writer out from the walk to the lease")
    opened = Database(db.url)
    yield opened
    opened.dispose()


@pytest.fixture
def vault(db: Any) -> Vault:
    return Vault([db.key])


def claimed(database: Database, limit: int = 10, **options: Any) -> list[int]:
    with database.session() as session:
        return [
            due.credential_id for due in claim_batch(session, "run-a", limit, now=NOW, **options)
        ]


@pytest.fixture
def other(database: Database) -> Iterator[sa.Engine]:
    """Another run's connection to the same database."""
    engine = sa.create_engine(database.engine.url)
    yield engine
    engine.dispose()


def refreshed_after_the_walk(database: Database, other: sa.Engine, credential_id: int) -> None:
    """Another run refreshes ``credential_id`` (no longer due) once this claim has walked
    the table and before it locks the rows."""
    done: list[bool] = []

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        walked = "FROM credentials" in statement and "FOR UPDATE" not in statement
        if walked and "LIMIT" in statement and not done:
            done.append(True)
            with other.begin() as connection:
                connection.execute(
                    sa.text(
                        "UPDATE credentials SET refreshed_at = :now, "
                        "access_token_expires_at = :later WHERE id = :id"
                    ),
                    {"now": NOW, "later": NOW + HOUR, "id": credential_id},
                )

    sa.event.listen(database.engine, "after_cursor_execute", after)


def test_a_seller_refreshed_between_the_walk_and_the_lock_is_not_claimed(
    database: Database, vault: Vault, other: sa.Engine
) -> None:
    ids = [add_seller(database, vault, f"u{n}") for n in range(3)]
    refreshed_after_the_walk(database, other, ids[0])
    assert claimed(database) == ids[1:]


def test_a_forced_claim_takes_it_all_the_same(
    database: Database, vault: Vault, other: sa.Engine
) -> None:
    ids = [add_seller(database, vault, f"u{n}") for n in range(3)]
    refreshed_after_the_walk(database, other, ids[0])
    assert claimed(database, force=True) == ids


def test_a_claim_takes_sellers_in_id_order_not_in_the_table_s(
    database: Database, vault: Vault
) -> None:
    ids = [add_seller(database, vault, f"u{n}") for n in range(4)]
    with database.engine.begin() as connection:  # rewritten rows go to the table's end
        for rewritten in (ids[0], ids[1]):
            connection.execute(
                sa.text("UPDATE credentials SET region = region WHERE id = :id"),
                {"id": rewritten},
            )
        connection.execute(sa.text("ANALYZE credentials"))
    assert claimed(database, limit=2) == ids[:2]
    assert claimed(database, limit=2) == ids[2:]
