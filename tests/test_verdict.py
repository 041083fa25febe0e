"""The one verdict (``amazon.verdict``) and the one attention rule (``jobs.attention``), on
their own: what each kind of refusal means for a seller, what the events record of it, and
when a run exits 1. The commands that use them are tested end to end in test_refresh.py,
test_refresh_all.py and test_check.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from discoveryctl.amazon.verdict import (
    REAUTHORIZATION,
    RefreshOutcome,
    Verdict,
    event_error_type,
    expiry_warning_due,
    past_reauthorization,
    reauthorization_date,
    verdict,
)
from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    SellerAuthorizationRevoked,
    TransientProviderError,
)
from discoveryctl.jobs import attention

AUTHORIZED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
RENEW_BY = AUTHORIZED + timedelta(days=365)
SECOND = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("error", "now", "expected"),
    [
        (
            SellerAuthorizationRevoked("gone", error_type="lwa_invalid_grant", status_code=400),
            RENEW_BY - SECOND,
            Verdict(RefreshOutcome.revoked, "oauth_token_revoked", "gone", 400),
        ),
        (
            SellerAuthorizationRevoked("gone", error_type="lwa_invalid_grant", status_code=400),
            RENEW_BY,  # the day Amazon wants it renewed: expired, not revoked
            Verdict(RefreshOutcome.expired, "oauth_token_expired", "gone", 400),
        ),
        (
            AppCredentialsRejected("bad client", error_type="lwa_invalid_client", status_code=401),
            RENEW_BY,
            Verdict(
                RefreshOutcome.app_rejected, "oauth_app_credentials_rejected", "bad client", 401
            ),
        ),
        (
            TransientProviderError("slow", error_type="lwa_timeout"),
            AUTHORIZED,
            Verdict(RefreshOutcome.failed, "provider_timeout", "slow", None),
        ),
        (
            TransientProviderError("busy", error_type="spapi_throttled", status_code=429),
            AUTHORIZED,
            Verdict(RefreshOutcome.failed, "provider_throttled", "busy", 429),
        ),
        (
            ProviderError("what?", error_type="lwa_invalid_request", status_code=400),
            RENEW_BY,  # not a refusal of the seller: a failure, whatever the date
            Verdict(RefreshOutcome.failed, "provider_unexpected_answer", "what?", 400),
        ),
    ],
)
def test_what_each_refusal_means_for_the_seller(
    error: ProviderError, now: datetime, expected: Verdict
) -> None:
    assert verdict(error, AUTHORIZED, now) == expected


@pytest.mark.parametrize(
    ("outcome", "gone", "app"),
    [
        (RefreshOutcome.revoked, True, False),
        (RefreshOutcome.expired, True, False),
        (RefreshOutcome.failed, False, False),
        (RefreshOutcome.app_rejected, False, True),
        (RefreshOutcome.refreshed, False, False),
    ],
)
def test_which_verdicts_end_the_authorization_and_which_blame_the_app(
    outcome: RefreshOutcome, gone: bool, app: bool
) -> None:
    decided = Verdict(outcome, "x", "y")
    assert (decided.authorization_gone, decided.app_rejected) == (gone, app)


@pytest.mark.parametrize(
    ("error_type", "named"),
    [
        ("lwa_throttled", "provider_throttled"),
        ("spapi_timeout", "provider_timeout"),
        ("lwa_connection_error", "provider_connection_error"),
        ("spapi_server_error", "provider_server_error"),
        ("lwa_bad_response", "provider_bad_response"),
        ("lwa_invalid_request", "provider_error"),
        ("timeout", "provider_error"),  # no provider prefix: not one of ours
    ],
)
def test_a_transient_failure_is_named_alike_for_lwa_and_the_sp_api(
    error_type: str, named: str
) -> None:
    assert event_error_type(error_type) == named


def test_the_re_authorization_date_and_its_warning() -> None:
    assert reauthorization_date(AUTHORIZED) == AUTHORIZED + REAUTHORIZATION == RENEW_BY
    assert not past_reauthorization(AUTHORIZED, RENEW_BY - SECOND)
    assert past_reauthorization(AUTHORIZED, RENEW_BY)
    warn_from = RENEW_BY - timedelta(days=30)
    assert not expiry_warning_due(AUTHORIZED, None, warn_from - SECOND)
    assert expiry_warning_due(AUTHORIZED, None, warn_from)
    assert expiry_warning_due(AUTHORIZED, None, RENEW_BY + SECOND)
    assert not expiry_warning_due(AUTHORIZED, warn_from, warn_from + SECOND)  # once


@pytest.mark.parametrize(
    ("outcome", "needs"),
    [
        ("revoked", True),
        ("expired", True),
        ("failed", True),
        ("inconclusive", True),
        ("refreshed", False),
        ("ok", False),
        ("paced", False),
        ("app_rejected", False),  # exit 3, not 1: the app's problem, no seller's
    ],
)
def test_what_needs_an_operators_attention(outcome: str, needs: bool) -> None:
    assert attention.needs_attention(outcome) is needs


def test_attention_is_counted_one_a_seller_over_every_tally() -> None:
    assert attention.count(["revoked", "ok", "failed", "paced", "failed"]) == 3
    assert attention.count([]) == 0
    refreshes = {"refreshed": 5, "revoked": 2, "failed": 1}
    checks = {"ok": 4, "inconclusive": 3}
    assert attention.count_tallied(refreshes, checks) == 6
    assert attention.count_tallied() == 0
    assert attention.sellers_need(1) == "1 seller needs attention"
    assert attention.sellers_need(3) == "3 sellers need attention"
