"""The audit history's rules (``integrations/events.py``), called directly on a migrated SQLite
file:

- an event is stored as recorded, its detail redacted, with an outcome its kind allows;
  ``add_all`` and ``record_all`` store rows from ``entry`` the same way;
- a user's history is their own events alone (by provider, since a moment, of some kinds),
  newest first; the operators' history is everyone's and their own;
- the live stream's reads: the events after an id, oldest first; those among some ids; the
  newest id; and a user's own status changes after an id, what a stream resumed from
  ``Last-Event-ID`` replays;
- the views: an event as the CLI and API show it, a status change as the stream sends it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from discoveryctl.db.engine import Database
from discoveryctl.db.models import Event
from discoveryctl.integrations import events
from discoveryctl.integrations.events import FAILURE, INFO, SUCCESS, Kind

MOMENT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(sqlite_db: Any) -> Iterator[Database]:
    database = Database(sqlite_db.url)
    yield database
    database.dispose()


def stored(database: Database) -> list[Event]:
    with database.session() as session:
        return list(session.scalars(sa.select(Event).order_by(Event.id)))


def test_an_event_is_stored_as_recorded_with_its_detail_redacted(database: Database) -> None:
    before = datetime.now(UTC)
    with database.session() as session:
        recorded = events.record(
            session,
            Kind.token_refresh_failed,
            outcome=FAILURE,
            user_id="alice",
            provider="amazon",
            error_type="lwa_timeout",
            refresh_token="Atzr|secret",
            attempt=2,
        )
        assert recorded in session.new  # written with the session's next flush
    after = datetime.now(UTC)
    [event] = stored(database)
    assert (event.kind, event.outcome, event.user_id, event.provider, event.error_type) == (
        "token_refresh_failed",
        FAILURE,
        "alice",
        "amazon",
        "lwa_timeout",
    )
    assert event.detail == {"refresh_token": "[redacted]", "attempt": 2}
    assert before <= event.occurred_at <= after


def test_an_event_without_an_outcome_is_info_and_one_its_kind_never_has_is_refused(
    database: Database,
) -> None:
    with database.session() as session:
        events.record(session, Kind.reconnect_requested)
    [event] = stored(database)
    assert (event.outcome, event.user_id, event.provider, event.error_type, event.detail) == (
        INFO,
        None,
        None,
        None,
        {},
    )
    with pytest.raises(ValueError) as refused:
        events.entry(Kind.token_refreshed)
    assert str(refused.value) == "a token_refreshed event is never recorded as 'info'"
    assert events.entry(Kind.status_changed, outcome=FAILURE)["outcome"] == FAILURE


def test_rows_from_entry_are_stored_by_add_all_and_record_all_in_order(
    database: Database,
) -> None:
    with database.session() as session:
        events.add_all(
            session,
            [
                events.entry(Kind.token_refreshed, outcome=SUCCESS, user_id="a", provider="amazon"),
                events.entry(Kind.seller_checked, outcome=SUCCESS, user_id="b", token="t"),
            ],
        )
        events.record(session, Kind.keys_rotated, outcome=SUCCESS)
    with database.session() as session:
        events.record_all(
            session,
            [
                events.entry(Kind.token_refresh_failed, outcome=FAILURE, error_type="x"),
                events.entry(Kind.events_pruned, outcome=SUCCESS, count=3),
            ],
        )
        events.record_all(session, [])
    assert [(e.kind, e.user_id, e.provider, e.error_type, e.detail) for e in stored(database)] == [
        ("token_refreshed", "a", "amazon", None, {}),
        ("seller_checked", "b", None, None, {"token": "[redacted]"}),
        ("keys_rotated", None, None, None, {}),
        ("token_refresh_failed", None, None, "x", {}),
        ("events_pruned", None, None, None, {"count": 3}),
    ]


def seed(database: Database) -> dict[str, int]:
    """Events at known moments, not in the order of their ids: alice's on Amazon and Stripe,
    bob's, and an operator's."""
    rows = [
        ("alice_stripe", "alice", "stripe", Kind.stripe_customer_pending, 10),
        ("bob_amazon", "bob", "amazon", Kind.status_changed, 20),
        ("alice_alert", "alice", "amazon", Kind.notification_created, 30),
        ("operators", None, None, Kind.keys_rotated, 40),
        ("alice_amazon_new", "alice", "amazon", Kind.token_refreshed, 50),
        ("alice_amazon_old", "alice", "amazon", Kind.status_changed, 0),
    ]
    ids = {}
    with database.session() as session:
        for name, user, provider, kind, minutes in rows:
            outcome = next(iter(events.OUTCOMES[kind]))
            event = events.record(session, kind, outcome=outcome, user_id=user, provider=provider)
            event.occurred_at = MOMENT + timedelta(minutes=minutes)
            session.flush()
            ids[name] = event.id
    return ids


def names(found: Any, ids: dict[str, int]) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[e.id] for e in found]


def test_a_user_s_history_is_their_own_events_newest_first(database: Database) -> None:
    ids = seed(database)
    with database.session() as session:
        assert names(events.history(session, user_id="alice"), ids) == [
            "alice_amazon_new",
            "alice_alert",
            "alice_stripe",
            "alice_amazon_old",
        ]
        assert names(events.history(session, user_id="bob"), ids) == ["bob_amazon"]
        assert events.history(session, user_id="carol") == []


def test_a_user_s_history_by_provider_since_kinds_and_limit(database: Database) -> None:
    ids = seed(database)
    with database.session() as session:
        amazon = events.history(session, user_id="alice", provider="amazon")
        assert names(amazon, ids) == ["alice_amazon_new", "alice_alert", "alice_amazon_old"]
        since = events.history(session, user_id="alice", since=MOMENT + timedelta(minutes=30))
        assert names(since, ids) == ["alice_amazon_new", "alice_alert"]  # the moment counts
        shown = events.history(session, user_id="alice", kinds=events.SHOWN_TO_USERS)
        assert names(shown, ids) == ["alice_amazon_new", "alice_stripe", "alice_amazon_old"]
        some = events.history(session, user_id="alice", kinds={"token_refreshed", "other"})
        assert names(some, ids) == ["alice_amazon_new"]
        assert events.history(session, user_id="alice", kinds=()) == []
        assert names(events.history(session, user_id="alice", limit=2), ids) == [
            "alice_amazon_new",
            "alice_alert",
        ]


def test_the_operators_history_is_everyone_s_and_their_own(database: Database) -> None:
    ids = seed(database)
    with database.session() as session:
        assert names(events.all_history(session), ids) == [
            "alice_amazon_new",
            "operators",
            "alice_alert",
            "bob_amazon",
            "alice_stripe",
            "alice_amazon_old",
        ]
        amazon = events.all_history(session, provider="amazon", limit=3)
        assert names(amazon, ids) == ["alice_amazon_new", "alice_alert", "bob_amazon"]
        since = events.all_history(session, since=MOMENT + timedelta(minutes=40))
        assert names(since, ids) == ["alice_amazon_new", "operators"]


def test_events_at_the_same_moment_are_newest_id_first(db: Any) -> None:
    """On both databases: the rows are rewritten out of their ids' order, so neither the
    order they are stored in nor its reverse is the newest id first."""
    database = Database(db.url)
    try:
        with database.session() as session:
            recorded = [
                events.record(session, Kind.reconnect_requested, user_id="alice") for _ in range(3)
            ]
            session.flush()
            for event in (recorded[2], recorded[0], recorded[1]):
                event.occurred_at = MOMENT
                session.flush()
            newest_first = [e.id for e in reversed(recorded)]
            assert [e.id for e in events.history(session, user_id="alice")] == newest_first
            assert [e.id for e in events.all_history(session)] == newest_first
    finally:
        database.dispose()


def test_histories_are_capped_at_1000_unless_told(database: Database) -> None:
    with database.session() as session:
        row = events.entry(Kind.status_changed, user_id="alice")
        events.record_all(session, [row] * 1001)
    with database.session() as session:
        assert len(events.history(session, user_id="alice")) == 1000
        assert len(events.all_history(session)) == 1000
        assert len(events.status_changes_of(session, "alice", after=0)) == 1000


def changes(database: Database) -> dict[str, int]:
    """Status changes of alice and bob, and alice's other events, in this order."""
    ids = {}
    with database.session() as session:
        for name, user, kind in (
            ("alice_1", "alice", Kind.status_changed),
            ("bob_1", "bob", Kind.status_changed),
            ("alice_other", "alice", Kind.reconnect_requested),
            ("alice_2", "alice", Kind.status_changed),
            ("alice_3", "alice", Kind.status_changed),
        ):
            event = events.record(
                session,
                kind,
                user_id=user,
                provider="amazon",
                **{"from": "active", "to": "revoked"},
            )
            session.flush()
            ids[name] = event.id
    return ids


