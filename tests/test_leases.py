"""The lease rules (``discoveryctl.db.leases``) on real rows of each leased table, on SQLite and
PostgreSQL: a live lease is never taken, one run out is taken over, only its owner renews or lets
go of it, and two claims at once never take the same row. The clock is given (the database's
as the code reads it), so no test waits for a lease to run out."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
import sqlalchemy as sa

from discoveryctl.db.engine import Database
from discoveryctl.db.leases import (
    ALERT_DELIVERIES,
    CREDENTIALS,
    OWNER_LENGTH,
    STRIPE_CUSTOMERS,
    Heartbeat,
    Leased,
    new_owner,
)
from discoveryctl.db.models import (
    AlertDelivery,
    Credential,
    IntegrationStatus,
    Notification,
    StripeCustomer,
)

LEASE = timedelta(seconds=60)
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

TABLES = {
    "credentials": CREDENTIALS,
    "stripe_customers": STRIPE_CUSTOMERS,
    "alert_deliveries": ALERT_DELIVERIES,
}
# Each leased table's model and the lock its claims queue on, as the rules have them: the
# outbox is posted oldest first, so its claims take turns; the others skip each other's rows.
MODELS = {
    "credentials": (Credential, None),
    "stripe_customers": (StripeCustomer, None),
    "alert_deliveries": (AlertDelivery, "alert-delivery"),
}


@pytest.fixture(params=list(TABLES))
def table(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(db: Any) -> Iterator[Database]:
    opened = Database(db.url)
    yield opened
    opened.dispose()


def add_rows(database: Database, table: str, count: int) -> list[int]:
    """``count`` rows of ``table``, unleased, their ids in order."""
    with database.session() as session:
        rows: list[Any] = []
        for number in range(count):
            user = f"{table}-{number}"
            if table == "credentials":
                integration = IntegrationStatus(user_id=user, provider="amazon", status="active")
                rows.append(
                    Credential(
                        integration=integration,
                        selling_partner_id=f"A{number}",
                        region="na",
                        refresh_token="encrypted",
                        authorized_at=NOW,
                    )
                )
            elif table == "stripe_customers":
                rows.append(StripeCustomer(user_id=user, email=f"{user}@example.com"))
            else:
                notification = Notification(
                    audience="admin", kind="k", title="t", message="m", dedupe_key=user
                )
                session.add(notification)
                session.flush()
                rows.append(
                    AlertDelivery(
                        delivery_id=str(uuid.uuid4()),
                        notification_id=notification.id,
                        state="open",
                    )
                )
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def leases(db: Any, table: str) -> dict[int, tuple[str | None, datetime | None]]:
    """Each row's owner and expiry, as stored."""
    rows = db.rows(f"SELECT id, lease_owner, lease_expires_at FROM {table} ORDER BY id")
    return {r["id"]: (r["lease_owner"], _utc(r["lease_expires_at"])) for r in rows}


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite, read without the model's type
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def every_row(leased: Leased) -> sa.Select[Any]:
    return sa.select(leased.id).order_by(leased.id)


def test_a_live_lease_is_not_taken_and_one_run_out_is_taken_over(
    db: Any, database: Database, table: str
) -> None:
    leased = TABLES[table]
    (row,) = add_rows(database, table, 1)
    with database.session() as session:
        assert leased.take(session, row, "run-a", NOW, LEASE)
        assert not leased.take(session, row, "run-b", NOW + LEASE - timedelta(seconds=1), LEASE)
    assert leases(db, table) == {row: ("run-a", NOW + LEASE)}
    with database.session() as session:  # to the microsecond it runs out
        assert leased.take(session, row, "run-b", NOW + LEASE, LEASE)
    assert leases(db, table) == {row: ("run-b", NOW + 2 * LEASE)}


