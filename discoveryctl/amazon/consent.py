"""Amazon consent: issue a ``state``, validate the callback, exchange the code, store the
authorization (docs/behaviour.md §5). Independent of the CLI and of any HTTP server: the
local callback server, ``--paste`` and the API's routes all go through ``complete``.

A ``state`` is an HS256 JWT signed with ``JWT_SECRET``, valid 10 minutes, bound to one user
and region (and the seller's marketplace, when given), carrying 256 bits of randomness as its
id; the id is recorded when issued and consumed on the first callback, so a state works once.

Every failure is an ``OAuthCallbackError`` with its own reason code, recorded as an
``oauth_callback_failed`` event; nothing else is stored for a failed callback.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import jwt
import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.amazon import credentials
from discoveryctl.config import Config
from discoveryctl.db.engine import SessionScope
from discoveryctl.db.models import OAuthState, utcnow
from discoveryctl.errors import (
    AppCredentialsRejected,
    DatabaseConflict,
    DatabaseUnavailable,
    DiscoveryError,
    InvalidInput,
    OAuthCallbackError,
    ProviderError,
)
from discoveryctl.integrations import events, lifecycle, notifications
from discoveryctl.integrations.vocabulary import Provider, Region, Status, isoformat
from discoveryctl.providers.lwa import (
    MARKETPLACES,
    SELLING_PARTNER_ID,
    AmazonApp,
    LwaClient,
    consent_url,
)
from discoveryctl.providers.lwa import marketplace as lwa_marketplace
from discoveryctl.support.crypto import Vault
from discoveryctl.support.user_ids import valid_user_id

STATE_LIFETIME = timedelta(minutes=10)
STATE_AUDIENCE = "discoveryctl:amazon-consent"
CALLBACK_FAILED = events.Kind.oauth_callback_failed
CALLBACK_SUCCEEDED = events.Kind.oauth_callback_succeeded


class Reason(StrEnum):
    """Why a callback failed; shown on the page, in the CLI and in the event."""

    access_denied = "access_denied"
    missing_state = "missing_state"
    invalid_state = "invalid_state"
    expired_state = "expired_state"
    state_reused = "state_reused"
    user_mismatch = "user_mismatch"
    missing_code = "missing_code"
    missing_selling_partner_id = "missing_selling_partner_id"
    invalid_selling_partner_id = "invalid_selling_partner_id"
    code_exchange_failed = "code_exchange_failed"
    app_credentials_rejected = "app_credentials_rejected"
    invalid_login_request = "invalid_login_request"
    login_not_confirmed = "login_not_confirmed"
    login_reused = "login_reused"
    store_failed = "store_failed"
    timeout = "timeout"


def seller_region(region: str | None, marketplace: str | None) -> tuple[str, str | None]:
    """The region and marketplace (its code) a consent starts in: a marketplace brings its
    own region and Seller Central; a region alone keeps that region's default Seller
    Central; neither is North America. A region that is not the marketplace's is refused."""
    if marketplace is None:
        return region or Region.na.value, None
    try:
        found = lwa_marketplace(marketplace)
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    if region is not None and region != found.region:
        raise InvalidInput(
            f"marketplace {found.code} is in the {found.region} region, not {region}: "
            "give the marketplace alone"
        )
    return found.region, found.code


@dataclass(frozen=True)
class ConsentStart:
    user_id: str
    region: str
    state: str
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class Connected:
    user_id: str
    region: str
    selling_partner_id: str
    reconnected: bool
    previous_seller: str | None = None  # set when the user is now another seller's account


