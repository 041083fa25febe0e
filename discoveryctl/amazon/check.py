"""The live check of a seller's authorization: an SP-API call with its access token
(docs/behaviour.md §5).

A refresh only proves LWA still hands out tokens; the check proves the SP-API takes them.
- it answers: the seller is in sync (``last_synced_at``), failures are cleared;
- it refuses the token (401, or 403 saying it is revoked, malformed, invalid or expired):
  not yet a verdict, since Amazon says the same of expired and mis-signed tokens. The seller's
  token is refreshed (LWA's answer is the authoritative one: ``invalid_grant`` is the
  authorization gone) and the SP-API asked once more with the fresh token. Only a fresh token
  refused again marks the authorization gone on the SP-API's word, with the same verdict as a
  refresh (``amazon.verdict``: ``expired`` past its re-authorization date, else ``revoked``),
  recorded as a failed refresh is (the seller is told how to reconnect), and remembered as the
  SP-API's (``refused_by_spapi_at``): ``refresh-all`` looks at such a seller again, and once the
  SP-API takes a fresh token it is active again and its "connection lost" notification is
  resolved (``record_check``);
- throttling, 5xx, timeouts: a counted transient failure, status unchanged, and the seller's
  next refresh waits the same backoff as after a failed refresh;
- any other 403 (or an answer nobody planned for, or a refusal that could not be confirmed):
  recorded as an event, not acted on.

Checks are paced to the call's usage plan, per seller: each spends one call of the
seller's allowance (a token bucket stored with the credential), and a seller with none left
is not called ("paced"), whoever asks: ``check``, or ``refresh-all --verify``; the confirming
call spends one as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.amazon import mass_revocation
from discoveryctl.amazon.mass_revocation import Brake, Held
from discoveryctl.amazon.refresh import (
    BETWEEN_RUNS,
    LEASE,
    access_token,
    apply_verdict,
    find,
    raise_for,
    record_failure,
    record_failures,
    refresh_seller,
)
from discoveryctl.amazon.verdict import EXPIRED, RefreshOutcome, verdict
from discoveryctl.db.engine import SessionScope
from discoveryctl.db.leases import lock_for_update
from discoveryctl.db.models import Credential, IntegrationStatus, utcnow
from discoveryctl.errors import (
    ProviderError,
    SellerAuthorizationRevoked,
    SpApiTokenRefused,
    TransientProviderError,
)
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
RECHECK_AFTER = timedelta(seconds=BETWEEN_RUNS.longest or 0.0)
"""How long a seller the SP-API refused again, when ``refresh-all`` looked at it, is left
before the next look (our choice: the longest wait between failed refreshes, 6 h). The first
look is the next run's."""


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
    held: list[Held] | None = None,
) -> Checked:
    """Call the SP-API as the seller and record what the answer means; ``wait_for_lease``:
    how long to wait for another process refreshing the seller's token. A refused token is
    confirmed with a fresh one before anything is decided (``_confirm``). With ``held``, an
    "authorization gone" verdict (LWA's or the SP-API's) is put there, not recorded: a check
    of every seller weighs them together (``settle``)."""
    try:
        token, _ = access_token(
            session_scope,
            vault,
            lwa,
            user_id,
            frontend_url=frontend_url,
            wait_for_lease=wait_for_lease,
            held=held,
        )
    except SellerAuthorizationRevoked as error:  # the refresh itself found it gone
        return _gone(user_id, error, frontend_url)
    try:
        # Mutation testing: None says "not confirmed" as False does.
        return _call(
            session_scope,
            spapi,
            user_id,
            token,
            frontend_url,
            confirmed=False,  # pragma: no mutate  (a first refusal is raised, never held)
        )
    except SpApiTokenRefused as refused:
        with session_scope() as session:
            record_refusal(session, user_id, refused)  # on record, not yet acted on
    return _confirm(
        session_scope,
        vault,
        lwa,
        spapi,
        user_id,
        frontend_url=frontend_url,
        wait=wait_for_lease,
        held=held,
    )


