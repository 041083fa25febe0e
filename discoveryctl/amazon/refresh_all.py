"""The cron job: refresh every due Amazon authorization, concurrently, under leases
(docs/behaviour.md §5).

Due: an ``active`` integration whose cached access token expires within the margin (or has
none), or whose last refresh is older than the maximum age; not while a failed one waits out
its backoff (``next_attempt_at``); with ``force``, every active one. Each batch is claimed in
one transaction that sets a lease on it (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite:
under its write lock), so overlapping runs and other machines never refresh the same seller
twice, and a killed run's leases simply run out for the next run to take the work.

What each answer means is decided in ``discoveryctl.amazon.refresh`` and ``amazon.check``;
this module only schedules. If LWA refuses the app's own credentials, no more work is claimed,
the calls in flight end, no seller is marked, the leases are let go, and the admins are told
once.

Two more rules of evidence:
- a seller marked gone on the SP-API's word alone (``refused_by_spapi_at``) is due too, to be
  looked at again: its token is refreshed and checked at the SP-API, and it is active again
  only if the SP-API takes it (``amazon.check.record_check``);
- every "authorization gone" verdict of the run (LWA's ``invalid_grant``, a fresh token the
  SP-API refused twice) is held until the run ends, and applied only if they are not most of
  the run's answers (``amazon.mass_revocation``); otherwise nobody is marked and the admins
  are told.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.amazon import mass_revocation
from discoveryctl.amazon.check import CHECKED, allowance, record_check, record_refusal
from discoveryctl.amazon.mass_revocation import Brake
from discoveryctl.amazon.refresh import (
    DEFAULT_MARGIN,
    LEASE,
    news_only,
    record_failures,
    record_refreshes,
)
from discoveryctl.amazon.verdict import RefreshOutcome, Verdict, verdict
from discoveryctl.db.engine import SessionScope
from discoveryctl.db.leases import CREDENTIALS, Claim, Heartbeat, new_owner
from discoveryctl.db.models import Credential, IntegrationStatus, table_of, utcnow
from discoveryctl.errors import DiscoveryError, ProviderError, SpApiTokenRefused
from discoveryctl.integrations import events, lifecycle, notifications
from discoveryctl.integrations.vocabulary import Provider, Status, needs_reconnect
from discoveryctl.providers.lwa import AsyncLwaClient, TokenGrant
from discoveryctl.providers.spapi import AsyncSpApiClient
from discoveryctl.support.crypto import Vault
from discoveryctl.support.pacing import Pacer
from discoveryctl.support.retrying import IN_RUN, Attempt

DEFAULT_MAX_AGE = timedelta(hours=24)
DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True)
class Due:
    """A claimed (or, for a dry run, merely due) authorization."""

    credential_id: int
    user_id: str
    refresh_token: str  # encrypted, as stored
    authorized_at: datetime
    region: str
    may_check: bool = False  # one SP-API check taken from the seller's allowance
    recheck: bool = False  # marked gone on the SP-API's word: looked at again
    wants_check: bool = False  # --verify, or a recheck: the new token goes to the SP-API


@dataclass
class Summary:
    """What a run did, by outcome."""

    outcomes: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)  # --verify: SP-API answers
    seconds: float = 0.0
    app_rejected: str | None = None  # LWA's message when the app's credentials were refused
    interrupted: bool = False
    deadline_reached: bool = False
    answered: int = 0  # answers LWA gave (grants and refusals): what the brake weighs
    held: list[Answer] = field(default_factory=list)  # "gone" verdicts, applied at the end
    mass_revocation_held: int = 0  # verdicts the brake held: nobody was marked

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcomes": {str(o): self.outcomes.get(str(o), 0) for o in RefreshOutcome},
            "total": self.total,
            "checks": dict(self.checks),
            "seconds": round(self.seconds, 3),
            "per_second": round(self.total / self.seconds, 1) if self.seconds else None,
            "app_credentials_rejected": self.app_rejected,
            "interrupted": self.interrupted,
            "deadline_reached": self.deadline_reached,
            "mass_revocation_held": self.mass_revocation_held,
        }


def _credential_due(now: datetime, margin: timedelta, max_age: timedelta, force: bool) -> Any:
    """What makes a credential due, on its own row: no live lease, no backoff to wait out,
    and an access token about to expire (or none), or a last refresh too long ago."""
    credential = table_of(Credential)
    conditions: list[Any] = [CREDENTIALS.free(now)]
    if not force:
        conditions += [
            sa.or_(credential.c.next_attempt_at.is_(None), credential.c.next_attempt_at <= now),
            sa.or_(
                credential.c.access_token_expires_at.is_(None),
                credential.c.access_token_expires_at <= now + margin,
                sa.func.coalesce(credential.c.refreshed_at, credential.c.authorized_at)
                <= now - max_age,
            ),
        ]
    return sa.and_(*conditions)


def looked_at(status: str, refused_by_spapi_at: datetime | None) -> bool:
    """Whether a run refreshes a seller in this status: an active one, or one marked gone on
    the SP-API's word alone, to look at again (``_looked_at_clause`` says it in SQL)."""
    return status == Status.active or (needs_reconnect(status) and refused_by_spapi_at is not None)


