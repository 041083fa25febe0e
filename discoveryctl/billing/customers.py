"""A Stripe customer for each user, made exactly once (docs/behaviour.md §6).

Before the first call, the user's ``stripe_customers`` row holds a fresh idempotency key
(random, nothing personal in it) and the parameters it was minted for; every retry, in this
process or another, after a crash or not, sends that key with those parameters, so Stripe makes
at most one customer for it ("Idempotent requests", https://docs.stripe.com/api/idempotent_
requests). The customer id is committed the moment Stripe answers.

Stripe keeps a key for 24 hours only. A key older than that, or one whose request Stripe failed
after it began (a 500 it replays), is not sent again before the customer has been looked for
(``StripeCustomers.find``: list by email, then search by metadata) and adopted if found;
otherwise a new key is minted, recorded, and sent. Where Stripe refuses the search (it is not
offered everywhere), the list by email decides alone, and the admins are told that a customer
whose email was changed at Stripe could not be looked for (``_adopt_or_rekey``).

Two answers are not failures of the user's. A 409 ``idempotency_key_in_use`` is another
caller's create under the same key, still in flight: its outcome is waited for
(``_wait_for_other_caller``). A 400 Stripe did not keep under the key (the parameters failed
validation) lets go of the key: nothing more is sent for the user until the operator gives
corrected parameters (``_record_attempt``); no run tries it again.
"""

from __future__ import annotations

import heapq
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import Session

from discoveryctl.db.engine import SessionScope
from discoveryctl.db.leases import STRIPE_CUSTOMERS, Heartbeat
from discoveryctl.db.models import StripeCustomer, table_of, utcnow
from discoveryctl.errors import (
    AppCredentialsRejected,
    InvalidInput,
    ProviderError,
    StripeCreateInFlight,
    StripeKeyInUse,
    StripeOutcomeUnknown,
    StripeParametersRefused,
    TransientProviderError,
)
from discoveryctl.integrations import events, lifecycle, notifications
from discoveryctl.integrations.vocabulary import Provider, Status
from discoveryctl.providers.stripe import (
    SEARCH_LAG,
    STRIPE_PYTHON_SCHEDULE,
    TIMEOUT_SECONDS,
    CreatedCustomer,
    StripeCustomers,
)
from discoveryctl.support.retrying import Attempt

KEY_LIFETIME = timedelta(hours=24)
"""How long Stripe is sure to remember a key ("Idempotent requests": keys may be pruned once
they are at least 24 hours old)."""

ONE_CREATE = replace(STRIPE_PYTHON_SCHEDULE, attempts=4)
"""The tries of one create in one command: 4 (our choice), transient failures apart as
stripe-python waits, or what Retry-After asks up to 10 s."""

IN_FLIGHT_WAIT = TIMEOUT_SECONDS
"""How long, in all, a create that met another caller's request under its key (409
``idempotency_key_in_use``) waits for that request's outcome: as long as that caller waits
for Stripe's answer itself (``TIMEOUT_SECONDS``, 30 s)."""

IN_FLIGHT_LOOKS = replace(STRIPE_PYTHON_SCHEDULE, jitter=(1.0, 1.0))
"""The waits between looks at the row meanwhile: stripe-python's (0.5 s doubling to 5 s; it
retries a 409 itself, ``_should_retry``) without its random share, which spreads many
clients' retries: only the callers of one user's key wait on it. 0.5, 1, 2, 4, then 5 s."""

ONBOARDING_FAILED = "stripe_onboarding_failed"
DETAILS_REFUSED = "stripe_details_refused"  # to the user: Stripe refused their details
PARAMETERS_REFUSED = "stripe_parameters_refused"  # to the admins: what to correct, and how
SEARCH_REFUSED = "stripe_search_refused"  # to the admins: lookups rely on the list alone

How = Literal["existing", "created", "adopted"]


@dataclass(frozen=True)
class Onboarded:
    """The user's customer, the email it was made for, and how this call came by it."""

    user_id: str
    customer_id: str
    how: How
    email: str


class ParametersFrozen(InvalidInput):
    """The user's pending customer has an idempotency key, minted for other parameters."""


@dataclass(frozen=True)
class _Pending:
    """A ``stripe_customers`` row as one attempt sees it."""

    row_id: int
    user_id: str
    email: str
    name: str | None
    customer_id: str | None
    key: str | None
    key_created_at: datetime | None


def _changed(result: sa.Result[Any]) -> bool:
    """Whether an INSERT or UPDATE touched a row."""
    changed = cast("sa.CursorResult[Any]", result)  # pragma: no mutate  (a type for mypy only)
    return bool(changed.rowcount)


