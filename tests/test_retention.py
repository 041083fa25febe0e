"""`events prune` and the history's size in `doctor`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from discoveryctl.jobs.doctor import WARN, history_check


def _events(db: Any, count: int, days_ago: int, kind: str) -> None:
    """``count`` events ``days_ago`` days old, written straight into the table."""
    with db.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO events (occurred_at, kind, outcome, detail) "
                "VALUES (:at, :kind, 'info', '{}')"
            ),
            [
                {"at": datetime.now(UTC).replace(tzinfo=None) - _days(days_ago), "kind": kind}
                for _ in range(count)
            ],
        )


def _days(days: int) -> Any:
    from datetime import timedelta

    return timedelta(days=days, minutes=1)


def test_prune_deletes_old_events_in_batches_and_expired_states_only(db: Any, cli: Any) -> None:
    _events(db, 12_345, 120, "old")  # more than two batches
    _events(db, 7, 89, "recent")
    with db.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO oauth_states (id, user_id, region, flow, created_at, expires_at) "
                "VALUES ('gone', 'u1', 'na', 'connect', :old, :old), "
                "('live', 'u2', 'na', 'connect', :now, :later)"
            ),
            {
                "old": datetime(2026, 1, 1),
                "now": datetime.now(UTC).replace(tzinfo=None),
                "later": datetime(2999, 1, 1),
            },
        )
    result = cli("events", "prune", "--older-than", "90d", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["events"] == 12_345 and result.json()["oauth_states"] == 1
    kinds = db.rows("SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind")
    assert kinds == [{"kind": "events_pruned", "n": 1}, {"kind": "recent", "n": 7}]
    assert [r["id"] for r in db.rows("SELECT id FROM oauth_states")] == ["live"]
    again = cli("events", "prune", "--older-than", "90d", "--json")
    assert again.json()["events"] == 0


def test_prune_refuses_a_window_that_is_not_one(db: Any, cli: Any) -> None:
    for bad in ("0d", "soon", "90", "90m", "3600s"):  # minutes: "90m" is not 90 months
        result = cli("events", "prune", "--older-than", bad)
        assert result.exit_code == 2 and f"--older-than {bad!r} is not a duration" in result.stderr
    assert db.scalar("SELECT count(*) FROM events") == 0


def test_doctor_reports_the_history_and_warns_past_its_size(db: Any, cli: Any) -> None:
    _events(db, 3, 10, "old")
    found = {c["check"]: c for c in cli("doctor", "--json").json()}
    assert found["event history"]["state"] == "ok"
    assert found["event history"]["detail"].startswith("3 events, the oldest from ")
    many = history_check(1_000_001, datetime(2026, 1, 1, tzinfo=UTC), 1_000_000)
    assert many.state == WARN
    assert "1,000,001 events, the oldest from 2026-01-01" in many.detail
    assert "discoveryctl events prune --older-than 90d" in many.detail
    assert history_check(1_000_000, None, 1_000_000).state == "ok"
