"""The outbox's delivery rules (``discoveryctl.alerts.delivery``), driven directly and fast: a
receiver behind httpx's ``MockTransport`` (it answers with a status or fails as a network
would, and sees every request), a clock that moves only when a post or a wait moves it, and the
database's time given to the drain. They prove: what is posted (body, headers, signature, each
step's timeout); which answers are delivered, refused for good, or tried again at once (a 5xx,
408, 429, a refused connection) and which are left for a later drain (a timeout); that no post
outlasts the lease or the budget; the wait before a later drain; the resolved state after its
open one; a day's limit; a lease taken over; what each drain counts and the events it leaves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.alerts import delivery, signing
from discoveryctl.config import Config
from discoveryctl.db.engine import Database
from discoveryctl.db.models import AlertDelivery, Event, Notification
from discoveryctl.errors import ConfigurationError
from discoveryctl.integrations import notifications, outbox

SECRET = "whsec-rules-0123456789"
URL = "http://127.0.0.1:9/services/T000/B000/secret-token"  # a closed port: nothing else answers
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # the database's time as the alert is raised
START = 1000.0  # the monotonic clock as a drain begins


@dataclass
class Clock:
    """``time.monotonic`` that moves only when something moves it; ``sleep`` records each
    wait and lets it pass (or ``overslept`` seconds more, as a suspended machine would)."""

    now: float = START
    waits: list[float] = field(default_factory=list)
    overslept: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds + self.overslept


Answer = int | Exception


@dataclass
class Receiver:
    """The webhook: answers each post with the next of ``answers`` (a status, or an error
    raised as the network would), then 200; ``during(request)`` runs as each post arrives."""

    answers: list[Answer] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    during: Callable[[httpx.Request], None] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) > 30:  # a drain that never ends fails, rather than hang
            raise AssertionError("posted over and over")
        if self.during is not None:
            self.during(request)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, text="ok")

    def bodies(self) -> list[Any]:
        return [json.loads(request.content) for request in self.requests]

    def timeouts(self) -> list[float]:
        """Each post's timeout (the same for connect, write, read and the pool)."""
        found = []
        for request in self.requests:
            timeout = request.extensions["timeout"]
            assert len(set(timeout.values())) == 1
            found.append(timeout["read"])
        return found


@pytest.fixture
def database(sqlite_db: Any) -> Iterator[Database]:
    """The database, which fails a test that runs away (a drain that never ends) rather
    than let it hang."""
    opened = Database(sqlite_db.url)
    statements = 0

    @sa.event.listens_for(opened.engine, "before_cursor_execute")
    def bounded(*_: Any) -> None:
        nonlocal statements
        statements += 1
        if statements > 3000:
            raise AssertionError("over 3000 statements: a drain that never ends")

    yield opened
    opened.dispose()


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def raise_alert(
    database: Database,
    user: str | None = "u1",
    *,
    at: datetime = T0,
    kind: str = "repeated_failures",
) -> int:
    """Open an admin notification (its outbox row raised at ``at``), as the core does."""
    with database.session() as session:
        opened, created = notifications.notify(
            session,
            audience=notifications.ADMIN,
            kind=kind,
            title="Amazon failing repeatedly",
            message=f"3 consecutive lwa_timeout failures for user {user}",
            user_id=user,
            provider="amazon",
            detail={"consecutive_failures": 3},
        )
        assert created
        notification_id = opened.id
    outbox.take_queued_here()
    _time_rows(database, notification_id, at)
    return notification_id


def resolve_alert(database: Database, notification_id: int, *, at: datetime = T0) -> None:
    with database.session() as session:
        key = session.get(Notification, notification_id).dedupe_key  # type: ignore[union-attr]
        assert notifications.resolve(session, key) == 1
    outbox.take_queued_here()
    _time_rows(database, notification_id, at)


def _time_rows(database: Database, notification_id: int, at: datetime) -> None:
    with database.session() as session:
        session.execute(
            sa.update(AlertDelivery)
            .where(AlertDelivery.notification_id == notification_id, AlertDelivery.attempts == 0)
            .values(created_at=at, next_attempt_at=at)
        )