def test_a_take_checks_its_other_conditions_in_the_same_statement(
    db: Any, database: Database, table: str
) -> None:
    """A take is refused when one of its other conditions is false on the row (as a refresh
    is, once another process has refreshed the token), and the row stays free."""
    leased = TABLES[table]
    row, other = add_rows(database, table, 2)
    with database.session() as session:
        assert not leased.take(session, row, "run-a", NOW, LEASE, leased.id == other)
        assert not leased.take(session, row, "run-a", NOW, LEASE, sa.true(), sa.false())
    assert leases(db, table) == {row: (None, None), other: (None, None)}
    with database.session() as session:
        assert leased.take(session, row, "run-a", NOW, LEASE, leased.id == row, sa.true())
    assert leases(db, table) == {row: ("run-a", NOW + LEASE), other: (None, None)}


def test_a_leased_table_is_built_from_its_model(db: Any, database: Database, table: str) -> None:
    """``Leased.of``: the model's table, its key and lease columns, and the lock its claims
    queue on; what it builds takes, claims and lets go of that table's rows."""
    model, queue = MODELS[table]
    built = Leased.of(model, claims_queue_on=queue)
    assert built == TABLES[table]
    first, second = add_rows(database, table, 2)
    with database.session() as session:
        assert built.take(session, first, "run-a", NOW, LEASE)
    with database.session() as session:
        claimed = built.claim_rows(session, every_row(built), "run-b", LEASE, now=NOW)
    assert [row.id for row in claimed] == [second]
    assert leases(db, table) == {first: ("run-a", NOW + LEASE), second: ("run-b", NOW + LEASE)}
    with database.session() as session:
        built.release(session, "run-a")
    assert leases(db, table) == {first: (None, None), second: ("run-b", NOW + LEASE)}


def test_a_batch_claim_takes_free_rows_and_those_run_out_never_live_ones(
    db: Any, database: Database, table: str
) -> None:
    leased = TABLES[table]
    first, second, third = add_rows(database, table, 3)
    with database.session() as session:
        assert leased.take(session, first, "run-a", NOW, LEASE)
        assert leased.take(session, second, "run-a", NOW - LEASE, LEASE)  # run out at NOW
    with database.session() as session:
        claimed = leased.claim_rows(session, every_row(leased), "run-b", LEASE, now=NOW)
    assert [row.id for row in claimed] == [second, third]
    assert leases(db, table) == {
        first: ("run-a", NOW + LEASE),
        second: ("run-b", NOW + LEASE),
        third: ("run-b", NOW + LEASE),
    }


def test_only_the_owner_lets_go_of_its_leases(db: Any, database: Database, table: str) -> None:
    leased = TABLES[table]
    first, second, third = add_rows(database, table, 3)
    with database.session() as session:
        leased.take(session, first, "run-a", NOW, LEASE)
        leased.take(session, second, "run-a", NOW, LEASE)
        leased.take(session, third, "run-b", NOW, LEASE)
    with database.session() as session:
        leased.release(session, "run-b", [first, second, third])
        leased.release(session, "run-a", [first])
    assert leases(db, table) == {
        first: (None, None),
        second: ("run-a", NOW + LEASE),
        third: (None, None),
    }
    with database.session() as session:
        leased.take(session, third, "run-b", NOW, LEASE)
        leased.release(session, "run-a")  # every row it holds
    assert leases(db, table) == {
        first: (None, None),
        second: (None, None),
        third: ("run-b", NOW + LEASE),
    }


def test_an_update_letting_go_of_an_owner_s_leases_leaves_another_s(
    db: Any, database: Database, table: str
) -> None:
    leased = TABLES[table]
    mine, theirs = add_rows(database, table, 2)
    with database.session() as session:
        leased.take(session, mine, "run-a", NOW, LEASE)
        leased.take(session, theirs, "run-b", NOW, LEASE)
        session.execute(sa.update(leased.table).values(leased.letting_go("run-a")))
    assert leases(db, table) == {mine: (None, None), theirs: ("run-b", NOW + LEASE)}


