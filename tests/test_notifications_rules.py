"""The notification rules (``integrations/notifications.py``), called directly on a migrated
SQLite file:

- one open notification per dedupe key (``kind:provider:user``, ``-`` for none): the same
  condition does not notify again until it is resolved; creating one records a
  ``notification_created`` event, and an admin one is put in the alerts' outbox (resolving it
  too);
- ``batched``: the same rules for a batch of sellers, written when the batch ends, nothing if
  it raises; one opened meanwhile elsewhere is skipped, the rest written one at a time;
- reads: a user's inbox is their own user notifications alone, the operators' reads are
  separate (every user's, the admins'); newest first, unread, limit;
- marking read: a user marks only their own user notifications, all or nothing; the operators
  mark any;
- the app-credentials alert: once until the provider takes the credentials again.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.engine import Database
from discoveryctl.db.models import AlertDelivery, Event, Notification, table_of
from discoveryctl.errors import NotFound
from discoveryctl.integrations import notifications
from discoveryctl.integrations.notifications import ADMIN, USER


@pytest.fixture
def database(sqlite_db: Any) -> Iterator[Database]:
    database = Database(sqlite_db.url)
    yield database
    database.dispose()


def lost(session: Session, user: str | None, audience: str = USER, **extra: Any) -> Any:
    """Notify ``user`` that their Amazon connection is lost; (notification, created)."""
    return notifications.notify(
        session,
        audience=audience,
        kind="connection_lost",
        title="Amazon connection lost",
        message="Please reconnect",
        user_id=user,
        provider="amazon",
        **extra,
    )


def stored(database: Database) -> list[Notification]:
    with database.session() as session:
        return list(session.scalars(sa.select(Notification).order_by(Notification.id)))


def outbox(database: Database) -> list[tuple[int, str]]:
    with database.session() as session:
        rows = session.execute(
            sa.select(AlertDelivery.notification_id, AlertDelivery.state).order_by(AlertDelivery.id)
        )
        return [(n, s) for n, s in rows]


def created_events(database: Database) -> list[tuple[str | None, str | None, dict[str, Any]]]:
    with database.session() as session:
        found = session.scalars(
            sa.select(Event).where(Event.kind == "notification_created").order_by(Event.id)
        )
        return [(e.user_id, e.provider, e.detail) for e in found]


def test_a_notification_is_stored_with_what_it_was_given_and_its_dedupe_key(
    database: Database,
) -> None:
    before = datetime.now(UTC)
    with database.session() as session:
        notification, created = lost(session, "alice", detail={"reconnectUrl": "https://x/y"})
        assert created is True
        first_id = notification.id
    after = datetime.now(UTC)
    [row] = stored(database)
    assert row.id == first_id
    assert (row.audience, row.kind, row.title, row.message) == (
        USER,
        "connection_lost",
        "Amazon connection lost",
        "Please reconnect",
    )
    assert (row.user_id, row.provider, row.detail) == (
        "alice",
        "amazon",
        {"reconnectUrl": "https://x/y"},
    )
    assert row.dedupe_key == "connection_lost:amazon:alice"
    assert before <= row.created_at <= after
    assert row.read_at is None and row.resolved_at is None


def test_a_notification_without_detail_provider_or_user_keys_them_as_dashes(
    database: Database,
) -> None:
    with database.session() as session:
        notifications.notify(session, audience=ADMIN, kind="k", title="t", message="m")
    [row] = stored(database)
    assert row.dedupe_key == "k:-:-"
    assert row.detail == {}
    assert (row.user_id, row.provider) == (None, None)
    assert notifications.dedupe_key("k", "stripe", None) == "k:stripe:-"
    assert notifications.dedupe_key("k", None, "bob") == "k:-:bob"


def test_an_explicit_key_replaces_the_dedupe_key(database: Database) -> None:
    with database.session() as session:
        assert lost(session, "alice", key="mine")[1] is True
        assert lost(session, "bob", key="mine")[1] is False  # the same key: still open
    assert [r.dedupe_key for r in stored(database)] == ["mine"]


def test_the_same_condition_does_not_notify_again_until_it_is_resolved(
    database: Database,
) -> None:
    with database.session() as session:
        first, _ = lost(session, "alice")
    with database.session() as session:
        again, created = lost(session, "alice")
        assert created is False and again.id == first.id
        assert lost(session, "bob")[1] is True  # another user's is another key
    with database.session() as session:
        assert notifications.resolve(session, "connection_lost:amazon:alice") == 1
        assert notifications.resolve(session, "connection_lost:amazon:alice") == 0
    with database.session() as session:
        reopened, created = lost(session, "alice")
        assert created is True and reopened.id != first.id
    rows = stored(database)
    assert [(r.user_id, r.resolved_at is None) for r in rows] == [
        ("alice", False),
        ("bob", True),
        ("alice", True),
    ]
    assert rows[0].resolved_at is not None and rows[0].resolved_at >= rows[0].created_at


def test_creating_one_records_an_event_and_a_repeat_does_not(database: Database) -> None:
    with database.session() as session:
        lost(session, "alice")
        lost(session, "alice")
        lost(session, "bob", audience=ADMIN)
    assert created_events(database) == [
        (
            "alice",
            "amazon",
            {
                "audience": USER,
                "notification_kind": "connection_lost",
                "dedupe_key": "connection_lost:amazon:alice",
            },
        ),
        (
            "bob",
            "amazon",
            {
                "audience": ADMIN,
                "notification_kind": "connection_lost",
                "dedupe_key": "connection_lost:amazon:bob",
            },
        ),
    ]


def test_an_admin_notification_and_its_resolution_go_to_the_outbox_a_user_s_do_not(
    database: Database,
) -> None:
    with database.session() as session:
        admins, _ = lost(session, "alice", audience=ADMIN)
        lost(session, "bob")
    assert outbox(database) == [(admins.id, "open")]
    with database.session() as session:
        assert notifications.resolve(session, "connection_lost:amazon:bob") == 1
        assert notifications.resolve(session, "connection_lost:amazon:alice") == 1
    assert outbox(database) == [(admins.id, "open"), (admins.id, "resolved")]


def test_one_opened_by_another_process_first_is_returned_not_created(
    database: Database, sqlite_db: Any
) -> None:
    """Between this process's look for an open one and its insert, another process opens it."""
    other = Database(sqlite_db.url)
    theirs: list[int] = []

    def open_it_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if theirs or not statement.startswith("INSERT INTO notifications"):
            return
        with other.session() as elsewhere:
            theirs.append(lost(elsewhere, "alice")[0].id)

    try:
        with database.session() as session:
            sa.event.listen(session.connection(), "before_cursor_execute", open_it_first)
            found, created = lost(session, "alice")
            assert created is False
            assert found.id == theirs[0]
    finally:
        other.dispose()
    assert [r.id for r in stored(database)] == theirs
    assert len(created_events(database)) == 1  # theirs alone


