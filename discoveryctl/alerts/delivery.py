"""Admin alerts leave the database: each admin notification is POSTed to the admin webhook when
it opens and again when it resolves, signed, each state once (docs/behaviour.md §2, §7).

The outbox (``alert_deliveries``) gets its row in the transaction that opens or resolves the
notification, so no crash falls between the two. Any process may drain it: a command that put
something in it, as it ends (``take_queued_here``), and ``notifications deliver``. Each row is
posted under a lease taken one claimer at a time, so by one process only. A post that meets a
5xx, a 408 or 429, or a refused connection is tried again at once a few times; a timeout is
not. Then the drain stops and the rest waits for a later one, after a growing wait, for a day
at most; any other answer is final. A resolved state is never posted before its open one.

The body is Slack's incoming-webhook message, ``{"text": …}`` (Slack reads ``text`` and ignores
what it does not know), with the alert's fields beside it for other receivers. The signature
follows Stripe's webhook scheme (``discoveryctl.alerts.signing``, whose ``verify`` is the
receiver's side). The body carries the delivery id (also in the ``Discovery-Delivery``
header), the same on every try, for a receiver to drop a repeat: a process killed between a
post and its record leaves the row to be posted again, and so does a post that outlasts its
lease (each step of a post is bounded, not the whole of it). The body is built when the row is
claimed, so it shows the alert as it is then.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from discoveryctl.alerts.signing import SIGNATURE_HEADER, signature
from discoveryctl.config import Config
from discoveryctl.db.engine import SessionScope, database_now
from discoveryctl.db.leases import ALERT_DELIVERIES, new_owner
from discoveryctl.db.models import AlertDelivery, Notification
from discoveryctl.integrations import events
from discoveryctl.integrations.outbox import DELIVERED, EXPIRED, OPEN, REFUSED
from discoveryctl.support.retrying import RetryPolicy

if TYPE_CHECKING:
    import httpx


DELIVERY_HEADER = "Discovery-Delivery"
JSON = {"Content-Type": "application/json"}

TRIES = 3  # posts of one delivery in one drain
TIMEOUT = 5.0  # seconds for one post
LEASE = timedelta(seconds=60)  # more than TRIES posts and their waits
MAX_AGE = timedelta(days=1)
WEBHOOK_POST = RetryPolicy(
    first=0.5, factor=2.0, longest=5.0, jitter=(0.5, 1.0), shortest=0.5, attempts=TRIES
)
"""The posts of one delivery in one drain: 3 (our choice), after a 5xx, a 408 or 429, or a
refused connection; 0.5 s, then 0.5-1 s between them. The waits are stripe-python's
(``providers.stripe.STRIPE_PYTHON_SCHEDULE``: 0.5 s doubling up to 5 s, a random half to all
of it, never under 0.5 s), our choice for a webhook too; no ``Retry-After`` is read."""
BETWEEN_DRAINS = RetryPolicy(
    first=timedelta(minutes=1).total_seconds(),
    factor=2.0,
    longest=timedelta(hours=1).total_seconds(),
)
"""The wait before a later drain tries a delivery again, after ``n`` drains failed it (our
choice): a minute, 2, 4, … up to an hour, no jitter; for ``MAX_AGE`` at most."""
CLOSING_BUDGET = 10.0
"""Seconds a command that raised an alert spends delivering it as it ends: at most this long
late, never failed by it; what is left waits for the next drain."""


@dataclass(frozen=True)
class AdminWebhook:
    url: str
    secret: str | None

    @property
    def where(self) -> str:
        """The receiver, for messages: scheme and host only (a Slack webhook's path is its
        token)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    def __repr__(self) -> str:
        return f"AdminWebhook({self.where}, signed={self.secret is not None})"