def _looked_at_clause() -> Any:
    credential, integration = table_of(Credential), table_of(IntegrationStatus)
    return sa.or_(
        integration.c.status == Status.active,
        sa.and_(
            lifecycle.needs_reconnect_clause(),
            credential.c.refused_by_spapi_at.is_not(None),
        ),
    )


def _due_query(now: datetime, margin: timedelta, max_age: timedelta, force: bool) -> Any:
    credential, integration = table_of(Credential), table_of(IntegrationStatus)
    return (
        sa.select(
            credential.c.id,
            integration.c.user_id,
            credential.c.refresh_token,
            credential.c.authorized_at,
            credential.c.region,
            credential.c.refused_by_spapi_at.is_not(None).label("recheck"),
        )
        .join(
            integration,
            integration.c.id == credential.c.integration_id,  # pragma: no mutate  (the FK's own)
        )
        .where(
            _credential_due(now, margin, max_age, force),
            _looked_at_clause(),
            integration.c.provider == Provider.amazon,
        )
        .order_by(credential.c.id)  # pragma: no mutate  (--dry-run's listing order, no rule)
    )


def due_now(
    session: Session,
    *,
    margin: timedelta = DEFAULT_MARGIN,
    max_age: timedelta = DEFAULT_MAX_AGE,
    force: bool = False,
    now: datetime | None = None,
) -> list[Due]:
    """Every authorization a run would refresh ``now`` (the clock's unless given;
    ``--dry-run``), claiming nothing."""
    moment = utcnow() if now is None else now
    rows = session.execute(_due_query(moment, margin, max_age, force))
    return [
        Due(
            row.id,
            row.user_id,
            row.refresh_token,
            row.authorized_at,
            row.region,
            recheck=bool(row.recheck),
            wants_check=bool(row.recheck),
        )
        for row in rows
    ]


def claim_batch(
    session: Session,
    owner: str,
    limit: int,
    *,
    after: int = 0,
    lease: timedelta = LEASE,
    margin: timedelta = DEFAULT_MARGIN,
    max_age: timedelta = DEFAULT_MAX_AGE,
    force: bool = False,
    checks: bool = False,
    now: datetime | None = None,
) -> list[Due]:
    """Take the lease on up to ``limit`` due authorizations past credential id ``after``
    (a run walks the table once, in id order, and never comes back), atomically; with
    ``checks`` (``--verify``), also one SP-API check from the allowance of each seller that
    has one; a seller looked at again (``looked_at``) is always checked.
    ``now``: the database's clock unless given."""
    claim = CREDENTIALS.claim(session, now)  # SQLite: its write lock from the walk to the lease
    now = claim.now
    credential = table_of(Credential)
    while True:
        # Two steps, so that no planner can turn a claim into a scan of every seller (a
        # join ordered by id, 130 ms a batch at 50,000 credentials on PostgreSQL): walk the
        # credentials' primary key from ``after`` for the next due ids, then lock those
        # whose integration is active.
        walk = (
            sa.select(credential.c.id)
            .where(credential.c.id > after, _credential_due(now, margin, max_age, force))
            .order_by(credential.c.id)
            .limit(limit)
        )
        ids = list(session.scalars(walk))
        if not ids:
            return []
        rows = _take(claim, ids, _credential_due(now, margin, max_age, force))
        if rows:
            break
        after = ids[-1]  # none of these could be taken: walk on
    claimed: list[Due] = []
    spent: list[dict[str, Any]] = []
    for row, user_id in rows:
        recheck = row.refused_by_spapi_at is not None
        wants_check = checks or recheck
        left = allowance(row.check_allowance, row.check_allowance_at, now)
        may_check = wants_check and left >= 1.0
        if may_check:
            spent.append({"row_id": row.id, "left": left - 1.0, "now": now})
        claimed.append(
            Due(
                row.id,
                user_id,
                row.refresh_token,
                row.authorized_at,
                row.region,
                may_check=may_check,
                recheck=recheck,
                wants_check=wants_check,
            )
        )
    claim.take([due.credential_id for due in claimed], owner, lease)
    if spent:
        session.execute(
            sa.update(credential)
            .where(credential.c.id == sa.bindparam("row_id"))
            .values(check_allowance=sa.bindparam("left"), check_allowance_at=sa.bindparam("now")),
            spent,
        )
    return claimed


