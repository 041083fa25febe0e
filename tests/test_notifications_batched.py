"""notifications.batched: a batch of sellers notified by the same rules as one at a time."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from discoveryctl.db.engine import Database
from discoveryctl.integrations import notifications


def notify(session: Any, user: str) -> bool:
    _, created = notifications.notify(
        session,
        audience=notifications.USER,
        kind="connection_lost",
        title="Amazon connection lost",
        message="reconnect",
        user_id=user,
        provider="amazon",
    )
    return created


def open_ones(db: Any) -> list[tuple[str, bool]]:
    rows = db.rows("SELECT user_id, resolved_at FROM notifications ORDER BY id")
    return [(r["user_id"], r["resolved_at"] is None) for r in rows]


def test_a_batch_follows_the_one_at_a_time_rules(db: Any) -> None:
    database = Database(db.url)
    try:
        with database.session() as session:
            assert notify(session, "u0")  # open before the batch
        with database.session() as session:
            with notifications.batched(session, ["u0", "u1", "u2"]):
                assert not notify(session, "u0")  # still open: not again
                assert notify(session, "u1")
                assert not notify(session, "u1")  # opened in this batch: not twice
                assert notify(session, "u2")
                assert notifications.resolve(session, "connection_lost:amazon:u2") == 1
                assert notifications.resolve(session, "connection_lost:amazon:u0") == 1
                assert notify(session, "u0")  # resolved, so it may open again
            assert open_ones(db) == [("u0", True)]  # nothing written before the batch ends
        assert open_ones(db) == [("u0", False), ("u1", True), ("u2", False), ("u0", True)]
    finally:
        database.dispose()


def test_one_opened_meanwhile_leaves_the_rest_of_the_batch_as_decided(db: Any) -> None:
    """Another process opens one of the batch's notifications before the batch writes: the
    batch writes the others one at a time, each as it decided it (resolved or open)."""
    if db.kind != "postgres":
        pytest.skip("SQLite's write lock keeps every other writer out of the batch")
    database, other = Database(db.url), Database(db.url)
    interfered: list[bool] = []

    def open_u1_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if interfered or not statement.startswith("INSERT INTO notifications"):
            return
        interfered.append(True)
        with other.session() as session:
            assert notify(session, "u1")

    try:
        with database.session() as session:
            sa.event.listen(session.connection(), "before_cursor_execute", open_u1_first)
            with notifications.batched(session, ["u1", "u2", "u3"]):
                assert notify(session, "u1")
                assert notify(session, "u2")
                assert notifications.resolve(session, "connection_lost:amazon:u2") == 1
                assert notify(session, "u3")
    finally:
        database.dispose()
        other.dispose()
    assert interfered == [True]
    assert sorted(open_ones(db)) == [("u1", True), ("u2", False), ("u3", True)]
