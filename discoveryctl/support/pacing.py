"""Spacing a run's calls to a provider evenly instead of letting them go out in waves.

With C calls in flight that each take about L seconds, C calls start every L seconds. Started
together, they come back together, and each answer then waits behind the others for its
turn on the event loop, here and at the provider: every microsecond of work per call is paid
once per call ahead of it in the wave. Waves do not break up on their own: a call that comes
back while the loop is busy is handled right after the one before it, so gaps between calls
only ever shrink, until all C travel together.

A ``Pacer`` lets a call start no sooner than ``HEADROOM · L / C`` after the one before, L
being the shortest time a call took among the last C. That spreads the C calls over the
time one of them takes, so each is handled alone; and the rate it allows is always twice
what C calls of that duration could reach anyway, so pacing never holds a run back: a
slower provider only widens the gaps in step, and one slow call never does (it is not the
shortest). Against the sandbox at L = 50 ms, C = 64 (benchmarks/refresh_all.py), a call's
p50 fell from 54 to 51 ms and its p90 from 57 to 52 ms; with HEADROOM 0.65 and 0.8 the runs
were no faster (a wave that does form is then spread more slowly).
"""

from __future__ import annotations

from collections import deque

HEADROOM = 0.5
"""The gap between two starts, as a share of the ideal one (L / C): at most twice the rate
C calls of duration L allow."""


class Pacer:
    """When the next call may start, given how long recent calls took."""

    def __init__(self, concurrency: int) -> None:
        self._window = max(concurrency, 1)
        self._taken = 0  # calls measured so far
        # The shortest recent durations: (call number, seconds), increasing in both.
        self._shortest: deque[tuple[int, float]] = deque()
        self._next_start = 0.0

    @property
    def gap(self) -> float:
        """Seconds between two starts: none until a call has been measured."""
        if not self._shortest:
            return 0.0
        return HEADROOM * self._shortest[0][1] / self._window

    def wait(self, now: float) -> float:
        """Book the next start, at ``now`` or later (seconds on the caller's monotonic clock);
        return how long to wait for it."""
        start = max(now, self._next_start)
        self._next_start = start + self.gap
        return start - now

    def took(self, seconds: float) -> None:
        """Record how long a call took."""
        number = self._taken
        self._taken += 1
        while self._shortest and self._shortest[-1][1] >= seconds:
            self._shortest.pop()
        self._shortest.append((number, seconds))
        if self._shortest[0][0] <= number - self._window:
            self._shortest.popleft()
