"""refresh-all's queue of pending Stripe customers: users waiting out a backoff never stop the
run from claiming the next ones."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from discoveryctl.billing.customers import TryResult, _Pending, _Queue
from discoveryctl.errors import TransientProviderError


def _pending(row_id: int) -> _Pending:
    return _Pending(row_id, f"user-{row_id}", f"user-{row_id}@example.com", None, None, "k", None)


def _throttled(pending: _Pending) -> TryResult:
    return TransientProviderError("slow down", status_code=429, retry_after=60.0)


def test_two_rounds_due_now_are_enough_and_one_less_asks_for_more() -> None:
    queue = _Queue(concurrency=2)
    queue.add([_pending(n) for n in range(1, 4)])
    assert queue.wants_more()
    queue.add([_pending(4)])
    assert not queue.wants_more()
    assert queue.after == 4


def test_users_waiting_out_a_backoff_do_not_count_as_work_in_hand() -> None:
    queue = _Queue(concurrency=2)
    queue.add([_pending(n) for n in range(1, 5)])
    failed = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        while len(failed) < 4:
            failed += queue.step(pool, _throttled)
    for pending, outcome, tries in failed:
        assert isinstance(outcome, TransientProviderError)
        queue.again(pending, tries, outcome)
    assert queue.wants_more()  # four users in the queue, none of them due for a while
    queue.add([_pending(5), _pending(6), _pending(7)])
    assert queue.wants_more()
    queue.add([_pending(8)])
    assert not queue.wants_more()


def test_a_run_out_of_users_claims_no_more() -> None:
    queue = _Queue(concurrency=2)
    queue.add([])
    assert not queue.wants_more()
    assert queue.idle()


def test_past_its_end_the_queue_claims_no_more_and_lets_go_of_those_not_running() -> None:
    queue = _Queue(concurrency=2, ends=time.monotonic() + 60)
    queue.add([_pending(1)])
    assert not queue.out_of_time()  # a minute to go
    queue.ends = time.monotonic() - 1
    assert queue.out_of_time()  # a user let go, and maybe more never claimed
    assert not queue.wants_more() and queue.idle()
    assert not queue.out_of_time()  # nothing more was left since


def test_past_its_end_a_queue_not_yet_run_dry_may_have_left_users_unclaimed() -> None:
    queue = _Queue(concurrency=2, ends=time.monotonic() - 1)
    assert queue.out_of_time()
    drained = _Queue(concurrency=2, ends=time.monotonic() - 1)
    drained.add([])
    assert not drained.out_of_time()  # every user was dealt with
    waiting = _Queue(concurrency=2, ends=time.monotonic() - 1)
    waiting.add([_pending(1)])
    waiting.add([])
    assert waiting.out_of_time()  # all claimed, one still to try


def test_a_queue_without_an_end_is_never_out_of_time() -> None:
    queue = _Queue(concurrency=2)
    queue.add([_pending(1)])
    assert not queue.out_of_time() and queue.wants_more()