def begin(
    session: Session,
    app: AmazonApp,
    jwt_secret: str,
    *,
    user_id: str,
    region: str,
    flow: str,
    marketplace: str | None = None,
) -> ConsentStart:
    """Issue and record a state for ``user_id`` and build the consent URL (at the
    marketplace's own Seller Central when it is known, carried in the state for the login
    step)."""
    user_id = valid_user_id(user_id)
    if region not in Region.__members__:
        raise ValueError(f"unknown region {region!r}")
    if marketplace is not None and MARKETPLACES[marketplace].region != region:
        raise ValueError(f"marketplace {marketplace!r} is not in region {region!r}")
    now = utcnow()
    expires_at = now + STATE_LIFETIME
    state_id = secrets.token_urlsafe(32)  # 256 bits
    claims: dict[str, Any] = {
        "sub": user_id,
        "region": region,
        "jti": state_id,
        "aud": STATE_AUDIENCE,
        "iat": int(now.timestamp()),
        "exp": int(expires_at.timestamp()),
    }
    if marketplace is not None:
        claims["marketplace"] = marketplace
    token = jwt.encode(claims, jwt_secret, algorithm="HS256")
    session.add(
        OAuthState(
            id=state_id,
            user_id=user_id,
            region=region,
            flow=flow,
            created_at=now,
            expires_at=expires_at,
        )
    )
    events.record(
        session,
        events.Kind.oauth_consent_started,
        user_id=user_id,
        provider=Provider.amazon,
        region=region,
        flow=flow,
    )
    return ConsentStart(
        user_id=user_id,
        region=region,
        state=token,
        url=consent_url(app, region, token, marketplace),
        expires_at=expires_at,
    )


def start(
    session_scope: SessionScope,
    config: Config,
    app: AmazonApp,
    *,
    user_id: str,
    region: str,
    flow: str,
    marketplace: str | None = None,
) -> ConsentStart:
    """``begin``, after checking the authorization can be stored at all: a missing or wrong
    encryption key fails now, not after the seller has consented."""
    with session_scope() as session:
        credentials.open_vault(config, session)
        return begin(
            session,
            app,
            config.jwt_secret(),
            user_id=user_id,
            region=region,
            flow=flow,
            marketplace=marketplace,
        )


@dataclass(frozen=True)
class StateClaims:
    state_id: str
    user_id: str
    region: str
    marketplace: str | None = None


