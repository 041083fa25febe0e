"""Refreshing a seller's Amazon authorization, and what each outcome means (docs/behaviour.md §5).

The one place that decides a seller's fate after LWA answers:

- a new access token: cached encrypted with its expiry, a rotated refresh token stored, the
  failure count cleared, alerts resolved, and once, 30 days before the 365-day
  re-authorization date, the seller is warned;
- ``invalid_grant``: the authorization is gone, ``expired`` past its re-authorization date,
  else ``revoked``, and the seller is told how to reconnect;
- the app's own credentials refused: no seller is touched, the admins are told;
- anything else (throttling, 5xx, timeouts, bodies nobody planned for): retried a few times
  in the run, then counted: the status stays, ``consecutive_failures`` grows, the next try
  waits (capped exponential backoff with jitter), and after 3 in a row the admins are told.

A refresh holds the credential's lease while it talks to LWA, so two processes never spend
the same refresh token at once; a second caller waits for the first and reuses its token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.amazon.credentials import for_integration
from discoveryctl.amazon.mass_revocation import Held
from discoveryctl.amazon.verdict import (
    EXPIRED,
    REVOKED,
    RefreshOutcome,
    Verdict,
    event_error_type,
    expiry_warning_due,
    reauthorization_date,
    verdict,
)
from discoveryctl.db.engine import SessionScope, database_now
from discoveryctl.db.leases import CREDENTIALS, lock_for_update, new_owner
from discoveryctl.db.models import (
    Credential,
    IntegrationStatus,
    table_of,
    utcnow,
)
from discoveryctl.errors import (
    AppCredentialsRejected,
    NotFound,
    ProviderError,
    SellerAuthorizationRevoked,
    TransientProviderError,
)
from discoveryctl.integrations import events, lifecycle, notifications
from discoveryctl.integrations.vocabulary import (
    LAST_SYNCED_AT,
    Provider,
    Status,
    consecutive_failures,
    isoformat,
    needs_reconnect,
    reconnect_url,
)
from discoveryctl.providers.lwa import LwaClient, TokenGrant
from discoveryctl.support.crypto import Vault
from discoveryctl.support.retrying import IN_RUN, Attempt, RetryPolicy
from discoveryctl.support.user_ids import shown

DEFAULT_MARGIN = timedelta(minutes=5)
"""An access token this close to its expiry is refreshed rather than used."""
LEASE = timedelta(seconds=60)
"""How long a refresh may hold a credential; a killed process's lease simply runs out."""
BETWEEN_RUNS = RetryPolicy(
    first=timedelta(minutes=5).total_seconds(),
    factor=2.0,
    longest=timedelta(hours=6).total_seconds(),
    jitter=(0.8, 1.2),
)
"""How long a credential is left alone after ``n`` failed runs in a row (our choice): 5 min,
10, 20, … up to 6 h, each ±20 % at random so a crowd of failures spreads out. No limit on
the runs: the seller's status stays, and the admins are told after 3 in a row."""
LEASE_WAIT = RetryPolicy(first=0.1, factor=1.0, within=LEASE.total_seconds())
"""While another process holds a credential's lease: look again every 0.1 s, for as long as
a lease can last (our choice)."""

EXPIRY_WARNED = "authorization_expiring"
REFRESHED = events.Kind.token_refreshed
REFRESH_FAILED = events.Kind.token_refresh_failed


REFRESH_RETRIED = events.Kind.token_refresh_retried


# -- leases ---------------------------------------------------------------------------------


def claim(
    session: Session,
    credential_id: int,
    owner: str,
    now: datetime,
    *,
    unless_usable_after: datetime | None = None,
) -> bool:
    """Take the credential's lease unless a live one is held; True when taken.

    ``unless_usable_after``: not taken either when the cached access token outlives that
    moment. The caller read the cache stale, but another process may have refreshed and let
    go of its lease since; checked in the same statement, so no refresh follows one just
    made."""
    unless: list[sa.ColumnElement[bool]] = []
    if unless_usable_after is not None:
        expires = table_of(Credential).c.access_token_expires_at
        unless.append(sa.or_(expires.is_(None), expires <= unless_usable_after))
    return CREDENTIALS.take(session, credential_id, owner, now, LEASE, *unless)