def webhook_from(config: Config) -> AdminWebhook | None:
    """Where admin alerts are posted, and the secret that signs them; None when unset."""
    if not config.get("DISCOVERY_ADMIN_WEBHOOK_URL"):
        return None
    url = config.http_url(
        "DISCOVERY_ADMIN_WEBHOOK_URL",
        shown=False,  # pragma: no mutate  (None is as false; True is tested: the URL stays out)
    )
    return AdminWebhook(url, config.get("DISCOVERY_ADMIN_WEBHOOK_SECRET") or None)


# -- the message --------------------------------------------------------------------------------


def message(notification: Notification, state: str, delivery_id: str) -> dict[str, Any]:
    """The posted JSON: Slack's ``text``, and the alert's fields for any other receiver."""
    from discoveryctl.integrations.vocabulary import isoformat

    if state == OPEN:
        text = f":rotating_light: {notification.title}: {notification.message}"
    else:
        text = f":white_check_mark: Resolved: {notification.title}"
        if notification.user_id:
            text += f" (user {notification.user_id})"
    return {
        "text": slack_escape(text),
        "delivery_id": delivery_id,
        "state": state,
        "alert": {
            "id": notification.id,
            "kind": notification.kind,
            "title": notification.title,
            "message": notification.message,
            "user_id": notification.user_id,
            "provider": notification.provider,
            "detail": notification.detail,
            "opened_at": isoformat(notification.created_at),
            "resolved_at": (
                isoformat(notification.resolved_at) if notification.resolved_at else None
            ),
        },
    }


def slack_escape(text: str) -> str:
    """Slack reads ``&``, ``<`` and ``>`` as markup (``<!channel>`` pings everyone): escaped
    as its "Formatting text" guide says, a user id or message is shown, never obeyed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- draining -----------------------------------------------------------------------------------


@dataclass
class Drained:
    """What one drain did."""

    delivered: int = 0
    given_up: int = 0  # refused by the receiver, or failing for a day
    later: int = 0  # failed for now: a later drain tries again
    skipped: int = 0  # a day old and never tried: raised while no webhook was set
    errors: list[str] = field(default_factory=list)  # one line each, for the operator

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "given_up": self.given_up,
            "later": self.later,
            "skipped": self.skipped,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class _Claimed:
    id: int
    delivery_id: str
    body: bytes
    lease_ends: float  # time.monotonic() by which this process must be done with it


@dataclass(frozen=True)
class Posted:
    tries: int
    outcome: str | None  # DELIVERED, REFUSED, or None: try again later
    http_status: int | None = None
    error: str | None = None  # error type
    reason: str = ""  # for the operator; never the URL


def deliver(
    session_scope: SessionScope,
    webhook: AdminWebhook,
    *,
    budget: float | None = None,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    at: datetime | None = None,
) -> Drained:
    """Post every due delivery, oldest first, until none is left, ``budget`` seconds have
    gone (no post outlasts it), or the receiver fails: then the rest waits for a later drain
    rather than each failing in turn. ``clock`` measures the budget and the leases (as
    ``time.monotonic``); ``at``: the database's time for the whole drain (None: its clock,
    read at each step)."""
    ends = None if budget is None else clock() + budget
    owner = new_owner("alerts")
    drained = Drained()
    with ExitStack() as closing:
        if client is None:
            client = closing.enter_context(_client())
        while ends is None or clock() < ends:
            with session_scope() as session:
                claimed = _claim_next(session, owner, drained, clock, at)
            if claimed is None:
                break
            if ends is not None:
                claimed = replace(claimed, lease_ends=min(claimed.lease_ends, ends))
            posted = _post(client, webhook, claimed, sleep, clock)
            with session_scope() as session:
                _finish(session, claimed, owner, posted, drained, at)
            if posted.outcome is None:
                break  # the receiver is failing: the rest waits for a later drain
    return drained


def _client() -> httpx.Client:
    """The client that posts: a redirect is the receiver's answer, not followed."""
    import httpx

    return httpx.Client(
        timeout=TIMEOUT,  # pragma: no mutate  (each post sets its own)
        follow_redirects=False,  # pragma: no mutate  (httpx's default; None is as false)
    )