def rows(database: Database) -> list[dict[str, Any]]:
    columns = (
        "id",
        "delivery_id",
        "state",
        "created_at",
        "next_attempt_at",
        "attempts",
        "outcome",
        "finished_at",
        "last_error",
        "lease_owner",
        "lease_expires_at",
    )
    with database.session() as session:
        found = session.scalars(sa.select(AlertDelivery).order_by(AlertDelivery.id))
        return [{name: getattr(row, name) for name in columns} for row in found]


def delivery_events(database: Database) -> list[dict[str, Any]]:
    with database.session() as session:
        found = session.scalars(
            sa.select(Event).where(Event.kind.like("alert_%")).order_by(Event.id)
        )
        return [
            {
                "kind": event.kind,
                "outcome": event.outcome,
                "user_id": event.user_id,
                "provider": event.provider,
                "error_type": event.error_type,
                "detail": event.detail,
            }
            for event in found
        ]


def drain(
    database: Database,
    receiver: Receiver,
    clock: Clock,
    *,
    at: datetime = T0,
    secret: str | None = SECRET,
    budget: float | None = None,
) -> delivery.Drained:
    with httpx.Client(transport=httpx.MockTransport(receiver)) as client:
        drained = delivery.deliver(
            database.session,
            delivery.AdminWebhook(URL, secret),
            budget=budget,
            client=client,
            sleep=clock.sleep,
            clock=clock,
            at=at,
        )
        assert not client.is_closed  # the caller's client is the caller's to close
    return drained


# -- the webhook's settings ---------------------------------------------------------------------


def test_the_webhook_is_read_from_its_settings_and_an_empty_secret_means_unsigned() -> None:
    assert delivery.webhook_from(Config({})) is None
    assert delivery.webhook_from(Config({"DISCOVERY_ADMIN_WEBHOOK_URL": "  "})) is None
    signed = delivery.webhook_from(
        Config({"DISCOVERY_ADMIN_WEBHOOK_URL": URL, "DISCOVERY_ADMIN_WEBHOOK_SECRET": SECRET})
    )
    assert signed == delivery.AdminWebhook(URL, SECRET)
    unsigned = delivery.webhook_from(
        Config({"DISCOVERY_ADMIN_WEBHOOK_URL": URL, "DISCOVERY_ADMIN_WEBHOOK_SECRET": ""}, None)
    )
    assert unsigned == delivery.AdminWebhook(URL, None)


def test_a_webhook_url_that_is_not_http_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError) as refused:
        delivery.webhook_from(Config({"DISCOVERY_ADMIN_WEBHOOK_URL": "ftp://host/secret-token"}))
    assert str(refused.value) == "DISCOVERY_ADMIN_WEBHOOK_URL must be an http(s) URL"


def test_the_webhook_is_shown_by_scheme_and_host_only() -> None:
    webhook = delivery.AdminWebhook("https://user:p@ss@hooks.example.com:8443/T0/B0/token", "s")
    assert webhook.where == "https://hooks.example.com:8443"
    assert repr(webhook) == "AdminWebhook(https://hooks.example.com:8443, signed=True)"
    assert (
        repr(delivery.AdminWebhook(URL, None)) == "AdminWebhook(http://127.0.0.1:9, signed=False)"
    )


# -- what is posted -----------------------------------------------------------------------------


