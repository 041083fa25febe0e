"""The rules of refresh-all's pending Stripe customers (``retry_pending``, its queue and its
claims; docs/behaviour.md §6), against a migrated SQLite copy and a scripted Stripe
(tests/stripe_stand_in.py), on a clock that moves only when the run waits:

- every pending user is tried once a run, in id order, under this run's lease (a user another
  run holds, or whose customer exists, is not taken); four rounds are claimed at a time, more
  once fewer than two rounds are in hand, and each round's leases are let go as it ends;
- a transient failure waits its backoff (stripe-python's, or Retry-After) in the queue while
  the other users go on; after ``RUN_ATTEMPTS`` tries, or at once for another failure, the
  run gives up on the user (the user is told); the run counts how each customer came;
- a refused API key stops the run: nothing more is tried, no user is marked, the admins are
  told once; past the deadline nothing more is claimed or tried and the rest are left;
- every client the run opened is closed, and every lease let go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from stripe_stand_in import (  # noqa: F401  (the fixtures)
    Clock,
    StripeStandIn,
    database_fixture,
    events_of,
    integration,
    notifications_of,
    row,
    scope_fixture,
    stand_in_fixture,
)

from discoveryctl.billing.customers import (
    RUN_ATTEMPTS,
    PendingRun,
    TryResult,
    _Pending,
    _Queue,
    pending_count,
    pending_users,
    retry_pending,
)
from discoveryctl.db.engine import Database, SessionScope
from discoveryctl.db.models import StripeCustomer, utcnow
from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    StripeKeyInUse,
    StripeParametersRefused,
    TransientProviderError,
)
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.vocabulary import Status

OWNER = "stripe-pending:test"
LEASE = timedelta(minutes=5)


def pending(scope: SessionScope, *users: str, **columns: Any) -> None:
    """Users waiting for their customer, as ``import`` leaves them (``columns`` override)."""
    with scope() as session:
        for user in users:
            session.add(
                StripeCustomer(user_id=user, email=f"{user}@example.com", attempts=0, **columns)
            )
            lifecycle.create(session, user, "stripe", Status.pending)


def run(
    scope: SessionScope,
    stand_in: StripeStandIn,
    clock: Clock,
    *,
    concurrency: int = 1,
    ends: float | None = None,
    opened: list[StripeStandIn] | None = None,
) -> PendingRun:
    def open_customers() -> Any:
        if opened is not None:
            opened.append(stand_in)
        return stand_in.as_client()

    return retry_pending(
        scope,
        open_customers,
        owner=OWNER,
        concurrency=concurrency,
        lease=LEASE,
        ends=ends,
        clock=clock,
        sleep=clock.sleep,
    )


def leased(scope: SessionScope) -> dict[str, str]:
    """The users leased right now, and to whom."""
    with scope() as session:
        rows = session.execute(
            sa.select(StripeCustomer.user_id, StripeCustomer.lease_owner).where(
                StripeCustomer.lease_owner.is_not(None)
            )
        )
        return {user: owner for user, owner in rows}


def server_error() -> TransientProviderError:
    return TransientProviderError("Stripe failed: 502", error_type="stripe_502", status_code=502)


def test_every_pending_customer_is_made_and_the_run_says_how_each_came(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "fresh", "recorded", "old")
    with scope() as session:  # a key 24 hours old: its customer is found at Stripe
        old = session.scalars(sa.select(StripeCustomer).where(StripeCustomer.user_id == "old"))
        customer = old.one()
        customer.idempotency_key = "k-old"
        customer.idempotency_key_created_at = utcnow() - timedelta(days=2)

    def meanwhile(request: dict[str, Any]) -> str:
        with scope() as session:  # another process records "recorded"'s customer
            session.get_one(StripeCustomer, 2).customer_id = "cus_elsewhere"
        return "cus_fresh"

    stand_in.create_answers.append(meanwhile)
    stand_in.find_answers.append("cus_old")
    opened: list[StripeStandIn] = []
    done = run(scope, stand_in, Clock(), opened=opened)
    assert done.as_dict() == {
        "created": 1,
        "adopted": 1,
        "existing": 1,
        "failed": 0,
        "refused": 0,
        "in_flight": 0,
        "app_credentials_rejected": None,
        "deadline_reached": False,
    }
    assert [c["user_id"] for c in stand_in.creates] == ["fresh"]
    assert [(r.user_id, r.customer_id) for r in map(lambda u: row(scope, u), ["fresh", "old"])] == [
        ("fresh", "cus_fresh"),
        ("old", "cus_old"),
    ]
    assert leased(scope) == {}
    assert (len(opened), stand_in.closed) == (1, 1)
    with scope() as session:
        assert pending_count(session) == 0 and pending_users(session) == []
    assert notifications_of(scope) == []


def test_a_run_claims_four_rounds_at_a_time_and_lets_go_of_each_round_as_it_ends(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    users = [f"u{n}" for n in range(1, 7)]
    pending(scope, *users)
    seen: list[tuple[str, list[str]]] = []

    def create(request: dict[str, Any]) -> str:
        held = leased(scope)
        assert set(held.values()) == {OWNER}
        seen.append((request["user_id"], sorted(held)))
        return f"cus_{request['user_id']}"

    stand_in.create_answers += [create] * 6
    started = utcnow()
    expiries: list[Any] = []
    stand_in.create_answers[0] = lambda request: (
        expiries.extend(r.lease_expires_at for r in (row(scope, u) for u in users[:4]))
        or create(request)
    )
    done = run(scope, stand_in, Clock())
    assert done.outcomes == {"created": 6}
    assert seen == [
        ("u1", ["u1", "u2", "u3", "u4"]),
        ("u2", ["u2", "u3", "u4"]),
        ("u3", ["u3", "u4"]),
        ("u4", ["u4", "u5", "u6"]),
        ("u5", ["u5", "u6"]),
        ("u6", ["u6"]),
    ]
    for expires in expiries:
        assert started + LEASE - timedelta(seconds=5) < expires < utcnow() + LEASE
    assert leased(scope) == {}


def test_a_user_another_run_holds_or_whose_customer_exists_is_not_taken(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "theirs", "done", "ours")
    with scope() as session:
        theirs, done = (session.get_one(StripeCustomer, n) for n in (1, 2))
        theirs.lease_owner = "stripe-pending:other"
        theirs.lease_expires_at = utcnow() + timedelta(minutes=5)
        done.customer_id = "cus_done"
    finished = run(scope, stand_in, Clock())
    assert [c["user_id"] for c in stand_in.creates] == ["ours"]
    assert finished.outcomes == {"created": 1}
    assert leased(scope) == {"theirs": "stripe-pending:other"}
    with scope() as session:
        assert pending_count(session) == 1 and pending_users(session) == ["theirs"]


def test_a_user_the_run_gave_up_on_is_not_taken_again_by_its_next_claim(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    """The last of a claim fails for good and its lease is let go: the next claim starts
    past it."""
    pending(scope, "u1", "u2", "u3", "u4", "u5")
    stand_in.create_answers += ["cus_1", "cus_2", "cus_3", ProviderError("no")]
    done = run(scope, stand_in, Clock())
    assert done.outcomes == {"created": 4, "failed": 1}
    assert [c["user_id"] for c in stand_in.creates] == ["u1", "u2", "u3", "u4", "u5"]


def test_the_runs_leases_are_renewed_while_stripe_is_slower_than_them(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1")
    seen: list[Any] = []

    def slow(request: dict[str, Any]) -> str:
        seen.append(row(scope, "u1").lease_expires_at)
        time.sleep(0.5)  # Stripe takes longer than a third of the lease: a beat renews it
        seen.append(row(scope, "u1").lease_expires_at)
        return "cus_u1"

    stand_in.create_answers.append(slow)
    done = retry_pending(
        scope,
        stand_in.as_client,
        owner=OWNER,
        concurrency=1,
        lease=timedelta(seconds=0.9),
    )
    assert done.outcomes == {"created": 1}
    claimed, renewed = seen
    assert renewed > claimed


def test_pending_users_are_listed_in_the_order_a_run_takes_them(scope: SessionScope) -> None:
    pending(scope, "b", "a", "c")
    with scope() as session:
        session.get_one(StripeCustomer, 3).customer_id = "cus_c"
    with scope() as session:
        assert pending_users(session) == ["b", "a"]
        assert pending_count(session) == 2


def test_a_user_failing_for_now_waits_its_backoff_while_the_others_go_on(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "slow", "quick")
    clock = Clock()
    at: list[tuple[str, float]] = []

    def answer(outcome: str | ProviderError) -> Callable[[dict[str, Any]], str | ProviderError]:
        def create(request: dict[str, Any]) -> str | ProviderError:
            at.append((request["user_id"], clock.at - 1000.0))
            return outcome

        return create

    throttled = TransientProviderError(
        "slow down", error_type="stripe_rate_limited", status_code=429, retry_after=3.0
    )
    stand_in.create_answers += [answer(throttled), answer("cus_quick"), answer("cus_slow")]
    done = run(scope, stand_in, clock)
    assert at == [("slow", 0.0), ("quick", 0.0), ("slow", 3.0)]
    assert done.outcomes == {"created": 2}
    assert clock.slept == [3.0]
    assert row(scope, "slow").attempts == 2


def test_after_six_failed_tries_the_run_gives_up_on_the_user_and_tells_them(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1")
    clock = Clock()
    stand_in.create_answers += [server_error() for _ in range(RUN_ATTEMPTS + 1)]
    done = run(scope, stand_in, clock)
    assert RUN_ATTEMPTS == 6
    assert done.as_dict()["failed"] == 1 and done.outcomes["created"] == 0
    assert len(stand_in.creates) == 6
    # stripe-python's waits after 1 to 5 failures: 0.5, then 0.5-1, 1-2, 2-4, 2.5-5 s
    assert clock.slept[0] == 0.5
    for waited, (shortest, longest) in zip(
        clock.slept[1:], [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.5, 5.0)], strict=True
    ):
        assert shortest <= waited <= longest
    assert events_of(scope, "stripe_customer_failed") == [
        ("stripe_customer_failed", "failure", "stripe_502", {"tries": 6})
    ]
    assert [(n["user_id"], n["kind"]) for n in notifications_of(scope)] == [
        ("u1", "stripe_onboarding_failed")
    ]
    status = integration(scope, "u1")
    assert status is not None and status[0] == "pending"
    assert status[1]["consecutive_failures"] == 1
    assert leased(scope) == {}


def test_a_failure_stripe_says_not_to_retry_is_given_up_at_once(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1", "u2", "u3")
    clock = Clock()
    stand_in.create_answers += [ProviderError("no", error_type="stripe_400")] * 2
    done = run(scope, stand_in, clock)
    assert done.outcomes == {"failed": 2, "created": 1}
    assert [c["user_id"] for c in stand_in.creates] == ["u1", "u2", "u3"]
    assert (
        events_of(scope, "stripe_customer_failed")
        == [("stripe_customer_failed", "failure", "stripe_400", {"tries": 1})] * 2
    )
    assert [n["user_id"] for n in notifications_of(scope)] == ["u1", "u2"]


def test_a_refused_api_key_stops_the_run_marks_no_user_and_tells_the_admins_once(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1", "u2", "u3")
    refused = AppCredentialsRejected("Stripe refused the API key (401)", status_code=401)
    stand_in.create_answers += [refused, refused]
    done = run(scope, stand_in, Clock())
    assert done.as_dict() == {
        "created": 0,
        "adopted": 0,
        "existing": 0,
        "failed": 0,
        "refused": 0,
        "in_flight": 0,
        "app_credentials_rejected": "Stripe refused the API key (401)",
        "deadline_reached": False,
    }
    assert len(stand_in.creates) == 1
    assert [(n["audience"], n["kind"], n["message"]) for n in notifications_of(scope)] == [
        ("admin", "app_credentials_rejected", "Stripe refused the API key (401)")
    ]
    assert events_of(scope, "stripe_customer_attempt", "stripe_customer_failed") == []
    assert {row(scope, u).attempts for u in ("u1", "u2", "u3")} == {0}
    assert leased(scope) == {} and stand_in.closed == 1


def test_the_first_refusal_is_the_one_reported_and_the_calls_in_flight_end(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1", "u2")
    first = AppCredentialsRejected("first", status_code=401)
    second = AppCredentialsRejected("second", status_code=401)
    stand_in.create_answers += [first, second]
    done = run(scope, stand_in, Clock(), concurrency=2)
    assert done.app_rejected in ("first", "second") and len(stand_in.creates) == 2
    assert [n["message"] for n in notifications_of(scope)] == [done.app_rejected]


def test_past_the_deadline_nothing_is_claimed_or_tried(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1")
    clock = Clock()
    done = run(scope, stand_in, clock, ends=clock.at)
    assert done.as_dict()["deadline_reached"] is True
    assert done.outcomes == {}
    assert stand_in.creates == [] and leased(scope) == {}
    assert row(scope, "u1").lease_expires_at is None  # never claimed


def test_at_the_deadline_the_call_in_flight_ends_and_the_rest_are_left_unmarked(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1", "u2", "u3")
    clock = Clock()

    def slow(request: dict[str, Any]) -> str:
        clock.at += 10.0  # Stripe took long: the deadline passed meanwhile
        return "cus_u1"

    stand_in.create_answers.append(slow)
    done = run(scope, stand_in, clock, ends=clock.at + 5.0)
    assert done.as_dict()["deadline_reached"] is True
    assert done.outcomes == {"created": 1}
    assert [c["user_id"] for c in stand_in.creates] == ["u1"]
    assert leased(scope) == {} and notifications_of(scope) == []
    with scope() as session:
        assert pending_users(session) == ["u2", "u3"]


def test_a_user_waiting_out_its_backoff_at_the_deadline_is_left_for_the_next_run(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1")
    clock = Clock()
    stand_in.create_answers += [server_error() for _ in range(RUN_ATTEMPTS)]
    done = run(scope, stand_in, clock, ends=clock.at + 1.2)
    assert done.as_dict()["deadline_reached"] is True and done.outcomes == {}
    assert 1 < len(stand_in.creates) < RUN_ATTEMPTS
    assert notifications_of(scope) == [] and leased(scope) == {}


def test_a_run_done_before_its_deadline_has_not_reached_it(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1")
    clock = Clock()
    done = run(scope, stand_in, clock, ends=clock.at + 60.0)
    assert done.as_dict()["deadline_reached"] is False and done.outcomes == {"created": 1}


def test_with_none_pending_the_run_opens_no_client_and_makes_no_call(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    opened: list[StripeStandIn] = []
    done = run(scope, stand_in, Clock(), opened=opened)
    assert done.as_dict()["created"] == 0 and opened == [] and stand_in.creates == []


# -- the queue alone, on the same clock ---------------------------------------------------------


def _user(row_id: int) -> _Pending:
    return _Pending(row_id, f"user-{row_id}", f"user-{row_id}@example.com", None, None, "k", None)


def test_a_user_failing_with_retry_after_is_due_that_much_later() -> None:
    clock = Clock()
    queue = _Queue(concurrency=1, clock=clock, sleep=clock.sleep)
    queue.add([_user(1)])
    queue.add([])
    throttled = TransientProviderError("slow down", retry_after=3.0)
    queue.again(_user(1), 1, throttled)
    queue._ready.pop(0)  # the first push, already tried
    assert queue.wants_more() is False  # no more to claim: the run is out of users

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert queue.step(pool, lambda user: throttled) == []  # none due: it sleeps
        assert clock.slept == [3.0]
        ((user, outcome, tries),) = queue.step(pool, lambda user: throttled)
    assert (user.row_id, outcome, tries) == (1, throttled, 2)
    assert queue.idle()


def test_a_queue_that_wants_more_does_not_sleep_on_a_backoff() -> None:
    clock = Clock()
    queue = _Queue(concurrency=1, clock=clock, sleep=clock.sleep)
    queue.again(_user(1), 1, TransientProviderError("slow down", retry_after=3.0))
    assert queue.wants_more()

    with ThreadPoolExecutor(max_workers=1) as pool:
        assert queue.step(pool, lambda user: TransientProviderError("x")) == []
    assert clock.slept == [0.0]


@pytest.mark.parametrize("due_in", [0.0, 0.5])
def test_users_due_now_count_as_work_in_hand_and_those_waiting_do_not(due_in: float) -> None:
    clock = Clock()
    queue = _Queue(concurrency=1, clock=clock, sleep=clock.sleep)
    queue.add([_user(1)])
    queue._ready.clear()
    for row_id in (1, 2):
        queue._push(clock.at + due_in, _user(row_id), 1)
    assert queue.wants_more() is (due_in > 0)


def test_claimed_users_are_due_at_once() -> None:
    clock = Clock(at=0.0)
    queue = _Queue(concurrency=1, clock=clock, sleep=clock.sleep)
    queue.add([_user(1)])
    with ThreadPoolExecutor(max_workers=1) as pool:
        ((user, _, tries),) = queue.step(pool, lambda user: TransientProviderError("x"))
    assert (user.row_id, tries, clock.slept) == (1, 1, [])


def _calls_held(*row_ids: int) -> tuple[Callable[[_Pending], TryResult], threading.Event]:
    """A try that does not end, for the users ``row_ids``, until the event is set (by the test,
    or after 2 s, so that a queue waiting for it ends too); the others end at once."""
    may_end = threading.Event()
    failsafe = threading.Timer(2.0, may_end.set)
    failsafe.daemon = True
    failsafe.start()

    def one_try(user: _Pending) -> TryResult:
        if user.row_id in row_ids:
            may_end.wait()
        return TransientProviderError(f"user {user.row_id}")

    return one_try, may_end


def test_a_call_that_ends_is_handled_while_another_is_still_in_flight() -> None:
    clock = Clock()
    queue = _Queue(concurrency=2, clock=clock, sleep=clock.sleep)
    queue.add([_user(1), _user(2)])
    queue.add([])  # no more to claim: the queue waits for a call to end
    one_try, may_end = _calls_held(1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        handled = queue.step(pool, one_try)
        assert not may_end.is_set()  # the quick one came back on its own
        assert [user.row_id for user, _, _ in handled] == [2]
        may_end.set()


def test_while_calls_are_in_flight_a_queue_short_of_work_comes_back_to_claim_more() -> None:
    clock = Clock()
    queue = _Queue(concurrency=2, clock=clock, sleep=clock.sleep)
    queue.add([_user(1), _user(2)])
    one_try, may_end = _calls_held(1, 2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert queue.step(pool, one_try) == []  # both in flight, none in hand
        assert not may_end.is_set() and queue.wants_more()
        may_end.set()
    assert clock.slept == []


@pytest.mark.postgres
def test_users_are_taken_in_id_order_whatever_order_the_table_keeps_them_in(
    db: Any, stand_in: StripeStandIn
) -> None:
    """PostgreSQL writes a row whose indexed column changed anew, after the others: read
    without an order, the first user would come last, and a claim of four would pass over
    it for good."""
    database = Database(db.url)
    try:
        users = [f"u{n}" for n in range(1, 6)]
        pending(database.session, "first", *users[1:])
        with database.session() as session:
            session.get_one(StripeCustomer, 1).user_id = "u1"
        with database.session() as session:
            assert pending_users(session) == users
        done = run(database.session, stand_in, Clock())
    finally:
        database.dispose()
    assert done.outcomes == {"created": 5}
    assert [c["user_id"] for c in stand_in.creates] == users


def test_customers_whose_parameters_stripe_refused_are_not_pending_nor_claimed(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "waiting")
    pending(scope, "refused", parameters_refused_at=utcnow())
    with scope() as session:
        assert (pending_count(session), pending_users(session)) == (1, ["waiting"])
    done = run(scope, stand_in, Clock())
    assert [c["user_id"] for c in stand_in.creates] == ["waiting"]
    assert done.outcomes == {"created": 1}


def test_a_run_meeting_a_refusal_tries_it_once_and_leaves_it_to_the_operator(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1", "u2", "u3")
    refused = StripeParametersRefused("refused", error_type="stripe_email_invalid")
    stand_in.create_answers += [refused, refused]
    done = run(scope, stand_in, Clock())
    assert done.outcomes == {"refused": 2, "created": 1}
    assert (done.as_dict()["refused"], done.as_dict()["failed"]) == (2, 0)
    assert [c["user_id"] for c in stand_in.creates] == ["u1", "u2", "u3"]
    assert events_of(scope, "stripe_customer_failed") == []
    kinds = [n["kind"] for n in notifications_of(scope)]
    assert "stripe_onboarding_failed" not in kinds
    with scope() as session:
        assert pending_count(session) == 0


def test_a_run_meeting_a_create_in_flight_past_the_wait_counts_it_apart(
    scope: SessionScope, stand_in: StripeStandIn
) -> None:
    pending(scope, "u1", "u2")
    stand_in.create_answers += [
        StripeKeyInUse("in flight", error_type="stripe_idempotency_key_in_use") for _ in range(100)
    ]
    clock = Clock()
    done = run(scope, stand_in, clock)
    assert done.outcomes == {"in_flight": 2}
    assert (done.as_dict()["in_flight"], done.as_dict()["failed"]) == (2, 0)
    assert sum(clock.slept) == 2 * 32.5  # each user waited out 30 s: no backoff between
    assert events_of(scope, "stripe_customer_failed", "stripe_customer_attempt") == []
    assert notifications_of(scope) == []