# -- one seller -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refresh:
    """What happened to one seller's authorization."""

    user_id: str
    outcome: RefreshOutcome
    access_token_expires_at: datetime | None = None
    access_token: str | None = field(default=None, repr=False)  # never in a log or traceback
    error_type: str | None = None
    message: str | None = None
    reconnect_url: str | None = None


def news_only(grant: TokenGrant, sent: str) -> TokenGrant:
    """The grant, with a refresh token LWA sent back unchanged dropped: only a new one is
    stored (encrypted again) and counted as rotated."""
    return dataclasses.replace(grant, refresh_token=None) if grant.refresh_token == sent else grant


def last_try(tries: Sequence[Attempt]) -> dict[str, Any]:
    """What the outcome's event says of the try that decided it (nothing without tries)."""
    return tries[-1].detail() if tries else {}


def retried_events(
    user_id: str, tries: Sequence[Attempt], kind: events.Kind = REFRESH_RETRIED
) -> list[dict[str, Any]]:
    """An event for each try that failed and was tried again (the last try is the outcome's
    own event): its number, duration, HTTP status and error type."""
    return [
        events.entry(
            kind,
            outcome=events.FAILURE,
            user_id=user_id,
            provider=Provider.amazon,
            error_type=event_error_type(attempt.error.error_type),
            http_status=attempt.error.status_code,
            **attempt.detail(),
        )
        for attempt in tries[:-1]
        if attempt.error is not None
    ]


def find(
    session: Session, user_id: str, *, for_update: bool = False
) -> tuple[IntegrationStatus, Credential]:
    """The seller's Amazon integration and credential; ``for_update`` locks them for a
    read-modify-write (see ``lifecycle.find``). Reads take no lock, so ``access-token`` never
    waits behind a running ``refresh-all``."""
    integration = lifecycle.find(session, user_id, Provider.amazon, for_update=for_update)
    credential = None if integration is None else for_integration(session, integration)
    if integration is None or credential is None:
        raise NotFound(f"user {shown(user_id)} has no Amazon authorization")
    return integration, credential


def refresh_seller(
    session_scope: SessionScope,
    vault: Vault,
    lwa: LwaClient,
    user_id: str,
    *,
    frontend_url: str,
    wait_for_lease: float = LEASE.total_seconds(),
    held: list[Held] | None = None,
) -> Refresh:
    """Refresh one seller's access token now and record what it means; with ``held``, an
    "authorization gone" verdict is put there instead of recorded (the caller weighs them)."""
    owner = new_owner("refresh")
    credential_id = _take_lease(session_scope, user_id, owner, wait_for_lease)
    return _refresh_leased(
        session_scope,
        vault,
        lwa,
        user_id,
        credential_id,
        owner,
        frontend_url=frontend_url,
        held=held,
    )


