"""Retrying a provider call within one command or run: a few tries on a transient failure,
waiting what ``Retry-After`` asks or a short exponential backoff between them, each try timed
for the history.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from discoveryctl.errors import TransientProviderError

IN_RUN_ATTEMPTS = 3
LONGEST_IN_RUN_WAIT = 10.0

Result = TypeVar("Result")


Backoff = Callable[[int], float]
"""Seconds to wait after a number of failed tries, when the provider did not say."""


def exponential_backoff(tries: int) -> float:
    """0.5 s, 1 s, … at most 8 s, each + up to 0.5 s of jitter."""
    return min(0.5 * 2.0 ** (tries - 1), 8.0) + random.uniform(0.0, 0.5)


def in_run_wait(
    tries: int, error: BaseException | None = None, backoff: Backoff = exponential_backoff
) -> float:
    """Seconds to wait after ``tries`` failed tries, within one command or run: what
    ``Retry-After`` asked when the provider gave one, else ``backoff(tries)``."""
    if isinstance(error, TransientProviderError) and error.retry_after is not None:
        # Within a run, never longer than this: three tries and their waits stay well inside
        # a lease; a longer Retry-After is honoured by the backoff between runs instead.
        return min(error.retry_after, LONGEST_IN_RUN_WAIT)
    return backoff(tries)


def _retry_policy(attempts: int, backoff: Backoff = exponential_backoff) -> dict[str, Any]:
    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return in_run_wait(state.attempt_number, error, backoff)

    return {
        "retry": tenacity.retry_if_exception_type(TransientProviderError),
        "stop": tenacity.stop_after_attempt(attempts),
        "wait": wait,
        "reraise": True,
    }


@dataclass(frozen=True)
class Attempt:
    """One try of a call to a provider: its number (from 1), how long it took, and the
    transient failure that ended it, if one did."""

    number: int
    seconds: float
    error: TransientProviderError | None = None

    def detail(self) -> dict[str, Any]:
        """What an event says of this try."""
        return {"attempt": self.number, "duration_ms": round(self.seconds * 1000, 1)}


def with_retries(
    call: Callable[[], Result],
    attempts: int = IN_RUN_ATTEMPTS,
    tries: list[Attempt] | None = None,
    backoff: Backoff = exponential_backoff,
) -> Result:
    """``call()``, tried again on a transient failure after ``in_run_wait``; each try is
    appended to ``tries``."""
    log = [] if tries is None else tries

    def timed() -> Result:
        started = time.perf_counter()
        try:
            result = call()
        except TransientProviderError as error:
            log.append(Attempt(len(log) + 1, time.perf_counter() - started, error))
            raise
        log.append(Attempt(len(log) + 1, time.perf_counter() - started))
        return result

    return tenacity.Retrying(**_retry_policy(attempts, backoff))(timed)


async def with_async_retries(
    call: Callable[[], Awaitable[Result]],
    attempts: int = IN_RUN_ATTEMPTS,
    tries: list[Attempt] | None = None,
) -> Result:
    """``await call()``, tried again on a transient failure, as ``with_retries``."""
    log = [] if tries is None else tries

    async def timed() -> Result:
        started = time.perf_counter()
        try:
            result = await call()
        except TransientProviderError as error:
            log.append(Attempt(len(log) + 1, time.perf_counter() - started, error))
            raise
        log.append(Attempt(len(log) + 1, time.perf_counter() - started))
        return result

    # The first try outside tenacity: nearly every call succeeds at once, and at refresh-all's
    # pace its machinery is a measurable share of the CPU. A failed first try is replayed as
    # tenacity's first, so the waits and the count are exactly the policy's.
    try:
        return await timed()
    except TransientProviderError as error:
        first: list[TransientProviderError] = [error]

    async def again() -> Result:
        if first:
            raise first.pop()
        return await timed()

    async for attempt in tenacity.AsyncRetrying(**_retry_policy(attempts)):
        with attempt:
            result = await again()
    return result