def _claim_next(
    session: Session,
    owner: str,
    drained: Drained,
    clock: Callable[[], float],
    at: datetime | None,
) -> _Claimed | None:
    """Take the lease on the oldest due delivery; close any a day old on the way."""
    claim = ALERT_DELIVERIES.claim(session, at)  # one claimer at a time, on either database
    now = claim.now
    earlier = aliased(AlertDelivery)
    open_first = sa.exists().where(
        earlier.notification_id == AlertDelivery.notification_id,
        earlier.id < AlertDelivery.id,
        earlier.outcome.is_(None),
    )
    while True:
        due = (
            sa.select(AlertDelivery)
            .where(
                AlertDelivery.outcome.is_(None),
                AlertDelivery.next_attempt_at <= now,
                ALERT_DELIVERIES.free(now),
                ~open_first,
            )
            .order_by(AlertDelivery.id)
            .limit(1)  # pragma: no mutate  (the first is all we read)
        )
        # PostgreSQL: a row finished meanwhile by the process whose lease ran out is read
        # again once it commits, and no longer due
        row = session.scalars(claim.lock(due)).first()
        if row is None:
            return None
        claim.take([row.id], owner, LEASE)
        notification = session.get(Notification, row.notification_id)
        assert notification is not None  # a foreign key
        if row.created_at < now - MAX_AGE:
            _expire(session, row, owner, notification, now, drained)
            continue
        body = json.dumps(message(notification, row.state, row.delivery_id)).encode()
        # the lease is given up a little early here: the database's clock may run ahead
        lease_ends = clock() + LEASE.total_seconds() * 0.75
        return _Claimed(row.id, row.delivery_id, body, lease_ends)


def _expire(
    session: Session,
    row: AlertDelivery,
    owner: str,
    notification: Notification,
    now: datetime,
    drained: Drained,
) -> None:
    """A day old: too late to page anyone. Never tried, it was raised while no webhook was
    set (nothing failed); tried, the receiver failed it for a day. The lease ``owner`` took
    on it to close it is let go."""
    if row.attempts == 0:
        reason = f"raised over {MAX_AGE.days} day ago, before a webhook was set: not posted"
        drained.skipped += 1
    else:
        reason = f"not delivered within {MAX_AGE.days} day ({row.last_error})"
        drained.given_up += 1
        drained.errors.append(f"delivery {row.delivery_id}: {reason}")
    _close(row, EXPIRED, now, reason)
    ALERT_DELIVERIES.release(session, owner)  # this drain holds no other lease
    _record(session, row, notification, EXPIRED, error_type="alert_delivery_expired")


class _WorthAnotherTry(Exception):
    """A post that failed in a way another try at once may mend."""