def new_idempotency_key() -> str:
    """A key with nothing personal in it."""
    return f"discoveryctl-customer-{secrets.token_urlsafe(24)}"


def ensure_customer(
    session_scope: SessionScope,
    customers: StripeCustomers,
    *,
    user_id: str,
    email: str,
    name: str | None = None,
    now: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] = time.sleep,
) -> Onboarded:
    """The user's Stripe customer: the one already recorded (no call), or one found or made
    now. Raises ``ParametersFrozen`` when a pending customer was started with another email
    or name, ``AppCredentialsRejected`` when Stripe refuses the key (the admins are told
    once, no user is marked), ``StripeParametersRefused`` when Stripe refused the parameters
    (the key is let go for corrected ones), ``StripeCreateInFlight`` when another caller's
    create was still in flight past ``IN_FLIGHT_WAIT`` (neither is the user's failure), and
    ``ProviderError`` when Stripe refused or kept failing (the user's integration records
    it). ``sleep``: how the waits between tries are spent."""
    tries: list[Attempt] = []
    try:
        return ONE_CREATE.call(
            lambda: _try_once(session_scope, customers, user_id, email, name, now, sleep),
            tries=tries,
            sleep=sleep,
        )
    except AppCredentialsRejected as error:
        with session_scope() as session:
            notifications.alert_app_credentials(session, Provider.stripe, error.message)
        raise
    except (StripeParametersRefused, StripeCreateInFlight):
        raise  # the refusal was recorded when it came; another caller's create is no failure
    except ProviderError as error:
        with session_scope() as session:
            _record_failure(session, user_id, error, len(tries))
        raise


def _pending(
    session: Session, user_id: str, email: str, name: str | None, now: datetime
) -> _Pending:
    """The user's row, made if there was none; a row without a key (a new one, one from
    ``import``, or one whose parameters Stripe refused) takes the caller's email and name and
    gets a key, and a ``pending`` integration. Committed before any call to Stripe."""
    customer = table_of(StripeCustomer)
    # Mutation testing: reading first only spares an INSERT; the INSERT that does nothing
    # when the row exists, and the read after it, come to the same row.
    found = _read(session, user_id)  # pragma: no mutate
    if found is None:
        inserted = session.execute(
            _insert_new(session).values(
                user_id=user_id,
                email=email,
                name=name,  # pragma: no mutate  (the key's UPDATE below writes it too)
                attempts=0,  # pragma: no mutate  (the column's default is 0 too)
                created_at=now,
                updated_at=now,  # pragma: no mutate  (the key's UPDATE below writes it too)
            )
        )
        if _changed(inserted):
            events.record(
                session,
                events.Kind.stripe_customer_pending,
                user_id=user_id,
                provider=Provider.stripe,
            )
        found = _read(session, user_id)
        assert found is not None
    if found.customer_id is not None:
        return found
    if found.key is not None and (found.email, found.name) != (email, name or found.name):
        raise ParametersFrozen(
            f"user {user_id}'s Stripe customer is being created for {found.email}"
            + (f" ({found.name})" if found.name else "")
            + f", not {email}"
            + (f" ({name})" if name else "")
            + ": its idempotency key holds the first parameters; "
            "create it as it was started, then change the customer at Stripe"
        )
    if found.key is None:
        session.execute(
            sa.update(customer)
            .where(customer.c.id == found.row_id, customer.c.idempotency_key.is_(None))
            .values(
                idempotency_key=new_idempotency_key(),
                idempotency_key_created_at=now,
                email=email,  # nothing was sent under a key yet: nothing is frozen
                name=name or found.name,
                parameters_refused_at=None,
                updated_at=now,
            )
        )
        _ensure_integration(session, user_id)
        found = _read(session, user_id)
        assert found is not None
    return found


def _insert_new(session: Session) -> sa.Insert:
    """An INSERT that does nothing when the user already has a row (another process's)."""
    customer = table_of(StripeCustomer)
    # Mutation testing: user_id is the one unique column a new row can meet (its id is new,
    # its customer_id NULL), so a conflict target of none, or of "USER_ID" on SQLite, which
    # ignores the case of names, does the same.
    on = ["user_id"]  # pragma: no mutate
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(customer).on_conflict_do_nothing(index_elements=on)  # pragma: no mutate
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(customer).on_conflict_do_nothing(index_elements=on)  # pragma: no mutate


def _read(session: Session, user_id: str) -> _Pending | None:
    row = session.execute(_rows().where(table_of(StripeCustomer).c.user_id == user_id))
    found = row.one_or_none()
    return None if found is None else _Pending(*found)