def access_token(
    session_scope: SessionScope,
    vault: Vault,
    lwa: LwaClient,
    user_id: str,
    *,
    frontend_url: str,
    margin: timedelta = DEFAULT_MARGIN,
    wait_for_lease: float = LEASE.total_seconds(),
    held: list[Held] | None = None,
) -> tuple[str, datetime]:
    """A usable access token and its expiry: the cached one while it has more than
    ``margin`` left, else a fresh one. Callers at the same moment share one refresh: the
    first takes the lease and refreshes, the others wait for it (at most ``wait_for_lease``
    seconds) and use its token."""

    def cached_or_refreshed() -> tuple[str, datetime] | None:
        """The token, or None while another process holds the lease."""
        owner = new_owner("refresh")
        with session_scope() as session:
            integration, credential = find(session, user_id)
            usable_until = utcnow() + margin
            cached = cached_token(vault, credential, usable_until)
            if cached is not None:
                return cached
            if needs_reconnect(integration.status):
                url = reconnect_url(frontend_url, Provider.amazon, user_id)
                raise SellerAuthorizationRevoked(
                    f"the Amazon authorization of {shown(user_id)} is {integration.status}: "
                    f"reconnect at {url}",
                    error_type=EXPIRED if integration.status == Status.expired else REVOKED,
                )
            taken = claim(
                session,
                credential.id,
                owner,
                database_now(session),
                unless_usable_after=usable_until,
            )
        if not taken:
            return None
        done = _refresh_leased(
            session_scope,
            vault,
            lwa,
            user_id,
            credential.id,
            owner,
            frontend_url=frontend_url,
            held=held,
        )
        raise_for(done)
        # The token just granted, whatever its lifetime: read back through the cache, one
        # shorter than the margin would send this poll refreshing forever.
        token, expires = done.access_token, done.access_token_expires_at
        assert token is not None and expires is not None  # pragma: no mutate  (types only)
        return token, expires

    return dataclasses.replace(LEASE_WAIT, within=wait_for_lease).poll(
        cached_or_refreshed,
        lambda: TransientProviderError(
            f"another process has been refreshing the token of {shown(user_id)} for over "
            f"{wait_for_lease:g} s",
            error_type="refresh_in_progress",
        ),
    )


def _refresh_leased(
    session_scope: SessionScope,
    vault: Vault,
    lwa: LwaClient,
    user_id: str,
    credential_id: int,
    owner: str,
    *,
    frontend_url: str,
    held: list[Held] | None = None,
) -> Refresh:
    """The refresh itself, under a lease this process holds; the lease is let go after.
    With ``held``, an "authorization gone" verdict is put there, not recorded."""
    try:
        with session_scope() as session:
            _, credential = find(session, user_id)
            refresh_token = vault.decrypt(credential.refresh_token, what="the refresh token")
            authorized_at = credential.authorized_at
        tries: list[Attempt] = []
        try:
            grant = news_only(
                IN_RUN.call(lambda: lwa.refresh(refresh_token), tries=tries), refresh_token
            )
        except ProviderError as error:
            decided = verdict(error, authorized_at, utcnow())
            if held is not None and decided.authorization_gone:
                held.append(Held(user_id, decided, tuple(tries), authorized_at=authorized_at))
                return Refresh(
                    user_id,
                    decided.outcome,
                    error_type=decided.error_type,
                    message=decided.message,
                    reconnect_url=reconnect_url(frontend_url, Provider.amazon, user_id),
                )
            with session_scope() as session:
                return record_failure(
                    session, user_id, decided, frontend_url=frontend_url, tries=tries
                )
        with session_scope() as session:
            return record_refresh(
                session, vault, user_id, grant, frontend_url=frontend_url, tries=tries
            )
    finally:
        with session_scope() as session:
            # Mutation testing: ``owner`` is this refresh's own, unique to it, and holds no
            # other lease, so letting go of all of its leases (the surviving mutants) is the same.
            CREDENTIALS.release(session, owner, [credential_id])  # pragma: no mutate


def raise_for(done: Refresh) -> None:
    """Nothing for a refresh that worked; the error of its kind for one that did not."""
    if needs_reconnect(done.outcome):
        raise SellerAuthorizationRevoked(
            f"the Amazon authorization of {shown(done.user_id)} is {done.outcome}: "
            f"reconnect at {done.reconnect_url}",
            error_type=done.error_type or REVOKED,
        )
    if done.outcome == RefreshOutcome.app_rejected:
        raise AppCredentialsRejected(done.message or "LWA rejected the app's credentials")
    if done.outcome == RefreshOutcome.failed:
        raise TransientProviderError(
            f"could not refresh the token of {shown(done.user_id)}: {done.message}",
            error_type=done.error_type or "provider_error",
        )


def cached_token(
    vault: Vault, credential: Credential, usable_until: datetime
) -> tuple[str, datetime] | None:
    """The cached access token and its expiry, if it is still usable after ``usable_until``."""
    expires = credential.access_token_expires_at
    if credential.access_token is None or expires is None or expires <= usable_until:
        return None
    return vault.decrypt(credential.access_token, what="the access token"), expires