def count(session: Session) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Notification)) or 0


def test_a_batch_decides_by_the_same_rules_and_writes_when_it_ends(database: Database) -> None:
    with database.session() as session:
        lost(session, "u0")  # open before the batch
    with database.session() as session:
        with notifications.batched(session, ["u0", "u1", "u2"]):
            assert lost(session, "u0")[1] is False  # still open
            assert lost(session, "u1")[1] is True
            assert lost(session, "u1")[1] is False  # opened in this batch: not twice
            assert lost(session, "u2")[1] is True
            assert notifications.resolve(session, "connection_lost:amazon:u2") == 1
            assert notifications.resolve(session, "connection_lost:amazon:u0") == 1
            assert lost(session, "u0")[1] is True  # resolved, so it may open again
            assert count(session) == 1  # nothing written yet
        assert count(session) == 4
    assert [(r.user_id, r.resolved_at is None) for r in stored(database)] == [
        ("u0", False),
        ("u1", True),
        ("u2", False),
        ("u0", True),
    ]
    assert [e[0] for e in created_events(database)] == ["u0", "u1", "u2", "u0"]


def test_in_a_batch_resolving_one_open_before_it_or_none_is_done_at_once(
    database: Database,
) -> None:
    with database.session() as session:
        admins, _ = lost(session, "alice", audience=ADMIN)
    with database.session() as session, notifications.batched(session, ["alice"]):
        assert notifications.resolve(session, "connection_lost:amazon:alice") == 1
        assert notifications.resolve(session, "nothing:-:-") == 0
        assert count(session) == 1
        [row] = session.scalars(sa.select(Notification)).all()
        assert row.resolved_at is not None
    assert outbox(database) == [(admins.id, "open"), (admins.id, "resolved")]