def _by_id(session: Session, row_id: int) -> _Pending:
    return _Pending(*session.execute(_rows().where(table_of(StripeCustomer).c.id == row_id)).one())


def _rows() -> sa.Select[Any]:
    """``stripe_customers`` as ``_Pending`` reads it."""
    customer = table_of(StripeCustomer)
    return sa.select(
        customer.c.id,
        customer.c.user_id,
        customer.c.email,
        customer.c.name,
        customer.c.customer_id,
        customer.c.idempotency_key,
        customer.c.idempotency_key_created_at,
    )


def _ensure_integration(session: Session, user_id: str) -> None:
    """The user's ``stripe`` integration, ``pending`` until the customer exists (another
    process may make it at the same moment: then that one stands)."""
    # Mutation testing: the look first only spares a create that the unique (user_id,
    # provider) would refuse, as it refuses another process's; and nothing here is read
    # back to be written, so its lock guards no update.
    found = lifecycle.find(session, user_id, Provider.stripe, for_update=True)  # pragma: no mutate
    if found is not None:
        return
    try:
        with session.begin_nested():
            lifecycle.create(session, user_id, Provider.stripe, Status.pending)
    except exc.IntegrityError:
        pass


def _attempt(
    session_scope: SessionScope,
    customers: StripeCustomers,
    row_id: int,
    now: Callable[[], datetime],
    sleep: Callable[[float], None] = time.sleep,
) -> Onboarded:
    """One try: adopt or re-key first if the key cannot be trusted, then create. A create
    whose outcome Stripe left unknown (a 500) is looked up at once; found, it is adopted,
    else the new key is sent straight away: the lookup's answers show Stripe is answering
    again, and the try's backoff would only delay the user. A second unknown outcome ends
    the try (its key replaced too). A create that met another caller's under the same key
    waits for its outcome (``_wait_for_other_caller``)."""
    pending = _current(session_scope, row_id)
    if (done := _done(pending)) is not None:  # another process finished meanwhile
        return done
    assert pending.key_created_at is not None
    if now() - pending.key_created_at >= KEY_LIFETIME:
        adopted = _adopt_or_rekey(session_scope, customers, pending, now(), "key_expired")
        if adopted is not None:
            return adopted
        pending = _current(session_scope, row_id)
        if (done := _done(pending)) is not None:
            return done
    resent = False  # pragma: no mutate  (None says "not yet" as False does)
    while True:
        try:
            return _create(session_scope, customers, pending, now)
        except StripeKeyInUse as in_use:
            return _wait_for_other_caller(session_scope, customers, pending, now, sleep, in_use)
        except StripeOutcomeUnknown:
            adopted = _adopt_or_rekey(session_scope, customers, pending, now(), "outcome_unknown")
            if adopted is not None:
                return adopted
            if resent:
                raise
            resent = True
            pending = _current(session_scope, row_id)
            if (done := _done(pending)) is not None:
                return done


def _wait_for_other_caller(
    session_scope: SessionScope,
    customers: StripeCustomers,
    pending: _Pending,
    now: Callable[[], datetime],
    sleep: Callable[[float], None],
    in_use: StripeKeyInUse,
) -> Onboarded:
    """Another caller's create under the row's key is in flight (409 ``idempotency_key_in_use``,
    "Error codes"): not a failure of the user's, so no failed attempt is recorded, nor a
    failure, nor a notification. Wait as stripe-python would, look at the row for the
    customer the other caller commits, and if it has not, send the key again: once the other
    request has ended Stripe replays its answer ("Idempotent requests"); a caller that died
    meanwhile commits nothing, and the replay serves. Past ``IN_FLIGHT_WAIT`` in all,
    ``StripeCreateInFlight``: a later command finds the outcome."""
    with session_scope() as session:
        events.record(
            session,
            events.Kind.stripe_create_in_flight,
            user_id=pending.user_id,
            provider=Provider.stripe,
            request_id=in_use.request_id,
        )
    # Mutation testing: the looks' waits add up to 27.5 s, then 32.5 s: counting from a
    # second more, or going on at 30 s itself, ends after the same look.
    waited = 0.0  # pragma: no mutate
    looks = 0
    while waited < IN_FLIGHT_WAIT:  # pragma: no mutate
        looks += 1
        pause = IN_FLIGHT_LOOKS.delay(looks)
        sleep(pause)
        waited += pause
        pending = _current(session_scope, pending.row_id)
        if (done := _done(pending)) is not None:
            return done
        if pending.key is None:  # the other caller's create was refused: it let the key go
            raise StripeParametersRefused(
                f"Stripe refused user {pending.user_id}'s customer parameters in another "
                f"caller's create: {_correct(pending.user_id)}",
                error_type="stripe_parameters_refused",
            )
        try:
            return _create(session_scope, customers, pending, now)
        except StripeKeyInUse:
            continue
    raise StripeCreateInFlight(
        f"user {pending.user_id}'s Stripe customer was still being created by another caller "
        f"after {IN_FLIGHT_WAIT:.0f} s: nothing failed; run the command again for its outcome",
        error_type="stripe_create_in_flight",
        status_code=409,
        request_id=in_use.request_id,
    )