def test_renewing_extends_the_owner_s_leases_only(db: Any, database: Database, table: str) -> None:
    """A lease that ran out and was not taken over is still its owner's, and renewed; one
    taken over is the new owner's."""
    leased = TABLES[table]
    live, ran_out, taken_over, theirs = add_rows(database, table, 4)
    later = NOW + 2 * LEASE
    with database.session() as session:
        leased.take(session, live, "run-a", later - LEASE / 2, LEASE)
        leased.take(session, ran_out, "run-a", NOW, LEASE)
        leased.take(session, taken_over, "run-a", NOW, LEASE)
        leased.take(session, taken_over, "run-b", later - LEASE / 2, LEASE)
        leased.take(session, theirs, "run-b", NOW, LEASE)
    with database.session() as session:
        assert leased.renew(session, "run-a", LEASE, now=later) == 2
    assert leases(db, table) == {
        live: ("run-a", later + LEASE),
        ran_out: ("run-a", later + LEASE),
        taken_over: ("run-b", later + LEASE / 2),
        theirs: ("run-b", NOW + LEASE),
    }


def test_held_names_the_rows_the_owner_still_holds(db: Any, database: Database, table: str) -> None:
    leased = TABLES[table]
    kept, taken_over, never, not_asked = add_rows(database, table, 4)
    with database.session() as session:
        leased.take(session, kept, "run-a", NOW, LEASE)
        leased.take(session, taken_over, "run-a", NOW, LEASE)
        leased.take(session, taken_over, "run-b", NOW + LEASE, LEASE)  # after it ran out
        leased.take(session, not_asked, "run-a", NOW, LEASE)
    with database.session() as session:
        assert leased.held(session, "run-a", [kept, taken_over, never]) == {kept}
        assert leased.held(session, "run-b", [kept, taken_over, never]) == {taken_over}
        assert leased.held(session, "run-a", []) == set()


def test_a_claim_leaves_the_rows_another_claim_is_taking_to_it(
    db: Any, database: Database, table: str
) -> None:
    """Two claims at once never take the same row. On PostgreSQL the second skips the rows
    the first has locked and takes the rest at once (``SKIP LOCKED``); on SQLite it waits
    for the first's write lock, then finds those rows leased. Claims that take turns (the
    alert outbox) wait on either database."""
    leased = TABLES[table]
    ids = add_rows(database, table, 3)
    other = Database(db.url)
    meanwhile: list[int] = []

    def second_claim() -> None:
        with other.session() as session:
            claimed = leased.claim_rows(session, every_row(leased), "run-b", LEASE)
            meanwhile.extend(row.id for row in claimed)

    second = threading.Thread(target=second_claim)
    try:
        with database.session() as session:
            claim = leased.claim(session)
            free = every_row(leased).where(leased.free(claim.now)).limit(2)
            first = [row.id for row in session.execute(claim.lock(free))]
            second.start()
            second.join(timeout=2.0)
            done_before_the_first = not second.is_alive()
            claim.take(first, "run-a", LEASE)
        second.join(timeout=60)
    finally:
        other.dispose()
    assert first == ids[:2]
    assert meanwhile == ids[2:]
    skips = db.kind == "postgres" and MODELS[table][1] is None  # the outbox queues its claims
    assert done_before_the_first is skips
    assert [owner for owner, _ in leases(db, table).values()] == ["run-a", "run-a", "run-b"]


def test_the_heartbeat_renews_an_owner_s_leases_until_it_stops(db: Any, database: Database) -> None:
    beats = timedelta(seconds=0.3)  # a renewal every 0.1 s
    mine, theirs = add_rows(database, "credentials", 2)
    with database.session() as session:
        CREDENTIALS.take(session, mine, "run-a", NOW, LEASE)
        CREDENTIALS.take(session, theirs, "run-b", NOW, LEASE)
    beat_at: list[float] = []

    def scope() -> Any:
        beat_at.append(time.monotonic())
        return database.session()

    started = time.monotonic()
    with Heartbeat(scope, CREDENTIALS, "run-a", beats):
        time.sleep(0.5)
    stopped = datetime.now(UTC)
    # every third of the lease, never sooner (a wait may run late, never early)
    gaps = [later - earlier for earlier, later in pairwise([started, *beat_at])]
    assert len(gaps) >= 2 and min(gaps) >= beats.total_seconds() / 3 - 0.005, gaps
    renewed = leases(db, "credentials")
    assert renewed[theirs] == ("run-b", NOW + LEASE)
    owner, until = renewed[mine]
    assert owner == "run-a" and until is not None  # by the database's clock: today, not NOW
    assert stopped - timedelta(seconds=2) < until <= stopped + beats
    time.sleep(0.3)
    assert leases(db, "credentials") == renewed  # no beat once stopped