def _take(claim: Claim, ids: list[int], due: Any) -> list[tuple[Any, str]]:
    """Of the credentials ``ids`` (due when walked), those still ``due`` once locked and
    whose Amazon integration a run looks at (``looked_at``), in id order, with their user ids.

    On PostgreSQL ``due`` is asked again under the lock (``Claim.lock``): between the walk
    and the lock another run may have claimed a seller and let it go, and PostgreSQL
    re-checks a locking query's conditions on the row as that run left it. SQLite's write
    lock, taken before the walk, keeps every other run out until the claim commits: nothing
    to ask again.

    Both tables are read by their primary key alone, and the integration's status checked
    here (``looked_at``): with any other condition in the query, a planner may start from
    another index instead (integration_status's status index, credentials' lease index:
    every active seller, every unleased credential) and read the whole table for one batch.
    SQLite did, once an import had analysed the tables: 25 ms a batch at 100,000 sellers."""
    credential, integration = table_of(Credential), table_of(IntegrationStatus)
    query = (
        sa.select(
            credential.c.id,
            credential.c.integration_id,
            credential.c.refresh_token,
            credential.c.authorized_at,
            credential.c.region,
            credential.c.check_allowance,
            credential.c.check_allowance_at,
            credential.c.refused_by_spapi_at,
        )
        .where(credential.c.id.in_(ids))
        .order_by(credential.c.id)
    )
    session = claim.session
    found = session.execute(claim.lock(query, due)).all()
    integrations = session.execute(  # a credential is an Amazon authorization's
        sa.select(integration.c.id, integration.c.user_id, integration.c.status).where(
            integration.c.id.in_([row.integration_id for row in found])
        )
    )
    status = {row.id: (row.user_id, row.status) for row in integrations}
    return [
        (row, status[row.integration_id][0])
        for row in found
        if row.integration_id in status
        and looked_at(status[row.integration_id][1], row.refused_by_spapi_at)
    ]


@dataclass(frozen=True)
class Answer:
    """What LWA answered for one claimed authorization."""

    due: Due
    grant: TokenGrant | None = None
    verdict: Verdict | None = None
    tries: tuple[Attempt, ...] = ()
    checked: bool = False  # the SP-API took the new token
    paced: bool = False  # not checked, the seller's allowance being spent
    check_error: ProviderError | None = None  # what the SP-API said instead
    confirmed: bool = False  # check_error is about a token granted after a refusal
    first_refusal: ProviderError | None = None  # the refusal a second grant and call followed

    @property
    def answered(self) -> bool:
        """Whether LWA answered (a grant, or a refusal over HTTP): what the brake weighs;
        an unreadable credential or a call that never got an answer is not one."""
        return self.grant is not None or (
            self.verdict is not None and self.verdict.status_code is not None
        )

    @property
    def gone(self) -> bool:
        """An "authorization gone" verdict (LWA's, or the SP-API's refusing a fresh token
        again), held for the brake; a seller looked at again is gone already."""
        if self.verdict is not None:
            return self.verdict.authorization_gone
        return (
            self.confirmed
            and isinstance(self.check_error, SpApiTokenRefused)
            and not self.due.recheck
        )