def test_outside_its_users_a_batch_notifies_at_once(database: Database) -> None:
    with database.session() as session, notifications.batched(session, ["u1"]):
        lost(session, "u1")
        lost(session, "bob")
        session.flush()
        assert [r.user_id for r in session.scalars(sa.select(Notification))] == ["bob"]
        assert lost(session, "bob")[1] is False
    assert sorted(r.user_id or "" for r in stored(database)) == ["bob", "u1"]


def test_a_batch_that_raises_writes_nothing_and_leaves_the_session_unbatched(
    database: Database,
) -> None:
    with database.session() as session:
        with pytest.raises(RuntimeError), notifications.batched(session, ["u1"]):
            lost(session, "u1")
            raise RuntimeError("stop")
        session.flush()
        assert session.scalars(sa.select(Notification)).all() == []
        assert lost(session, "u1")[1] is True  # at once now: no batch is left behind
        session.flush()
        assert len(session.scalars(sa.select(Notification)).all()) == 1


def test_an_empty_batch_writes_nothing(database: Database) -> None:
    with database.session() as session, notifications.batched(session, ["u1"]):
        pass
    assert stored(database) == [] and created_events(database) == []


def test_an_admin_alert_opened_and_resolved_in_one_batch_reaches_the_outbox_twice(
    database: Database,
) -> None:
    with database.session() as session, notifications.batched(session, ["alice"]):
        lost(session, "alice", audience=ADMIN)
        lost(session, "alice", audience=USER, key="users")
        assert notifications.resolve(session, "connection_lost:amazon:alice") == 1
    [admins, users] = stored(database)
    assert admins.resolved_at is not None and users.resolved_at is None
    assert outbox(database) == [(admins.id, "open"), (admins.id, "resolved")]


def test_one_opened_meanwhile_is_skipped_and_the_rest_of_the_batch_written_as_decided(
    database: Database,
) -> None:
    """The batch's key ``k`` is opened at once for bob (outside the batch) before the batch
    ends: the batch skips it and writes its others one at a time, each as decided."""
    with database.session() as session, notifications.batched(session, ["u1"]):
        assert lost(session, "u1", key="k")[1] is True
        assert lost(session, "u1", key="k2", audience=ADMIN)[1] is True
        assert lost(session, "u1", key="k3", audience=ADMIN, detail={"n": 3})[1] is True
        assert notifications.resolve(session, "k3") == 1
        assert lost(session, "bob", key="k")[1] is True  # written at once
    rows = stored(database)
    assert [(r.user_id, r.dedupe_key, r.audience) for r in rows] == [
        ("bob", "k", USER),
        ("u1", "k2", ADMIN),
        ("u1", "k3", ADMIN),
    ]
    k2, k3 = rows[1], rows[2]
    assert k2.resolved_at is None and k3.resolved_at is not None
    assert (k3.kind, k3.title, k3.message, k3.provider, k3.detail) == (
        "connection_lost",
        "Amazon connection lost",
        "Please reconnect",
        "amazon",
        {"n": 3},
    )
    assert k3.resolved_at >= k3.created_at
    assert outbox(database) == [(k2.id, "open"), (k3.id, "open"), (k3.id, "resolved")]
    assert [(e[0], e[2]["dedupe_key"]) for e in created_events(database)] == [
        ("bob", "k"),
        ("u1", "k2"),
        ("u1", "k3"),
    ]


def test_a_batch_s_notification_keeps_the_time_it_was_decided_not_written(
    database: Database,
) -> None:
    with database.session() as session:
        with notifications.batched(session, ["u1"]):
            lost(session, "u1", key="k")
            lost(session, "u1", key="k2")
            decided = datetime.now(UTC)
            lost(session, "bob", key="k")  # forces the one-at-a-time path for the rest
        with notifications.batched(session, ["u2"]):
            lost(session, "u2", key="k3")
            decided_alone = datetime.now(UTC)
    [_, k2, k3] = stored(database)
    assert k2.created_at <= decided
    assert k3.created_at <= decided_alone