def _correct(user_id: str) -> str:
    """What the operator does once Stripe refused a user's parameters."""
    return (
        "nothing more is sent for them until corrected ones are given: "
        f"discoveryctl stripe ensure-customer --user {user_id} --email <corrected>"
    )


def _current(session_scope: SessionScope, row_id: int) -> _Pending:
    with session_scope() as session:
        return _by_id(session, row_id)


def _done(pending: _Pending) -> Onboarded | None:
    """The customer the row already records (another process's, made meanwhile), if any."""
    if pending.customer_id is None:
        return None
    return Onboarded(pending.user_id, pending.customer_id, "existing", pending.email)


def _create(
    session_scope: SessionScope,
    customers: StripeCustomers,
    pending: _Pending,
    now: Callable[[], datetime],
) -> Onboarded:
    """Send the create under the row's key; commit the customer, or record the failure."""
    # for mypy: _pending gave the row both
    assert pending.key is not None and pending.key_created_at is not None  # pragma: no mutate
    age = now() - pending.key_created_at
    try:
        created = customers.create(
            user_id=pending.user_id,
            email=pending.email,
            name=pending.name,
            idempotency_key=pending.key,
        )
    except (AppCredentialsRejected, StripeKeyInUse):
        raise  # the app's key, or another caller's request: nothing against the user
    except ProviderError as error:
        refused = isinstance(error, StripeParametersRefused)
        _record_attempt(session_scope, pending, age, error, refused=refused)
        raise
    return _commit(session_scope, pending, created, age)


def _adopt_or_rekey(
    session_scope: SessionScope,
    customers: StripeCustomers,
    pending: _Pending,
    now: datetime,
    reason: str,
) -> Onboarded | None:
    """Look for the customer Stripe may already have made; adopt it, or replace the key
    (only if no other process replaced it first) and return ``None`` to create anew.

    A key minted less than ``SEARCH_LAG`` ago can only have made a customer that recently,
    which the list by email sees and a search may not yet: the list alone is asked. (Its
    email changed at Stripe within that minute is the one case neither would find.)

    Where Stripe refuses the search, the list decides alone: it cannot see a customer whose
    email was changed at Stripe, so the lookup is recorded as undecided (an event, and one
    open notice to the admins) before the new key goes out. Stopping every such user instead
    would stop them all on an account that never has search ("Search": not offered in India)."""
    assert pending.key_created_at is not None
    found = customers.find(
        user_id=pending.user_id,
        email=pending.email,
        search=now - pending.key_created_at >= SEARCH_LAG,
    )
    customer = table_of(StripeCustomer)
    with session_scope() as session:
        if found.customer_id is not None:
            return _store_customer(session, pending, found.customer_id, "adopted", reason=reason)
        if found.search_refused is not None:
            _report_undecided(session, pending, reason, found.search_refused)
        replaced = session.execute(
            sa.update(customer)
            .where(customer.c.id == pending.row_id)  # pragma: no mutate  (keys are the row's own)
            .where(customer.c.idempotency_key == pending.key)
            .values(
                idempotency_key=new_idempotency_key(),
                idempotency_key_created_at=now,
                updated_at=now,
            )
        )
        if _changed(replaced):
            events.record(
                session,
                events.Kind.stripe_idempotency_key_replaced,
                user_id=pending.user_id,
                provider=Provider.stripe,
                reason=reason,
            )
    return None


def _report_undecided(session: Session, pending: _Pending, reason: str, refusal: str) -> None:
    """The lookup before a new key could not rule out a customer whose email was changed at
    Stripe: the list by email found none, and Stripe refused the search."""
    events.record(
        session,
        events.Kind.stripe_lookup_undecided,
        user_id=pending.user_id,
        provider=Provider.stripe,
        reason=reason,
        search_refused=refusal,
    )
    notifications.notify(
        session,
        audience=notifications.ADMIN,
        kind=SEARCH_REFUSED,
        title="Stripe refused to search customers",
        message=(
            f"Stripe refused a customer search ({refusal}). Before a new idempotency key, "
            "customers are now looked for by email alone: one whose email was changed at "
            "Stripe cannot be found, and a second may be made for its user (the events "
            "stripe_lookup_undecided name them)"
        ),
        provider=Provider.stripe,
        detail={"search_refused": refusal},
    )


