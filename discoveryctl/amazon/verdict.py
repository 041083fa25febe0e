"""What a provider's refusal means for a seller: the one verdict behind ``refresh``,
``refresh-all``, ``access-token`` and ``check``, and the yearly re-authorization's dates.

- LWA's ``invalid_grant`` (or the SP-API refusing the seller's token): the authorization is
  gone, ``expired`` once it is past its 365-day re-authorization date, else ``revoked``;
- the app's own credentials refused: no seller is blamed (``app_rejected``);
- a transient failure (throttling, 5xx, timeouts, connection errors, bad bodies): ``failed``,
  counted, the status unchanged, the next try after a backoff;
- any other answer: ``failed`` as ``provider_unexpected_answer``.
Amazon asks sellers to re-authorize a year after consent; 30 days before, the seller is
warned once (``expiry_warning_due``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    SellerAuthorizationRevoked,
    TransientProviderError,
)

REAUTHORIZATION = timedelta(days=365)
"""Amazon authorizations must be renewed a year after consent."""
EXPIRY_WARNING = timedelta(days=30)
"""How long before the re-authorization date the seller is warned."""
REVOKED = "oauth_token_revoked"
EXPIRED = "oauth_token_expired"
"""The error types of an authorization gone, in events and errors (``errorType`` in logs)."""


def reauthorization_date(authorized_at: datetime) -> datetime:
    """When Amazon wants the seller to authorize the app again."""
    return authorized_at + REAUTHORIZATION


def past_reauthorization(authorized_at: datetime, now: datetime) -> bool:
    """Whether the authorization has reached its re-authorization date."""
    return now >= reauthorization_date(authorized_at)


def expiry_warning_due(authorized_at: datetime, warned_at: datetime | None, now: datetime) -> bool:
    """Whether the seller should be warned now: not yet warned for this authorization, and
    within ``EXPIRY_WARNING`` of its re-authorization date."""
    return warned_at is None and now >= reauthorization_date(authorized_at) - EXPIRY_WARNING


class RefreshOutcome(StrEnum):
    refreshed = "refreshed"
    revoked = "revoked"
    expired = "expired"
    failed = "failed"  # transient or unplaced: counted, status unchanged
    app_rejected = "app_rejected"


@dataclass(frozen=True)
class Verdict:
    """What one failed refresh means for the seller."""

    outcome: RefreshOutcome
    error_type: str
    message: str
    status_code: int | None = None

    @property
    def authorization_gone(self) -> bool:
        """Revoked or expired: the seller must connect again."""
        return self.outcome in (RefreshOutcome.revoked, RefreshOutcome.expired)

    @property
    def app_rejected(self) -> bool:
        """The app's own credentials refused: no seller is to blame."""
        return self.outcome == RefreshOutcome.app_rejected


# A transient failure's name as the events and the health metrics call it
# (docs/behaviour.md §7), the same for LWA (``lwa_…``) and the SP-API (``spapi_…``).
_TRANSIENT_KINDS = ("throttled", "timeout", "connection_error", "server_error", "bad_response")


def event_error_type(error_type: str) -> str:
    """``lwa_throttled`` → ``provider_throttled``, and so on; ``provider_error`` otherwise."""
    _, _, kind = error_type.partition("_")
    return f"provider_{kind}" if kind in _TRANSIENT_KINDS else "provider_error"


def verdict(error: ProviderError, authorized_at: datetime, now: datetime) -> Verdict:
    """What a refusal, or a call that did not get through, means for the seller."""
    status = error.status_code
    if isinstance(error, SellerAuthorizationRevoked):
        if past_reauthorization(authorized_at, now):
            return Verdict(RefreshOutcome.expired, EXPIRED, error.message, status)
        return Verdict(RefreshOutcome.revoked, REVOKED, error.message, status)
    if isinstance(error, AppCredentialsRejected):
        return Verdict(
            RefreshOutcome.app_rejected, "oauth_app_credentials_rejected", error.message, status
        )
    if isinstance(error, TransientProviderError):
        error_type = event_error_type(error.error_type)
        return Verdict(RefreshOutcome.failed, error_type, error.message, status)
    return Verdict(RefreshOutcome.failed, "provider_unexpected_answer", error.message, status)
