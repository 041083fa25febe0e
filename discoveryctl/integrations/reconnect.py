"""Reconnect requests: the URL that sends a seller back through consent (docs/behaviour.md
§3, §8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.leases import lock_for_update
from discoveryctl.db.models import IntegrationStatus, utcnow
from discoveryctl.errors import NotFound
from discoveryctl.integrations import events, lifecycle, notifications
from discoveryctl.integrations.vocabulary import (
    RECONNECT_ATTEMPTS,
    isoformat,
    reconnect_url,
)
from discoveryctl.support.user_ids import shown

RECONNECT_REQUESTED = lifecycle.RECONNECT_REQUESTED


def needing_reconnect(session: Session, provider: str) -> Sequence[IntegrationStatus]:
    """Every integration of ``provider`` that is revoked or expired."""
    query = (
        sa.select(IntegrationStatus)
        .where(
            IntegrationStatus.provider == provider,
            lifecycle.needs_reconnect_clause(),
        )
        .order_by(IntegrationStatus.user_id)
    )
    # their reconnect counters are updated next
    return session.scalars(lock_for_update(session, query)).all()


def for_user(session: Session, provider: str, user_id: str) -> IntegrationStatus:
    integration = lifecycle.find(session, user_id, provider, for_update=True)
    if integration is None:
        raise NotFound(f"user {shown(user_id)} has no {provider} integration")
    return integration


def request(
    session: Session,
    integration: IntegrationStatus,
    *,
    frontend_url: str,
    notify: bool = False,
    count: bool = True,
) -> dict[str, Any]:
    """The reconnect URL; with ``count`` (the URL is handed to the seller) the attempt is
    counted and recorded, and with ``notify`` the seller is sent it, unless the notification
    sent before is still open (``already_notified_at`` then says when it was sent)."""
    url = reconnect_url(frontend_url, integration.provider, integration.user_id)
    attempts = int(integration.meta.get(RECONNECT_ATTEMPTS, 0) or 0)
    if count:
        attempts += 1
        lifecycle.update_meta(
            integration,
            **{RECONNECT_ATTEMPTS: attempts, "last_reconnect_requested_at": isoformat(utcnow())},
        )
        events.record(
            session,
            RECONNECT_REQUESTED,
            user_id=integration.user_id,
            provider=integration.provider,
            attempt=attempts,
            notify=notify,
        )
    notified, already = False, None
    if notify:
        sent, notified = notifications.notify(
            session,
            audience=notifications.USER,
            kind=RECONNECT_REQUESTED,
            title=f"Reconnect your {integration.provider.capitalize()} account",
            message=f"Redirect to this URL to reconnect your {integration.provider} integration",
            user_id=integration.user_id,
            provider=integration.provider,
            detail={"reconnectUrl": url},
        )
        if not notified:
            already = isoformat(sent.created_at)
    return {
        "user_id": integration.user_id,
        "provider": integration.provider,
        "status": integration.status,
        "reconnectUrl": url,
        "attempts": attempts,
        "notified": notified,
        "already_notified_at": already,
    }
