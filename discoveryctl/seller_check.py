"""The live check of a seller's authorization: an SP-API call with its access token (SPEC §5).

A refresh only proves LWA still hands out tokens; the check proves the SP-API takes them.
- it answers: the seller is in sync (``last_synced_at``), failures are cleared;
- 401, or 403 ``Unauthorized`` saying the token is revoked or invalid: the authorization is
  gone, recorded as a revocation (the seller is told how to reconnect);
- throttling, 5xx, timeouts: a counted transient failure, status unchanged;
- any other 403 (or an answer nobody planned for): recorded as an event, not acted on.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl import events
from discoveryctl.crypto import Vault
from discoveryctl.db.engine import SessionScope
from discoveryctl.db.models import IntegrationStatus
from discoveryctl.errors import ProviderError, SellerAuthorizationRevoked, TransientProviderError
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.health import Provider, Status, reconnect_url
from discoveryctl.providers.amazon import LwaClient
from discoveryctl.providers.spapi import SpApiClient
from discoveryctl.refresh import (
    Outcome,
    Verdict,
    access_token,
    find,
    record_failure,
    with_retries,
)

CHECKED = "seller_checked"
CHECK_FAILED = "seller_check_failed"


@dataclass(frozen=True)
class Checked:
    user_id: str
    outcome: str  # "ok", "revoked", "failed", "inconclusive"
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
) -> Checked:
    """Call the SP-API as the seller and record what the answer means."""
    try:
        token, _ = access_token(session_scope, vault, lwa, user_id, frontend_url=frontend_url)
    except SellerAuthorizationRevoked as error:  # the refresh itself found it gone
        url = reconnect_url(frontend_url, Provider.amazon, user_id)
        return Checked(user_id, "revoked", message=error.message, reconnect_url=url)
    with session_scope() as session:
        _, credential = find(session, user_id)
        region = credential.region
    try:
        count = with_retries(lambda: spapi.marketplace_participations(region, token))
    except ProviderError as error:
        with session_scope() as session:
            outcome = record_check(session, user_id, error, frontend_url=frontend_url)
        url = reconnect_url(frontend_url, Provider.amazon, user_id)
        return Checked(
            user_id,
            outcome,
            message=error.message,
            reconnect_url=url if outcome == "revoked" else None,
        )
    with session_scope() as session:
        record_check(session, user_id, None, frontend_url=frontend_url, marketplaces=count)
    return Checked(user_id, "ok", marketplaces=count)


def record_check(
    session: Session,
    user_id: str,
    error: ProviderError | None,
    *,
    frontend_url: str,
    marketplaces: int | None = None,
) -> str:
    """What one SP-API answer means for the seller; returns ``ok``, ``revoked``, ``failed``
    or ``inconclusive``."""
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
        return "ok"
    _event(session, user_id, error)
    if isinstance(error, SellerAuthorizationRevoked):
        record_failure(
            session,
            user_id,
            Verdict(Outcome.revoked, "oauth_token_revoked", error.message, error.status_code),
            frontend_url=frontend_url,
        )
        return "revoked"
    if isinstance(error, TransientProviderError):
        integration, _ = find(session, user_id, for_update=True)
        lifecycle.record_transient_failure(
            session, integration, error_type=error.error_type, message=error.message
        )
        return "failed"
    return "inconclusive"  # e.g. a 403 that says nothing about the token: recorded only


def _event(session: Session, user_id: str, error: ProviderError) -> None:
    events.record(
        session,
        CHECK_FAILED,
        outcome=events.FAILURE,
        user_id=user_id,
        provider=Provider.amazon,
        error_type=error.error_type,
        httpStatus=error.status_code,
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