def test_a_stopped_heartbeat_beats_no_more_and_its_stop_returns_at_once(
    db: Any, database: Database
) -> None:
    """Stopping ends the beating at once: a stop that never returned would hold up the end of
    every run (asked from a thread of its own, so a stop that hangs fails this test)."""
    (mine,) = add_rows(database, "credentials", 1)
    with database.session() as session:
        CREDENTIALS.take(session, mine, "run-a", NOW, LEASE)
    beat = Heartbeat(database.session, CREDENTIALS, "run-a", timedelta(seconds=0.3)).start()
    time.sleep(0.15)  # one beat
    stopping = threading.Thread(target=beat.stop, daemon=True)
    stopping.start()
    stopping.join(timeout=5)
    assert not stopping.is_alive()
    renewed = leases(db, "credentials")
    time.sleep(0.25)
    assert leases(db, "credentials") == renewed


def test_a_heartbeat_that_cannot_reach_the_database_keeps_beating() -> None:
    unreachable = Database("postgresql://discovery@127.0.0.1:9/none")
    tries: list[float] = []

    def scope() -> Any:
        tries.append(time.monotonic())
        return unreachable.session()

    try:
        with Heartbeat(scope, CREDENTIALS, "run-a", timedelta(seconds=0.15)):
            time.sleep(0.4)
    finally:
        unreachable.dispose()
    assert len(tries) >= 3  # a failed renewal is let pass, and the next one comes


def test_a_heartbeat_left_beating_does_not_keep_its_process_alive() -> None:
    """A process that ends without stopping its heartbeat ends all the same, rather than
    renewing its leases for ever."""
    never_called = Database("postgresql://discovery@127.0.0.1:9/none")
    heartbeat = Heartbeat(never_called.session, CREDENTIALS, "run-a", LEASE)  # first beat: 20 s
    with warnings.catch_warnings():  # Python 3.12 warns of a fork while other threads run
        warnings.simplefilter("ignore", DeprecationWarning)
        process = multiprocessing.get_context("fork").Process(target=heartbeat.start)
        process.start()
    process.join(timeout=10)
    alive = process.is_alive()
    if alive:
        process.kill()
        process.join()
    never_called.dispose()
    assert not alive
    assert process.exitcode == 0


def test_a_long_host_name_is_cut_so_the_owner_fills_its_column_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod = "refresh-all-7f9c6d5b8-" + "x" * 41  # 63 characters, as long as a host name gets
    monkeypatch.setattr(socket, "gethostname", lambda: pod)
    owner = new_owner("stripe-pending")
    work, host, process, token = owner.split(":")
    assert (work, process, len(token)) == ("stripe-pending", str(os.getpid()), 8)
    assert len(owner) == OWNER_LENGTH
    assert host == pod[: len(host)] and 0 < len(host) < len(pod)
    # a work name that leaves no room keeps no part of the host
    assert new_owner("w" * OWNER_LENGTH).split(":")[1] == ""


def test_an_owner_s_name_says_whose_lease_it_is_and_fits_its_column() -> None:
    owner = new_owner("stripe-pending")
    work, host, process, token = owner.split(":")
    assert (work, process) == ("stripe-pending", str(os.getpid()))
    assert socket.gethostname().startswith(host) and len(token) == 8
    assert owner != new_owner("stripe-pending")
    assert len(new_owner("x" * 40)) <= 64