def _post(
    client: httpx.Client,
    webhook: AdminWebhook,
    claimed: _Claimed,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> Posted:
    """Post one delivery, trying again at once on a quick failure (a 5xx, 408 or 429, a
    refused connection) as ``WEBHOOK_POST`` says; never past ``claimed.lease_ends``. A timeout
    is not tried again here: a receiver that slow is left for a later drain."""
    import httpx

    failed = Posted(0, None)  # no try yet: the budget ran out before the first

    def post_once() -> Posted:
        nonlocal failed
        tries = failed.tries + 1
        left = claimed.lease_ends - clock()
        if left <= 0:
            return failed
        headers = {**JSON, DELIVERY_HEADER: claimed.delivery_id}
        if webhook.secret is not None:
            headers[SIGNATURE_HEADER] = signature(webhook.secret, int(time.time()), claimed.body)
        try:
            response = client.post(
                webhook.url,
                content=claimed.body,
                headers=headers,
                timeout=min(TIMEOUT, left),  # each of connect, write, read
            )
        except httpx.TimeoutException:
            return Posted(tries, None, error="alert_webhook_timeout", reason="timed out")
        except httpx.HTTPError as error:  # connection refused, reset, bad TLS, …
            reason = f"unreachable ({type(error).__name__})"
            failed = Posted(tries, None, error="alert_webhook_connection_error", reason=reason)
            raise _WorthAnotherTry from error
        status = response.status_code
        if 200 <= status < 300:
            return Posted(tries, DELIVERED, http_status=status)
        retried = status >= 500 or status in (408, 429)
        failed = Posted(
            tries,
            None if retried else REFUSED,
            http_status=status,
            error="alert_webhook_server_error" if retried else "alert_webhook_refused",
            reason=f"HTTP {status}",
        )
        if not retried:
            return failed
        raise _WorthAnotherTry

    try:
        return WEBHOOK_POST.call(
            post_once,
            retry_on=_WorthAnotherTry,
            stop_if=lambda wait: clock() + wait + TIMEOUT >= claimed.lease_ends,
            sleep=sleep,
        )
    except _WorthAnotherTry:
        return failed


def post_test(
    webhook: AdminWebhook,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Posted:
    """Post a test message, signed like an alert, to see the webhook take one."""
    delivery_id = str(uuid.uuid4())
    body = {
        "text": "discoveryctl test message: admin alerts will arrive here",
        "delivery_id": delivery_id,
        "state": "test",
        "alert": None,
    }
    claimed = _Claimed(
        0,  # pragma: no mutate  (no row: a test message's id is never read)
        delivery_id,
        json.dumps(body).encode(),
        clock() + TIMEOUT * 2,
    )
    with _client() as client:
        return _post(client, webhook, claimed, sleep, clock)


def _finish(
    session: Session,
    claimed: _Claimed,
    owner: str,
    posted: Posted,
    drained: Drained,
    at: datetime | None,
) -> None:
    """Record a post's outcome, if this process still holds the lease (else whoever took the
    row over records its own), and let go of it."""
    if not ALERT_DELIVERIES.held(session, owner, [claimed.id]):
        return
    ALERT_DELIVERIES.release(session, owner)  # this drain holds no other lease
    if posted.tries == 0:  # the budget ran out before the post: not a failed try
        return
    row = session.get(AlertDelivery, claimed.id)
    assert row is not None  # held a moment ago, and locked since
    notification = session.get(Notification, row.notification_id)
    assert notification is not None
    now = database_now(session) if at is None else at
    row.attempts += posted.tries
    if posted.outcome is not None:
        _close(row, posted.outcome, now, posted.reason or None)
        if posted.outcome == DELIVERED:
            drained.delivered += 1
        else:
            drained.given_up += 1
            drained.errors.append(f"delivery {row.delivery_id}: refused, {posted.reason}")
    else:
        row.next_attempt_at = now + BETWEEN_DRAINS.wait(-(-row.attempts // TRIES))  # drains failed
        row.last_error = posted.reason
        drained.later += 1  # pragma: no mutate  (once at most: a drain stops at a failure)
        drained.errors.append(f"delivery {row.delivery_id}: {posted.reason}, will try again")
    _record(
        session,
        row,
        notification,
        posted.outcome,
        error_type=posted.error,
        http_status=posted.http_status,
        tries=posted.tries,
    )


def _close(row: AlertDelivery, outcome: str, now: datetime, error: str | None) -> None:
    row.outcome = outcome
    row.finished_at = now
    row.last_error = error


def _record(
    session: Session,
    row: AlertDelivery,
    notification: Notification,
    outcome: str | None,
    error_type: str | None = None,
    **detail: Any,
) -> None:
    delivered = outcome == DELIVERED
    events.record(
        session,
        events.Kind.alert_delivered if delivered else events.Kind.alert_delivery_failed,
        outcome=events.SUCCESS if delivered else events.FAILURE,
        user_id=notification.user_id,
        provider=notification.provider,
        error_type=error_type,
        delivery_id=row.delivery_id,
        notification_id=notification.id,
        alert_state=row.state,  # (a "state" would be taken for OAuth's and redacted)
        given_up=outcome in (REFUSED, EXPIRED),
        **{name: value for name, value in detail.items() if value is not None},
    )
