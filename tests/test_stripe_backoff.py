"""The waits between tries of a Stripe call: stripe-python's own schedule."""

from __future__ import annotations

import pytest

from discoveryctl.errors import TransientProviderError
from discoveryctl.providers.stripe import STRIPE_PYTHON_SCHEDULE


@pytest.mark.parametrize(
    ("tries", "shortest", "longest"),
    [(1, 0.5, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (4, 2.0, 4.0), (5, 2.5, 5.0), (12, 2.5, 5.0)],
)
def test_waits_double_from_half_a_second_to_five_with_half_of_each_random(
    tries: int, shortest: float, longest: float
) -> None:
    waits = [STRIPE_PYTHON_SCHEDULE.delay(tries) for _ in range(2000)]
    assert shortest <= min(waits) and max(waits) <= longest
    if shortest < longest:  # jittered over the whole range, not stuck at one end
        spread = longest - shortest
        assert min(waits) < shortest + spread / 4 and max(waits) > longest - spread / 4


def test_a_retry_after_is_waited_instead_of_the_schedule() -> None:
    throttled = TransientProviderError("slow down", status_code=429, retry_after=3.0)
    assert STRIPE_PYTHON_SCHEDULE.delay(1, throttled) == 3.0
    assert STRIPE_PYTHON_SCHEDULE.delay(1, TransientProviderError("wait", retry_after=90.0)) == 10.0
    assert 2.0 <= STRIPE_PYTHON_SCHEDULE.delay(4, TransientProviderError("5xx")) <= 4.0
