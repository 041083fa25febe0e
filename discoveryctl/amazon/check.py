"""The live check of a seller's authorization: an SP-API call with its access token
(docs/behaviour.md §5).

A refresh only proves LWA still hands out tokens; the check proves the SP-API takes them.
- it answers: the seller is in sync (``last_synced_at``), failures are cleared;
- 401, or 403 ``Unauthorized`` saying the token is revoked or invalid: the authorization is
  gone, with the same verdict as a refresh (``amazon.verdict``: ``expired`` past its
  re-authorization date, else ``revoked``), recorded as a failed refresh is (the seller is
  told how to reconnect);
- throttling, 5xx, timeouts: a counted transient failure, status unchanged, and the seller's
  next refresh waits the same backoff as after a failed refresh;
- any other 403 (or an answer nobody planned for): recorded as an event, not acted on.

Checks are paced to the call's usage plan, per seller: each spends one call of the
seller's allowance (a token bucket stored with the credential), and a seller with none left
is not called ("paced"), whoever asks: ``check``, or ``refresh-all --verify``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.amazon.refresh import LEASE, access_token, apply_verdict, find, record_failure
from discoveryctl.amazon.verdict import EXPIRED, verdict
from discoveryctl.db.engine import SessionScope
from discoveryctl.db.leases import lock_for_update
from discoveryctl.db.models import Credential, IntegrationStatus, utcnow
from discoveryctl.errors import ProviderError, SellerAuthorizationRevoked, TransientProviderError
from discoveryctl.integrations import events, lifecycle
from discoveryctl.integrations.vocabulary import (
    Provider,
    Status,
    needs_reconnect,
    reconnect_url,
)
from discoveryctl.providers.lwa import LwaClient
from discoveryctl.providers.spapi import SpApiClient
from discoveryctl.support.crypto import Vault
from discoveryctl.support.retrying import IN_RUN

CHECKED = events.Kind.seller_checked
CHECK_FAILED = events.Kind.seller_check_failed

# getMarketplaceParticipations' usage plan: 0.016 requests a second with a burst of 15, per
# selling partner and application (sellers.json in amzn/selling-partner-api-models; SP-API
# "Usage Plans and Rate Limits": a token bucket of that rate and size).
CHECK_RATE = 0.016
"""Seller checks a second the allowance grows by."""
CHECK_BURST = 15.0
"""The most checks a seller's allowance holds (a seller never checked has them all)."""


def allowance(left: float | None, as_of: datetime | None, now: datetime) -> float:
    """The checks a seller may make at ``now``: what was ``left`` at ``as_of``, grown at
    ``CHECK_RATE`` since, at most ``CHECK_BURST``; never checked: ``CHECK_BURST``."""
    if left is None or as_of is None:
        return CHECK_BURST
    grown = max((now - as_of).total_seconds(), 0.0) * CHECK_RATE
    return min(CHECK_BURST, left + grown)


def seconds_until_check(left: float) -> float:
    """How long until an allowance of ``left`` holds one whole check."""
    return max(0.0, (1.0 - left) / CHECK_RATE)


def spend_check(credential: Credential, now: datetime) -> float | None:
    """Spend one check of ``credential``'s allowance (the caller holds its row lock):
    ``None`` when spent, else the seconds until one is there (nothing spent)."""
    left = allowance(credential.check_allowance, credential.check_allowance_at, now)
    if left < 1.0:
        return seconds_until_check(left)
    credential.check_allowance = left - 1.0
    credential.check_allowance_at = now
    return None


def _take_check(session: Session, credential_id: int) -> float | None:
    """``spend_check`` on the credential's row, locked and read afresh."""
    row = sa.select(Credential).where(Credential.id == credential_id)
    locked = lock_for_update(session, row).execution_options(populate_existing=True)
    credential = session.scalars(locked).one()  # the caller found it a moment ago
    return spend_check(credential, utcnow())


class CheckOutcome(StrEnum):
    """What a check found: the SP-API answered (``ok``); the seller's allowance was spent
    (``paced``, not called); the authorization is gone (``revoked``, or ``expired`` past its
    re-authorization date: the same verdict as a refresh); a transient failure, counted with
    the same backoff as a refresh's (``failed``); or an answer that says nothing about the
    token, recorded only (``inconclusive``)."""

    ok = "ok"
    paced = "paced"
    revoked = "revoked"
    expired = "expired"
    failed = "failed"
    inconclusive = "inconclusive"


@dataclass(frozen=True)
class Checked:
    user_id: str
    outcome: CheckOutcome
    marketplaces: int | None = None
    message: str | None = None
    reconnect_url: str | None = None


