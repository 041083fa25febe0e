"""Trying again: one policy type, ``RetryPolicy``, for every wait between tries, whether the
next try comes within the same command (a provider call, an import batch, a webhook post,
another process's lease) or in a later run (a credential's next refresh, an alert's next
drain). Each policy is a named constant beside the code it serves, with its numbers and where
they come from; tenacity runs the tries (imported when tries are run, not with this module:
a command that only reads a policy's waits never loads it).

``IN_RUN`` is the policy of a provider call within one command or run; each of its tries is
timed for the history (``Attempt``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from discoveryctl.errors import TransientProviderError

if TYPE_CHECKING:
    import tenacity

Result = TypeVar("Result")

Failure = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait after each failed try, and how many tries there are in all.

    After ``n`` failed tries the wait is ``first * factor ** (n - 1)`` seconds, at most
    ``longest``, multiplied by a factor drawn at random from ``jitter``, plus up to
    ``jitter_seconds`` more at random, and never under ``shortest``. When
    ``longest_retry_after`` is set, a transient failure that says how long to wait
    (``Retry-After``) is waited that long instead, up to ``longest_retry_after``.

    ``attempts`` tries at most (None: no limit); none after ``within`` seconds have passed
    since the first began (None: no limit).
    """

    first: float
    factor: float = 2.0
    longest: float = math.inf
    jitter: tuple[float, float] = (1.0, 1.0)
    jitter_seconds: float = 0.0
    shortest: float = 0.0
    attempts: int | None = None
    within: float | None = None
    longest_retry_after: float | None = None

    def delay(
        self, tries: int, error: BaseException | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after ``tries`` failed tries (fewer than one counts as one), the
        last of which failed with ``error``; ``rng``: where the jitter is drawn from."""
        if (
            self.longest_retry_after is not None
            and isinstance(error, TransientProviderError)
            and error.retry_after is not None
        ):
            return min(error.retry_after, self.longest_retry_after)
        uniform = random.uniform if rng is None else rng.uniform
        try:
            grown = self.first * self.factor ** max(tries - 1, 0)
        except OverflowError:  # a float's range is long past any ``longest``
            grown = math.inf
        seconds = min(grown, self.longest)
        if self.jitter != (1.0, 1.0):
            seconds *= uniform(*self.jitter)
        if self.jitter_seconds:
            seconds += uniform(0.0, self.jitter_seconds)
        return max(self.shortest, seconds)

    def wait(
        self, tries: int, error: BaseException | None = None, rng: random.Random | None = None
    ) -> timedelta:
        """``delay`` as a timedelta, for a wait that is stored (a next attempt's time)."""
        return timedelta(seconds=self.delay(tries, error, rng))

    def call(
        self,
        call: Callable[[], Result],
        *,
        retry_on: Failure = TransientProviderError,
        tries: list[Attempt] | None = None,
        on_retry: Callable[[int], None] | None = None,
        stop_if: Callable[[float], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Result:
        """``call()``, tried again after a failure of the kind ``retry_on`` names, the last
        failure raised as it is. Each try of a provider call is appended to ``tries``;
        ``on_retry(n)`` is told before the wait after ``n`` failed tries; ``stop_if(wait)``:
        no further try when it says so of the wait before it."""
        import tenacity

        timed = call if tries is None else _timed(call, tries)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(retry_on),
            reraise=True,
            sleep=sleep,
            **self._schedule(on_retry, stop_if),
        )
        return retrying(timed)

    async def call_async(
        self,
        call: Callable[[], Awaitable[Result]],
        *,
        tries: list[Attempt] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> Result:
        """``await call()``, tried again on a transient failure, as ``call``; ``sleep``:
        tenacity's (``asyncio.sleep``) unless given."""
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

        # The first try outside tenacity: nearly every call succeeds at once, and at
        # refresh-all's pace its machinery is a measurable share of the CPU. A failed first try
        # is replayed as tenacity's first, so the waits and the count are exactly the policy's.
        try:
            return await timed()
        except TransientProviderError as error:
            first: list[TransientProviderError] = [error]

        async def again() -> Result:
            if first:
                raise first.pop()
            return await timed()

        import tenacity

        options = self._schedule()
        if sleep is not None:
            options["sleep"] = sleep
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(TransientProviderError), reraise=True, **options
        )
        async for attempt in retrying:
            with attempt:
                result = await again()
        return result

    def poll(
        self,
        check: Callable[[], Result | None],
        give_up: Callable[[], BaseException],
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Result:
        """``check()`` until it answers something other than None; ``give_up()`` is raised
        when the policy allows no further look. An exception from ``check`` ends the poll."""
        import tenacity

        def out_of_tries(_: tenacity.RetryCallState) -> Any:
            raise give_up()

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda answer: answer is None),
            retry_error_callback=out_of_tries,
            sleep=sleep,
            **self._schedule(),
        )
        answer = retrying(check)
        return cast("Result", answer)  # pragma: no mutate  (a cast only tells the type checker)

    def _schedule(
        self,
        on_retry: Callable[[int], None] | None = None,
        stop_if: Callable[[float], bool] | None = None,
    ) -> dict[str, Any]:
        """tenacity's ``wait``, ``stop`` and ``before_sleep`` for this policy."""
        import tenacity

        stops: list[Callable[[tenacity.RetryCallState], bool]] = []
        if self.attempts is not None:
            stops.append(tenacity.stop_after_attempt(self.attempts))
        if self.within is not None:
            stops.append(tenacity.stop_after_delay(self.within))
        if stop_if is not None:
            stops.append(lambda state: stop_if(state.upcoming_sleep))

        def wait(state: tenacity.RetryCallState) -> float:
            # Asked only after a try, so there is always an outcome: the test only narrows its
            # type. An outcome that is an answer has no exception(): None.
            outcome = state.outcome
            error = outcome.exception() if outcome else None  # pragma: no mutate  (see above)
            return self.delay(state.attempt_number, error)

        def stop(state: tenacity.RetryCallState) -> bool:
            return any(stopped(state) for stopped in stops)

        schedule: dict[str, Any] = {"wait": wait, "stop": stop}
        if on_retry is not None:
            schedule["before_sleep"] = lambda state: on_retry(state.attempt_number)
        return schedule


IN_RUN = RetryPolicy(
    first=0.5, factor=2.0, longest=8.0, jitter_seconds=0.5, attempts=3, longest_retry_after=10.0
)
"""A provider call within one command or run (our choice): 3 tries; between them 0.5 s, 1 s,
… at most 8 s, each + up to 0.5 s at random, or what ``Retry-After`` asks, up to 10 s. Three
tries and their waits stay well inside a 60 s lease; a longer ``Retry-After`` is left to the
backoff between runs."""


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


def _timed(call: Callable[[], Result], log: list[Attempt]) -> Callable[[], Result]:
    """``call``, each try appended to ``log``: those that succeed and those that fail for now
    (a failure of another kind ends the call untried again, and is not counted)."""

    def timed() -> Result:
        started = time.perf_counter()
        try:
            result = call()
        except TransientProviderError as error:
            log.append(Attempt(len(log) + 1, time.perf_counter() - started, error))
            raise
        log.append(Attempt(len(log) + 1, time.perf_counter() - started))
        return result

    return timed