def read_state(token: str, jwt_secret: str) -> StateClaims:
    """Verify a state strictly: HS256 only, our audience, every claim present, not expired."""
    try:
        claims = jwt.decode(
            token,
            jwt_secret,
            algorithms=["HS256"],
            audience=STATE_AUDIENCE,
            options={"require": ["exp", "iat", "sub", "jti", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise OAuthCallbackError(Reason.expired_state, "the consent link has expired") from None
    except jwt.InvalidTokenError:
        raise OAuthCallbackError(Reason.invalid_state, "the state is not one we issued") from None
    user_id, state_id, region = claims.get("sub"), claims.get("jti"), claims.get("region")
    marketplace = claims.get("marketplace")
    if (
        not isinstance(user_id, str)
        or not isinstance(state_id, str)
        or not isinstance(region, str)
        or region not in Region.__members__
        or (marketplace is not None and marketplace not in MARKETPLACES)
    ):
        raise OAuthCallbackError(Reason.invalid_state, "the state is not one we issued")
    return StateClaims(state_id=state_id, user_id=user_id, region=region, marketplace=marketplace)


def printable(text: str, limit: int = 200) -> str:
    """Text from a request, safe to show in a terminal or store: no control characters."""
    return "".join(c if c.isprintable() else " " for c in text[:limit])


def diagnose(
    params: Mapping[str, Any], jwt_secret: str, expected_state: str, expected_user: str | None
) -> OAuthCallbackError:
    """Why a callback is not acceptable, without storing or consuming anything."""
    try:
        validate(params, jwt_secret, expected_state=expected_state, expected_user=expected_user)
    except OAuthCallbackError as error:
        return error
    return OAuthCallbackError(Reason.invalid_state, "the state does not belong to this flow")


def single(params: Mapping[str, Any], name: str) -> str | None:
    """One query parameter's value; a repeated or empty parameter counts as missing."""
    value = params.get(name)
    if isinstance(value, list | tuple):
        value = value[0] if len(value) == 1 else None
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def selling_partner(params: Mapping[str, Any], what: str) -> str:
    """The ``selling_partner_id`` Amazon sent with a ``what`` (callback, login request), or why
    it is not one Amazon issues."""
    seller = single(params, "selling_partner_id")
    if seller is None:
        raise OAuthCallbackError(
            Reason.missing_selling_partner_id, f"the {what} carries no selling_partner_id"
        )
    if not SELLING_PARTNER_ID.fullmatch(seller):
        raise OAuthCallbackError(
            Reason.invalid_selling_partner_id,
            f"the {what}'s selling_partner_id {printable(seller, 80)} is not one Amazon issues",
        )
    return seller


def validate(
    params: Mapping[str, Any],
    jwt_secret: str,
    *,
    expected_state: str | None = None,
    expected_user: str | None = None,
) -> tuple[StateClaims, str, str]:
    """Check a callback's parameters without touching anything.

    Returns the state's claims, the ``spapi_oauth_code`` and the ``selling_partner_id``.
    """
    error = single(params, "error")
    if error is not None:
        description = single(params, "error_description") or error
        raise OAuthCallbackError(
            Reason.access_denied, f"Amazon did not grant consent: {printable(description)}"
        )
    token = single(params, "state")
    if token is None:
        raise OAuthCallbackError(Reason.missing_state, "the callback carries no state")
    claims = read_state(token, jwt_secret)
    if expected_user is not None and claims.user_id != expected_user:
        raise OAuthCallbackError(Reason.user_mismatch, "the consent was started for another user")
    if expected_state is not None and not secrets.compare_digest(
        token.encode(), expected_state.encode()
    ):
        raise OAuthCallbackError(
            Reason.invalid_state, "the state does not belong to this connect flow"
        )
    code = single(params, "spapi_oauth_code")
    if code is None:
        raise OAuthCallbackError(Reason.missing_code, "the callback carries no authorization code")
    return claims, code, selling_partner(params, "callback")


def consume(session: Session, claims: StateClaims) -> None:
    """Mark the state used, exactly once, even when two callbacks race."""
    result = session.execute(
        sa.update(OAuthState)
        .where(
            OAuthState.id == claims.state_id,
            OAuthState.user_id == claims.user_id,
            OAuthState.consumed_at.is_(None),
        )
        .values(consumed_at=utcnow())
    )
    if getattr(result, "rowcount", 0) == 1:
        return
    known = session.get(OAuthState, claims.state_id)
    if known is None:
        raise OAuthCallbackError(Reason.invalid_state, "the state is not one we issued")
    raise OAuthCallbackError(Reason.state_reused, "this consent link has already been used")


def complete(
    session_scope: SessionScope,
    config: Config,
    app: AmazonApp,
    lwa: LwaClient,
    params: Mapping[str, Any],
    *,
    expected_state: str | None = None,
    expected_user: str | None = None,
) -> Connected:
    """Validate a callback, exchange its code and store the authorization.

    Failures are recorded (``oauth_callback_failed``) and raised as ``OAuthCallbackError``,
    except rejected app credentials, raised as ``AppCredentialsRejected`` (exit 3).
    """
    jwt_secret = config.jwt_secret()
    with session_scope() as session:  # a wrong or missing key stops us before the code is spent
        vault = credentials.open_vault(config, session)
    claims: StateClaims | None = None
    try:
        claims, code, seller = validate(
            params, jwt_secret, expected_state=expected_state, expected_user=expected_user
        )
        with session_scope() as session:
            consume(session, claims)
        try:
            grant = lwa.exchange_code(code)
        except AppCredentialsRejected as error:
            record_failure(
                session_scope, Reason.app_credentials_rejected, error.message, claims.user_id
            )
            with session_scope() as session:
                notifications.alert_app_credentials(session, Provider.amazon, error.message)
            raise
        except ProviderError as error:
            raise OAuthCallbackError(
                Reason.code_exchange_failed,
                f"Amazon would not exchange the authorization code: {error.message}",
            ) from None
        if grant.refresh_token is None:
            raise OAuthCallbackError(
                Reason.code_exchange_failed, "Amazon's answer carried no refresh token"
            )
    except OAuthCallbackError as error:
        record_failure(
            session_scope,
            error.reason,
            error.message,
            claims.user_id if claims else expected_user,
        )
        raise

    refresh_token = grant.refresh_token
    assert refresh_token is not None  # checked above

    def store() -> Connected:
        with session_scope() as session:
            return _store(
                session,
                vault,
                config.frontend_url,
                claims,
                seller,
                refresh_token,
                grant.access_token,
                grant.expires_in,
            )

    try:
        return store()
    except (DatabaseUnavailable, DatabaseConflict):
        pass  # a dropped connection, a lock held past the busy timeout, a race: once more
    try:
        return store()
    except DiscoveryError as error:  # whatever it was, the seller must hear what to do
        message = (
            f"Amazon granted access but it could not be stored ({error.message}): "
            "the seller must connect again"
        )
        with contextlib.suppress(DiscoveryError):
            record_failure(session_scope, Reason.store_failed, message, claims.user_id)
        raise OAuthCallbackError(Reason.store_failed, message) from None


def _store(
    session: Session,
    vault: Vault,
    frontend_url: str,
    claims: StateClaims,
    selling_partner_id: str,
    refresh_token: str,
    access_token: str,
    expires_in: int,
) -> Connected:
    integration = lifecycle.find(session, claims.user_id, Provider.amazon, for_update=True)
    reconnected = integration is not None
    if integration is None:
        integration = lifecycle.create(session, claims.user_id, Provider.amazon, Status.active)
        credential = None
    else:
        credential = credentials.for_integration(session, integration)
    previous = credential.selling_partner_id if credential is not None else None
    switched = previous if previous not in (None, selling_partner_id) else None
    if switched is not None:
        _record_seller_switch(session, claims.user_id, switched, selling_partner_id)
    credentials.store_authorization(
        session,
        integration,
        vault,
        selling_partner_id=selling_partner_id,
        region=claims.region,
        refresh_token=refresh_token,
        access_token=access_token,
        expires_in=expires_in,
        authorized_at=utcnow(),
        credential=credential,
    )
    lifecycle.update_meta(
        integration,
        selling_partner_id=selling_partner_id,
        region=claims.region,
        authorized_at=isoformat(utcnow()),
    )
    lifecycle.change_status(
        session,
        integration,
        Status.active,
        reason="reconnected" if reconnected else "connected",
        frontend_url=frontend_url,
    )
    lifecycle.record_success(session, integration)
    events.record(
        session,
        CALLBACK_SUCCEEDED,
        outcome=events.SUCCESS,
        user_id=claims.user_id,
        provider=Provider.amazon,
        selling_partner_id=selling_partner_id,
        region=claims.region,
        reconnected=reconnected,
    )
    return Connected(
        user_id=claims.user_id,
        region=claims.region,
        selling_partner_id=selling_partner_id,
        reconnected=reconnected,
        previous_seller=switched,
    )


SELLER_SWITCHED = events.Kind.seller_switched


def _record_seller_switch(session: Session, user_id: str, previous: str, now: str) -> None:
    """The user reconnected with another Seller Central account than before: allowed (the
    seller may have meant it), but never silent. Recorded, and the admins told."""
    events.record(
        session,
        SELLER_SWITCHED,
        outcome=events.FAILURE,
        user_id=user_id,
        provider=Provider.amazon,
        previous_selling_partner_id=previous,
        selling_partner_id=now,
    )
    notifications.notify(
        session,
        audience=notifications.ADMIN,
        kind=SELLER_SWITCHED,
        title="A user reconnected another Amazon seller account",
        message=(
            f"User {user_id} was seller {previous} and is now seller {now}: check that the "
            "seller meant to switch accounts"
        ),
        user_id=user_id,
        provider=Provider.amazon,
        detail={"previous_selling_partner_id": previous, "selling_partner_id": now},
        key=f"{SELLER_SWITCHED}:{user_id}:{now}",
    )


def record_failure(
    session_scope: SessionScope, reason: str, message: str, user_id: str | None
) -> None:
    """An ``oauth_callback_failed`` event, in its own transaction."""
    with session_scope() as session:
        events.record(
            session,
            CALLBACK_FAILED,
            outcome=events.FAILURE,
            user_id=user_id,
            provider=Provider.amazon,
            error_type=str(reason),
            reason=str(reason),
            message=message,
        )
