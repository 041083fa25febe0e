"""Pacing: when the next call may start. Starts are spread over the time one call takes,
instead of going out in waves, and never spaced wider than the shortest recent call allows.
(refresh-all's use of it: tests/test_refresh_all.py.)"""

from __future__ import annotations

import pytest

from discoveryctl.support.pacing import HEADROOM, Pacer


def starts(pacer: Pacer, now: float, calls: int) -> list[float]:
    """When ``calls`` calls asked for at ``now`` may start."""
    return [now + pacer.wait(now) for _ in range(calls)]


def test_nothing_waits_before_a_call_has_been_measured() -> None:
    assert starts(Pacer(4), 10.0, 5) == [10.0] * 5


def test_starts_are_spaced_by_the_share_of_a_call_each_slot_gets() -> None:
    pacer = Pacer(4)
    pacer.took(0.4)
    gap = HEADROOM * 0.4 / 4
    assert starts(pacer, 10.0, 4) == pytest.approx([10.0 + n * gap for n in range(4)])


def test_a_start_asked_for_after_its_turn_goes_at_once() -> None:
    pacer = Pacer(4)
    pacer.took(0.4)
    assert pacer.wait(10.0) == 0.0
    assert pacer.wait(20.0) == 0.0  # long after the booked turn: no catching up


def test_one_slow_call_does_not_widen_the_gaps() -> None:
    pacer = Pacer(4)
    pacer.took(0.4)
    pacer.took(30.0)  # a timeout
    assert pacer.gap == pytest.approx(HEADROOM * 0.4 / 4)


def test_a_faster_call_narrows_the_gaps_at_once() -> None:
    pacer = Pacer(4)
    pacer.took(0.4)
    pacer.took(0.2)
    assert pacer.gap == pytest.approx(HEADROOM * 0.2 / 4)


def test_a_slower_provider_widens_the_gaps_once_a_window_of_calls_says_so() -> None:
    pacer = Pacer(4)
    pacer.took(0.2)
    for _ in range(3):
        pacer.took(0.8)
    assert pacer.gap == pytest.approx(HEADROOM * 0.2 / 4)  # the fast one is still recent
    pacer.took(0.8)  # four calls since the fast one
    assert pacer.gap == pytest.approx(HEADROOM * 0.8 / 4)


def test_the_shortest_of_the_window_is_kept_when_later_calls_are_longer() -> None:
    pacer = Pacer(3)
    for seconds in (0.5, 0.3, 0.6, 0.7):
        pacer.took(seconds)
    assert pacer.gap == pytest.approx(HEADROOM * 0.3 / 3)  # 0.3 is among the last three
    pacer.took(0.9)
    assert pacer.gap == pytest.approx(HEADROOM * 0.6 / 3)