def seed_inboxes(database: Database) -> dict[str, int]:
    """alice: two of her own (one read), an admin one about her; bob: one of his own."""
    ids = {}
    with database.session() as session:
        ids["alice_old"] = lost(session, "alice", key="a1")[0].id
        ids["alice_new"] = lost(session, "alice", key="a2")[0].id
        ids["about_alice"] = lost(session, "alice", audience=ADMIN, key="a3")[0].id
        ids["bob"] = lost(session, "bob", key="b1")[0].id
        ids["app"] = lost(session, None, audience=ADMIN, key="app")[0].id
        session.flush()
        moment = datetime(2024, 1, 1, tzinfo=UTC)
        minutes = {"alice_old": 1, "alice_new": 2, "about_alice": 3, "bob": 4, "app": 0}
        for name, at in minutes.items():
            session.get_one(Notification, ids[name]).created_at = moment + timedelta(minutes=at)
    return ids


def test_a_user_s_inbox_is_their_own_user_notifications_newest_first(database: Database) -> None:
    ids = seed_inboxes(database)
    with database.session() as session:
        mine = notifications.inbox(session, user_id="alice")
        assert [n.id for n in mine] == [ids["alice_new"], ids["alice_old"]]
        assert [n.id for n in notifications.inbox(session, user_id="bob")] == [ids["bob"]]
        assert notifications.inbox(session, user_id="carol") == []
        assert [n.id for n in notifications.inbox(session, user_id="alice", limit=1)] == [
            ids["alice_new"]
        ]
        notifications.acknowledge(session, [ids["alice_new"]], user_id="alice")
        unread = notifications.inbox(session, user_id="alice", unread=True)
        assert [n.id for n in unread] == [ids["alice_old"]]
        assert len(notifications.inbox(session, user_id="alice")) == 2  # read ones too


def test_the_operators_read_every_user_s_notifications_and_the_admins_apart(
    database: Database,
) -> None:
    ids = seed_inboxes(database)
    with database.session() as session:
        users = notifications.all_user_notifications(session)
        assert [n.id for n in users] == [ids["bob"], ids["alice_new"], ids["alice_old"]]
        assert [n.id for n in notifications.all_user_notifications(session, limit=2)] == [
            ids["bob"],
            ids["alice_new"],
        ]
        admins = notifications.admin_inbox(session)
        assert [n.id for n in admins] == [ids["about_alice"], ids["app"]]
        about = notifications.admin_inbox(session, about_user="alice")
        assert [n.id for n in about] == [ids["about_alice"]]
        assert [n.id for n in notifications.admin_inbox(session, limit=1)] == [ids["about_alice"]]
        notifications.acknowledge_any(session, [ids["bob"], ids["app"]])
        unread_users = notifications.all_user_notifications(session, unread=True)
        assert [n.id for n in unread_users] == [ids["alice_new"], ids["alice_old"]]
        assert [n.id for n in notifications.admin_inbox(session, unread=True)] == [
            ids["about_alice"]
        ]
        assert len(notifications.all_user_notifications(session)) == 3  # read ones too
        assert len(notifications.admin_inbox(session)) == 2


def test_notifications_at_the_same_moment_are_newest_id_first(database: Database) -> None:
    with database.session() as session:
        first = lost(session, "alice", key="a1")[0].id
        second = lost(session, "alice", key="a2")[0].id
        admin_first = lost(session, "alice", audience=ADMIN, key="a3")[0].id
        admin_second = lost(session, "alice", audience=ADMIN, key="a4")[0].id
        session.flush()
        moment = datetime(2024, 1, 1, tzinfo=UTC)
        for each in session.scalars(sa.select(Notification)):
            each.created_at = moment
    with database.session() as session:
        assert [n.id for n in notifications.inbox(session, user_id="alice")] == [second, first]
        assert [n.id for n in notifications.all_user_notifications(session)] == [second, first]
        assert [n.id for n in notifications.admin_inbox(session)] == [admin_second, admin_first]


def test_reads_are_capped_at_500_unless_told(database: Database) -> None:
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        {
            "audience": audience,
            "kind": "k",
            "title": "t",
            "message": "m",
            "user_id": "alice",
            "detail": {},
            "dedupe_key": f"{audience}{n}",
            "created_at": moment,
        }
        for n in range(501)
        for audience in (USER, ADMIN)
    ]
    with database.session() as session:
        session.execute(sa.insert(table_of(Notification)), rows)
    with database.session() as session:
        assert len(notifications.inbox(session, user_id="alice")) == 500
        assert len(notifications.all_user_notifications(session)) == 500
        assert len(notifications.admin_inbox(session)) == 500