def test_an_alert_is_posted_as_slacks_text_with_its_fields_signed_and_its_delivery_id(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    notification_id = raise_alert(database)
    before = datetime.now(UTC).timestamp()
    drained = drain(database, receiver, clock)
    assert drained.as_dict() == {
        "delivered": 1,
        "given_up": 0,
        "later": 0,
        "skipped": 0,
        "errors": [],
    }
    [request] = receiver.requests
    [row] = rows(database)
    with database.session() as session:
        opened_at = session.get(Notification, notification_id).created_at  # type: ignore[union-attr]
    assert request.method == "POST" and str(request.url) == URL
    assert json.loads(request.content) == {
        "text": ":rotating_light: Amazon failing repeatedly: 3 consecutive lwa_timeout "
        "failures for user u1",
        "delivery_id": row["delivery_id"],
        "state": "open",
        "alert": {
            "id": notification_id,
            "kind": "repeated_failures",
            "title": "Amazon failing repeatedly",
            "message": "3 consecutive lwa_timeout failures for user u1",
            "user_id": "u1",
            "provider": "amazon",
            "detail": {"consecutive_failures": 3},
            "opened_at": opened_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "resolved_at": None,
        },
    }
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Discovery-Delivery"] == row["delivery_id"]
    header = request.headers["Discovery-Signature"]
    stamp = int(header.split(",")[0].removeprefix("t="))
    assert before - 1 <= stamp <= datetime.now(UTC).timestamp()
    assert signing.verify(SECRET, header, request.content, now=stamp)
    assert receiver.timeouts() == [delivery.TIMEOUT]


def test_without_a_secret_an_alert_is_posted_unsigned(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    assert drain(database, receiver, clock, secret=None).delivered == 1
    [request] = receiver.requests
    assert "Discovery-Signature" not in request.headers


def test_a_resolved_alert_says_so_with_its_user_and_without_one_when_it_has_none(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    with_user = raise_alert(database, "<!channel> & co")
    without = raise_alert(database, None, kind="app_credentials_rejected")
    resolve_alert(database, with_user)
    resolve_alert(database, without)
    assert drain(database, receiver, clock).delivered == 4
    texts = [(body["state"], body["text"]) for body in receiver.bodies()]
    assert texts == [
        (
            "open",
            ":rotating_light: Amazon failing repeatedly: 3 consecutive lwa_timeout failures "
            "for user &lt;!channel&gt; &amp; co",
        ),
        (
            "open",
            ":rotating_light: Amazon failing repeatedly: 3 consecutive lwa_timeout "
            "failures for user None",
        ),
        (
            "resolved",
            ":white_check_mark: Resolved: Amazon failing repeatedly (user "
            "&lt;!channel&gt; &amp; co)",
        ),
        ("resolved", ":white_check_mark: Resolved: Amazon failing repeatedly"),
    ]
    resolved = receiver.bodies()[2]["alert"]
    assert resolved["user_id"] == "<!channel> & co"  # the data itself, unescaped
    assert (
        resolved["resolved_at"].endswith("Z") and resolved["resolved_at"] >= resolved["opened_at"]
    )


def test_slack_markup_is_escaped_ampersand_first() -> None:
    assert delivery.slack_escape("<a> & <b>") == "&lt;a&gt; &amp; &lt;b&gt;"
    assert delivery.slack_escape("&lt;") == "&amp;lt;"


# -- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204, 299])
def test_a_2xx_is_delivered(
    database: Database, receiver: Receiver, clock: Clock, status: int
) -> None:
    raise_alert(database)
    receiver.answers = [status]
    drained = drain(database, receiver, clock, at=T0 + timedelta(seconds=5))
    assert (drained.delivered, drained.given_up, drained.later, drained.errors) == (1, 0, 0, [])
    [row] = rows(database)
    assert (row["outcome"], row["attempts"], row["last_error"]) == ("delivered", 1, None)
    assert row["finished_at"] == T0 + timedelta(seconds=5)
    assert (row["lease_owner"], row["lease_expires_at"]) == (None, None)
    [event] = delivery_events(database)
    assert event == {
        "kind": "alert_delivered",
        "outcome": "success",
        "user_id": "u1",
        "provider": "amazon",
        "error_type": None,
        "detail": {
            "delivery_id": row["delivery_id"],
            "notification_id": 1,
            "alert_state": "open",
            "given_up": False,
            "http_status": status,
            "tries": 1,
        },
    }


@pytest.mark.parametrize("status", [300, 307, 400, 404, 407, 409, 428, 430, 499])
def test_any_other_answer_below_500_but_408_and_429_is_refused_for_good_at_once(
    database: Database, receiver: Receiver, clock: Clock, status: int
) -> None:
    raise_alert(database)
    raise_alert(database, "u2")
    raise_alert(database, "u3")
    receiver.answers = [status, 200, status]
    drained = drain(database, receiver, clock)
    [refused, delivered, also] = rows(database)
    assert drained.as_dict() == {
        "delivered": 1,  # a refusal is the receiver's word on one alert: the drain goes on
        "given_up": 2,
        "later": 0,
        "skipped": 0,
        "errors": [
            f"delivery {refused['delivery_id']}: refused, HTTP {status}",
            f"delivery {also['delivery_id']}: refused, HTTP {status}",
        ],
    }
    assert len(receiver.requests) == 3 and clock.waits == []
    assert (refused["outcome"], refused["attempts"], refused["last_error"]) == (
        "refused",
        1,
        f"HTTP {status}",
    )
    assert refused["finished_at"] == T0
    assert delivered["outcome"] == "delivered"
    assert delivery_events(database)[0] == {
        "kind": "alert_delivery_failed",
        "outcome": "failure",
        "user_id": "u1",
        "provider": "amazon",
        "error_type": "alert_webhook_refused",
        "detail": {
            "delivery_id": refused["delivery_id"],
            "notification_id": 1,
            "alert_state": "open",
            "given_up": True,
            "http_status": status,
            "tries": 1,
        },
    }
    assert drain(database, receiver, clock, at=T0 + timedelta(days=2)).as_dict()["given_up"] == 0
    assert len(receiver.requests) == 3  # final: never posted again


@pytest.mark.parametrize("status", [408, 429, 500, 503, 599])
def test_a_5xx_408_or_429_is_posted_again_at_once_the_same_body_after_half_a_second_then_up_to_one(
    database: Database, receiver: Receiver, clock: Clock, status: int
) -> None:
    raise_alert(database)
    receiver.answers = [status, status]
    drained = drain(database, receiver, clock)
    assert (drained.delivered, drained.later, drained.given_up) == (1, 0, 0)
    assert len({request.content for request in receiver.requests}) == 1
    assert len(receiver.requests) == 3
    assert clock.waits[0] == 0.5 and 0.5 <= clock.waits[1] <= 1.0 and len(clock.waits) == 2
    [row] = rows(database)
    assert (row["outcome"], row["attempts"]) == ("delivered", 3)
    [event] = delivery_events(database)
    assert event["detail"]["tries"] == 3 and event["detail"]["http_status"] == 200


def test_a_receiver_failing_three_times_is_left_for_a_drain_a_minute_later(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    raise_alert(database, "u2")
    receiver.answers = [500, 502, 503]
    drained = drain(database, receiver, clock)
    first, second = rows(database)
    assert drained.as_dict() == {
        "delivered": 0,
        "given_up": 0,
        "later": 1,
        "skipped": 0,
        "errors": [f"delivery {first['delivery_id']}: HTTP 503, will try again"],
    }
    assert len(receiver.requests) == 3  # the failing receiver stops the drain: u2 waits
    assert (first["outcome"], first["attempts"], first["last_error"]) == (None, 3, "HTTP 503")
    assert first["next_attempt_at"] == T0 + timedelta(minutes=1)
    assert first["finished_at"] is None
    assert (first["lease_owner"], first["lease_expires_at"]) == (None, None)
    assert (second["attempts"], second["next_attempt_at"]) == (0, T0)
    [event] = delivery_events(database)
    assert event == {
        "kind": "alert_delivery_failed",
        "outcome": "failure",
        "user_id": "u1",
        "provider": "amazon",
        "error_type": "alert_webhook_server_error",
        "detail": {
            "delivery_id": first["delivery_id"],
            "notification_id": 1,
            "alert_state": "open",
            "given_up": False,
            "http_status": 503,
            "tries": 3,
        },
    }

    early = T0 + timedelta(seconds=59)  # u1 is not due yet; u2 is
    assert drain(database, receiver, clock, at=early).delivered == 1
    assert [body["alert"]["user_id"] for body in receiver.bodies()[3:]] == ["u2"]


def test_each_failed_drain_waits_longer_before_the_next(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    receiver.answers = [503, 503, 503, httpx.ReadTimeout("slow")]
    drain(database, receiver, clock)
    [row] = rows(database)
    assert (row["attempts"], row["next_attempt_at"]) == (3, T0 + timedelta(minutes=1))
    later = T0 + timedelta(minutes=1)  # due exactly now
    drain(database, receiver, clock, at=later)
    [row] = rows(database)  # four tries: the second drain's failed
    assert (row["attempts"], row["next_attempt_at"]) == (4, later + timedelta(minutes=2))
    assert row["last_error"] == "timed out"
    receiver.answers = [503, 503, 503]
    last = later + timedelta(minutes=2)
    drain(database, receiver, clock, at=last)  # seven tries: three drains failed it
    [row] = rows(database)
    assert (row["attempts"], row["next_attempt_at"]) == (7, last + timedelta(minutes=4))
    assert len(receiver.requests) == 7


def test_a_timeout_is_not_posted_again_in_the_same_drain(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    receiver.answers = [httpx.ReadTimeout("no answer")]
    drained = drain(database, receiver, clock)
    [row] = rows(database)
    assert drained.as_dict() == {
        "delivered": 0,
        "given_up": 0,
        "later": 1,
        "skipped": 0,
        "errors": [f"delivery {row['delivery_id']}: timed out, will try again"],
    }
    assert len(receiver.requests) == 1 and clock.waits == []
    assert (row["attempts"], row["last_error"]) == (1, "timed out")
    [event] = delivery_events(database)
    assert event["error_type"] == "alert_webhook_timeout"
    assert event["detail"] == {
        "delivery_id": row["delivery_id"],
        "notification_id": 1,
        "alert_state": "open",
        "given_up": False,
        "tries": 1,  # no status to record
    }


def test_a_refused_connection_is_tried_again_at_once_and_named_by_its_kind(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    receiver.answers = [httpx.ConnectError("refused")] * 3
    drained = drain(database, receiver, clock)
    assert (drained.later, len(receiver.requests)) == (1, 3)
    [row] = rows(database)
    assert (row["attempts"], row["last_error"]) == (3, "unreachable (ConnectError)")
    [event] = delivery_events(database)
    assert event["error_type"] == "alert_webhook_connection_error"
    assert "http_status" not in event["detail"]


# -- time: the lease and the budget -------------------------------------------------------------


def test_a_post_holds_the_deliverys_lease_for_a_minute_from_the_databases_time(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    held: list[tuple[Any, Any]] = []
    receiver.during = lambda _: held.extend(
        (row["lease_owner"], row["lease_expires_at"]) for row in rows(database)
    )
    drain(database, receiver, clock)
    [(owner, expires)] = held
    assert owner.startswith("alerts") and expires == T0 + timedelta(seconds=60)


def test_no_post_again_begins_unless_its_wait_and_a_whole_timeout_end_before_the_lease(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    # This process gives the lease up after 45 s of its 60 (the database's clock may run
    # ahead). A first post of 39.4 s leaves room for half a second's wait and a 5 s post.
    raise_alert(database)
    receiver.answers = [503, 503, 503]
    receiver.during = lambda _: slow_first(clock, receiver, 1, 39.4)
    drain(database, receiver, clock)
    assert len(receiver.requests) == 2 and clock.waits == [0.5]
    assert rows(database)[0]["attempts"] == 2

    # One of 39.5 s leaves none: the wait and the post would end at 45 s exactly.
    clock.now, clock.waits = START, []
    receiver.answers = [503, 503]
    receiver.during = lambda _: slow_first(clock, receiver, 3, 39.5)
    drain(database, receiver, clock, at=T0 + timedelta(minutes=2))
    assert len(receiver.requests) == 3 and clock.waits == []
    assert rows(database)[0]["attempts"] == 3


def slow_first(clock: Clock, receiver: Receiver, number: int, seconds: float) -> None:
    """The post ``number`` (counted from the first) takes ``seconds``, the others none."""
    if len(receiver.requests) == number:
        clock.now += seconds


def test_a_wait_that_overran_the_lease_posts_no_more(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    receiver.answers = [503]
    clock.overslept = 45.0 - 0.5  # the machine slept through the wait, to the lease's end
    drained = drain(database, receiver, clock)
    assert len(receiver.requests) == 1 and drained.later == 1
    [row] = rows(database)
    assert (row["attempts"], row["last_error"]) == (1, "HTTP 503")


def test_a_post_never_outlasts_the_budget_and_one_that_could_not_fit_waits(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    receiver.answers = [503, 503]
    drained = drain(database, receiver, clock, budget=2.0)
    # its timeout is what is left of the budget; a wait and a whole timeout do not fit
    assert receiver.timeouts() == [2.0] and clock.waits == []
    assert drained.later == 1
    [row] = rows(database)
    assert (row["attempts"], row["last_error"]) == (1, "HTTP 503")

    receiver.answers = [503]
    clock.now = START
    drain(database, receiver, clock, at=T0 + timedelta(hours=1), budget=6.0)
    assert receiver.timeouts()[1:] == [5.0, 5.0]  # 0.5 + 5 fits in what is left of 6 s
    assert rows(database)[0]["outcome"] == "delivered"


def test_a_drain_with_no_budget_left_touches_nothing(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database, at=T0 - timedelta(days=2))  # would be closed by any claim
    drained = drain(database, receiver, clock, budget=0.0)
    assert drained.as_dict()["skipped"] == 0
    assert rows(database)[0]["outcome"] is None


def test_a_drain_stops_once_its_budget_is_spent(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    raise_alert(database, "u2")

    def three_seconds(_: httpx.Request) -> None:
        clock.now += 3.0

    receiver.during = three_seconds
    drained = drain(database, receiver, clock, budget=3.0)
    assert drained.delivered == 1 and len(receiver.requests) == 1
    assert [row["outcome"] for row in rows(database)] == ["delivered", None]


def drain_claiming_slowly(
    database: Database, receiver: Receiver, clock: Clock, claiming: float, budget: float
) -> delivery.Drained:
    """A drain whose every transaction waits ``claiming`` seconds to begin (another claimer
    holds the lock)."""

    @contextmanager
    def slow_to_open() -> Iterator[Session]:
        clock.now += claiming
        with database.session() as session:
            yield session

    with httpx.Client(transport=httpx.MockTransport(receiver)) as client:
        return delivery.deliver(
            slow_to_open,
            delivery.AdminWebhook(URL, SECRET),
            budget=budget,
            client=client,
            sleep=clock.sleep,
            clock=clock,
            at=T0,
        )


@pytest.mark.parametrize("claiming", [2.0, 2.5])
def test_a_budget_spent_while_claiming_posts_nothing_and_counts_no_try(
    database: Database, receiver: Receiver, clock: Clock, claiming: float
) -> None:
    raise_alert(database)
    drained = drain_claiming_slowly(database, receiver, clock, claiming, budget=2.0)
    assert receiver.requests == []
    assert drained == delivery.Drained()
    [row] = rows(database)
    assert (row["attempts"], row["last_error"], row["next_attempt_at"]) == (0, None, T0)
    assert (row["outcome"], row["lease_owner"], row["lease_expires_at"]) == (None, None, None)
    assert delivery_events(database) == []


def test_half_a_second_left_is_enough_to_post_with_that_as_its_timeout(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    drained = drain_claiming_slowly(database, receiver, clock, 1.5, budget=2.0)
    assert receiver.timeouts() == [0.5] and drained.delivered == 1


def test_a_post_whose_lease_was_taken_over_is_left_to_its_new_holder(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)

    def taken_over(_: httpx.Request) -> None:
        with database.session() as session:
            session.execute(sa.update(AlertDelivery).values(lease_owner="another"))

    receiver.during = taken_over
    drained = drain(database, receiver, clock)
    assert len(receiver.requests) == 1
    assert drained.as_dict()["delivered"] == 0
    [row] = rows(database)
    assert (row["outcome"], row["attempts"], row["lease_owner"]) == (None, 0, "another")
    assert delivery_events(database) == []


# -- order and age ------------------------------------------------------------------------------


def test_a_resolved_state_is_posted_after_its_open_one_even_when_that_was_retried(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    opened = raise_alert(database)
    receiver.answers = [503, 503, 503]
    drain(database, receiver, clock)
    resolve_alert(database, opened)
    other = raise_alert(database, "u2", at=T0 + timedelta(seconds=1))
    assert drain(database, receiver, clock, at=T0 + timedelta(seconds=30)).delivered == 1
    assert receiver.bodies()[-1]["alert"]["id"] == other  # the resolved one waits for its open
    assert drain(database, receiver, clock, at=T0 + timedelta(minutes=1)).delivered == 2
    assert [body["state"] for body in receiver.bodies()[-2:]] == ["open", "resolved"]


def test_a_resolved_state_whose_open_one_was_refused_is_posted(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    opened = raise_alert(database)
    receiver.answers = [410]
    drain(database, receiver, clock)
    resolve_alert(database, opened)
    assert drain(database, receiver, clock).delivered == 1
    assert receiver.bodies()[-1]["state"] == "resolved"


def test_an_alert_raised_exactly_a_day_ago_is_still_posted(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    assert drain(database, receiver, clock, at=T0 + timedelta(days=1)).delivered == 1


def test_an_alert_raised_over_a_day_ago_and_never_tried_is_skipped_quietly(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    raise_alert(database, "u0", at=T0 - timedelta(hours=1))
    raise_alert(database, "u2", at=T0 + timedelta(hours=1))
    later = T0 + timedelta(days=1, microseconds=1)
    drained = drain(database, receiver, clock, at=later)
    assert drained.as_dict() == {
        "delivered": 1,
        "given_up": 0,
        "later": 0,
        "skipped": 2,
        "errors": [],
    }
    assert [body["alert"]["user_id"] for body in receiver.bodies()] == ["u2"]
    skipped, _, _ = rows(database)
    assert skipped["outcome"] == "expired" and skipped["finished_at"] == later
    assert skipped["last_error"] == "raised over 1 day ago, before a webhook was set: not posted"
    assert (skipped["lease_owner"], skipped["lease_expires_at"], skipped["attempts"]) == (
        None,
        None,
        0,
    )
    expired, _, _ = delivery_events(database)
    assert expired == {
        "kind": "alert_delivery_failed",
        "outcome": "failure",
        "user_id": "u1",
        "provider": "amazon",
        "error_type": "alert_delivery_expired",
        "detail": {
            "delivery_id": skipped["delivery_id"],
            "notification_id": 1,
            "alert_state": "open",
            "given_up": True,
        },
    }


def test_an_alert_failing_for_a_day_is_given_up_with_its_last_error(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    raise_alert(database, "u2")
    receiver.answers = [503, 503, 503, 502, 502, httpx.ConnectError("refused")]
    drain(database, receiver, clock)
    drain(database, receiver, clock, at=T0 + timedelta(seconds=30))  # u1 is not due yet
    later = T0 + timedelta(days=1, seconds=1)
    drained = drain(database, receiver, clock, at=later)
    row, other = rows(database)
    reason = "not delivered within 1 day (HTTP 503)"
    assert drained.as_dict() == {
        "delivered": 0,
        "given_up": 2,
        "later": 0,
        "skipped": 0,
        "errors": [
            f"delivery {row['delivery_id']}: {reason}",
            f"delivery {other['delivery_id']}: not delivered within 1 day "
            "(unreachable (ConnectError))",
        ],
    }
    assert len(receiver.requests) == 6  # not posted again
    assert [(r["lease_owner"], r["lease_expires_at"]) for r in (row, other)] == [(None, None)] * 2
    assert (row["outcome"], row["last_error"], row["finished_at"]) == ("expired", reason, later)
    assert delivery_events(database)[-1]["detail"]["given_up"] is True


# -- the test message ---------------------------------------------------------------------------


@pytest.fixture
def listening() -> Iterator[Any]:
    from webhook_receiver import receiving

    with receiving() as found:
        yield found


def test_the_test_message_is_posted_signed_to_a_real_receiver(listening: Any) -> None:
    clock = Clock()
    posted = delivery.post_test(
        delivery.AdminWebhook(listening.url, SECRET), sleep=clock.sleep, clock=clock
    )
    assert posted == delivery.Posted(1, "delivered", http_status=200)
    [received] = listening.received
    body = received.json()
    assert body == {
        "text": "discoveryctl test message: admin alerts will arrive here",
        "delivery_id": received.headers["Discovery-Delivery"],
        "state": "test",
        "alert": None,
    }
    assert len(body["delivery_id"]) == 36
    header = received.headers["Discovery-Signature"]
    assert signing.verify(SECRET, header, received.body, now=datetime.now(UTC).timestamp())


def test_the_test_message_may_take_two_timeouts(listening: Any) -> None:
    clock = Clock()
    webhook = delivery.AdminWebhook(listening.url, None)
    listening.statuses = [503, 503, 503]

    def slow() -> None:
        clock.now += took if len(listening.received) == 0 else 0.0

    listening.on_request = slow
    took = 4.4  # then half a second's wait and 5 s of post fit in 10 s
    posted = delivery.post_test(webhook, sleep=clock.sleep, clock=clock)
    assert len(listening.received) == 2 and clock.waits == [0.5]
    assert posted == delivery.Posted(
        2, None, http_status=503, error="alert_webhook_server_error", reason="HTTP 503"
    )

    clock.now, clock.waits, listening.received = START, [], []
    took = 4.5  # they would end at 10 s exactly
    posted = delivery.post_test(webhook, sleep=clock.sleep, clock=clock)
    assert len(listening.received) == 1 and posted.tries == 1


def test_a_redirect_is_not_followed(listening: Any, database: Database) -> None:
    listening.statuses = [307]
    listening.answer_headers = {"Location": listening.url + "/elsewhere"}
    posted = delivery.post_test(delivery.AdminWebhook(listening.url, None))
    assert posted.outcome == "refused" and posted.http_status == 307
    raise_alert(database)
    listening.statuses = [308]
    drained = delivery.deliver(database.session, delivery.AdminWebhook(listening.url, None), at=T0)
    assert drained.given_up == 1 and len(listening.received) == 2


def test_without_a_time_given_the_databases_clock_times_the_drain(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    with database.session() as session:
        notifications.notify(
            session, audience=notifications.ADMIN, kind="k", title="t", message="m"
        )
    outbox.take_queued_here()
    before = datetime.now(UTC)
    with httpx.Client(transport=httpx.MockTransport(receiver)) as client:
        drained = delivery.deliver(
            database.session, delivery.AdminWebhook(URL, None), client=client
        )
    assert drained.delivered == 1
    [row] = rows(database)
    assert before <= row["finished_at"] <= datetime.now(UTC)


def test_deliveries_are_posted_in_the_order_they_were_raised_not_by_when_they_fell_due(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    receiver.answers = [503, 503, 503]
    drain(database, receiver, clock)  # u1 waits until a minute past
    raise_alert(database, "u2", at=T0 + timedelta(seconds=10))
    drain(database, receiver, clock, at=T0 + timedelta(minutes=2))
    assert [body["alert"]["user_id"] for body in receiver.bodies()[3:]] == ["u1", "u2"]


def test_a_delivery_another_drain_holds_is_left_to_it_until_its_lease_runs_out(
    database: Database, receiver: Receiver, clock: Clock
) -> None:
    raise_alert(database)
    with database.session() as session:
        session.execute(
            sa.update(AlertDelivery).values(
                lease_owner="another", lease_expires_at=T0 + timedelta(seconds=30)
            )
        )
    assert drain(database, receiver, clock).delivered == 0
    assert receiver.requests == []
    assert drain(database, receiver, clock, at=T0 + timedelta(seconds=30)).delivered == 1