def _commit(
    session_scope: SessionScope, pending: _Pending, created: CreatedCustomer, age: timedelta
) -> Onboarded:
    with session_scope() as session:
        return _store_customer(
            session,
            pending,
            created.customer_id,
            "created",
            request_id=created.request_id,
            replayed=created.replayed,
            key_age_seconds=round(age.total_seconds()),
        )


def _store_customer(
    session: Session, pending: _Pending, customer_id: str, how: How, **detail: Any
) -> Onboarded:
    """Record the customer on the row (unless another process recorded one first: then
    that one stands) and make the integration ``active``."""
    customer = table_of(StripeCustomer)
    now = utcnow()
    stored = session.execute(
        sa.update(customer)
        .where(customer.c.id == pending.row_id, customer.c.customer_id.is_(None))
        .values(
            customer_id=customer_id,
            attempts=customer.c.attempts + 1,
            last_attempt_at=now,
            last_error=None,
            updated_at=now,
        )
        .returning(customer.c.attempts)
    )
    attempt = stored.scalar_one_or_none()
    if attempt is None:
        current = _by_id(session, pending.row_id)
        assert current.customer_id is not None
        if current.customer_id != customer_id:
            _report_duplicate(session, pending.user_id, current.customer_id, customer_id)
        return Onboarded(pending.user_id, current.customer_id, "existing", current.email)
    events.record(
        session,
        events.Kind.stripe_customer_created
        if how == "created"
        else events.Kind.stripe_customer_adopted,
        outcome=events.SUCCESS,
        user_id=pending.user_id,
        provider=Provider.stripe,
        customer_id=customer_id,
        attempt=attempt,
        **detail,
    )
    integration = lifecycle.find(session, pending.user_id, Provider.stripe, for_update=True)
    if integration is not None:
        lifecycle.change_status(
            session,
            integration,
            Status.active,
            reason=f"customer_{how}",
            frontend_url="",  # pragma: no mutate  (read for a reconnect URL only, never to active)
        )
        # Mutation testing: its session only resolves alerts while failures are counted, and
        # the change to active has just cleared them.
        lifecycle.record_success(session, integration)  # pragma: no mutate
    for kind in (ONBOARDING_FAILED, DETAILS_REFUSED, PARAMETERS_REFUSED):
        notifications.resolve(
            session, notifications.dedupe_key(kind, Provider.stripe, pending.user_id)
        )
    notifications.app_credentials_accepted(session, Provider.stripe)
    return Onboarded(pending.user_id, customer_id, how, pending.email)


DUPLICATE_CUSTOMER = events.Kind.stripe_duplicate_customer


def _report_duplicate(session: Session, user_id: str, kept: str, duplicate: str) -> None:
    """Stripe answered with a customer other than the one recorded meanwhile: the user has
    two. Nothing here can undo that; the record keeps the first, and the admins are told
    which one to delete."""
    events.record(
        session,
        DUPLICATE_CUSTOMER,
        outcome=events.FAILURE,
        user_id=user_id,
        provider=Provider.stripe,
        customer_id=kept,
        duplicate_id=duplicate,
    )
    notifications.notify(
        session,
        audience=notifications.ADMIN,
        kind=DUPLICATE_CUSTOMER,
        title="A second Stripe customer was made for one user",
        message=(
            f"User {user_id} has Stripe customer {kept} on record, and Stripe also made "
            f"{duplicate} for them: check {duplicate} at Stripe and delete it"
        ),
        user_id=user_id,
        provider=Provider.stripe,
        detail={"customer_id": kept, "duplicate_id": duplicate},
        key=f"{DUPLICATE_CUSTOMER}:{user_id}:{duplicate}",
    )