STOP_GRACE_SECONDS = 3.0
"""After a stop (Ctrl-C, SIGTERM) or the deadline, how long the calls in flight may take."""


@dataclass
class Closing:
    """A run that takes on no more calls: stopped, past its deadline, or its app refused.
    Calls not yet started are dropped; those in flight may finish until ``grace_ends``
    (monotonic; none when the app was refused: in-flight calls end on their own)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    grace_ends: float | None = None

    def close(self, grace: float | None = STOP_GRACE_SECONDS) -> None:
        if not self.event.is_set():
            self.event.set()
            self.grace_ends = None if grace is None else time.monotonic() + grace

    def is_closed(self) -> bool:
        return self.event.is_set()


async def _refresh_one(
    lwa: AsyncLwaClient,
    vault: Vault,
    due: Due,
    gate: asyncio.Semaphore,
    pacer: Pacer,
    spapi: AsyncSpApiClient | None,
    closing: Closing,
) -> Answer | None:
    """Refresh one seller's token (and with ``spapi``, check the new token at the SP-API);
    ``None`` when it never got its turn because the run closed meanwhile."""
    try:
        token = vault.decrypt(due.refresh_token, what="the refresh token")
    except DiscoveryError as error:  # one unreadable row: that seller's failure, no one else's
        return Answer(
            due, verdict=Verdict(RefreshOutcome.failed, "credential_unreadable", error.message)
        )
    async with gate:
        if closing.is_closed():
            return None  # stopped, out of time, or the app's credentials refused: not sent
        # Its turn (discoveryctl.support.pacing): at most half a call's time away, so a call that
        # waits for it when the run closes still goes, as if it were already in flight.
        wait = pacer.wait(asyncio.get_running_loop().time())  # pragma: no mutate  (when, not what)
        if wait:
            await asyncio.sleep(wait)
        tries: list[Attempt] = []
        grant = await _grant(lwa, due, token, tries, closing)
        if isinstance(grant, Verdict):
            return Answer(due, verdict=grant, tries=tuple(tries))
        pacer.took(tries[0].seconds)  # the first try: how long LWA takes to answer
        granted = functools.partial(Answer, due, grant=grant, tries=tuple(tries))
        if spapi is None or not due.wants_check:
            return granted()
        if not due.may_check:  # the seller's SP-API allowance is spent: not called
            return granted(paced=True)
        try:
            await _check(spapi, due, grant.access_token)
        except SpApiTokenRefused as refused:
            if due.recheck:  # a fresh token, for a seller the SP-API refused before: as said
                return granted(check_error=refused, confirmed=True)
            return await _confirm(lwa, spapi, due, token, grant, tuple(tries), refused, closing)
        except ProviderError as error:
            return granted(check_error=error)
        except asyncio.CancelledError:
            # Abandoned during the check: the grant (perhaps with a new refresh token) is
            # still written; only the check is lost.
            return granted()
    return granted(checked=True)


async def _grant(
    lwa: AsyncLwaClient, due: Due, sent: str, tries: list[Attempt], closing: Closing
) -> TokenGrant | Verdict:
    """LWA's answer to ``sent``: a grant (its refresh token only if rotated), or the verdict
    on its refusal; the app's credentials refused close the run at once, with no grace."""
    try:
        return news_only(await IN_RUN.call_async(lambda: lwa.refresh(sent), tries=tries), sent)
    except ProviderError as error:
        decided = verdict(error, due.authorized_at, utcnow())
        if decided.app_rejected:
            closing.close(grace=None)
        return decided


async def _check(spapi: AsyncSpApiClient, due: Due, access_token: str) -> None:
    await IN_RUN.call_async(
        lambda: spapi.marketplace_participations(
            # the SP-API's host: the sandbox stands in for every region (the hosts by region
            # are AmazonApp.spapi's, tested on their own)
            due.region,  # pragma: no mutate
            access_token,
        )
    )


