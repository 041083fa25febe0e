"""notifications.batched: a batch of sellers notified by the same rules as one at a time."""

from __future__ import annotations

from typing import Any

from discoveryctl import notifications
from discoveryctl.db.engine import Database


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