def _take_lease(session_scope: SessionScope, user_id: str, owner: str, wait: float) -> int:
    def taken() -> int | None:
        with session_scope() as session:
            _, credential = find(session, user_id)
            if claim(session, credential.id, owner, database_now(session)):
                return credential.id
        return None

    return dataclasses.replace(LEASE_WAIT, within=wait).poll(
        taken,
        lambda: TransientProviderError(
            f"another process is refreshing the token of {shown(user_id)} right now: try again",
            error_type="refresh_in_progress",
        ),
    )


# -- recording outcomes -------------------------------------------------------------------------


def record_refresh(
    session: Session,
    vault: Vault,
    user_id: str,
    grant: TokenGrant,
    *,
    frontend_url: str,
    tries: Sequence[Attempt] = (),
) -> Refresh:
    """A new access token: cache it, keep (or replace) the refresh token, clear failures;
    an event for the refresh and for each try before it that failed."""
    now = utcnow()
    integration, credential = find(session, user_id, for_update=True)
    expires = now + timedelta(seconds=grant.expires_in)
    credential.access_token = vault.encrypt(grant.access_token)
    credential.access_token_expires_at = expires
    if grant.refresh_token is not None:  # LWA may rotate it; without one, the old one stays
        credential.refresh_token = vault.encrypt(grant.refresh_token)
    credential.refreshed_at = now
    credential.next_attempt_at = None
    credential.updated_at = now
    lifecycle.record_success(session, integration)
    # A seller marked gone on the SP-API's word stays so until the SP-API takes a fresh token
    # (amazon.check.record_check): LWA granting one proves less than the SP-API refusing two.
    if integration.status != Status.active and credential.refused_by_spapi_at is None:
        lifecycle.change_status(
            session,
            integration,
            Status.active,
            reason="token_refreshed",
            # Mutation testing: only a lost connection's notification carries the URL; coming
            # back active uses none (the surviving mutants).
            frontend_url=frontend_url,  # pragma: no mutate
        )
    events.record_all(session, _refreshed_events(user_id, grant, expires, tries))
    _warn_before_expiry(session, integration, credential, now, frontend_url)
    notifications.app_credentials_accepted(session, Provider.amazon)  # LWA took them
    return Refresh(
        user_id,
        RefreshOutcome.refreshed,
        access_token_expires_at=expires,
        access_token=grant.access_token,
    )


def _refreshed_events(
    user_id: str, grant: TokenGrant, expires: datetime, tries: Sequence[Attempt]
) -> list[dict[str, Any]]:
    """A refresh's events: each try retried before it, then the refresh itself."""
    return [
        *retried_events(user_id, tries),
        events.entry(
            REFRESHED,
            outcome=events.SUCCESS,
            user_id=user_id,
            provider=Provider.amazon,
            expires_at=isoformat(expires),
            refresh_token_rotated=grant.refresh_token is not None,
            **last_try(tries),
        ),
    ]


