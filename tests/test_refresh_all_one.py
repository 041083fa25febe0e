"""refresh-all's call for one seller (``amazon.refresh_all._refresh_one``) against the sandbox's
LWA and SP-API, without a database:

- an unreadable refresh token fails that seller alone, and nothing is sent;
- LWA's answer is the seller's: a grant (its refresh token only when LWA rotated it) or a
  verdict, with every try it took; the app's credentials refused close the run at once, with
  no grace for the calls in flight; once the run is closed, a call not yet started is not sent;
- with ``--verify``, the new token is checked at the SP-API while the seller's allowance lasts
  (paced once it is spent); a refusal is confirmed with one more grant and one more call (the
  newest grant kept), and only a second refusal is the answer; a seller looked at again is
  not confirmed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from discoveryctl.amazon.refresh_all import Answer, Closing, Due, _refresh_one
from discoveryctl.amazon.verdict import RefreshOutcome
from discoveryctl.errors import SpApiTokenRefused, TransientProviderError
from discoveryctl.providers.lwa import AsyncLwaClient, TokenGrant
from discoveryctl.providers.spapi import AsyncSpApiClient
from discoveryctl.sandbox import Sandbox
from discoveryctl.support.crypto import Vault
from discoveryctl.support.pacing import Pacer

from helpers import app_for

TOKEN_CALLS = "POST /auth/o2/token"
CHECK_CALLS = "GET /sellers/v1/marketplaceParticipations"
RECENTLY = datetime.now(UTC) - timedelta(days=10)


@pytest.fixture
def vault(sqlite_db: Any) -> Vault:
    return Vault([sqlite_db.key])


def due_for(
    vault: Vault, refresh_token: str, *, may_check: bool = False, recheck: bool = False
) -> Due:
    """Seller u7's claim, as a run with ``--verify`` (or looking at it again) makes it."""
    return Due(
        7,
        "u7",
        vault.encrypt(refresh_token),
        RECENTLY,
        "na",
        may_check=may_check,
        recheck=recheck,
        wants_check=True,
    )


def refresh_one(
    sandbox: Sandbox,
    vault: Vault,
    due: Due,
    *,
    verify: bool = False,
    closing: Closing | None = None,
    between: Callable[[], None] | None = None,
) -> tuple[Answer | None, Closing]:
    """``due``'s call, as a run makes it (one at a time); the answer and the run's closing.
    ``between``: done at the sandbox once LWA's first grant is in, before anything else."""
    app = app_for(sandbox)
    closed = closing or Closing()

    async def call() -> Answer | None:
        lwa_client = AsyncLwaClient(app) if between is None else _Then(app, between)
        async with lwa_client as lwa, AsyncSpApiClient(app) as spapi:
            return await _refresh_one(
                lwa,
                vault,
                due,
                asyncio.Semaphore(1),
                Pacer(1),
                spapi if verify else None,
                closed,
            )

    return asyncio.run(call()), closed


class _Then(AsyncLwaClient):
    """LWA's client, which does ``then`` once its first grant is in."""

    def __init__(self, app: Any, then: Callable[[], None]) -> None:
        super().__init__(app)
        self._then: Callable[[], None] | None = then

    async def refresh(self, refresh_token: str) -> TokenGrant:
        grant = await super().refresh(refresh_token)
        if self._then is not None:
            self._then, then = None, self._then
            then()
        return grant


def sent(sandbox: Sandbox, route: str = TOKEN_CALLS) -> int:
    return int(sandbox.state.stats()["requests"].get(route, 0))


def test_an_unreadable_refresh_token_fails_that_seller_and_sends_nothing(
    vault: Vault, sandbox: Sandbox
) -> None:
    due = Due(7, "u7", "not-a-fernet-token", RECENTLY, "na")
    answer, closing = refresh_one(sandbox, vault, due)
    assert answer is not None and answer.grant is None and answer.verdict is not None
    assert (answer.verdict.outcome, answer.verdict.error_type) == (
        RefreshOutcome.failed,
        "credential_unreadable",
    )
    assert answer.due == due
    assert answer.verdict.message.startswith("the refresh token cannot be decrypted")
    assert sent(sandbox) == 0 and not closing.is_closed()