async def _confirm(
    lwa: AsyncLwaClient,
    spapi: AsyncSpApiClient,
    due: Due,
    sent: str,
    grant: TokenGrant,
    tries: tuple[Attempt, ...],
    refused: SpApiTokenRefused,
    closing: Closing,
) -> Answer:
    """The SP-API refused the token just granted: as ``amazon.check`` does, one more grant
    (LWA's verdict, if it refuses, is the seller's) and one more call, whose answer is the
    evidence. The grant to store is the newest, with the newest refresh token either sent."""
    again: list[Attempt] = []
    second = await _grant(lwa, due, grant.refresh_token or sent, again, closing)
    if isinstance(second, Verdict):
        return Answer(due, grant, second, (*tries, *again), first_refusal=refused)
    newest = TokenGrant(
        second.access_token, second.refresh_token or grant.refresh_token, second.expires_in
    )
    answer = functools.partial(
        Answer, due, grant=newest, tries=(*tries, *again), first_refusal=refused
    )
    try:
        await _check(spapi, due, newest.access_token)
    except ProviderError as error:
        return answer(check_error=error, confirmed=True)
    except asyncio.CancelledError:
        return answer()
    return answer(checked=True)


def _replaced_since(session: Session, vault: Vault, answers: list[Answer]) -> set[int]:
    """Which of these answers' credentials hold another refresh token than the answer left
    there (the one sent, or the one LWA rotated to and the run stored: a reconnect since), or
    are gone."""
    credential = table_of(Credential)
    if not answers:
        return set()
    rows = session.execute(
        sa.select(credential.c.id, credential.c.refresh_token).where(
            credential.c.id.in_([a.due.credential_id for a in answers])
        )
    )
    stored = {row.id: row.refresh_token for row in rows}
    replaced = set()
    for answer in answers:
        now = stored.get(answer.due.credential_id)
        if now is None:  # removed since: nothing left to record on
            replaced.add(answer.due.credential_id)
            continue
        rotated = None if answer.grant is None else answer.grant.refresh_token
        if rotated is None:
            changed = now != answer.due.refresh_token
        else:
            # Mutation testing: ``what`` only names the secret in an error message.
            changed = vault.decrypt(now, what="the refresh token") != rotated  # pragma: no mutate
        if changed:
            replaced.add(answer.due.credential_id)
    return replaced


def _record(
    session: Session,
    vault: Vault,
    owner: str,
    answers: list[Answer],
    frontend_url: str,
    summary: Summary,
) -> None:
    """One batch's answers: grants stored, checks recorded, transient failures counted; the
    "authorization gone" verdicts kept in ``summary.held`` for the end of the run."""
    summary.answered += sum(1 for a in answers if a.answered)
    refreshed = [(a.due.credential_id, a.grant, a.tries) for a in answers if a.grant is not None]
    record_refreshes(
        session,
        vault,
        refreshed,
        frontend_url=frontend_url,
        # the lease's fence, and letting go of it: _write_batch keeps only the answers this run
        # holds and lets go of the whole batch, in this same transaction
        lease_owner=owner,  # pragma: no mutate
    )
    summary.outcomes[RefreshOutcome.refreshed] += len(refreshed)
    for answer in answers:
        if answer.first_refusal is not None:
            record_refusal(session, answer.due.user_id, answer.first_refusal)
    _spend_confirming_calls(session, [a for a in answers if a.first_refusal and not a.verdict])
    checked = [
        events.entry(CHECKED, outcome=events.SUCCESS, user_id=a.due.user_id, provider="amazon")
        for a in answers
        if a.checked and not a.due.recheck
    ]
    events.record_all(session, checked)  # last_synced_at was set with the refresh
    if checked:
        summary.checks["ok"] += len(checked)
    for answer in answers:
        if answer.checked and answer.due.recheck:  # the SP-API takes its tokens again
            # Mutation testing: coming back active uses no URL (record_check's own mark).
            record_check(
                session,
                answer.due.user_id,
                None,
                frontend_url=frontend_url,  # pragma: no mutate
            )
            summary.checks["restored"] += 1
    paced = sum(1 for a in answers if a.paced)
    if paced:
        summary.checks["paced"] += paced
    for answer in answers:
        if answer.check_error is not None and not answer.gone:
            outcome = record_check(
                session,
                answer.due.user_id,
                answer.check_error,
                frontend_url=frontend_url,
                confirmed=answer.confirmed,
            )
            # gone here is a seller looked at again (any other is held): it was gone already
            summary.checks["still_refused" if needs_reconnect(outcome) else str(outcome)] += 1
    summary.held += [a for a in answers if a.gone]
    failures = [
        (a.due.user_id, a.verdict, a.tries)
        for a in answers
        if a.verdict is not None and not a.verdict.app_rejected and not a.gone
    ]
    for done in record_failures(session, failures, frontend_url=frontend_url):
        summary.outcomes[done.outcome] += 1  # those recorded: a seller removed since is not


