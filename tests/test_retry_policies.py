"""Every wait between tries, by its named policy: the shortest and longest wait after each
failed try (the jitter's two ends, drawn on purpose), where the growth stops, how many tries,
and what a ``Retry-After`` does. Nothing here sleeps: waits are recorded, not waited."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from discoveryctl.alerts.delivery import BETWEEN_DRAINS, WEBHOOK_POST
from discoveryctl.amazon.refresh import BETWEEN_RUNS, LEASE, LEASE_WAIT
from discoveryctl.billing.customers import ONE_CREATE
from discoveryctl.errors import DatabaseConflict, ProviderError, TransientProviderError
from discoveryctl.support.retrying import IN_RUN, Attempt, RetryPolicy
from discoveryctl.transfer.store import BATCH_AFTER_CONFLICT


class Drawn(random.Random):
    """A random source whose every draw lands at ``at`` of its range: 0.0 the low end, 1.0
    the high end (``uniform(a, b)`` is ``a + (b - a) * random()``)."""

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at

    def random(self) -> float:
        return self.at


class NoDraws(random.Random):
    """A random source that fails the test if anything is drawn from it."""

    def random(self) -> float:
        pytest.fail("a draw from the random source")


def ends(policy: RetryPolicy, tries: int, error: BaseException | None = None) -> list[float]:
    """The shortest and the longest wait after ``tries`` failed tries."""
    return [policy.delay(tries, error, Drawn(0.0)), policy.delay(tries, error, Drawn(1.0))]


def throttled(retry_after: float | None = None) -> TransientProviderError:
    return TransientProviderError("slow down", status_code=429, retry_after=retry_after)


def failing(error: BaseException) -> tuple[list[int], Callable[[], None]]:
    """A call that always fails with ``error``, and the list its tries are counted in."""
    calls: list[int] = []

    def call() -> None:
        calls.append(len(calls) + 1)
        if len(calls) > 10:  # a policy that never stops fails the test instead of spinning
            pytest.fail(f"tried {len(calls)} times")
        raise error

    return calls, call


# -- in a run: a provider call -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tries", "shortest", "longest"),
    [(1, 0.5, 1.0), (2, 1.0, 1.5), (3, 2.0, 2.5), (4, 4.0, 4.5), (5, 8.0, 8.5), (40, 8.0, 8.5)],
)
def test_in_run_waits_double_from_half_a_second_to_eight_plus_up_to_half_a_second(
    tries: int, shortest: float, longest: float
) -> None:
    assert ends(IN_RUN, tries) == pytest.approx([shortest, longest])


def test_in_run_waits_what_retry_after_asks_up_to_ten_seconds() -> None:
    assert IN_RUN.delay(1, throttled(3.0)) == 3.0
    assert IN_RUN.delay(3, throttled(0.0)) == 0.0
    assert IN_RUN.delay(1, throttled(30.0)) == 10.0
    assert ends(IN_RUN, 2, throttled(None)) == pytest.approx([1.0, 1.5])  # none asked


def test_in_run_a_call_is_tried_three_times_each_try_timed() -> None:
    calls, call = failing(TransientProviderError("503", status_code=503))
    waits: list[float] = []
    tries: list[Attempt] = []
    with pytest.raises(TransientProviderError, match="503"):
        IN_RUN.call(call, tries=tries, sleep=waits.append)
    assert calls == [1, 2, 3]
    assert [t.number for t in tries] == [1, 2, 3]
    assert all(t.error is not None and t.error.status_code == 503 for t in tries)
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 1.5 and len(waits) == 2


def test_in_run_a_failure_not_worth_retrying_ends_the_call_uncounted() -> None:
    calls, call = failing(ProviderError("refused", status_code=400))
    tries: list[Attempt] = []
    with pytest.raises(ProviderError, match="refused"):
        IN_RUN.call(call, tries=tries, sleep=pytest.fail)
    assert calls == [1] and tries == []


def test_in_run_a_call_that_recovers_returns_its_answer_after_the_tries_it_took() -> None:
    answers: list[BaseException | str] = [throttled(2.0), "granted"]
    waits: list[float] = []
    tries: list[Attempt] = []

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert IN_RUN.call(call, tries=tries, sleep=waits.append) == "granted"
    assert waits == [2.0]
    assert [(t.number, t.error is None) for t in tries] == [(1, False), (2, True)]


def test_in_run_an_async_call_is_tried_as_a_plain_one() -> None:
    waits: list[float] = []
    tries: list[Attempt] = []
    calls: list[int] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def call() -> str:
        calls.append(len(calls) + 1)
        if len(calls) < 3:
            raise throttled(None if len(calls) == 1 else 4.0)
        return "granted"

    async def never() -> str:
        calls.append(len(calls) + 1)
        raise throttled()

    assert asyncio.run(IN_RUN.call_async(call, tries=tries, sleep=sleep)) == "granted"
    assert calls == [1, 2, 3] and [t.number for t in tries] == [1, 2, 3]
    assert 0.5 <= waits[0] <= 1.0 and waits[1] == 4.0

    calls.clear()
    with pytest.raises(TransientProviderError):
        asyncio.run(IN_RUN.call_async(never, sleep=sleep))
    assert calls == [1, 2, 3]


def test_in_run_an_async_call_that_succeeds_at_once_is_tried_once() -> None:
    tries: list[Attempt] = []

    async def call() -> str:
        return "granted"

    assert asyncio.run(IN_RUN.call_async(call, tries=tries)) == "granted"
    assert [(t.number, t.error) for t in tries] == [(1, None)]


def tried(call: Callable[[], str], tries: list[Attempt], how: str) -> str:
    """``call`` tried as ``IN_RUN`` tries it, ``how``: "plain" (``call``) or "async"
    (``call_async``), the waits taken at once."""
    if how == "plain":
        return IN_RUN.call(call, tries=tries, sleep=lambda _: None)

    async def call_async() -> str:
        return call()

    async def sleep(_: float) -> None:
        return None

    return asyncio.run(IN_RUN.call_async(call_async, tries=tries, sleep=sleep))


@pytest.mark.parametrize("how", ["plain", "async"])
def test_in_run_each_try_is_timed_from_its_start_to_its_end_and_keeps_its_failure(
    how: str,
) -> None:
    failure = throttled(0.0)
    bodies: list[float] = []

    def call() -> str:
        began = time.perf_counter()
        first = not bodies
        bodies.append(time.perf_counter() - began)
        if first:
            raise failure
        return "granted"

    tries: list[Attempt] = []
    began = time.perf_counter()
    assert tried(call, tries, how) == "granted"
    took = time.perf_counter() - began
    assert [(t.number, t.error) for t in tries] == [(1, failure), (2, None)]
    for attempt, body in zip(tries, bodies, strict=True):
        assert body <= attempt.seconds <= took  # the whole try, and no more than the call


@pytest.mark.parametrize("how", ["plain", "async"])
def test_in_run_a_failure_not_worth_retrying_after_a_transient_one_ends_the_call(
    how: str,
) -> None:
    answers: list[BaseException] = [throttled(0.0), ProviderError("refused", status_code=400)]
    calls: list[int] = []

    def call() -> str:
        calls.append(len(calls) + 1)
        raise answers.pop(0)

    tries: list[Attempt] = []
    with pytest.raises(ProviderError, match="refused"):
        tried(call, tries, how)
    assert calls == [1, 2]
    assert [(t.number, t.error is not None) for t in tries] == [(1, True)]  # the second: uncounted


def test_an_event_says_of_a_try_its_number_and_its_milliseconds_to_a_tenth() -> None:
    assert Attempt(2, 0.01234).detail() == {"attempt": 2, "duration_ms": 12.3}
    assert Attempt(3, 1.5, throttled()).detail() == {"attempt": 3, "duration_ms": 1500.0}


# -- Stripe: one create in one command -----------------------------------------------------------


def test_one_create_is_tried_four_times_waiting_as_stripe_python_does() -> None:
    calls, call = failing(TransientProviderError("502", status_code=502))
    waits: list[float] = []
    with pytest.raises(TransientProviderError):
        ONE_CREATE.call(call, sleep=waits.append)
    assert calls == [1, 2, 3, 4]
    assert waits[0] == 0.5 and 0.5 <= waits[1] <= 1.0 and 1.0 <= waits[2] <= 2.0


# -- between refresh runs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "base"),
    [
        (0, timedelta(minutes=5)),
        (1, timedelta(minutes=5)),
        (2, timedelta(minutes=10)),
        (3, timedelta(minutes=20)),
        (4, timedelta(minutes=40)),
        (5, timedelta(minutes=80)),
        (6, timedelta(minutes=160)),
        (7, timedelta(minutes=320)),
        (8, timedelta(hours=6)),
        (9, timedelta(hours=6)),
        (5000, timedelta(hours=6)),
    ],
)
def test_between_runs_a_credential_waits_5_minutes_doubling_to_6_hours_give_or_take_20_percent(
    failures: int, base: timedelta
) -> None:
    assert BETWEEN_RUNS.wait(failures, rng=Drawn(0.0)) == base * 0.8
    assert BETWEEN_RUNS.wait(failures, rng=Drawn(1.0)) == base * 1.2
    assert BETWEEN_RUNS.wait(failures, rng=Drawn(0.5)) == base


def test_between_runs_a_crowd_of_failures_spreads_out() -> None:
    waits = {BETWEEN_RUNS.wait(1) for _ in range(200)}
    assert len(waits) > 150
    assert min(waits) < timedelta(minutes=4.5) and max(waits) > timedelta(minutes=5.5)
    assert timedelta(minutes=4) <= min(waits) and max(waits) <= timedelta(minutes=6)


def test_between_runs_a_retry_after_changes_nothing() -> None:
    assert BETWEEN_RUNS.wait(1, throttled(3.0), Drawn(0.5)) == timedelta(minutes=5)


def test_a_stored_wait_is_the_policys_delay_retry_after_and_all() -> None:
    assert IN_RUN.wait(1, throttled(3.0)) == timedelta(seconds=3)
    assert IN_RUN.wait(2, throttled(30.0)) == timedelta(seconds=10)


# -- waiting for another process's lease ---------------------------------------------------------


def test_a_lease_is_looked_at_again_every_tenth_of_a_second_for_as_long_as_a_lease_lasts() -> None:
    assert [LEASE_WAIT.delay(n, rng=Drawn(1.0)) for n in (1, 2, 5, 100)] == [0.1] * 4
    assert LEASE_WAIT.within == LEASE.total_seconds() == 60
    assert LEASE_WAIT.attempts is None


def test_a_poll_returns_the_first_answer() -> None:
    answers: list[int | None] = [None, None, 7]
    waits: list[float] = []
    assert LEASE_WAIT.poll(lambda: answers.pop(0), pytest.fail, sleep=waits.append) == 7
    assert waits == [0.1, 0.1]


def test_a_poll_gives_up_once_its_time_is_out() -> None:
    looks: list[int] = []
    waits: list[float] = []
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="still held"):
        replace(LEASE_WAIT, within=0.05).poll(
            lambda: looks.append(1), lambda: TimeoutError("still held"), sleep=waits.append
        )
    took = time.monotonic() - began
    assert len(looks) >= 2 and set(waits) == {0.1}
    assert 0.05 <= took < 1.0  # not before its time, and soon after


def test_a_poll_ends_with_the_error_of_a_look() -> None:
    def look() -> None:
        raise TransientProviderError("revoked")

    with pytest.raises(TransientProviderError, match="revoked"):
        LEASE_WAIT.poll(look, pytest.fail, sleep=pytest.fail)


# -- the admin webhook ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tries", "shortest", "longest"),
    [(1, 0.5, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (4, 2.0, 4.0), (5, 2.5, 5.0), (9, 2.5, 5.0)],
)
def test_webhook_posts_wait_as_stripe_python_does(
    tries: int, shortest: float, longest: float
) -> None:
    assert ends(WEBHOOK_POST, tries) == pytest.approx([shortest, longest])
    assert ends(WEBHOOK_POST, tries, throttled(30.0)) == pytest.approx([shortest, longest])


def test_a_webhook_post_is_tried_three_times_unless_the_next_would_end_too_late() -> None:
    calls, call = failing(ConnectionError("refused"))
    waits: list[float] = []
    with pytest.raises(ConnectionError):
        WEBHOOK_POST.call(call, retry_on=ConnectionError, sleep=waits.append)
    assert calls == [1, 2, 3] and len(waits) == 2

    calls, call = failing(ConnectionError("refused"))
    told: list[float] = []
    with pytest.raises(ConnectionError):
        WEBHOOK_POST.call(
            call,
            retry_on=ConnectionError,
            stop_if=lambda wait: told.append(wait) or True,  # type: ignore[func-returns-value]
            sleep=pytest.fail,
        )
    assert calls == [1] and told == [0.5]


@pytest.mark.parametrize(
    ("drains", "wait"),
    [
        (0, timedelta(minutes=1)),
        (1, timedelta(minutes=1)),
        (2, timedelta(minutes=2)),
        (3, timedelta(minutes=4)),
        (6, timedelta(minutes=32)),
        (7, timedelta(hours=1)),
        (500, timedelta(hours=1)),
    ],
)
def test_between_drains_a_delivery_waits_a_minute_doubling_to_an_hour_exactly(
    drains: int, wait: timedelta
) -> None:
    assert BETWEEN_DRAINS.wait(drains, rng=Drawn(0.0)) == wait
    assert BETWEEN_DRAINS.wait(drains, rng=Drawn(1.0)) == wait


def test_a_policy_without_jitter_draws_nothing_at_random() -> None:
    assert BETWEEN_DRAINS.wait(3, rng=NoDraws()) == timedelta(minutes=4)
    assert LEASE_WAIT.delay(5, rng=NoDraws()) == 0.1


# -- an import batch that met another writer -----------------------------------------------------


def test_a_conflicting_batch_is_tried_three_times_a_tenth_of_a_second_or_so_apart() -> None:
    assert ends(BATCH_AFTER_CONFLICT, 1) == pytest.approx([0.05, 0.2])
    assert ends(BATCH_AFTER_CONFLICT, 2) == pytest.approx([0.1, 0.4])
    calls, call = failing(DatabaseConflict("duplicate key"))
    waits: list[float] = []
    retried: list[int] = []
    with pytest.raises(DatabaseConflict):
        BATCH_AFTER_CONFLICT.call(
            call,
            retry_on=DatabaseConflict,
            on_retry=retried.append,
            sleep=waits.append,
        )
    assert calls == [1, 2, 3] and retried == [1, 2]
    assert 0.05 <= waits[0] <= 0.2 and 0.1 <= waits[1] <= 0.4