def record_refreshes(
    session: Session,
    vault: Vault,
    refreshed: Sequence[tuple[int, TokenGrant, Sequence[Attempt]]],
    *,
    frontend_url: str,
    lease_owner: str | None = None,
) -> list[Refresh]:
    """Many successful refreshes (credential id, grant, its tries) in a few statements; the
    same UPDATE lets go of ``lease_owner``'s leases on them (one row version, not two).

    The common case, an active integration with nothing to clear and no warning due, is
    written in bulk: one SELECT, one UPDATE per table, one INSERT of events. Any other goes
    through ``record_refresh``, one by one, with its transitions and notifications.
    """
    if not refreshed:
        return []
    now = utcnow()
    credential, integration = table_of(Credential), table_of(IntegrationStatus)
    grants = {credential_id: (grant, tries) for credential_id, grant, tries in refreshed}
    query = (
        sa.select(
            credential.c.id,
            credential.c.integration_id,
            credential.c.authorized_at,
            credential.c.expiry_warned_at,
            integration.c.user_id,
            integration.c.status,
            integration.c.metadata,
        )
        .join(integration)  # on the credential's one foreign key
        .where(credential.c.id.in_(list(grants)))
    )
    # Mutation testing: ``of`` changes what PostgreSQL locks at the read, not what is written:
    # the credentials read are updated in this same transaction, which locks them anyway.
    query = lock_for_update(session, query, of=integration)  # pragma: no mutate
    done: list[Refresh] = []
    credential_rows: list[dict[str, Any]] = []
    integration_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    one_by_one: list[tuple[str, TokenGrant, Sequence[Attempt]]] = []
    for row in session.execute(query):
        grant, tries = grants[row.id]
        warning_due = expiry_warning_due(row.authorized_at, row.expiry_warned_at, now)
        plain = (
            row.status == Status.active
            and not consecutive_failures(row.metadata)
            and not warning_due
        )
        if not plain:
            one_by_one.append((row.user_id, grant, tries))
            continue
        expires = now + timedelta(seconds=grant.expires_in)
        credential_rows.append(
            {
                "row_id": row.id,
                "new_access_token": vault.encrypt(grant.access_token),
                "expires": expires,
                "new_refresh_token": (
                    vault.encrypt(grant.refresh_token) if grant.refresh_token else None
                ),
                "rotated": grant.refresh_token is not None,
                "now": now,
            }
        )
        meta = {**row.metadata, LAST_SYNCED_AT: isoformat(now)}
        integration_rows.append({"row_id": row.integration_id, "meta": meta, "now": now})
        event_rows += _refreshed_events(row.user_id, grant, expires, tries)
        done.append(Refresh(row.user_id, RefreshOutcome.refreshed, access_token_expires_at=expires))
    if credential_rows:
        refreshing = (
            sa.update(credential)
            .where(credential.c.id == sa.bindparam("row_id"))
            .values(
                access_token=sa.bindparam("new_access_token"),
                access_token_expires_at=sa.bindparam("expires"),
                refresh_token=sa.case(
                    (sa.bindparam("rotated"), sa.bindparam("new_refresh_token")),
                    else_=credential.c.refresh_token,
                ),
                refreshed_at=sa.bindparam("now"),
                next_attempt_at=None,
                updated_at=sa.bindparam("now"),
            )
        )
        if lease_owner is not None:
            refreshing = refreshing.values(CREDENTIALS.letting_go(lease_owner))
        session.execute(refreshing, credential_rows)
        session.execute(
            sa.update(integration)
            .where(integration.c.id == sa.bindparam("row_id"))
            .values(metadata=sa.bindparam("meta"), updated_at=sa.bindparam("now")),
            integration_rows,
        )
        events.record_all(session, event_rows)
        notifications.app_credentials_accepted(session, Provider.amazon)  # LWA took them
    for user_id, grant, tries in one_by_one:
        done.append(
            record_refresh(session, vault, user_id, grant, frontend_url=frontend_url, tries=tries)
        )
    return done


def record_failure(
    session: Session,
    user_id: str,
    decided: Verdict,
    *,
    frontend_url: str,
    tries: Sequence[Attempt] = (),
    found: tuple[IntegrationStatus, Credential] | None = None,
) -> Refresh:
    """A refresh that failed, recorded as its verdict says, with an event for each try;
    ``found``: the seller's integration and credential, already read and locked."""
    now = utcnow()
    integration, credential = found or find(session, user_id, for_update=True)
    events.add_all(
        session,
        [
            *retried_events(user_id, tries),
            events.entry(
                REFRESH_FAILED,
                outcome=events.FAILURE,
                user_id=user_id,
                provider=Provider.amazon,
                error_type=decided.error_type,
                http_status=decided.status_code,
                message=decided.message,
                **last_try(tries),
            ),
        ],
    )
    url = reconnect_url(frontend_url, Provider.amazon, user_id)
    apply_verdict(session, integration, credential, decided, now=now, frontend_url=frontend_url)
    return Refresh(
        user_id,
        decided.outcome,
        error_type=decided.error_type,
        message=decided.message,
        reconnect_url=url,
    )