def _spend_confirming_calls(session: Session, answers: list[Answer]) -> None:
    """The confirming calls' share of the sellers' SP-API allowances: one more each, spent
    from what the claim left (made whatever was left: the allowance may owe a call)."""
    if not answers:
        return
    credential = table_of(Credential)
    session.execute(
        sa.update(credential)
        .where(credential.c.id.in_([a.due.credential_id for a in answers]))
        .values(check_allowance=credential.c.check_allowance - 1.0)
    )


def settle(
    session_scope: SessionScope,
    vault: Vault,
    summary: Summary,
    brake: Brake,
    *,
    frontend_url: str,
) -> None:
    """At the end of the run, its held "authorization gone" verdicts: all held by the brake
    (nobody marked, the admins told), or applied, each but those whose authorization has been
    replaced since (a reconnect meanwhile)."""
    held, answered = summary.held, summary.answered
    with session_scope() as session:
        if mass_revocation.weigh(session, brake, answered, len(held)):
            summary.mass_revocation_held = len(held)
            return
        stale = _replaced_since(session, vault, held)
        kept = [a for a in held if a.due.credential_id not in stale]
        failures = [(a.due.user_id, a.verdict, a.tries) for a in kept if a.verdict is not None]
        for done in record_failures(session, failures, frontend_url=frontend_url):
            summary.outcomes[done.outcome] += 1
        # the rest: the SP-API refusing a fresh token again (a held answer is one or the other)
        for answer in kept:
            if answer.verdict is None:
                outcome = record_check(
                    session,
                    answer.due.user_id,
                    answer.check_error,
                    frontend_url=frontend_url,
                    confirmed=True,
                )
                summary.checks[str(outcome)] += 1


def _write_batch(
    session_scope: SessionScope,
    vault: Vault,
    owner: str,
    batch: list[Due],
    answers: list[Answer],
    rejected: Verdict | None,
    frontend_url: str,
    summary: Summary,
) -> None:
    """Record one batch's answers and let go of exactly its leases, in one transaction.

    Only answers for credentials this run still holds are recorded: if a lease was lost
    (the heartbeat could not reach the database for longer than the lease), another run may
    have refreshed that seller since, and this answer is stale.
    """
    with session_scope() as session:
        held = CREDENTIALS.held(session, owner, [due.credential_id for due in batch])
        kept = [a for a in answers if a.due.credential_id in held]
        if len(kept) < len(answers):  # pragma: no mutate  (only whether to log)
            from discoveryctl.support.logging import get_logger

            get_logger().warning(  # pragma: no mutate  (a log line)
                "refresh_answers_dropped",  # pragma: no mutate
                count=len(answers) - len(kept),  # pragma: no mutate
            )
        # Mutation testing: the owner reaches only record_refreshes' fence, which these answers
        # (the ones this run still holds) always pass.
        _record(session, vault, owner, kept, frontend_url, summary)  # pragma: no mutate
        CREDENTIALS.release(session, owner, [due.credential_id for due in batch])
        if rejected is not None:
            summary.app_rejected = rejected.message
            notifications.alert_app_credentials(session, Provider.amazon, rejected.message)


