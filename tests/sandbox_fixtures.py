"""The ``sandbox`` fixture: a fresh emulator on a free port for each test, stopped after it.

``conftest.py`` imports it; tests that need another configuration start their own with
``run_in_thread(SandboxConfig(...))`` in a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from discoveryctl.sandbox import Sandbox, run_in_thread


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A running sandbox with the default configuration (a draft app, no faults)."""
    with run_in_thread() as running:
        yield running