def _confirm(
    session_scope: SessionScope,
    vault: Vault,
    lwa: LwaClient,
    spapi: SpApiClient,
    user_id: str,
    *,
    frontend_url: str,
    wait: float,
    held: list[Held] | None,
) -> Checked:
    """After the SP-API refused the seller's token: a fresh one (a refresh, under the lease:
    LWA's own verdict, recorded as a refresh's), and one more call with it, whose refusal is
    the evidence (``record_check(confirmed=True)``)."""
    done = refresh_seller(
        session_scope,
        vault,
        lwa,
        user_id,
        frontend_url=frontend_url,
        wait_for_lease=wait,
        held=held,
    )
    if done.outcome == RefreshOutcome.app_rejected:
        raise_for(done)  # the app's own credentials: the command's error, no seller's
    if done.outcome != RefreshOutcome.refreshed:
        return Checked(
            user_id,
            CheckOutcome(done.outcome),
            message=done.message,
            reconnect_url=done.reconnect_url if needs_reconnect(done.outcome) else None,
        )
    assert done.access_token is not None  # pragma: no mutate  (types only: a refresh's token)
    return _call(
        session_scope, spapi, user_id, done.access_token, frontend_url, confirmed=True, held=held
    )


def _call(
    session_scope: SessionScope,
    spapi: SpApiClient,
    user_id: str,
    token: str,
    frontend_url: str,
    *,
    confirmed: bool,
    held: list[Held] | None = None,
) -> Checked:
    """One call of the seller's allowance with ``token``, and what its answer means; a first
    refusal (not ``confirmed``) is raised for the caller to confirm; with ``held``, a
    confirmed one is put there, not recorded."""
    with session_scope() as session:
        _, credential = find(session, user_id)
        region, authorized_at = credential.region, credential.authorized_at
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
        if isinstance(error, SpApiTokenRefused) and not confirmed:
            raise  # a first refusal: the caller confirms it with a fresh token
        url = reconnect_url(frontend_url, Provider.amazon, user_id)
        if isinstance(error, SpApiTokenRefused) and held is not None:
            held.append(Held(user_id, refusal=error, authorized_at=authorized_at))
            gone = verdict(_as_evidence(error), authorized_at, utcnow()).outcome
            return Checked(user_id, CheckOutcome(gone), message=error.message, reconnect_url=url)
        with session_scope() as session:
            outcome = record_check(
                session, user_id, error, frontend_url=frontend_url, confirmed=confirmed
            )
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
            # Mutation testing: an answer changes no status here (the seller is active), so
            # it needs no reconnect URL (the surviving mutants).
            frontend_url=frontend_url,  # pragma: no mutate
            marketplaces=count,
        )
    return Checked(user_id, CheckOutcome.ok, marketplaces=count)


def _gone(user_id: str, error: SellerAuthorizationRevoked, frontend_url: str) -> Checked:
    url = reconnect_url(frontend_url, Provider.amazon, user_id)
    gone = CheckOutcome.expired if error.error_type == EXPIRED else CheckOutcome.revoked
    return Checked(user_id, gone, message=error.message, reconnect_url=url)