# The pipeline's plumbing, not mutated: proven end to end by tests/test_refresh_all*.py
# (against the sandbox), too slow to mutate.
def run(
    session_scope: SessionScope,
    vault: Vault,
    lwa_factory: Callable[[], AsyncLwaClient],
    *,
    frontend_url: str,
    spapi_factory: Callable[[], AsyncSpApiClient] | None = None,
    verify: bool = False,
    brake: Brake = Brake(),
    concurrency: int = DEFAULT_CONCURRENCY,
    deadline: float | None = None,
    lease: timedelta = LEASE,
    force: bool = False,
    margin: timedelta = DEFAULT_MARGIN,
    max_age: timedelta = DEFAULT_MAX_AGE,
    stop: asyncio.Event | None = None,
    progress: Callable[[int], None] | None = None,
    grace: float = STOP_GRACE_SECONDS,
) -> Summary:  # pragma: no mutate block
    """Refresh every due authorization; ``deadline`` (seconds from now) stops claiming, and
    after it or a ``stop`` the calls in flight have ``grace`` seconds to end. ``spapi_factory``:
    the SP-API client, for ``verify`` (each new token checked) and for the sellers looked at
    again; ``brake``: when the run's "gone" verdicts are held rather than applied."""
    return asyncio.run(
        _run(
            session_scope,
            vault,
            lwa_factory,
            frontend_url=frontend_url,
            spapi_factory=spapi_factory,
            verify=verify,
            brake=brake,
            concurrency=concurrency,
            deadline=deadline,
            lease=lease,
            force=force,
            margin=margin,
            max_age=max_age,
            stop=stop,
            progress=progress,
            grace=grace,
        )
    )


# The pipeline's plumbing, not mutated: proven end to end by tests/test_refresh_all*.py
# (against the sandbox), too slow to mutate.
async def _run(
    session_scope: SessionScope,
    vault: Vault,
    lwa_factory: Callable[[], AsyncLwaClient],
    *,
    frontend_url: str,
    spapi_factory: Callable[[], AsyncSpApiClient] | None,
    verify: bool,
    brake: Brake,
    concurrency: int,
    deadline: float | None,
    lease: timedelta,
    force: bool,
    margin: timedelta,
    max_age: timedelta,
    stop: asyncio.Event | None,
    progress: Callable[[int], None] | None,
    grace: float,
) -> Summary:  # pragma: no mutate block
    """A pipeline: while one batch's calls are in flight, the next ones are claimed and
    queued behind the same gate, and the one before is written in a thread, so the gate
    never waits for the database and at most ``AHEAD + 1`` batches are held at once."""
    summary = Summary()
    stop = stop or asyncio.Event()
    closing = Closing()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signum, stop.set)
    started = time.monotonic()
    ends = None if deadline is None else started + deadline
    owner = new_owner("refresh-all")
    gate = asyncio.Semaphore(concurrency)
    pacer = Pacer(concurrency)
    # One round of calls a batch: a batch is written in one go, holding the interpreter
    # while it runs, and the answers arriving meanwhile wait for it; short writes keep that
    # wait short (PostgreSQL, N=10k, L=50 ms, C=64: ratio 1.14-1.16, against 1.19-1.24 with
    # two rounds and 1.21-1.27 with four).
    batch_size = max(concurrency, 64)
    walked = 0  # the highest credential id claimed so far: each seller once a run
    outstanding: deque[tuple[list[Due], list[asyncio.Task[Answer | None]]]] = deque()
    writing: asyncio.Future[None] | None = None
    alerted = False
    # A batch slower than the lease (throttling, timeouts) is not claimed by another run
    heartbeat = Heartbeat(session_scope, CREDENTIALS, owner, lease)
    watcher = asyncio.create_task(_watch(stop, ends, closing, summary, grace))
    try:
        heartbeat.start()
        async with contextlib.AsyncExitStack() as clients:
            lwa = await clients.enter_async_context(lwa_factory())
            spapi = None
            if spapi_factory is not None:
                spapi = await clients.enter_async_context(spapi_factory())
            exhausted = False
            while outstanding or not (exhausted or closing.is_closed()):
                if ends is not None and time.monotonic() >= ends:
                    summary.deadline_reached = True
                    closing.close(grace)
                if not (exhausted or closing.is_closed()):
                    batch = await asyncio.to_thread(
                        _claim_due,
                        session_scope,
                        owner,
                        batch_size,
                        after=walked,
                        lease=lease,
                        margin=margin,
                        max_age=max_age,
                        force=force,
                        checks=verify and spapi is not None,
                    )
                    if batch:
                        walked = batch[-1].credential_id
                        tasks = [
                            asyncio.create_task(
                                _refresh_one(lwa, vault, due, gate, pacer, spapi, closing)
                            )
                            for due in batch
                        ]
                        outstanding.append((batch, tasks))
                    else:
                        exhausted = True
                    if len(outstanding) <= AHEAD and not exhausted and not closing.is_closed():
                        continue  # keep the gate fed before waiting on the oldest batch
                if not outstanding:
                    break
                batch, tasks = outstanding.popleft()
                answers = await _answers(tasks, closing)
                rejected = next(
                    (
                        a.verdict
                        for a in answers
                        if a.verdict is not None
                        and a.verdict.outcome == RefreshOutcome.app_rejected
                    ),
                    None,
                )
                if rejected is not None and not alerted:
                    alerted = True
                else:
                    rejected = None  # the admins are told once a run
                if writing is not None:
                    await writing  # one batch written at a time, in order
                writing = asyncio.ensure_future(
                    asyncio.to_thread(
                        _write_batch,
                        session_scope,
                        vault,
                        owner,
                        batch,
                        answers,
                        rejected,
                        frontend_url,
                        summary,
                    )
                )
                if progress is not None:
                    progress(summary.total)
            if writing is not None:
                await writing
                writing = None
            await asyncio.to_thread(
                settle, session_scope, vault, summary, brake, frontend_url=frontend_url
            )
            if progress is not None:
                progress(summary.total)
    finally:
        watcher.cancel()
        for _, tasks in outstanding:
            for task in tasks:
                task.cancel()
        await asyncio.gather(
            watcher, *(t for _, ts in outstanding for t in ts), return_exceptions=True
        )
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
        await asyncio.to_thread(heartbeat.stop)
        with session_scope() as session:
            CREDENTIALS.release(session, owner)
        summary.seconds = time.monotonic() - started
    summary.interrupted = stop.is_set()
    return summary


