"""The brake's rule (``amazon.mass_revocation.Brake``): more than ``threshold`` of at least
``minimum`` refresh answers saying "gone" holds them all, unless the operator accepts them."""

from __future__ import annotations

import pytest

from discoveryctl.amazon.mass_revocation import MINIMUM_ANSWERS, THRESHOLD, Brake, message


def test_the_defaults_are_more_than_half_of_at_least_10() -> None:
    assert (MINIMUM_ANSWERS, THRESHOLD) == (10, 0.5)
    assert Brake() == Brake(threshold=0.5, minimum=10, accept=False)


@pytest.mark.parametrize(
    ("answered", "gone", "engaged"),
    [
        (10, 6, True),
        (10, 10, True),
        (10, 5, False),  # half is not more than half
        (9, 9, False),  # too few answers to tell
        (11, 6, True),
        (12, 6, False),
        (0, 0, False),
    ],
)
def test_more_than_half_of_at_least_10_answers_engage_the_brake(
    answered: int, gone: int, engaged: bool
) -> None:
    assert Brake().engaged(answered, gone) is engaged


def test_the_threshold_and_the_minimum_are_the_operator_s() -> None:
    assert Brake(threshold=0.3).engaged(10, 4)
    assert not Brake(threshold=0.3).engaged(10, 3)
    assert Brake(minimum=3).engaged(3, 2)
    assert not Brake(minimum=4).engaged(3, 3)


def test_accepting_the_revocations_releases_the_brake() -> None:
    assert not Brake(accept=True).engaged(100, 100)


def test_the_message_names_the_count_and_the_way_out() -> None:
    assert message(12, 11) == (
        "11 of 12 refresh answers said the seller's authorization is gone: more likely the "
        "app's own settings (AMAZON_LWA_CLIENT_ID and its secret: another app's?) than every "
        "seller at once; nobody was marked and no seller was told. Check the settings; if the "
        "sellers really are gone, run refresh-all --accept-mass-revocation"
    )