def record_check(
    session: Session,
    user_id: str,
    error: ProviderError | None,
    *,
    frontend_url: str,
    marketplaces: int | None = None,
    confirmed: bool = False,
) -> CheckOutcome:
    """What one SP-API answer means for the seller (``confirmed``: the token it was asked
    with was granted after an earlier refusal):

    - an answer: the seller is in sync; one marked gone on the SP-API's word alone is active
      again, and its "connection lost" notification resolved;
    - a confirmed refusal: the authorization is gone, as a refresh's verdict would say
      (``amazon.verdict``, ``refresh.record_failure``), marked as the SP-API's so that
      ``refresh-all`` looks at it again: at its next run the first time, ``RECHECK_AFTER``
      later each time after;
    - a transient failure: counted, with a refresh's backoff (``refresh.apply_verdict``);
    - anything else, a refusal not confirmed included: recorded only."""
    if error is None:
        integration, credential = find(session, user_id, for_update=True)
        lifecycle.record_success(session, integration)
        events.record(
            session,
            CHECKED,
            outcome=events.SUCCESS,
            user_id=user_id,
            provider=Provider.amazon,
            marketplaces=marketplaces,
        )
        if credential.refused_by_spapi_at is not None:  # the SP-API takes its tokens again
            credential.refused_by_spapi_at = None
            credential.next_attempt_at = None
            lifecycle.change_status(
                session,
                integration,
                Status.active,
                reason="spapi_accepted",
                # Mutation testing: coming back active uses no URL (the surviving mutants).
                frontend_url=frontend_url,  # pragma: no mutate
            )
        return CheckOutcome.ok
    refused = confirmed and isinstance(error, SpApiTokenRefused)
    if not (refused or isinstance(error, TransientProviderError)):
        record_refusal(session, user_id, error)
        return CheckOutcome.inconclusive
    integration, credential = find(session, user_id, for_update=True)  # before any write
    record_refusal(session, user_id, error)
    now = utcnow()
    decided = verdict(_as_evidence(error) if refused else error, credential.authorized_at, now)
    if decided.authorization_gone:  # in the history as a refresh LWA refused
        looked_again = credential.refused_by_spapi_at is not None
        record_failure(
            session,
            user_id,
            decided,
            frontend_url=frontend_url,
            # Mutation testing: without it, record_failure reads the same rows again (the same
            # objects, already locked): one query more, nothing else.
            found=(integration, credential),  # pragma: no mutate
        )
        credential.refused_by_spapi_at = now  # the SP-API's word, not LWA's
        credential.next_attempt_at = now + RECHECK_AFTER if looked_again else None
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


def _as_evidence(refused: ProviderError) -> SellerAuthorizationRevoked:
    """A fresh token refused again, as the verdict takes an authorization gone."""
    return SellerAuthorizationRevoked(refused.message, status_code=refused.status_code)


def settle(
    session_scope: SessionScope,
    held: list[Held],
    answered: int,
    brake: Brake,
    *,
    frontend_url: str,
) -> bool:
    """A check of every seller, at its end: its held verdicts all held by the brake (the
    admins told, nobody marked: True), or applied (False) to the sellers still there and
    still on the authorization the verdict is about (a reconnect or a removal meanwhile: not
    applied)."""
    with session_scope() as session:
        if mass_revocation.weigh(session, brake, answered, len(held)):
            return True
        current = _authorized_at(session, [h.user_id for h in held])
        kept = [h for h in held if current.get(h.user_id) == h.authorized_at]
        failures = [(h.user_id, h.verdict, h.tries) for h in kept if h.verdict is not None]
        record_failures(session, failures, frontend_url=frontend_url)
        for each in kept:
            if each.refusal is None:
                continue
            record_check(
                session, each.user_id, each.refusal, frontend_url=frontend_url, confirmed=True
            )
    return False


def _authorized_at(session: Session, users: list[str]) -> dict[str, datetime]:
    """When each of these sellers' current Amazon authorization was given."""
    rows = session.execute(
        sa.select(IntegrationStatus.user_id, Credential.authorized_at)
        .join(Credential)  # on the credential's one foreign key: an Amazon authorization
        # Mutation testing: without the filter every seller is read, and the same ones used.
        .where(IntegrationStatus.user_id.in_(users))  # pragma: no mutate
    )
    return {row.user_id: row.authorized_at for row in rows}


def record_refusal(session: Session, user_id: str, error: ProviderError) -> None:
    """What the SP-API said instead of answering, on record (``seller_check_failed``)."""
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