AHEAD = 6
"""Batches claimed and queued beyond the one being waited for: six rounds of calls, so a
slow call in the oldest batch (a timeout, its retries) leaves the gate work for a while."""


def _claim_due(session_scope: SessionScope, owner: str, limit: int, **options: Any) -> list[Due]:
    with session_scope() as session:
        return claim_batch(session, owner, limit, **options)


# The pipeline's plumbing, not mutated: proven end to end by tests/test_refresh_all*.py
# (against the sandbox), too slow to mutate.
async def _watch(
    stop: asyncio.Event, ends: float | None, closing: Closing, summary: Summary, grace: float
) -> None:  # pragma: no mutate block
    """Close the run at a stop (Ctrl-C, SIGTERM) or at its deadline, whichever comes first."""
    left = None if ends is None else max(ends - time.monotonic(), 0.0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=left)
    if not stop.is_set():
        summary.deadline_reached = True
    closing.close(grace)


# The pipeline's plumbing, not mutated: proven end to end by tests/test_refresh_all*.py
# (against the sandbox), too slow to mutate.
async def _answers(
    tasks: list[asyncio.Task[Answer | None]], closing: Closing
) -> list[Answer]:  # pragma: no mutate block
    """The answers of ``tasks``. Once the run is closing, calls not yet started return at
    once, and those still in flight at the end of the grace period are abandoned: their
    leases are let go and nothing is recorded for them."""
    # One waiter on the whole batch, not ``asyncio.wait`` again after each answer: that would
    # hang a callback on every pending task each time, quadratic in the batch's size.
    everything: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
    closed: asyncio.Future[Any] = asyncio.ensure_future(closing.event.wait())
    try:
        await asyncio.wait({everything, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            grace = None
            if closing.grace_ends is not None:
                grace = max(closing.grace_ends - time.monotonic(), 0.0)
            await asyncio.wait({everything}, timeout=grace)
            for task in tasks:
                task.cancel()  # a no-op for those done
            await everything
    finally:
        closed.cancel()
    done = [task.result() for task in tasks if not task.cancelled()]
    return [answer for answer in done if answer is not None]