def test_a_granted_token_is_the_seller_s_answer_with_its_one_try(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    answer, _ = refresh_one(sandbox, vault, due_for(vault, seller.refresh_token))
    assert answer is not None and answer.grant is not None and answer.verdict is None
    assert answer.grant.access_token
    assert answer.grant.refresh_token is None  # sent back unchanged: nothing new to store
    assert [attempt.number for attempt in answer.tries] == [1]
    assert (answer.checked, answer.paced, answer.check_error) == (False, False, None)
    assert sent(sandbox) == 1 and sent(sandbox, CHECK_CALLS) == 0


def test_a_grant_after_a_throttled_try_keeps_both_tries(vault: Vault, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "throttled", retry_after=0, times=1)
    answer, _ = refresh_one(sandbox, vault, due_for(vault, seller.refresh_token))
    assert answer is not None and answer.grant is not None
    assert [(a.number, a.error is not None) for a in answer.tries] == [(1, True), (2, False)]


def test_a_refusal_after_a_throttled_try_is_the_seller_s_verdict_with_that_try(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "throttled", retry_after=0, times=1)
    sandbox.state.set_behaviour(seller.selling_partner_id, "revoked", times=1)
    answer, closing = refresh_one(sandbox, vault, due_for(vault, seller.refresh_token))
    assert answer is not None and answer.grant is None and answer.verdict is not None
    assert answer.verdict.outcome == RefreshOutcome.revoked
    assert [a.number for a in answer.tries] == [1]  # the throttled one; the refusal is the verdict
    assert not closing.is_closed()


def test_lwa_refusing_the_app_closes_the_run_with_no_grace(vault: Vault, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "app_rejected", times=1)
    answer, closing = refresh_one(sandbox, vault, due_for(vault, seller.refresh_token))
    assert answer is not None and answer.verdict is not None
    assert answer.verdict.outcome == RefreshOutcome.app_rejected
    assert closing.is_closed() and closing.grace_ends is None


def test_once_the_run_is_closed_a_call_not_yet_started_is_not_sent(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    closing = Closing()
    closing.close(5.0)
    answer, _ = refresh_one(sandbox, vault, due_for(vault, seller.refresh_token), closing=closing)
    assert answer is None
    assert sent(sandbox) == 0


def test_with_verify_the_new_token_is_checked_at_the_sp_api(vault: Vault, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    due = due_for(vault, seller.refresh_token, may_check=True)
    answer, _ = refresh_one(sandbox, vault, due, verify=True)
    assert answer is not None and answer.grant is not None
    assert (answer.checked, answer.paced, answer.check_error) == (True, False, None)
    assert [a.number for a in answer.tries] == [1]
    assert sent(sandbox, CHECK_CALLS) == 1


def test_with_verify_a_seller_whose_allowance_is_spent_is_not_checked(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    due = due_for(vault, seller.refresh_token, may_check=False)
    answer, _ = refresh_one(sandbox, vault, due, verify=True)
    assert answer is not None and answer.grant is not None
    assert (answer.checked, answer.paced, answer.check_error) == (False, True, None)
    assert [a.number for a in answer.tries] == [1]
    assert sent(sandbox, CHECK_CALLS) == 0


def test_with_verify_one_refusal_is_confirmed_with_a_fresh_grant_that_works(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
    sandbox.state.set_behaviour(seller.selling_partner_id, "rotate_refresh_token", times=1)
    due = due_for(vault, seller.refresh_token, may_check=True)
    answer, _ = refresh_one(sandbox, vault, due, verify=True)
    assert answer is not None and answer.grant is not None
    assert (answer.checked, answer.check_error, answer.verdict) == (True, None, None)
    assert isinstance(answer.first_refusal, SpApiTokenRefused)
    assert sent(sandbox) == 2 and sent(sandbox, CHECK_CALLS) == 2
    # the first grant rotated the refresh token; the second, sent with it, did not: kept
    assert answer.grant.refresh_token is not None
    assert answer.grant.refresh_token != seller.refresh_token
    assert answer.grant.expires_in == 3600
    assert [a.number for a in answer.tries] == [1, 1]


def test_with_verify_a_fresh_token_refused_again_is_the_answer(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=2)
    due = due_for(vault, seller.refresh_token, may_check=True)
    answer, _ = refresh_one(sandbox, vault, due, verify=True)
    assert answer is not None and answer.grant is not None
    assert isinstance(answer.check_error, SpApiTokenRefused) and answer.confirmed
    assert answer.gone
    assert (answer.checked, answer.paced) == (False, False)
    assert sent(sandbox) == 2 and sent(sandbox, CHECK_CALLS) == 2


def test_with_verify_lwa_refusing_the_confirming_grant_is_the_seller_s_verdict(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    due = due_for(vault, seller.refresh_token, may_check=True)

    def revoke_after_the_first_grant() -> None:  # its access tokens die with it: refused
        sandbox.state.revoke(seller.selling_partner_id)

    answer, closing = refresh_one(
        sandbox, vault, due, verify=True, between=revoke_after_the_first_grant
    )
    assert answer is not None and answer.grant is not None  # the first grant, still stored
    assert answer.due == due
    assert answer.verdict is not None and answer.verdict.outcome == RefreshOutcome.revoked
    assert answer.gone and answer.check_error is None
    assert [a.number for a in answer.tries] == [1]  # the grant's; the refusal is the verdict
    assert isinstance(answer.first_refusal, SpApiTokenRefused)
    assert sent(sandbox, CHECK_CALLS) == 1
    assert not closing.is_closed()


def test_with_verify_the_app_refused_at_the_confirming_grant_closes_the_run(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
    due = due_for(vault, seller.refresh_token, may_check=True)

    def rotate_the_secret() -> None:
        sandbox.state.rotate_client_secret("a-new-secret")

    answer, closing = refresh_one(sandbox, vault, due, verify=True, between=rotate_the_secret)
    assert answer is not None and answer.verdict is not None and answer.verdict.app_rejected
    assert closing.is_closed() and closing.grace_ends is None


def test_a_seller_looked_at_again_is_not_confirmed_again(vault: Vault, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
    due = due_for(vault, seller.refresh_token, may_check=True, recheck=True)
    answer, _ = refresh_one(sandbox, vault, due, verify=True)
    assert answer is not None and answer.grant is not None
    assert isinstance(answer.check_error, SpApiTokenRefused) and answer.confirmed
    assert not answer.gone  # already gone: nothing for the brake to weigh
    assert sent(sandbox) == 1 and sent(sandbox, CHECK_CALLS) == 1


def test_a_seller_not_asked_to_be_checked_is_not_called(vault: Vault, sandbox: Sandbox) -> None:
    seller = sandbox.state.add_seller()
    due = Due(7, "u7", vault.encrypt(seller.refresh_token), RECENTLY, "na", may_check=True)
    answer, _ = refresh_one(sandbox, vault, due, verify=True)
    assert answer is not None and answer.grant is not None
    assert (answer.checked, answer.paced) == (False, False)
    assert sent(sandbox, CHECK_CALLS) == 0


def test_with_verify_a_check_that_does_not_get_through_is_kept_with_the_grant(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_429", retry_after=0)
    due = due_for(vault, seller.refresh_token, may_check=True)
    answer, _ = refresh_one(sandbox, vault, due, verify=True)
    assert answer is not None and answer.grant is not None
    assert isinstance(answer.check_error, TransientProviderError)
    assert answer.check_error.error_type == "spapi_throttled"
    assert (answer.confirmed, answer.first_refusal, answer.gone) == (False, None, False)
    assert sent(sandbox) == 1  # no confirming grant for a refusal that never came
