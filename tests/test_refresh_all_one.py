"""refresh-all's call for one seller (``amazon.refresh_all._refresh_one``) against the sandbox's
LWA and SP-API, without a database:

- an unreadable refresh token fails that seller alone, and nothing is sent;
- LWA's answer is the seller's: a grant (its refresh token only when LWA rotated it) or a
  verdict, with every try it took; the app's credentials refused close the run at once, with
  no grace for the calls in flight; once the run is closed, a call not yet started is not sent;
- with ``--verify``, the new token is checked at the SP-API while the seller's allowance lasts
  (paced once it is spent), and the SP-API's refusal is kept with the grant.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from discoveryctl.amazon.refresh_all import Answer, Closing, Due, _refresh_one
from discoveryctl.amazon.verdict import RefreshOutcome
from discoveryctl.errors import SellerAuthorizationRevoked
from discoveryctl.providers.lwa import AsyncLwaClient
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


def due_for(vault: Vault, refresh_token: str, *, may_check: bool = False) -> Due:
    return Due(7, "u7", vault.encrypt(refresh_token), RECENTLY, "na", may_check)


def refresh_one(
    sandbox: Sandbox,
    vault: Vault,
    due: Due,
    *,
    verify: bool = False,
    closing: Closing | None = None,
) -> tuple[Answer | None, Closing]:
    """``due``'s call, as a run makes it (one at a time); the answer and the run's closing."""
    app = app_for(sandbox)
    closed = closing or Closing()

    async def call() -> Answer | None:
        async with AsyncLwaClient(app) as lwa, AsyncSpApiClient(app) as spapi:
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


def test_with_verify_the_sp_api_s_refusal_is_kept_with_the_grant(
    vault: Vault, sandbox: Sandbox
) -> None:
    seller = sandbox.state.add_seller()
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
    due = due_for(vault, seller.refresh_token, may_check=True)
    answer, _ = refresh_one(sandbox, vault, due, verify=True)
    assert answer is not None and answer.grant is not None
    assert isinstance(answer.check_error, SellerAuthorizationRevoked)
    assert (answer.checked, answer.paced) == (False, False)
    assert [a.number for a in answer.tries] == [1]