def test_a_resumed_stream_replays_the_user_s_own_status_changes_after_the_id(
    database: Database,
) -> None:
    ids = changes(database)
    with database.session() as session:
        mine = events.status_changes_of(session, "alice", after=0)
        assert names(mine, ids) == ["alice_1", "alice_2", "alice_3"]
        after = events.status_changes_of(session, "alice", after=ids["alice_2"])
        assert names(after, ids) == ["alice_3"]
        assert names(events.status_changes_of(session, "alice", after=0, limit=2), ids) == [
            "alice_1",
            "alice_2",
        ]
        assert names(events.status_changes_of(session, "bob", after=0), ids) == ["bob_1"]
        assert events.status_changes_of(session, "carol", after=0) == []
        [row] = after
        assert (row.user_id, row.provider, row.kind, row.detail["to"]) == (
            "alice",
            "amazon",
            "status_changed",
            "revoked",
        )


def test_the_feed_reads_what_is_new_oldest_first_and_the_newest_id(database: Database) -> None:
    with database.session() as session:
        assert events.last_id(session) == 0
        assert events.newer_than(session, 0) == []
    ids = changes(database)
    everyone = ["alice_1", "bob_1", "alice_other", "alice_2", "alice_3"]
    with database.session() as session:
        assert names(events.newer_than(session, 0), ids) == everyone
        assert names(events.newer_than(session, ids["bob_1"]), ids) == everyone[2:]
        assert names(events.newer_than(session, 0, limit=2), ids) == everyone[:2]
        assert events.last_id(session) == ids["alice_3"]
        found = events.with_ids(session, [ids["alice_3"], 10_000, ids["bob_1"]])
        assert names(found, ids) == ["bob_1", "alice_3"]
        [row] = events.newer_than(session, ids["alice_2"])
        assert (row.user_id, row.provider, row.kind, row.occurred_at is not None) == (
            "alice",
            "amazon",
            "status_changed",
            True,
        )


