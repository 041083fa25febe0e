"""The ``sandbox`` fixture: a fresh emulator on a free port for each test, stopped after it.

``conftest.py`` imports it; tests that need another configuration start their own with
``run_in_thread(SandboxConfig(...))`` in a ``with`` block, and tests that must not see time
pass give it a ``FrozenClock``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from discoveryctl.sandbox import Sandbox, run_in_thread
from discoveryctl.sandbox.clock import ManualClock


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A running sandbox with the default configuration (a draft app, no faults)."""
    with run_in_thread() as running:
        yield running


class FrozenClock(ManualClock):
    """A ``ManualClock`` that does not follow the wall clock either: only ``advance()`` and
    the sandbox's injected sleeps move it, so a test sees the same time however slow it runs."""

    def __init__(self) -> None:
        super().__init__()
        self._frozen_at = time.time()

    def now(self) -> float:
        with self._lock:
            return self._frozen_at + self._offset