def test_a_notification_s_view_is_every_field_with_utc_times(database: Database) -> None:
    with database.session() as session:
        notification, _ = lost(session, "alice", detail={"reconnectUrl": "u"})
        session.flush()
        notification.created_at = datetime(2024, 1, 2, 3, 4, 5, 600, tzinfo=UTC)
        assert notifications.view(notification) == {
            "id": notification.id,
            "audience": USER,
            "user_id": "alice",
            "provider": "amazon",
            "kind": "connection_lost",
            "title": "Amazon connection lost",
            "message": "Please reconnect",
            "detail": {"reconnectUrl": "u"},
            "created_at": "2024-01-02T03:04:05Z",
            "read_at": None,
            "resolved_at": None,
        }
        notification.read_at = datetime(2024, 1, 3, tzinfo=UTC)
        notification.resolved_at = datetime(2024, 1, 4, tzinfo=UTC)
        shown = notifications.view(notification)
        assert (shown["read_at"], shown["resolved_at"]) == (
            "2024-01-03T00:00:00Z",
            "2024-01-04T00:00:00Z",
        )


def read_ids(database: Database) -> list[int]:
    return [r.id for r in stored(database) if r.read_at is not None]


def test_a_user_marks_only_her_own_user_notifications_read(database: Database) -> None:
    ids = seed_inboxes(database)
    for other in (ids["about_alice"], ids["bob"], 999):
        with database.session() as session, pytest.raises(NotFound) as refused:
            notifications.acknowledge(session, [other], user_id="alice")
        assert str(refused.value) == f"no notification with id {other}"
    assert read_ids(database) == []
    with database.session() as session:
        marked = notifications.acknowledge(
            session, [ids["alice_new"], ids["alice_old"], ids["alice_new"]], user_id="alice"
        )
        assert marked == sorted([ids["alice_new"], ids["alice_old"]])
    assert read_ids(database) == sorted([ids["alice_new"], ids["alice_old"]])


def test_marking_read_is_all_or_nothing_and_names_every_missing_id(database: Database) -> None:
    ids = seed_inboxes(database)
    with database.session() as session, pytest.raises(NotFound) as refused:
        notifications.acknowledge(
            session, [ids["bob"], 1001, ids["alice_old"], 1000], user_id="alice"
        )
    assert str(refused.value) == f"no notification with id {ids['bob']}, 1000, 1001"
    assert read_ids(database) == []
    with database.session() as session, pytest.raises(NotFound) as refused:
        notifications.acknowledge_any(session, [ids["bob"], 1000])
    assert str(refused.value) == "no notification with id 1000"
    assert read_ids(database) == []


def test_marking_read_again_keeps_the_first_time(database: Database) -> None:
    ids = seed_inboxes(database)
    first = datetime(2024, 1, 1, tzinfo=UTC)
    with database.session() as session:
        session.get_one(Notification, ids["alice_old"]).read_at = first
    before = datetime.now(UTC)
    with database.session() as session:
        notifications.acknowledge(session, [ids["alice_old"], ids["alice_new"]], user_id="alice")
    by_id = {r.id: r.read_at for r in stored(database)}
    assert by_id[ids["alice_old"]] == first
    new = by_id[ids["alice_new"]]
    assert new is not None and new >= before


def test_the_operators_mark_any_notification_read(database: Database) -> None:
    ids = seed_inboxes(database)
    with database.session() as session:
        assert notifications.acknowledge_any(session, [ids["app"], ids["bob"]]) == sorted(
            [ids["app"], ids["bob"]]
        )
    assert read_ids(database) == sorted([ids["app"], ids["bob"]])


def test_the_app_credentials_alert_is_raised_once_until_they_are_accepted(
    database: Database,
) -> None:
    with database.session() as session:
        assert notifications.alert_app_credentials(session, "amazon", "invalid_client") is True
        assert notifications.alert_app_credentials(session, "amazon", "again") is False
        assert notifications.alert_app_credentials(session, "stripe", "bad key") is True
    rows = stored(database)
    assert [(r.audience, r.kind, r.provider, r.user_id) for r in rows] == [
        (ADMIN, "app_credentials_rejected", "amazon", None),
        (ADMIN, "app_credentials_rejected", "stripe", None),
    ]
    assert (rows[0].title, rows[0].message) == (
        "Amazon rejected the app's credentials",
        "invalid_client",
    )
    with database.session() as session:
        assert notifications.app_credentials_accepted(session, "amazon") is True
        assert notifications.app_credentials_accepted(session, "amazon") is False
    assert [r.resolved_at is None for r in stored(database)] == [False, True]
