"""The integration rules, called directly on a migrated SQLite file
(``discoveryctl.integrations.lifecycle`` and ``vocabulary``): the one "unhealthy" rule, in Python
and in SQL alike (the seller must reconnect, or a transient failure is counted now); what each
status says to the seller and the reconnect URL; the filters, listings and counts; and each
transition: the event it leaves, the seller's notification when the connection is lost, the
admin alert at the third failure in a row, and what a recovery resolves and forgets.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.engine import Database
from discoveryctl.db.models import Event, IntegrationStatus, Notification, table_of
from discoveryctl.integrations import lifecycle, vocabulary
from discoveryctl.integrations.vocabulary import Status

FRONTEND = "https://app.example.com/"


@pytest.fixture
def database(sqlite_db: Any) -> Iterator[Database]:
    opened = Database(sqlite_db.url)
    yield opened
    opened.dispose()


@pytest.fixture
def session(database: Database) -> Iterator[Session]:
    with database.session() as opened:
        yield opened


def add(
    session: Session, user: str, status: str = Status.active, provider: str = "amazon", **meta: Any
) -> IntegrationStatus:
    integration = IntegrationStatus(user_id=user, provider=provider, status=status, meta=meta)
    session.add(integration)
    session.flush()
    return integration


def events(session: Session) -> list[dict[str, Any]]:
    session.flush()
    found = session.scalars(sa.select(Event).order_by(Event.id))
    return [
        {
            "kind": e.kind,
            "outcome": e.outcome,
            "user_id": e.user_id,
            "provider": e.provider,
            "error_type": e.error_type,
            "detail": e.detail,
        }
        for e in found
    ]


def notices(session: Session) -> list[dict[str, Any]]:
    session.flush()
    found = session.scalars(sa.select(Notification).order_by(Notification.id))
    return [
        {
            "audience": n.audience,
            "kind": n.kind,
            "title": n.title,
            "message": n.message,
            "user_id": n.user_id,
            "provider": n.provider,
            "detail": n.detail,
            "dedupe_key": n.dedupe_key,
            "resolved": n.resolved_at is not None,
        }
        for n in found
    ]


# -- vocabulary ---------------------------------------------------------------------------------


def test_each_status_says_what_it_means_to_the_seller() -> None:
    said = {status: vocabulary.message_for("amazon", status) for status in Status}
    assert said == {
        Status.active: "Your amazon integration is working properly",
        Status.revoked: "Your amazon integration has been revoked. "
        "Please reconnect your account to restore access.",
        Status.expired: "Your amazon integration has expired. "
        "Please reconnect your account to restore access.",
        Status.pending: "Your amazon integration is being set up",
    }
    assert vocabulary.message_for("stripe", "active", synced=False) == (
        "Your stripe integration has not been checked yet"
    )
    assert vocabulary.message_for("stripe", "revoked", synced=False).startswith(
        "Your stripe integration has been revoked."
    )


def test_only_a_revoked_or_expired_authorization_needs_a_reconnect() -> None:
    assert [vocabulary.needs_reconnect(status) for status in Status] == [
        False,
        True,
        True,
        False,
    ]
    assert (Status.revoked, Status.expired) == vocabulary.NEEDS_RECONNECT


@pytest.mark.parametrize(
    ("status", "meta", "unhealthy"),
    [
        ("active", {}, False),
        ("pending", {}, False),
        ("active", {"consecutive_failures": 0}, False),
        ("active", {"consecutive_failures": 1}, True),
        ("pending", {"consecutive_failures": 2}, True),
        ("active", {"consecutive_failures": None}, False),
        ("revoked", {}, True),
        ("expired", {"consecutive_failures": 0}, True),
    ],
)
def test_unhealthy_means_a_reconnect_is_needed_or_a_failure_is_counted_in_python_and_sql(
    session: Session, status: str, meta: dict[str, Any], unhealthy: bool
) -> None:
    assert vocabulary.is_unhealthy(status, meta) is unhealthy
    add(session, "u1", status, **meta)
    by_status, counted = lifecycle.counts(session)
    assert (by_status, counted) == ({status: 1}, int(unhealthy))
    table = table_of(IntegrationStatus)
    found = session.scalars(sa.select(table.c.user_id).where(lifecycle.unhealthy_clause())).all()
    assert found == (["u1"] if unhealthy else [])
    reconnect = session.scalars(
        sa.select(table.c.user_id).where(lifecycle.needs_reconnect_clause())
    ).all()
    assert reconnect == (["u1"] if vocabulary.needs_reconnect(status) else [])
    healthy = session.scalars(
        sa.select(table.c.user_id).where(sa.not_(lifecycle.unhealthy_clause()))
    ).all()
    assert healthy == ([] if unhealthy else ["u1"])  # true or false, never unknown


def test_consecutive_failures_are_a_count_or_none() -> None:
    assert vocabulary.consecutive_failures({"consecutive_failures": 4}) == 4
    assert vocabulary.consecutive_failures({}) == 0
    assert vocabulary.consecutive_failures({"consecutive_failures": "4"}) == 0


def test_the_reconnect_url_is_the_front_ends_connect_page_for_that_user() -> None:
    assert vocabulary.reconnect_url("https://app.example.com//", "amazon", "a b/c&d") == (
        "https://app.example.com/integrations/amazon/connect?reconnect=true&userId=a%20b%2Fc%26d"
    )
    assert vocabulary.reconnect_url("/APPX/", "stripe", "u") == (
        "/APPX/integrations/stripe/connect?reconnect=true&userId=u"
    )


def test_times_are_shown_in_utc_with_a_z_to_the_second() -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert vocabulary.isoformat(moment) == "2030-01-02T03:04:05Z"


def test_an_integration_is_shown_with_its_last_sync_and_message() -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    synced = {"last_synced_at": "2030-01-01T00:00:00Z", "region": "eu"}
    assert vocabulary.api_view("id1", "u1", "amazon", "active", moment, synced) == {
        "id": "id1",
        "user_id": "u1",
        "provider": "amazon",
        "status": "active",
        "updated_at": "2030-01-02T03:04:05Z",
        "metadata": synced,
        "lastSyncedAt": "2030-01-01T00:00:00Z",
        "message": "Your amazon integration is working properly",
    }
    never = vocabulary.api_view("id2", "u2", "stripe", "active", moment, {})
    assert (never["lastSyncedAt"], never["message"]) == (
        None,
        "Your stripe integration has not been checked yet",
    )


# -- reading ------------------------------------------------------------------------------------


def test_find_reads_one_users_integration_with_one_provider(session: Session) -> None:
    mine = add(session, "u1")
    add(session, "u1", provider="stripe")
    add(session, "u2")
    assert lifecycle.find(session, "u1", "amazon") is mine
    assert lifecycle.find(session, "u1", "stripe").provider == "stripe"  # type: ignore[union-attr]
    assert lifecycle.find(session, "u1", "amazon", for_update=True) is mine
    assert lifecycle.find(session, "u3", "amazon") is None
    found = lifecycle.find_all(session, ["u2", "u1", "u1", "u9"], "amazon", for_update=True)
    assert sorted((user, i.provider) for user, i in found.items()) == [
        ("u1", "amazon"),
        ("u2", "amazon"),
    ]
    assert lifecycle.find_all(session, [], "amazon") == {}
    assert list(lifecycle.find_all(session, ["u1"], "stripe")) == ["u1"]


def test_find_for_update_holds_the_write_lock_until_the_transaction_ends(
    database: Database, sqlite_db: Any
) -> None:
    import sqlite3

    def another_writer_can_write() -> bool:
        other = sqlite3.connect(sqlite_db.url.removeprefix("sqlite:///"), timeout=0)
        try:
            other.execute("UPDATE integration_status SET status = status")
            other.commit()
        except sqlite3.OperationalError:
            return False
        finally:
            other.close()
        return True

    with database.session() as session:
        add(session, "u1")
    with database.session() as session:
        lifecycle.find(session, "u1", "amazon")
        assert another_writer_can_write()
        lifecycle.find(session, "u1", "amazon", for_update=True)
        assert not another_writer_can_write()
    with database.session() as session:
        lifecycle.find_all(session, ["u1"], "amazon")
        assert another_writer_can_write()
        lifecycle.find_all(session, ["u1"], "amazon", for_update=True)
        assert not another_writer_can_write()


def seed(session: Session) -> None:
    add(session, "c", Status.active)
    add(session, "b", Status.revoked)
    add(session, "a", Status.active, consecutive_failures=2)
    add(session, "a", Status.pending, provider="stripe")
    add(session, "d", Status.expired, provider="stripe")


def users(rows: Any) -> list[tuple[str, str]]:
    return [(row.user_id, row.provider) for row in rows]


def test_listing_orders_by_user_and_provider_and_puts_the_unhealthy_first_when_asked(
    session: Session,
) -> None:
    seed(session)
    assert users(lifecycle.listing(session)) == [
        ("a", "amazon"),
        ("a", "stripe"),
        ("b", "amazon"),
        ("c", "amazon"),
        ("d", "stripe"),
    ]
    assert users(lifecycle.listing(session, unhealthy_first=True)) == [
        ("a", "amazon"),
        ("b", "amazon"),
        ("d", "stripe"),
        ("a", "stripe"),
        ("c", "amazon"),
    ]
    assert users(lifecycle.listing(session, unhealthy_first=True, limit=2)) == [
        ("a", "amazon"),
        ("b", "amazon"),
    ]
    [row] = lifecycle.listing(session, lifecycle.Filters(user_id="b"))
    assert row._fields == ("id", "user_id", "provider", "status", "updated_at", "metadata")
    assert (row.status, row.metadata) == ("revoked", {})


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (lifecycle.Filters(), ["a/amazon", "a/stripe", "b/amazon", "c/amazon", "d/stripe"]),
        (lifecycle.Filters(provider="stripe"), ["a/stripe", "d/stripe"]),
        (lifecycle.Filters(user_id="a"), ["a/amazon", "a/stripe"]),
        (lifecycle.Filters(status="active"), ["a/amazon", "c/amazon"]),
        (lifecycle.Filters(provider="amazon", user_id="a", status="active"), ["a/amazon"]),
        (lifecycle.Filters(provider="amazon", status="pending"), []),
    ],
)
def test_filters_narrow_listings_and_counts_alike(
    session: Session, filters: lifecycle.Filters, expected: list[str]
) -> None:
    seed(session)
    listed = [f"{user}/{provider}" for user, provider in users(lifecycle.listing(session, filters))]
    assert listed == expected
    by_status, _ = lifecycle.counts(session, filters)
    assert sum(by_status.values()) == len(expected)


def test_counts_say_how_many_are_in_each_status_and_how_many_need_attention(
    session: Session,
) -> None:
    assert lifecycle.counts(session) == ({}, 0)
    seed(session)
    add(session, "e", Status.active, consecutive_failures=1)
    assert lifecycle.counts(session) == (
        {"active": 3, "revoked": 1, "expired": 1, "pending": 1},
        4,
    )
    assert lifecycle.counts(session, lifecycle.Filters(provider="stripe")) == (
        {"pending": 1, "expired": 1},
        1,
    )


def test_of_user_reads_one_users_integrations_or_one_of_them(session: Session) -> None:
    seed(session)
    assert users(lifecycle.of_user(session, "a")) == [("a", "amazon"), ("a", "stripe")]
    assert users(lifecycle.of_user(session, "a", "stripe")) == [("a", "stripe")]
    assert users(lifecycle.of_user(session, "b", "stripe")) == []
    [row] = lifecycle.of_user(session, "b")
    assert row._fields == ("id", "user_id", "provider", "status", "updated_at", "metadata")


def test_the_statements_of_one_users_integrations_are_by_user_and_then_by_provider(
    session: Session,
) -> None:
    # Built once, as the module is imported: run here as built, so that they are tested.
    seed(session)
    by_user = session.execute(lifecycle._of_user(provider=False), {"user_id": "a"}).all()
    assert users(by_user) == [("a", "amazon"), ("a", "stripe")]
    assert by_user[0]._fields == (
        "id",
        "user_id",
        "provider",
        "status",
        "updated_at",
        "metadata",
    )
    one = lifecycle._of_user(provider=True)
    assert users(session.execute(one, {"user_id": "a", "provider": "stripe"})) == [("a", "stripe")]


# -- transitions --------------------------------------------------------------------------------


def test_create_stores_the_integration_and_records_it(session: Session) -> None:
    before = datetime.now(UTC)
    made = lifecycle.create(session, "u1", "amazon", Status.pending, region="eu")
    assert len(made.id) == 36  # known before it is written
    session.flush()
    assert lifecycle.find(session, "u1", "amazon") is made
    assert (made.status, made.meta) == ("pending", {"region": "eu"})
    assert len(made.id) == 36
    assert before <= made.created_at == made.updated_at <= datetime.now(UTC)
    assert events(session) == [
        {
            "kind": "integration_created",
            "outcome": "info",
            "user_id": "u1",
            "provider": "amazon",
            "error_type": None,
            "detail": {"status": "pending"},
        }
    ]


def test_update_meta_replaces_keys_and_drops_those_set_to_none(session: Session) -> None:
    integration = add(session, "u1", region="eu", consecutive_failures=2)
    original = integration.meta
    integration.updated_at = datetime(2020, 1, 1, tzinfo=UTC)
    before = datetime.now(UTC)
    lifecycle.update_meta(integration, consecutive_failures=None, last_error="x", seller="s")
    assert integration.meta == {"region": "eu", "last_error": "x", "seller": "s"}
    assert original == {"region": "eu", "consecutive_failures": 2}  # a new dict
    assert integration.updated_at >= before
    session.flush()
    session.expire_all()
    assert lifecycle.find(session, "u1", "amazon").meta["seller"] == "s"  # type: ignore[union-attr]


@pytest.mark.parametrize("lost", [Status.revoked, Status.expired])
def test_losing_the_connection_records_a_failure_and_tells_the_seller_how_to_reconnect(
    session: Session, lost: Status
) -> None:
    integration = add(session, "u 1")
    integration.updated_at = datetime(2020, 1, 1, tzinfo=UTC)
    changed = lifecycle.change_status(
        session, integration, lost, reason="invalid_grant", frontend_url=FRONTEND, error_type="e"
    )
    assert changed is True
    assert integration.status == lost and integration.updated_at.year > 2020
    assert events(session) == [
        {
            "kind": "status_changed",
            "outcome": "failure",
            "user_id": "u 1",
            "provider": "amazon",
            "error_type": "e",
            "detail": {"from": "active", "to": str(lost), "reason": "invalid_grant"},
        },
        {
            "kind": "notification_created",
            "outcome": "info",
            "user_id": "u 1",
            "provider": "amazon",
            "error_type": None,
            "detail": {
                "audience": "user",
                "notification_kind": "connection_lost",
                "dedupe_key": "connection_lost:amazon:u 1",
            },
        },
    ]
    assert notices(session) == [
        {
            "audience": "user",
            "kind": "connection_lost",
            "title": "Amazon connection lost",
            "message": vocabulary.message_for("amazon", lost),
            "user_id": "u 1",
            "provider": "amazon",
            "detail": {
                "reconnectUrl": "https://app.example.com/integrations/amazon/connect"
                "?reconnect=true&userId=u%201",
                "status": str(lost),
            },
            "dedupe_key": "connection_lost:amazon:u 1",
            "resolved": False,
        }
    ]


def test_a_status_it_already_has_changes_nothing(session: Session) -> None:
    integration = add(session, "u1", Status.revoked)
    integration.updated_at = datetime(2020, 1, 1, tzinfo=UTC)
    assert not lifecycle.change_status(
        session, integration, Status.revoked, reason="again", frontend_url=FRONTEND
    )
    assert integration.updated_at == datetime(2020, 1, 1, tzinfo=UTC)
    assert events(session) == [] and notices(session) == []


def test_pending_is_an_info_change_that_notifies_no_one(session: Session) -> None:
    integration = add(session, "u1", consecutive_failures=2)
    assert lifecycle.change_status(
        session, integration, Status.pending, reason="setup", frontend_url=FRONTEND
    )
    [event] = events(session)
    assert (event["outcome"], event["error_type"], event["detail"]) == (
        "info",
        None,
        {"from": "active", "to": "pending", "reason": "setup"},
    )
    assert notices(session) == []
    assert integration.meta == {"consecutive_failures": 2}  # only a recovery forgets them


def open_alerts(session: Session, user: str) -> None:
    """Every alert a recovery resolves, open for ``user`` (and one of another user's)."""
    from discoveryctl.integrations import notifications

    for kind in ("connection_lost", "repeated_failures", "reconnect_requested", "other"):
        notifications.notify(
            session,
            audience="user",
            kind=kind,
            title="t",
            message="m",
            user_id=user,
            provider="amazon",
        )
    notifications.notify(
        session,
        audience="user",
        kind="connection_lost",
        title="t",
        message="m",
        user_id=user,
        provider="stripe",
    )
    notifications.notify(
        session,
        audience="user",
        kind="connection_lost",
        title="t",
        message="m",
        user_id="someone else",
        provider="amazon",
    )


def resolved(session: Session) -> list[str]:
    return [n["dedupe_key"] for n in notices(session) if n["resolved"]]


def test_coming_back_resolves_the_sellers_alerts_and_forgets_its_failures(
    session: Session,
) -> None:
    integration = add(session, "u1", Status.revoked, consecutive_failures=2, last_error={}, x=1)
    open_alerts(session, "u1")
    assert lifecycle.change_status(
        session, integration, Status.active, reason="reconnected", frontend_url=FRONTEND
    )
    assert integration.meta == {"x": 1}
    assert resolved(session) == [
        "connection_lost:amazon:u1",
        "repeated_failures:amazon:u1",
        "reconnect_requested:amazon:u1",
    ]
    status_change = [e for e in events(session) if e["kind"] == "status_changed"]
    assert status_change[0]["outcome"] == "info"


def test_a_success_marks_it_synced_and_resolves_alerts_only_after_failures(
    session: Session,
) -> None:
    healthy = add(session, "u1", last_error={"type": "x"})
    open_alerts(session, "u1")
    before = datetime.now(UTC).replace(microsecond=0)
    lifecycle.record_success(session, healthy)
    synced = datetime.fromisoformat(healthy.meta["last_synced_at"].replace("Z", "+00:00"))
    assert before <= synced <= datetime.now(UTC)
    assert healthy.meta["last_synced_at"].endswith("Z")
    assert set(healthy.meta) == {"last_synced_at"}
    assert resolved(session) == []  # no failure counted: nothing to resolve

    failing = add(session, "u2", consecutive_failures=1, region="eu")
    open_alerts(session, "u2")
    lifecycle.record_success(session, failing)
    assert set(failing.meta) == {"last_synced_at", "region"}
    assert resolved(session) == [
        "connection_lost:amazon:u2",
        "repeated_failures:amazon:u2",
        "reconnect_requested:amazon:u2",
    ]


def test_transient_failures_are_counted_and_the_third_in_a_row_alerts_the_admins_once(
    session: Session,
) -> None:
    integration = add(session, "u1")
    before = datetime.now(UTC).replace(microsecond=0)
    counted = [
        lifecycle.record_transient_failure(
            session, integration, error_type="lwa_timeout", message="timed out"
        )
        for _ in range(2)
    ]
    assert counted == [1, 2] and notices(session) == []
    assert integration.status == "active"
    error = integration.meta["last_error"]
    assert (error["type"], error["message"]) == ("lwa_timeout", "timed out")
    at = datetime.fromisoformat(error["at"].replace("Z", "+00:00"))
    assert before <= at <= datetime.now(UTC)
    assert integration.meta["consecutive_failures"] == 2

    assert (
        lifecycle.record_transient_failure(
            session, integration, error_type="lwa_5xx", message="HTTP 503"
        )
        == 3
    )
    assert (
        lifecycle.record_transient_failure(
            session, integration, error_type="lwa_5xx", message="HTTP 503"
        )
        == 4
    )
    assert notices(session) == [
        {
            "audience": "admin",
            "kind": "repeated_failures",
            "title": "Amazon failing repeatedly",
            "message": "3 consecutive lwa_5xx failures for user u1: HTTP 503",
            "user_id": "u1",
            "provider": "amazon",
            "detail": {"consecutive_failures": 3, "error_type": "lwa_5xx"},
            "dedupe_key": "repeated_failures:amazon:u1",
            "resolved": False,
        }
    ]


def test_a_lower_threshold_alerts_sooner(session: Session) -> None:
    integration = add(session, "u1", provider="stripe")
    lifecycle.record_transient_failure(
        session, integration, error_type="stripe_5xx", message="m", threshold=1
    )
    [notice] = notices(session)
    assert (notice["title"], notice["message"]) == (
        "Stripe failing repeatedly",
        "1 consecutive stripe_5xx failures for user u1: m",
    )
