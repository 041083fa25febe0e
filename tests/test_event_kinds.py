"""Event kinds are one enum, each with the outcomes it is recorded with."""

from __future__ import annotations

import pytest

from discoveryctl.integrations import events


def test_every_kind_has_its_outcomes_and_every_attempt_succeeds_or_fails() -> None:
    assert all(events.OUTCOMES[kind] for kind in events.Kind)
    attempts = [k for k in events.Kind if k.name.startswith(("token_refresh", "oauth_callback"))]
    attempts += [events.Kind.stripe_customer_attempt, events.Kind.stripe_customer_created]
    for kind in attempts:
        assert events.OUTCOMES[kind] <= {events.SUCCESS, events.FAILURE}, kind


def test_an_event_with_an_outcome_its_kind_never_has_is_refused() -> None:
    with pytest.raises(ValueError, match="never recorded as 'info'"):
        events.entry(events.Kind.token_refresh_failed, outcome=events.INFO)
    row = events.entry(events.Kind.token_refreshed, outcome=events.SUCCESS, user_id="u1")
    assert row["kind"] == "token_refreshed" and row["outcome"] == "success"