def apply_verdict(
    session: Session,
    integration: IntegrationStatus,
    credential: Credential,
    decided: Verdict,
    *,
    now: datetime,
    frontend_url: str,
) -> None:
    """Act on a verdict (``amazon.verdict``) for the seller, whoever reached it (a refresh or
    a check): an authorization gone changes the status and tells the seller; the app's
    credentials refused tell the admins; anything else is a counted failure that waits out a
    backoff before the next try. The integration and credential are read and locked."""
    if decided.authorization_gone:
        status = Status.expired if decided.outcome == RefreshOutcome.expired else Status.revoked
        credential.access_token = None
        credential.access_token_expires_at = None
        credential.refused_by_spapi_at = None  # the check marks its own (amazon.check)
        lifecycle.change_status(
            session,
            integration,
            status,
            reason=decided.error_type,
            frontend_url=frontend_url,
            error_type=decided.error_type,
        )
    elif decided.outcome == RefreshOutcome.app_rejected:
        notifications.alert_app_credentials(session, Provider.amazon, decided.message)
    else:
        failures = lifecycle.record_transient_failure(
            session, integration, error_type=decided.error_type, message=decided.message
        )
        credential.next_attempt_at = now + BETWEEN_RUNS.wait(failures)
    credential.updated_at = now


def record_failures(
    session: Session,
    failures: Sequence[tuple[str, Verdict, Sequence[Attempt]]],
    *,
    frontend_url: str,
) -> list[Refresh]:
    """Many failed refreshes (user id, verdict, tries), each as ``record_failure`` decides:
    the integrations and credentials read and locked in two queries, the notifications
    decided together (``notifications.batched``), everything written in one flush."""
    if not failures:
        return []
    users = [user_id for user_id, _, _ in failures]
    integrations = lifecycle.find_all(session, users, Provider.amazon, for_update=True)
    credentials = {
        credential.integration_id: credential
        for credential in session.scalars(
            sa.select(Credential).where(
                Credential.integration_id.in_([i.id for i in integrations.values()])
            )
        )
    }
    done = []
    with notifications.batched(session, users):
        for user_id, decided, tries in failures:
            integration = integrations.get(user_id)
            credential = None if integration is None else credentials.get(integration.id)
            if integration is None or credential is None:
                continue  # removed since it was claimed: nothing left to record on
            done.append(
                record_failure(
                    session,
                    user_id,
                    decided,
                    frontend_url=frontend_url,
                    tries=tries,
                    # Mutation testing: without it, record_failure reads the same rows again
                    # (the same objects, already locked): one query more, nothing else.
                    found=(integration, credential),  # pragma: no mutate
                )
            )
    return done


def _warn_before_expiry(
    session: Session,
    integration: IntegrationStatus,
    credential: Credential,
    now: datetime,
    frontend_url: str,
) -> None:
    """Once per authorization, 30 days before Amazon wants it renewed, tell the seller."""
    if not expiry_warning_due(credential.authorized_at, credential.expiry_warned_at, now):
        return
    renew_by = reauthorization_date(credential.authorized_at)
    url = reconnect_url(frontend_url, Provider.amazon, integration.user_id)
    notifications.notify(
        session,
        audience=notifications.USER,
        kind=EXPIRY_WARNED,
        title="Amazon connection expires soon",
        message=(
            f"Your amazon authorization expires on {renew_by.date().isoformat()}. "
            "Please reconnect your account before then to keep access."
        ),
        user_id=integration.user_id,
        provider=Provider.amazon,
        detail={"reconnectUrl": url, "expires_at": isoformat(renew_by)},
        key=notifications.dedupe_key(EXPIRY_WARNED, Provider.amazon, integration.user_id)
        + f":{renew_by.date().isoformat()}",  # one per authorization term
    )
    credential.expiry_warned_at = now