def _record_attempt(
    session_scope: SessionScope,
    pending: _Pending,
    age: timedelta,
    error: ProviderError,
    *,
    refused: bool,
) -> None:
    """Each failed try is an event: key age, outcome, HTTP status, Stripe's request id.

    ``refused``: Stripe refused the parameters before it began executing, so it kept nothing
    under the key ("Idempotent requests": a request that fails validation is not saved). The
    key is let go (unless another process replaced it first) and the row marked refused: no
    run sends these parameters again, and the next ``ensure-customer`` mints a key for its
    own. The user is told their details were refused (never "we will try again"), the admins
    what to correct and how; it is no transient failure, and the Stripe alert does not count
    it (``stripe_customer_refused``, not ``stripe_customer_failed``)."""
    customer = table_of(StripeCustomer)
    now = utcnow()
    update = sa.update(customer).where(customer.c.id == pending.row_id)
    values: dict[str, Any] = {}
    if refused:
        update = update.where(customer.c.idempotency_key == pending.key)
        values = {
            "idempotency_key": None,
            "idempotency_key_created_at": None,
            "parameters_refused_at": now,
        }
    with session_scope() as session:
        attempts = session.execute(
            update.values(
                attempts=customer.c.attempts + 1,
                last_attempt_at=now,
                last_error=error.message,
                updated_at=now,
                **values,
            ).returning(customer.c.attempts)
        ).scalar_one_or_none()
        if attempts is None:  # the key was replaced meanwhile: the refusal was of no key of ours
            return
        events.record(
            session,
            events.Kind.stripe_customer_refused if refused else events.Kind.stripe_customer_attempt,
            outcome=events.FAILURE,
            user_id=pending.user_id,
            provider=Provider.stripe,
            error_type=error.error_type,
            attempt=attempts,
            key_age_seconds=round(age.total_seconds()),
            http_status=error.status_code,
            request_id=error.request_id,
        )
        if refused:
            _tell_refused(session, pending, error)


def _tell_refused(session: Session, pending: _Pending, error: ProviderError) -> None:
    """Stripe refused the user's parameters: the user is told their details were not
    accepted, the admins what to correct and how."""
    notifications.notify(
        session,
        audience=notifications.USER,
        kind=DETAILS_REFUSED,
        title="Stripe did not accept your billing details",
        message=(
            "We could not set up your billing account: Stripe did not accept the details "
            f"it was given ({pending.email}). It will be set up once they are corrected."
        ),
        user_id=pending.user_id,
        provider=Provider.stripe,
        detail={"error_type": error.error_type},
    )
    notifications.notify(
        session,
        audience=notifications.ADMIN,
        kind=PARAMETERS_REFUSED,
        title="Stripe refused a customer's parameters",
        message=f"User {pending.user_id}: {error.message}; {_correct(pending.user_id)}",
        user_id=pending.user_id,
        provider=Provider.stripe,
        detail={"error_type": error.error_type, "request_id": error.request_id},
    )


def _record_failure(session: Session, user_id: str, error: ProviderError, tries: int) -> None:
    """The command gave up on this user: tell the user once per episode, the admins after
    repeated failures (``lifecycle.record_transient_failure``)."""
    integration = lifecycle.find(session, user_id, Provider.stripe, for_update=True)
    if integration is not None:
        lifecycle.record_transient_failure(
            session, integration, error_type=error.error_type, message=error.message
        )
    notifications.notify(
        session,
        audience=notifications.USER,
        kind=ONBOARDING_FAILED,
        title="Stripe onboarding failed",
        message=(
            "We could not set up your billing account yet; we will try again. "
            "Nothing is needed from you for now."
        ),
        user_id=user_id,
        provider=Provider.stripe,
        detail={"error_type": error.error_type},
    )
    events.record(
        session,
        events.Kind.stripe_customer_failed,
        outcome=events.FAILURE,
        user_id=user_id,
        provider=Provider.stripe,
        error_type=error.error_type,
        tries=tries,
    )


# -- refresh-all: every pending customer --------------------------------------------------------


@dataclass
class PendingRun:
    """What ``retry_pending`` did: customers by how they came, failures, users whose
    parameters Stripe refused or whose create another caller still had in flight, and the
    API key's refusal if any."""

    outcomes: Counter[str] = field(default_factory=Counter)
    app_rejected: str | None = None  # Stripe's message when it refused the API key
    deadline_reached: bool = False  # users were left for the next run

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.outcomes["created"],
            "adopted": self.outcomes["adopted"],
            "existing": self.outcomes["existing"],
            "failed": self.outcomes["failed"],
            "refused": self.outcomes["refused"],
            "in_flight": self.outcomes["in_flight"],
            "app_credentials_rejected": self.app_rejected,
            "deadline_reached": self.deadline_reached,
        }


def _is_pending() -> sa.ColumnElement[bool]:
    """A row a run creates the customer of: none yet, and its parameters not refused (those
    wait for the operator's corrected ones, ``_record_attempt``)."""
    customer = table_of(StripeCustomer)
    return sa.and_(customer.c.customer_id.is_(None), customer.c.parameters_refused_at.is_(None))


def pending_count(session: Session) -> int:
    """How many users wait for their Stripe customer."""
    query = sa.select(sa.func.count()).where(_is_pending())
    return int(session.execute(query).scalar_one())