def test_the_feed_reads_at_most_5000_new_events_at_a_time(database: Database) -> None:
    with database.session() as session:
        events.record_all(session, [events.entry(Kind.reconnect_requested)] * 5001)
    with database.session() as session:
        assert len(events.newer_than(session, 0)) == 5000


def test_an_event_s_view_is_every_field_with_a_utc_time(database: Database) -> None:
    with database.session() as session:
        event = events.record(
            session,
            Kind.seller_check_failed,
            outcome=FAILURE,
            user_id="alice",
            provider="amazon",
            error_type="spapi_403",
            status=403,
        )
        session.flush()
        event.occurred_at = datetime(2024, 1, 2, 3, 4, 5, 999, tzinfo=UTC)
        assert events.view(event) == {
            "id": event.id,
            "occurred_at": "2024-01-02T03:04:05Z",
            "user_id": "alice",
            "provider": "amazon",
            "kind": "seller_check_failed",
            "outcome": FAILURE,
            "error_type": "spapi_403",
            "detail": {"status": 403},
        }


def test_a_status_change_as_the_stream_sends_it(database: Database) -> None:
    with database.session() as session:
        changed = events.record(
            session,
            Kind.status_changed,
            outcome=FAILURE,
            user_id="alice",
            provider="amazon",
            **{"from": "active", "to": "revoked", "reason": "invalid_grant"},
        )
        bare = events.record(session, Kind.status_changed, user_id="alice")
        session.flush()
        changed.occurred_at = bare.occurred_at = MOMENT
    with database.session() as session:
        [row, bare_row] = events.newer_than(session, changed.id - 1)
    assert events.status_change_view(row) == {
        "provider": "amazon",
        "status": "revoked",
        "previous_status": "active",
        "reason": "invalid_grant",
        "changed_at": "2024-05-01T12:00:00Z",
        "message": (
            "Your amazon integration has been revoked. "
            "Please reconnect your account to restore access."
        ),
    }
    assert events.status_change_view(bare_row) == {
        "provider": "",
        "status": "",
        "previous_status": None,
        "reason": None,
        "changed_at": "2024-05-01T12:00:00Z",
        "message": "Your  integration is being set up",
    }
    no_detail = SimpleNamespace(**(bare_row._asdict() | {"detail": None}))
    assert events.status_change_view(no_detail)["status"] == ""
