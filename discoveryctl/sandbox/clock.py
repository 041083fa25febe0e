"""The sandbox's sense of time, injected so tests can move it instead of waiting.

Stripe keeps idempotency keys for 24 hours and Amazon's consent codes live 5 minutes; a test
of what happens after either cannot sleep that long. Every deadline, expiry and ``created``
timestamp of the emulator reads ``clock.now()``, and every delay it injects awaits
``clock.sleep()``, so a test can ``advance()`` the clock by a day, or use a ``ManualClock``
whose sleeps take no real time and are recorded for the test to check.
"""

from __future__ import annotations

import asyncio
import threading
import time


class SandboxClock:
    """Real time (Unix seconds) plus an offset that only moves forward."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0

    def now(self) -> float:
        """Seconds since the epoch, as the emulated services see it."""
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the emulated services' time forward (a day, to expire idempotency keys)."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self._offset += seconds

    async def sleep(self, seconds: float) -> None:
        """Wait, as an emulated service that is slow would."""
        await asyncio.sleep(seconds)


class ManualClock(SandboxClock):
    """A clock whose sleeps return at once, moving the clock instead, and are recorded.

    ``sleeps`` lists every injected delay in seconds; ``most_asleep`` is the largest number of
    requests that were sleeping at the same moment, which shows delays overlap (are
    concurrent) without measuring wall time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []
        self.most_asleep = 0
        self._asleep = 0

    async def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._asleep += 1
            self.most_asleep = max(self.most_asleep, self._asleep)
        try:
            # Yield to the loop so that requests arriving together are asleep together.
            await asyncio.sleep(0.05)
        finally:
            with self._lock:
                self._asleep -= 1
                self._offset += seconds