def pending_users(session: Session) -> list[str]:
    """The users who wait for their Stripe customer, in the order a run takes them."""
    customer = table_of(StripeCustomer)
    query = sa.select(customer.c.user_id).where(_is_pending())
    return list(session.execute(query.order_by(customer.c.id)).scalars())


def retry_pending(
    session_scope: SessionScope,
    open_customers: Callable[[], StripeCustomers],
    *,
    owner: str,
    concurrency: int,
    lease: timedelta,
    ends: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PendingRun:
    """Make the customer of every pending user, ``concurrency`` calls at a time, each user
    under this run's lease (overlapping runs take different users). A user whose try failed
    for now waits its backoff in a queue, not in a worker, so the others go on meanwhile;
    after ``RUN_ATTEMPTS`` tries the run gives up on it (the user is told, the next run tries
    again). A refused API key stops the run: nothing more is claimed or tried, no user is
    marked. At ``ends`` (monotonic) nothing more is claimed or tried either: the calls in
    flight end, and the users not done are left, unmarked, to the next run. ``clock`` (the
    time ``ends`` is on) and ``sleep``: how the run reads the time and waits out backoffs."""
    run = PendingRun()
    local = threading.local()
    opened: list[StripeCustomers] = []
    lock = threading.Lock()

    def customers() -> StripeCustomers:
        found: StripeCustomers | None = getattr(local, "customers", None)
        if found is None:
            found = local.customers = open_customers()
            with lock:
                opened.append(found)
        return found

    def one_try(pending: _Pending) -> Onboarded | ProviderError:
        try:
            return _try_once(
                session_scope,
                customers(),
                pending.user_id,
                pending.email,
                pending.name,  # pragma: no mutate  (None: _pending keeps the row's own name)
                sleep=sleep,
            )
        except ProviderError as error:
            return error

    queue = _Queue(concurrency, ends, clock=clock, sleep=sleep)
    try:
        with (
            # the leases renewed while the run holds them, however long Stripe takes
            Heartbeat(session_scope, STRIPE_CUSTOMERS, owner, lease),
            # Mutation testing: the queue never starts more than ``concurrency`` calls at once,
            # so more workers would stand idle.
            ThreadPoolExecutor(max_workers=concurrency) as pool,  # pragma: no mutate
        ):
            while run.app_rejected is None:
                if queue.out_of_time():
                    run.deadline_reached = True
                if queue.wants_more():
                    with session_scope() as session:
                        claimed = _claim_pending(
                            session, owner, concurrency * 4, queue.after, lease
                        )
                    queue.add(claimed)
                if queue.idle():
                    break
                for pending, outcome, tries in queue.step(pool, one_try):
                    if isinstance(outcome, AppCredentialsRejected):
                        run.app_rejected = run.app_rejected or outcome.message
                    elif isinstance(outcome, TransientProviderError) and tries < RUN_ATTEMPTS:
                        queue.again(pending, tries, outcome)
                    else:
                        if isinstance(outcome, Onboarded):
                            run.outcomes[outcome.how] += 1
                        elif isinstance(outcome, StripeParametersRefused):
                            run.outcomes["refused"] += 1  # recorded, and left for the operator
                        elif isinstance(outcome, StripeCreateInFlight):
                            run.outcomes["in_flight"] += 1  # another caller's: the next run's
                        else:
                            run.outcomes["failed"] += 1
                            with session_scope() as session:
                                _record_failure(session, pending.user_id, outcome, tries)
                        queue.finished.append(pending.row_id)
                if len(queue.finished) >= concurrency:
                    with session_scope() as session:
                        STRIPE_CUSTOMERS.release(session, owner, queue.finished)
                    queue.finished = []
            queue.drain()  # the key was refused: let the calls in flight end
    finally:
        with session_scope() as session:
            STRIPE_CUSTOMERS.release(session, owner)
        for client in opened:
            client.close()
    if run.app_rejected is not None:
        with session_scope() as session:
            notifications.alert_app_credentials(session, Provider.stripe, run.app_rejected)
    return run


RUN_ATTEMPTS = 6
"""Tries of one user's create in one refresh-all run; between them the user waits in the
run's queue, not in a worker, as stripe-python would wait (``STRIPE_PYTHON_SCHEDULE``)."""


TryResult = Onboarded | ProviderError
"""What one try at a pending customer gave: the customer, or the failure to handle."""


class _Queue:
    """The users this run holds: waiting (until their backoff ends), or being tried. More
    are claimed whenever fewer than two rounds of calls are left, so a user waiting out its
    backoff never holds up the others, nor the next claim."""

    def __init__(
        self,
        concurrency: int,
        ends: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.concurrency = concurrency
        self.ends = ends  # on ``clock``: past it, nothing more is claimed or started
        self.clock = clock
        self.sleep = sleep
        self.after = 0  # the highest row claimed: each user once a run
        self.exhausted = False  # pragma: no mutate  (None says "not yet" as False does)
        self.finished: list[int] = []  # rows done with, their leases not yet let go
        self._ready: list[tuple[float, int, _Pending, int]] = []
        self._running: dict[Future[TryResult], tuple[_Pending, int]] = {}
        self._order = 0  # pragma: no mutate  (a tie-breaker: only its order counts)

    def wants_more(self) -> bool:
        """Whether fewer than two rounds of calls are in hand: running, or due now. Users
        still waiting out a backoff do not count, or enough of them would starve the run."""
        if self.exhausted:
            return False
        wanted = 2 * self.concurrency - len(self._running)  # at least one round: never 0
        if len(self._ready) < wanted:
            return True
        now = self.clock()
        due = sum(1 for at, *_ in heapq.nsmallest(wanted, self._ready) if at <= now)
        return due < wanted

    def add(self, claimed: list[_Pending]) -> None:
        if not claimed:
            self.exhausted = True
            return
        self.after = claimed[-1].row_id
        for pending in claimed:
            self._push(0.0, pending, 0)

    def again(self, pending: _Pending, tries: int, error: ProviderError) -> None:
        self._push(self.clock() + STRIPE_PYTHON_SCHEDULE.delay(tries, error), pending, tries)

    def out_of_time(self) -> bool:
        """Past ``ends``: claim no more, and let go of the users not being tried (their
        leases go with the run's). True when that left a user, or maybe one, undone."""
        if self.ends is None or self.clock() < self.ends:
            return False
        left = not self.exhausted or bool(self._ready)
        self.exhausted = True
        self._ready.clear()
        return left

    def idle(self) -> bool:
        return self.exhausted and not self._ready and not self._running

    def step(
        self, pool: ThreadPoolExecutor, one_try: Callable[[_Pending], TryResult]
    ) -> list[tuple[_Pending, TryResult, int]]:
        """Start what is due, then wait for a call to end (or, with a worker free, for the
        next backoff to end, or a moment when more should be claimed)."""
        now = self.clock()
        while self._ready and self._ready[0][0] <= now and len(self._running) < self.concurrency:
            _, _, pending, tries = heapq.heappop(self._ready)
            self._running[pool.submit(one_try, pending)] = (pending, tries + 1)
        timeout = None
        # Mutation testing: with every worker busy, waking when a backoff ends finds none
        # free to start it: the loop would only wake sooner.
        if self._ready and len(self._running) < self.concurrency:  # pragma: no mutate
            timeout = max(self._ready[0][0] - now, 0.0)
        if self.wants_more():
            timeout = 0.0
        if not self._running:
            self.sleep(timeout or 0.0)
            return []
        finished, _ = wait(self._running, timeout=timeout, return_when=FIRST_COMPLETED)
        results = []
        for future in finished:
            pending, tries = self._running.pop(future)
            results.append((pending, future.result(), tries))
        return results

    def drain(self) -> None:
        for future in self._running:
            future.result()

    def _push(self, at: float, pending: _Pending, tries: int) -> None:
        heapq.heappush(self._ready, (at, self._order, pending, tries))
        self._order += 1  # pragma: no mutate  (a tie-breaker: only its order counts)


def _try_once(
    session_scope: SessionScope,
    customers: StripeCustomers,
    user_id: str,
    email: str,
    name: str | None,
    now: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] = time.sleep,
) -> Onboarded:
    """One try at the user's customer: the one recorded (no call), or the row and its key
    committed first, then one attempt. No waiting but for another caller's create under the
    same key; nothing recorded as a failure."""
    with session_scope() as session:
        pending = _pending(session, user_id, email, name, now())
    if pending.customer_id is not None:
        return Onboarded(pending.user_id, pending.customer_id, "existing", pending.email)
    return _attempt(session_scope, customers, pending.row_id, now, sleep)


def _claim_pending(
    session: Session, owner: str, limit: int, after: int, lease: timedelta
) -> list[_Pending]:
    """Lease up to ``limit`` pending customers past row ``after``, in id order."""
    customer = table_of(StripeCustomer)
    pending = (
        _rows()
        # Mutation testing: the row at ``after`` is in this run's hands, under its lease,
        # whenever the next claim comes, so ">=" could not take it either.
        .where(customer.c.id > after)  # pragma: no mutate
        .where(_is_pending())
        .order_by(customer.c.id)
        .limit(limit)
    )
    return [_Pending(*row) for row in STRIPE_CUSTOMERS.claim_rows(session, pending, owner, lease)]