def check_seller(
    session_scope: SessionScope,
    vault: Vault,
    lwa: LwaClient,
    spapi: SpApiClient,
    user_id: str,
    *,
    frontend_url: str,
    wait_for_lease: float = LEASE.total_seconds(),
) -> Checked:
    """Call the SP-API as the seller and record what the answer means; ``wait_for_lease``:
    how long to wait for another process refreshing the seller's token."""
    try:
        token, _ = access_token(
            session_scope,
            vault,
            lwa,
            user_id,
            frontend_url=frontend_url,
            wait_for_lease=wait_for_lease,
        )
    except SellerAuthorizationRevoked as error:  # the refresh itself found it gone
        url = reconnect_url(frontend_url, Provider.amazon, user_id)
        gone = CheckOutcome.expired if error.error_type == EXPIRED else CheckOutcome.revoked
        return Checked(user_id, gone, message=error.message, reconnect_url=url)
    with session_scope() as session:
        _, credential = find(session, user_id)
        region = credential.region
        wait = _take_check(session, credential.id)
    if wait is not None:
        return Checked(
            user_id,
            CheckOutcome.paced,
            message=(
                "not checked: the SP-API allows each seller this call about once a minute "
                f"(bursts of {CHECK_BURST:g}); the next is possible in {math.ceil(wait)} s"
            ),
        )
    try:
        count = IN_RUN.call(lambda: spapi.marketplace_participations(region, token))
    except ProviderError as error:
        with session_scope() as session:
            outcome = record_check(session, user_id, error, frontend_url=frontend_url)
        url = reconnect_url(frontend_url, Provider.amazon, user_id)
        return Checked(
            user_id,
            outcome,
            message=error.message,
            reconnect_url=url if needs_reconnect(outcome) else None,
        )
    with session_scope() as session:
        record_check(
            session,
            user_id,
            None,
            # Mutation testing: an answer changes no status, so it needs no reconnect URL (the
            # surviving mutants).
            frontend_url=frontend_url,  # pragma: no mutate
            marketplaces=count,
        )
    return Checked(user_id, CheckOutcome.ok, marketplaces=count)


def record_check(
    session: Session,
    user_id: str,
    error: ProviderError | None,
    *,
    frontend_url: str,
    marketplaces: int | None = None,
) -> CheckOutcome:
    """What one SP-API answer means for the seller: the token refused or a transient failure
    is acted on as a refresh's verdict would be (``amazon.verdict``, ``refresh.apply_verdict``);
    any other refusal is recorded only."""
    if error is None:
        integration, _ = find(session, user_id, for_update=True)
        lifecycle.record_success(session, integration)
        events.record(
            session,
            CHECKED,
            outcome=events.SUCCESS,
            user_id=user_id,
            provider=Provider.amazon,
            marketplaces=marketplaces,
        )
        return CheckOutcome.ok
    if not isinstance(error, SellerAuthorizationRevoked | TransientProviderError):
        _event(session, user_id, error)
        return CheckOutcome.inconclusive
    integration, credential = find(session, user_id, for_update=True)  # before any write
    _event(session, user_id, error)
    now = utcnow()
    decided = verdict(error, credential.authorized_at, now)
    if decided.authorization_gone:  # in the history as a refresh LWA refused
        record_failure(
            session,
            user_id,
            decided,
            frontend_url=frontend_url,
            # Mutation testing: without it, record_failure reads the same rows again (the same
            # objects, already locked): one query more, nothing else.
            found=(integration, credential),  # pragma: no mutate
        )
    else:
        apply_verdict(
            session,
            integration,
            credential,
            decided,
            now=now,
            # Mutation testing: only an authorization gone uses the URL, and that goes
            # through record_failure above (the surviving mutants).
            frontend_url=frontend_url,  # pragma: no mutate
        )
    return CheckOutcome(decided.outcome)


def _event(session: Session, user_id: str, error: ProviderError) -> None:
    events.record(
        session,
        CHECK_FAILED,
        outcome=events.FAILURE,
        user_id=user_id,
        provider=Provider.amazon,
        error_type=error.error_type,
        http_status=error.status_code,
        message=error.message,
    )


def active_sellers(session: Session) -> list[str]:
    """The user ids of every active Amazon integration, in order."""
    return list(
        session.scalars(
            sa.select(IntegrationStatus.user_id)
            .where(
                IntegrationStatus.provider == Provider.amazon,
                IntegrationStatus.status == Status.active,
            )
            .order_by(IntegrationStatus.user_id)
        )
    )
