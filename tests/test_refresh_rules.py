"""The rules of one seller's refresh (``amazon.refresh``), called directly, fast enough for
``make mutate``: the credential's lease (taken, refused while live, not taken once a fresh
token is there, let go after), the cached access token and its margin, what each verdict does
to the seller (``apply_verdict``: revoked or expired and told, the admins told, or a counted
failure that waits out a backoff), what a refresh records (tokens encrypted, a rotated
refresh token, failures cleared, events for each try), the bulk path of ``refresh-all`` and
its one-by-one fallback, and the single warning 30 days before the re-authorization date.
The commands end to end: test_refresh.py."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from amazon_rules import (
    FRONTEND,
    add_seller,
    amazon_fixture,  # noqa: F401  (fixture)
    credential_of,
    database_fixture,  # noqa: F401  (fixture)
    events_of,
    grants,
    integration_of,
    lwa_fixture,  # noqa: F401  (fixture)
    near,
    notifications_of,
    running_sandbox_fixture,  # noqa: F401  (fixture)
    vault_fixture,  # noqa: F401  (fixture)
    writers_tried_at_reads,
)
from cryptography.fernet import Fernet

from discoveryctl.amazon.mass_revocation import Held
from discoveryctl.amazon.refresh import (
    Refresh,
    access_token,
    apply_verdict,
    cached_token,
    claim,
    find,
    last_try,
    news_only,
    raise_for,
    record_failure,
    record_failures,
    record_refresh,
    record_refreshes,
    refresh_seller,
    retried_events,
)
from discoveryctl.amazon.verdict import REVOKED, RefreshOutcome, Verdict
from discoveryctl.db.engine import Database
from discoveryctl.db.leases import CREDENTIALS
from discoveryctl.db.models import Credential
from discoveryctl.errors import (
    AppCredentialsRejected,
    EncryptionKeyError,
    NotFound,
    SellerAuthorizationRevoked,
    TransientProviderError,
)
from discoveryctl.integrations import events, lifecycle, notifications
from discoveryctl.integrations.vocabulary import Status
from discoveryctl.providers.lwa import LwaClient, TokenGrant
from discoveryctl.sandbox import Sandbox
from discoveryctl.support.crypto import Vault
from discoveryctl.support.retrying import Attempt

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
RECONNECT_U1 = "http://localhost:3000/integrations/amazon/connect?reconnect=true&userId=u1"
REFRESH_KINDS = ("token_refreshed", "token_refresh_failed", "token_refresh_retried")
WAIT = 2.0
"""Seconds a test's refresh may wait for a lease: nobody else holds one unless the test says so
(a broken lease rule then fails in seconds instead of waiting the minute a lease lasts)."""


def now() -> datetime:
    return datetime.now(UTC)


def throttled(status: int = 429) -> TransientProviderError:
    return TransientProviderError(
        "LWA answered 429", error_type="lwa_throttled", status_code=status
    )


def transient(message: str = "LWA answered 503: busy") -> Verdict:
    return Verdict(RefreshOutcome.failed, "provider_server_error", message, 503)


def gone(outcome: RefreshOutcome = RefreshOutcome.revoked) -> Verdict:
    error_type = "oauth_token_expired" if outcome == RefreshOutcome.expired else REVOKED
    return Verdict(outcome, error_type, "LWA refused the grant: gone", 400)


APP_REJECTED = Verdict(
    RefreshOutcome.app_rejected, "oauth_app_credentials_rejected", "LWA rejected the app", 401
)


def sandbox_seller(amazon: Sandbox, database: Database, vault: Vault, user_id: str = "u1") -> Any:
    """A seller LWA knows, stored with the refresh token LWA gave it."""
    known = amazon.state.add_seller()
    add_seller(database, vault, user_id, known.refresh_token)
    return known


def open_alert(database: Database, kind: str, user_id: str | None) -> None:
    """An open admin notification about ``user_id`` (None: about the app)."""
    with database.session() as session:
        notifications.notify(
            session,
            audience=notifications.ADMIN,
            kind=kind,
            title="t",
            message="m",
            user_id=user_id,
            provider="amazon",
        )


def open_ones(database: Database, audience: str) -> list[str]:
    return [n.kind for n in notifications_of(database, audience) if n.resolved_at is None]


# -- the lease ------------------------------------------------------------------------------


def test_a_free_credential_s_lease_is_taken_for_a_minute(database: Database, vault: Vault) -> None:
    credential_id = add_seller(database, vault, "u1")
    with database.session() as session:
        assert claim(session, credential_id, "me", NOW)
    credential = credential_of(database, "u1")
    assert (credential.lease_owner, credential.lease_expires_at) == (
        "me",
        NOW + timedelta(seconds=60),
    )


def test_a_live_lease_is_not_taken_by_another(database: Database, vault: Vault) -> None:
    credential_id = add_seller(database, vault, "u1")
    with database.session() as session:
        assert claim(session, credential_id, "first", NOW)
        assert not claim(session, credential_id, "second", NOW + timedelta(seconds=59))
    assert credential_of(database, "u1").lease_owner == "first"


@pytest.mark.parametrize(
    ("expires_in", "taken"),
    [
        (None, True),  # nothing cached
        (timedelta(0), True),  # cached, usable until exactly then: stale
        (timedelta(seconds=1), False),  # outlives the moment: another process refreshed
    ],
)
def test_the_lease_is_not_taken_when_the_cached_token_outlives_the_moment_asked(
    database: Database, vault: Vault, expires_in: timedelta | None, taken: bool
) -> None:
    usable_after = NOW + timedelta(minutes=5)
    expires = None if expires_in is None else usable_after + expires_in
    credential_id = add_seller(database, vault, "u1", access_token="Atza|x", expires_at=expires)
    with database.session() as session:
        assert claim(session, credential_id, "me", NOW, unless_usable_after=usable_after) is taken
    assert credential_of(database, "u1").lease_owner == ("me" if taken else None)


def test_without_a_moment_the_lease_is_taken_whatever_is_cached(
    database: Database, vault: Vault
) -> None:
    expires = NOW + timedelta(hours=1)
    credential_id = add_seller(database, vault, "u1", access_token="Atza|x", expires_at=expires)
    with database.session() as session:
        assert claim(session, credential_id, "me", NOW)


# -- finding the seller -------------------------------------------------------------------------


def test_a_user_without_an_amazon_authorization_is_not_found(
    database: Database, vault: Vault
) -> None:
    with database.session() as session:
        lifecycle.create(session, "bare", "amazon", Status.active)  # no credential
        lifecycle.create(session, "payer", "stripe", Status.active)
    for user_id in ("nobody", "bare", "payer"):
        with database.session() as session, pytest.raises(NotFound) as raised:
            find(session, user_id)
        assert raised.value.message == f"user '{user_id}' has no Amazon authorization"


def test_a_seller_is_found_with_its_credential(database: Database, vault: Vault) -> None:
    credential_id = add_seller(database, vault, "u1")
    add_seller(database, vault, "u2")
    with database.session() as session:
        integration, credential = find(session, "u1")
    assert (integration.user_id, integration.provider, credential.id) == (
        "u1",
        "amazon",
        credential_id,
    )


def test_a_read_for_update_keeps_other_writers_out_a_plain_read_does_not(
    sqlite_db: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    path = sqlite_db.url.removeprefix("sqlite:///")
    with writers_tried_at_reads(path, "integration_status") as tried:
        with database.session() as session:
            find(session, "u1", for_update=True)
        with database.session() as session:
            find(session, "u1")
    assert tried == [False, True]


# -- one seller's refresh, end to end against LWA --------------------------------------------


def refresh_u1(database: Database, vault: Vault, lwa: LwaClient, wait: float = WAIT) -> Refresh:
    return refresh_seller(
        database.session, vault, lwa, "u1", frontend_url=FRONTEND, wait_for_lease=wait
    )


def token_of_u1(
    database: Database, vault: Vault, lwa: LwaClient, wait: float = WAIT, **options: Any
) -> tuple[str, datetime]:
    return access_token(
        database.session, vault, lwa, "u1", frontend_url=FRONTEND, wait_for_lease=wait, **options
    )


def test_a_refresh_caches_the_new_token_and_lets_go_of_the_lease(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    sandbox_seller(amazon, database, vault)
    stored = credential_of(database, "u1").refresh_token
    before = now()
    done = refresh_u1(database, vault, lwa)
    assert done.outcome == RefreshOutcome.refreshed
    assert done.access_token is not None
    assert amazon.state.seller_of_access_token(done.access_token) is not None
    assert near(done.access_token_expires_at, before + timedelta(hours=1))
    credential = credential_of(database, "u1")
    assert credential.access_token is not None
    assert vault.decrypt(credential.access_token) == done.access_token
    assert credential.refresh_token == stored  # sent back unchanged: not written again
    assert (credential.lease_owner, credential.lease_expires_at) == (None, None)
    assert grants(amazon) == 1
    (event,) = events_of(database, "u1", *REFRESH_KINDS)
    assert (event.kind, event.detail["refresh_token_rotated"], event.detail["attempt"]) == (
        "token_refreshed",
        False,
        1,
    )


def test_a_refresh_warns_a_seller_near_re_authorization_with_the_way_back(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    known = amazon.state.add_seller()
    authorized = now() - timedelta(days=340)
    add_seller(database, vault, "u1", known.refresh_token, authorized_at=authorized)
    refresh_u1(database, vault, lwa)
    (warning,) = notifications_of(database, "user")
    assert warning.detail["reconnectUrl"] == RECONNECT_U1


def test_a_refresh_failing_for_now_is_tried_three_times_and_counted(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.set_behaviour(known.selling_partner_id, "throttled", retry_after=0)
    done = refresh_u1(database, vault, lwa)
    assert (done.outcome, done.error_type) == (RefreshOutcome.failed, "provider_throttled")
    history = events_of(database, "u1", *REFRESH_KINDS)
    assert [(e.kind, e.detail["attempt"]) for e in history] == [
        ("token_refresh_retried", 1),
        ("token_refresh_retried", 2),
        ("token_refresh_failed", 3),
    ]
    assert integration_of(database, "u1").meta["consecutive_failures"] == 1
    assert credential_of(database, "u1").lease_owner is None


def test_a_refused_refresh_is_recorded_and_lets_go_of_the_lease(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.revoke(known.selling_partner_id)
    done = refresh_u1(database, vault, lwa)
    assert (done.outcome, done.error_type, done.reconnect_url) == (
        RefreshOutcome.revoked,
        REVOKED,
        RECONNECT_U1,
    )
    assert integration_of(database, "u1").status == Status.revoked
    assert credential_of(database, "u1").lease_owner is None


def test_a_refused_refresh_asked_to_hold_its_verdict_records_nothing(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    """A check of every seller weighs the "gone" verdicts together: the refresh puts its
    verdict in ``held`` and leaves the seller as it was (and its lease let go)."""
    known = sandbox_seller(amazon, database, vault)
    amazon.state.set_behaviour(known.selling_partner_id, "throttled", times=1, retry_after=0)
    amazon.state.set_behaviour(known.selling_partner_id, "revoked")  # after the throttled try
    held: list[Held] = []
    done = refresh_seller(
        database.session, vault, lwa, "u1", frontend_url=FRONTEND, wait_for_lease=WAIT, held=held
    )
    assert (done.user_id, done.outcome, done.error_type, done.reconnect_url) == (
        "u1",
        RefreshOutcome.revoked,
        REVOKED,
        RECONNECT_U1,
    )
    assert done.message is not None and done.message.startswith("LWA refused the grant")
    (kept,) = held
    assert (kept.user_id, kept.refusal) == ("u1", None)
    assert kept.verdict is not None and kept.verdict.outcome == RefreshOutcome.revoked
    assert [t.number for t in kept.tries] == [1]  # the throttled try; invalid_grant ends it
    assert integration_of(database, "u1").status == Status.active
    assert events_of(database, "u1", *REFRESH_KINDS) == []
    assert credential_of(database, "u1").lease_owner is None


def test_a_transient_failure_is_recorded_even_when_verdicts_are_held(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.set_behaviour(known.selling_partner_id, "flaky", status=503)
    held: list[Held] = []
    done = refresh_seller(
        database.session, vault, lwa, "u1", frontend_url=FRONTEND, wait_for_lease=WAIT, held=held
    )
    assert done.outcome == RefreshOutcome.failed and held == []
    assert integration_of(database, "u1").meta["consecutive_failures"] == 1


def test_an_access_token_refused_when_verdicts_are_held_is_held(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.revoke(known.selling_partner_id)
    held: list[Held] = []
    with pytest.raises(SellerAuthorizationRevoked):
        token_of_u1(database, vault, lwa, held=held)
    assert [h.user_id for h in held] == ["u1"]
    assert integration_of(database, "u1").status == Status.active


def test_a_refresh_that_cannot_read_its_token_says_so_and_lets_go_of_the_lease(
    amazon: Sandbox, database: Database, lwa: LwaClient
) -> None:
    add_seller(database, Vault([Fernet.generate_key().decode()]), "u1")  # another key
    vault = Vault([Fernet.generate_key().decode()])
    with pytest.raises(EncryptionKeyError) as raised:
        refresh_u1(database, vault, lwa)
    assert raised.value.message.startswith(
        "the refresh token cannot be decrypted with DISCOVERY_ENCRYPTION_KEY"
    )
    assert credential_of(database, "u1").lease_owner is None
    assert grants(amazon) == 0


def test_a_refresh_s_lease_names_the_work_and_the_process_while_it_is_held(
    sqlite_db: Any, amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.set_behaviour(known.selling_partner_id, "slow", ms=200, times=2)
    path = sqlite_db.url.removeprefix("sqlite:///")
    for call in (  # nothing cached yet: the token is refreshed first, then refreshed again
        lambda: token_of_u1(database, vault, lwa),
        lambda: refresh_u1(database, vault, lwa),
    ):
        with owners_seen(path) as seen:
            call()
        assert seen and all(
            owner.startswith("refresh:") and f":{os.getpid()}:" in owner for owner in seen
        ), seen
    assert grants(amazon) == 2


@contextmanager
def owners_seen(path: str) -> Iterator[set[str]]:
    """The lease owners another process would see on the credentials while the block runs."""
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with sqlite3.connect(path) as other:
                rows = other.execute("SELECT lease_owner, lease_expires_at FROM credentials")
                seen.update(f"{owner}" for owner, until in rows if until is not None)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def hold_lease(database: Database, credential_id: int, release_after: float) -> threading.Timer:
    """Another process takes the credential's lease now and lets go of it ``release_after``
    seconds later (the timer, started: join it)."""
    with database.session() as session:
        assert claim(session, credential_id, "another-process", now())
    timer = threading.Timer(release_after, lambda: release(database, "another-process"))
    timer.start()
    return timer


def release(database: Database, owner: str) -> None:
    with database.session() as session:
        CREDENTIALS.release(session, owner)


def test_a_refresh_waits_for_a_live_lease_and_gives_up_after_its_wait(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    credential_id = add_seller(database, vault, "u1")
    holder = hold_lease(database, credential_id, release_after=0.5)
    try:
        with pytest.raises(TransientProviderError) as raised:
            refresh_u1(database, vault, lwa, wait=0.1)
        assert credential_of(database, "u1").lease_owner == "another-process"  # left alone
    finally:
        holder.join()
    assert raised.value.error_type == "refresh_in_progress"
    assert raised.value.message == (
        "another process is refreshing the token of 'u1' right now: try again"
    )
    assert grants(amazon) == 0


def test_a_refresh_takes_the_lease_once_the_holder_lets_go(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    sandbox_seller(amazon, database, vault)
    holder = hold_lease(database, credential_of(database, "u1").id, release_after=0.15)
    try:
        done = refresh_u1(database, vault, lwa)
    finally:
        holder.join()
    assert done.outcome == RefreshOutcome.refreshed
    assert grants(amazon) == 1


# -- the access token: cached, or refreshed once ------------------------------------------------


def test_a_cached_token_with_more_than_the_margin_left_is_used_as_it_is(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    expires = now() + timedelta(minutes=6)
    add_seller(database, vault, "u1", access_token="Atza|cached", expires_at=expires)
    assert token_of_u1(database, vault, lwa) == ("Atza|cached", expires)
    assert grants(amazon) == 0
    assert credential_of(database, "u1").lease_expires_at is None


def test_a_cached_token_is_usable_only_past_the_moment_asked(vault: Vault) -> None:
    moment = NOW + timedelta(minutes=5)
    token = vault.encrypt("Atza|cached")

    def cached(access: str | None, expires: datetime | None) -> tuple[str, datetime] | None:
        credential = Credential(access_token=access, access_token_expires_at=expires)
        return cached_token(vault, credential, moment)

    assert cached(token, moment + timedelta(seconds=1)) == (
        "Atza|cached",
        moment + timedelta(1 / 86400),
    )
    assert cached(token, moment) is None
    assert cached(token, None) is None
    assert cached(None, moment + timedelta(hours=1)) is None


def test_a_cached_token_that_cannot_be_read_says_so(
    amazon: Sandbox, database: Database, lwa: LwaClient
) -> None:
    other = Vault([Fernet.generate_key().decode()])
    expires = now() + timedelta(hours=1)
    add_seller(database, other, "u1", access_token="Atza|cached", expires_at=expires)
    with pytest.raises(EncryptionKeyError) as raised:
        token_of_u1(database, Vault([Fernet.generate_key().decode()]), lwa)
    assert raised.value.message.startswith(
        "the access token cannot be decrypted with DISCOVERY_ENCRYPTION_KEY"
    )


@pytest.mark.parametrize(
    ("cached", "expires_in", "margin"),
    [
        ("Atza|cached", timedelta(minutes=4), timedelta(minutes=5)),  # inside the margin
        ("Atza|cached", timedelta(minutes=30), timedelta(hours=1)),  # inside a wider one
        ("Atza|cached", None, timedelta(minutes=5)),  # a token without an expiry
    ],
)
def test_a_token_not_usable_for_the_margin_is_refreshed(
    amazon: Sandbox,
    database: Database,
    vault: Vault,
    lwa: LwaClient,
    cached: str | None,
    expires_in: timedelta | None,
    margin: timedelta,
) -> None:
    known = amazon.state.add_seller()
    expires = None if expires_in is None else now() + expires_in
    add_seller(database, vault, "u1", known.refresh_token, access_token=cached, expires_at=expires)
    before = now()
    token, until = token_of_u1(database, vault, lwa, margin=margin)
    assert amazon.state.seller_of_access_token(token) == known.selling_partner_id
    assert near(until, before + timedelta(hours=1))
    assert grants(amazon) == 1
    credential = credential_of(database, "u1")
    assert (credential.lease_owner, credential.lease_expires_at) == (None, None)
    assert credential.access_token is not None and vault.decrypt(credential.access_token) == token


@pytest.mark.parametrize(
    ("status", "error_type"), [(Status.revoked, REVOKED), (Status.expired, "oauth_token_expired")]
)
def test_a_seller_who_must_reconnect_gets_no_token_but_the_way_back(
    amazon: Sandbox,
    database: Database,
    vault: Vault,
    lwa: LwaClient,
    status: Status,
    error_type: str,
) -> None:
    add_seller(database, vault, "u1", status=status)
    with pytest.raises(SellerAuthorizationRevoked) as raised:
        token_of_u1(database, vault, lwa)
    assert raised.value.message == (
        f"the Amazon authorization of 'u1' is {status}: reconnect at {RECONNECT_U1}"
    )
    assert raised.value.error_type == error_type
    assert grants(amazon) == 0
    assert credential_of(database, "u1").lease_owner is None


def test_a_refused_refresh_for_a_token_raises_its_error(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.revoke(known.selling_partner_id)
    with pytest.raises(SellerAuthorizationRevoked) as raised:
        token_of_u1(database, vault, lwa)
    assert raised.value.error_type == REVOKED
    assert integration_of(database, "u1").status == Status.revoked
    assert credential_of(database, "u1").lease_owner is None


def test_a_caller_waits_for_another_s_refresh_and_uses_its_token(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    credential_id = add_seller(database, vault, "u1")
    with database.session() as session:
        assert claim(session, credential_id, "another-process", now())
    expires = now() + timedelta(hours=1)

    def refreshed_elsewhere() -> None:
        with database.session() as session:
            credential = session.get(Credential, credential_id)
            assert credential is not None
            credential.access_token = vault.encrypt("Atza|from-the-other")
            credential.access_token_expires_at = expires
        release(database, "another-process")

    elsewhere = threading.Timer(0.15, refreshed_elsewhere)
    elsewhere.start()
    try:
        token = token_of_u1(database, vault, lwa)
    finally:
        elsewhere.join()
    assert token == ("Atza|from-the-other", expires)
    assert grants(amazon) == 0


def test_a_refresh_made_between_reading_the_cache_and_taking_the_lease_is_used(
    sqlite_db: Any, amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    """Another process refreshed and let go of its lease just after this caller read the
    cache stale: the lease is free, but the token is fresh; use it, spend no second grant."""
    add_seller(database, vault, "u1")
    path = sqlite_db.url.removeprefix("sqlite:///")
    expires = now() + timedelta(hours=1)
    fresh = vault.encrypt("Atza|from-the-other")
    refreshed: list[bool] = []

    def refresh_elsewhere(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not refreshed and statement.lstrip().startswith("SELECT credentials.id,"):
            with sqlite3.connect(path) as other:
                other.execute(
                    "UPDATE credentials SET access_token = ?, access_token_expires_at = ?",
                    (fresh, expires.isoformat()),
                )
            refreshed.append(True)

    sa.event.listen(sa.Engine, "after_cursor_execute", refresh_elsewhere)
    try:
        token = token_of_u1(database, vault, lwa)
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", refresh_elsewhere)
    assert refreshed
    assert token == ("Atza|from-the-other", expires)
    assert grants(amazon) == 0


def test_a_caller_gives_up_after_waiting_its_wait_for_another_s_refresh(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    credential_id = add_seller(database, vault, "u1")
    holder = hold_lease(database, credential_id, release_after=0.5)
    try:
        with pytest.raises(TransientProviderError) as raised:
            token_of_u1(database, vault, lwa, wait=0.1)
    finally:
        holder.join()
    assert raised.value.error_type == "refresh_in_progress"
    assert raised.value.message == (
        "another process has been refreshing the token of 'u1' for over 0.1 s"
    )
    assert grants(amazon) == 0


# -- a finished refresh as an error ----------------------------------------------------------


def test_a_refresh_that_worked_raises_nothing() -> None:
    raise_for(Refresh("u1", RefreshOutcome.refreshed))


@pytest.mark.parametrize(
    ("outcome", "error_type", "expected"),
    [
        (RefreshOutcome.revoked, REVOKED, REVOKED),
        (RefreshOutcome.expired, "oauth_token_expired", "oauth_token_expired"),
        (RefreshOutcome.revoked, None, REVOKED),
    ],
)
def test_an_authorization_gone_raises_the_way_back(
    outcome: RefreshOutcome, error_type: str | None, expected: str
) -> None:
    done = Refresh("u1", outcome, error_type=error_type, reconnect_url=RECONNECT_U1)
    with pytest.raises(SellerAuthorizationRevoked) as raised:
        raise_for(done)
    assert raised.value.message == (
        f"the Amazon authorization of 'u1' is {outcome}: reconnect at {RECONNECT_U1}"
    )
    assert raised.value.error_type == expected


def test_the_app_s_credentials_refused_raise_their_error() -> None:
    with pytest.raises(AppCredentialsRejected) as raised:
        raise_for(Refresh("u1", RefreshOutcome.app_rejected, message="LWA said invalid_client"))
    assert raised.value.message == "LWA said invalid_client"
    with pytest.raises(AppCredentialsRejected) as raised:
        raise_for(Refresh("u1", RefreshOutcome.app_rejected))
    assert raised.value.message == "LWA rejected the app's credentials"


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [("provider_throttled", "provider_throttled"), (None, "provider_error")],
)
def test_a_failed_refresh_raises_a_transient_error(error_type: str | None, expected: str) -> None:
    done = Refresh("u1", RefreshOutcome.failed, error_type=error_type, message="LWA answered 503")
    with pytest.raises(TransientProviderError) as raised:
        raise_for(done)
    assert raised.value.message == "could not refresh the token of 'u1': LWA answered 503"
    assert raised.value.error_type == expected


def test_a_refresh_s_access_token_is_never_in_its_repr() -> None:
    done = Refresh("u1", RefreshOutcome.refreshed, access_token="Atza|secret")
    assert "Atza|secret" not in repr(done)


# -- what a grant and its tries record ------------------------------------------------------


def test_a_refresh_token_sent_back_unchanged_is_not_news() -> None:
    assert news_only(TokenGrant("Atza|a", "Atzr|same", 3600), "Atzr|same").refresh_token is None
    assert news_only(TokenGrant("Atza|a", "Atzr|new", 3600), "Atzr|old").refresh_token == "Atzr|new"
    assert news_only(TokenGrant("Atza|a", None, 3600), "Atzr|old").refresh_token is None


def test_the_outcome_s_event_tells_of_the_last_try_only() -> None:
    tries = [Attempt(1, 0.25, throttled()), Attempt(2, 0.0125)]
    assert last_try(tries) == {"attempt": 2, "duration_ms": 12.5}
    assert last_try([]) == {}


def test_each_try_retried_before_the_last_is_an_event() -> None:
    tries = [
        Attempt(1, 0.5, throttled()),
        Attempt(2, 0.25, TransientProviderError("x", error_type="lwa_timeout")),
        Attempt(3, 0.125, throttled()),
    ]
    retried = retried_events("u1", tries)
    assert [(e["kind"], e["outcome"], e["user_id"], e["provider"]) for e in retried] == [
        ("token_refresh_retried", "failure", "u1", "amazon")
    ] * 2
    assert [(e["error_type"], e["detail"]) for e in retried] == [
        ("provider_throttled", {"attempt": 1, "duration_ms": 500.0, "http_status": 429}),
        ("provider_timeout", {"attempt": 2, "duration_ms": 250.0, "http_status": None}),
    ]
    assert retried_events("u1", [Attempt(1, 0.5), Attempt(2, 0.5)]) == []
    checked = retried_events("u1", tries, kind=events.Kind.seller_check_failed)
    assert {e["kind"] for e in checked} == {"seller_check_failed"}


# -- recording a refresh that worked ---------------------------------------------------------


def test_a_grant_is_cached_encrypted_and_clears_what_failed(
    database: Database, vault: Vault
) -> None:
    add_seller(
        database,
        vault,
        "u1",
        "Atzr|old",
        meta={"consecutive_failures": 2, "last_error": {"type": "provider_timeout"}},
        next_attempt_at=NOW,
    )
    open_alert(database, lifecycle.REPEATED_FAILURES, "u1")
    before = now()
    with database.session() as session:
        done = record_refresh(
            session, vault, "u1", TokenGrant("Atza|new", None, 1800), frontend_url=FRONTEND
        )
    after = now()
    assert (done.user_id, done.outcome, done.access_token) == ("u1", "refreshed", "Atza|new")
    credential = credential_of(database, "u1")
    assert credential.access_token is not None
    assert vault.decrypt(credential.access_token) == "Atza|new"
    assert credential.access_token_expires_at == done.access_token_expires_at
    assert (
        before + timedelta(seconds=1800)
        <= credential.access_token_expires_at
        <= after + timedelta(seconds=1800)
    )
    assert vault.decrypt(credential.refresh_token) == "Atzr|old"  # none sent: the old one stays
    assert credential.next_attempt_at is None
    assert before <= credential.refreshed_at <= after
    assert credential.updated_at == credential.refreshed_at
    integration = integration_of(database, "u1")
    assert integration.status == Status.active
    assert "consecutive_failures" not in integration.meta and "last_error" not in integration.meta
    assert integration.meta["last_synced_at"]
    assert open_ones(database, "admin") == []


def test_a_rotated_refresh_token_replaces_the_stored_one(database: Database, vault: Vault) -> None:
    add_seller(database, vault, "u1", "Atzr|old")
    with database.session() as session:
        record_refresh(
            session, vault, "u1", TokenGrant("Atza|n", "Atzr|new", 3600), frontend_url=FRONTEND
        )
    assert vault.decrypt(credential_of(database, "u1").refresh_token) == "Atzr|new"
    (event,) = events_of(database, "u1", "token_refreshed")
    assert event.detail["refresh_token_rotated"] is True


def test_a_refresh_s_events_tell_each_try(database: Database, vault: Vault) -> None:
    add_seller(database, vault, "u1")
    tries = [Attempt(1, 0.5, throttled()), Attempt(2, 0.25)]
    before = now()
    with database.session() as session:
        done = record_refresh(
            session,
            vault,
            "u1",
            TokenGrant("Atza|n", None, 3600),
            frontend_url=FRONTEND,
            tries=tries,
        )
    retried, refreshed = events_of(database, "u1", *REFRESH_KINDS)
    assert (retried.kind, retried.outcome, retried.error_type) == (
        "token_refresh_retried",
        "failure",
        "provider_throttled",
    )
    assert retried.detail == {"attempt": 1, "duration_ms": 500.0, "http_status": 429}
    assert (refreshed.kind, refreshed.outcome, refreshed.error_type, refreshed.provider) == (
        "token_refreshed",
        "success",
        None,
        "amazon",
    )
    assert done.access_token_expires_at is not None
    assert refreshed.detail == {
        "expires_at": done.access_token_expires_at.isoformat(timespec="seconds").replace(
            "+00:00", "Z"
        ),
        "refresh_token_rotated": False,
        "attempt": 2,
        "duration_ms": 250.0,
    }
    assert near(refreshed.occurred_at, before)


@pytest.mark.parametrize("status", [Status.revoked, Status.expired])
def test_a_grant_for_a_seller_who_had_to_reconnect_makes_it_active_again(
    database: Database, vault: Vault, status: Status
) -> None:
    add_seller(database, vault, "u1", status=status)
    with database.session() as session:
        record_refresh(
            session, vault, "u1", TokenGrant("Atza|n", None, 3600), frontend_url=FRONTEND
        )
    assert integration_of(database, "u1").status == Status.active
    (change,) = events_of(database, "u1", "status_changed")
    assert (change.detail["from"], change.detail["to"], change.detail["reason"]) == (
        str(status),
        "active",
        "token_refreshed",
    )


def test_a_grant_for_an_active_seller_changes_no_status(database: Database, vault: Vault) -> None:
    add_seller(database, vault, "u1")
    with database.session() as session:
        record_refresh(
            session, vault, "u1", TokenGrant("Atza|n", None, 3600), frontend_url=FRONTEND
        )
    assert events_of(database, "u1", "status_changed") == []


def test_a_grant_resolves_the_alert_that_the_app_s_credentials_were_refused(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    open_alert(database, notifications.APP_CREDENTIALS_REJECTED, None)
    with database.session() as session:
        record_refresh(
            session, vault, "u1", TokenGrant("Atza|n", None, 3600), frontend_url=FRONTEND
        )
    assert open_ones(database, "admin") == []


def test_recording_a_refresh_keeps_other_writers_out_while_it_reads_the_seller(
    sqlite_db: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    path = sqlite_db.url.removeprefix("sqlite:///")
    with writers_tried_at_reads(path, "integration_status") as tried, database.session() as session:
        record_refresh(session, vault, "u1", TokenGrant("a", None, 60), frontend_url=FRONTEND)
    assert tried and not any(tried)


# -- the warning 30 days before the re-authorization date --------------------------------------


def test_a_seller_within_30_days_of_re_authorization_is_warned_once(
    database: Database, vault: Vault
) -> None:
    authorized = now() - timedelta(days=340)
    add_seller(database, vault, "u1", authorized_at=authorized)
    before = now()
    warned_at = []
    for _ in range(2):
        with database.session() as session:
            record_refresh(session, vault, "u1", TokenGrant("a", None, 3600), frontend_url=FRONTEND)
        warned_at.append(credential_of(database, "u1").expiry_warned_at)
    assert warned_at[0] == warned_at[1]  # the first warning's time: none since
    (warning,) = notifications_of(database, "user")
    renew_by = authorized + timedelta(days=365)
    day = renew_by.date().isoformat()
    assert (warning.kind, warning.user_id, warning.provider) == (
        "authorization_expiring",
        "u1",
        "amazon",
    )
    assert warning.title == "Amazon connection expires soon"
    assert warning.message == (
        f"Your amazon authorization expires on {day}. "
        "Please reconnect your account before then to keep access."
    )
    assert warning.detail == {
        "reconnectUrl": RECONNECT_U1,
        "expires_at": renew_by.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    assert warning.dedupe_key == f"authorization_expiring:amazon:u1:{day}"
    assert near(credential_of(database, "u1").expiry_warned_at, before)


def test_a_seller_further_from_re_authorization_is_not_warned(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1", authorized_at=now() - timedelta(days=300))
    with database.session() as session:
        record_refresh(session, vault, "u1", TokenGrant("a", None, 3600), frontend_url=FRONTEND)
    assert notifications_of(database, "user") == []
    assert credential_of(database, "u1").expiry_warned_at is None


def test_a_new_authorization_term_is_warned_again(database: Database, vault: Vault) -> None:
    """The warning's key carries the term's date: a seller warned last term, who reconnected
    and whose warning was cleared, is warned for the new term too."""
    authorized = now() - timedelta(days=340)
    add_seller(database, vault, "u1", authorized_at=authorized - timedelta(days=365))
    with database.session() as session:
        record_refresh(session, vault, "u1", TokenGrant("a", None, 3600), frontend_url=FRONTEND)
    with database.session() as session:
        session.execute(
            sa.update(Credential).values(authorized_at=authorized, expiry_warned_at=None)
        )
    with database.session() as session:
        record_refresh(session, vault, "u1", TokenGrant("a", None, 3600), frontend_url=FRONTEND)
    assert len(notifications_of(database, "user")) == 2


# -- many refreshes at once (refresh-all) ---------------------------------------------------------


def test_no_refreshes_record_nothing(database: Database, vault: Vault) -> None:
    with database.session() as session:
        assert record_refreshes(session, vault, [], frontend_url=FRONTEND) == []
        assert record_failures(session, [], frontend_url=FRONTEND) == []


def test_plain_refreshes_are_written_in_bulk_and_let_go_of_their_leases(
    database: Database, vault: Vault
) -> None:
    one = add_seller(database, vault, "u1", "Atzr|one", next_attempt_at=NOW, meta={"n": 1})
    two = add_seller(database, vault, "u2", "Atzr|two", meta={"n": 2})
    other = add_seller(
        database,
        vault,
        "u3",
        "Atzr|three",
        meta={"n": 3},
        # warned this term already: nothing more is due, so it is written in bulk too
        authorized_at=now() - timedelta(days=340),
        expiry_warned_at=now() - timedelta(days=1),
    )
    with database.session() as session:
        assert claim(session, one, "run", now())
        assert claim(session, two, "run", now())
        assert claim(session, other, "another-run", now())
    open_alert(database, notifications.APP_CREDENTIALS_REJECTED, None)
    tries = [Attempt(1, 0.5, throttled()), Attempt(2, 0.25)]
    refreshed = [
        (one, TokenGrant("Atza|one", "Atzr|one-rotated", 1800), tries),
        (two, TokenGrant("Atza|two", None, 3600), []),
        (other, TokenGrant("Atza|three", None, 3600), []),
    ]
    before = now()
    with database.session() as session:
        done = record_refreshes(session, vault, refreshed, frontend_url=FRONTEND, lease_owner="run")
    after = now()
    assert [(d.user_id, d.outcome) for d in done] == [
        ("u1", "refreshed"),
        ("u2", "refreshed"),
        ("u3", "refreshed"),
    ]
    assert all(d.access_token is None for d in done)  # nobody asked for them
    for n, user_id, token, refresh, lifetime, owner in [
        (1, "u1", "Atza|one", "Atzr|one-rotated", 1800, None),
        (2, "u2", "Atza|two", "Atzr|two", 3600, None),
        (3, "u3", "Atza|three", "Atzr|three", 3600, "another-run"),  # not this run's lease
    ]:
        credential = credential_of(database, user_id)
        (result,) = [d for d in done if d.user_id == user_id]
        assert credential.access_token is not None
        assert vault.decrypt(credential.access_token) == token
        assert vault.decrypt(credential.refresh_token) == refresh
        assert credential.access_token_expires_at == result.access_token_expires_at
        expires = credential.access_token_expires_at
        assert (
            before + timedelta(seconds=lifetime) <= expires <= after + timedelta(seconds=lifetime)
        )
        assert before <= credential.refreshed_at <= after
        assert credential.updated_at == credential.refreshed_at
        assert credential.next_attempt_at is None
        assert credential.lease_owner == owner
        assert (credential.lease_expires_at is None) == (owner is None)
        integration = integration_of(database, user_id)
        assert integration.meta == {"n": n, "last_synced_at": refreshed_at_text(credential)}
        assert integration.updated_at == credential.refreshed_at
    retried, first = events_of(database, "u1", *REFRESH_KINDS)
    assert (retried.kind, retried.error_type) == ("token_refresh_retried", "provider_throttled")
    assert (first.kind, first.outcome) == ("token_refreshed", "success")
    assert first.detail["refresh_token_rotated"] is True
    assert first.detail["attempt"] == 2
    (second,) = events_of(database, "u2", *REFRESH_KINDS)
    assert second.detail["refresh_token_rotated"] is False
    assert open_ones(database, "admin") == []  # LWA took the app's credentials
    assert notifications_of(database, "user") == []


def refreshed_at_text(credential: Credential) -> str:
    assert credential.refreshed_at is not None
    return credential.refreshed_at.isoformat(timespec="seconds").replace("+00:00", "Z")


def test_without_a_lease_owner_the_bulk_write_leaves_leases_alone(
    database: Database, vault: Vault
) -> None:
    one = add_seller(database, vault, "u1")
    with database.session() as session:
        assert claim(session, one, "run", now())
    with database.session() as session:
        record_refreshes(
            session, vault, [(one, TokenGrant("a", None, 60), [])], frontend_url=FRONTEND
        )
    assert credential_of(database, "u1").lease_owner == "run"


@pytest.mark.parametrize(
    "unusual",
    [
        {"status": Status.revoked},
        {"meta": {"consecutive_failures": 1}},
        {"authorized_at": datetime.now(UTC) - timedelta(days=340)},
    ],
    ids=["not-active", "failing", "warning-due"],
)
def test_a_refresh_that_is_not_plain_is_recorded_one_by_one(
    database: Database, vault: Vault, unusual: dict[str, Any]
) -> None:
    odd = add_seller(database, vault, "odd", **unusual)  # read first: the rest still follows
    plain = add_seller(database, vault, "plain")
    refreshed = [
        (odd, TokenGrant("Atza|o", None, 3600), [Attempt(1, 0.5, throttled()), Attempt(2, 0.5)]),
        (plain, TokenGrant("Atza|p", None, 3600), []),
    ]
    with database.session() as session:
        done = record_refreshes(session, vault, refreshed, frontend_url=FRONTEND)
    assert [(d.user_id, d.outcome) for d in done] == [("plain", "refreshed"), ("odd", "refreshed")]
    assert done[1].access_token == "Atza|o"  # record_refresh's own answer
    history = events_of(database, "odd", *REFRESH_KINDS)
    assert [(e.kind, e.detail["attempt"]) for e in history] == [
        ("token_refresh_retried", 1),
        ("token_refreshed", 2),
    ]
    plain_credential = credential_of(database, "plain")
    assert plain_credential.access_token is not None
    assert vault.decrypt(plain_credential.access_token) == "Atza|p"
    integration = integration_of(database, "odd")
    assert integration.status == Status.active
    assert "consecutive_failures" not in integration.meta
    due = "authorized_at" in unusual
    assert [n.kind for n in notifications_of(database, "user")] == (
        ["authorization_expiring"] if due else []
    )


def test_the_bulk_write_keeps_other_writers_out_while_it_reads(
    sqlite_db: Any, database: Database, vault: Vault
) -> None:
    one = add_seller(database, vault, "u1")
    path = sqlite_db.url.removeprefix("sqlite:///")
    with writers_tried_at_reads(path, "credentials") as tried, database.session() as session:
        record_refreshes(
            session, vault, [(one, TokenGrant("a", None, 60), [])], frontend_url=FRONTEND
        )
    assert tried and not any(tried)


# -- what a verdict does to the seller ----------------------------------------------------------


@pytest.mark.parametrize("outcome", [RefreshOutcome.revoked, RefreshOutcome.expired])
def test_an_authorization_gone_changes_the_status_and_tells_the_seller(
    database: Database, vault: Vault, outcome: RefreshOutcome
) -> None:
    add_seller(database, vault, "u1", access_token="Atza|x", expires_at=NOW, next_attempt_at=NOW)
    decided = gone(outcome)
    with database.session() as session:
        integration, credential = find(session, "u1", for_update=True)
        apply_verdict(session, integration, credential, decided, now=NOW, frontend_url=FRONTEND)
    assert integration_of(database, "u1").status == str(outcome)
    credential = credential_of(database, "u1")
    assert (credential.access_token, credential.access_token_expires_at) == (None, None)
    assert credential.updated_at == NOW
    assert credential.next_attempt_at == NOW  # no backoff: nothing to try until reconnected
    (change,) = events_of(database, "u1", "status_changed")
    assert (change.error_type, change.detail["reason"], change.detail["to"]) == (
        decided.error_type,
        decided.error_type,
        str(outcome),
    )
    (note,) = notifications_of(database, "user")
    assert (note.kind, note.detail["reconnectUrl"]) == ("connection_lost", RECONNECT_U1)
    assert "consecutive_failures" not in integration_of(database, "u1").meta


def test_the_app_s_credentials_refused_tell_the_admins_and_touch_no_seller(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1", access_token="Atza|x", expires_at=NOW)
    with database.session() as session:
        integration, credential = find(session, "u1", for_update=True)
        apply_verdict(
            session, integration, credential, APP_REJECTED, now=NOW, frontend_url=FRONTEND
        )
    (alert,) = notifications_of(database, "admin")
    assert (alert.kind, alert.message, alert.user_id) == (
        "app_credentials_rejected",
        "LWA rejected the app",
        None,
    )
    integration = integration_of(database, "u1")
    assert integration.status == Status.active and integration.meta == {}
    credential = credential_of(database, "u1")
    assert credential.access_token is not None and credential.next_attempt_at is None
    assert credential.updated_at == NOW


def test_a_transient_failure_is_counted_and_waits_out_the_backoff(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1", access_token="Atza|x", expires_at=NOW)
    for failures in (1, 2, 3):
        with database.session() as session:
            integration, credential = find(session, "u1", for_update=True)
            apply_verdict(
                session, integration, credential, transient(), now=NOW, frontend_url=FRONTEND
            )
        integration = integration_of(database, "u1")
        assert integration.status == Status.active
        assert integration.meta["consecutive_failures"] == failures
        assert integration.meta["last_error"]["type"] == "provider_server_error"
        assert integration.meta["last_error"]["message"] == "LWA answered 503: busy"
        credential = credential_of(database, "u1")
        # 5 minutes after the first, 10 after the second, 20 after the third, ± 20 %
        base = timedelta(minutes=5 * 2 ** (failures - 1))
        assert credential.next_attempt_at is not None
        assert NOW + base * 0.8 <= credential.next_attempt_at <= NOW + base * 1.2
        assert credential.updated_at == NOW
        assert credential.access_token is not None  # still usable
    assert [n.kind for n in notifications_of(database, "admin")] == ["repeated_failures"]


# -- recording a refresh that failed ----------------------------------------------------------


def test_a_failed_refresh_records_its_tries_and_its_verdict(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    tries = [Attempt(1, 0.5, throttled()), Attempt(2, 0.25, throttled(503))]
    with database.session() as session:
        done = record_failure(session, "u1", transient(), frontend_url=FRONTEND, tries=tries)
    assert done == Refresh(
        "u1",
        RefreshOutcome.failed,
        error_type="provider_server_error",
        message="LWA answered 503: busy",
        reconnect_url=RECONNECT_U1,
    )
    retried, failed = events_of(database, "u1", *REFRESH_KINDS)
    assert (retried.kind, retried.detail) == (
        "token_refresh_retried",
        {"attempt": 1, "duration_ms": 500.0, "http_status": 429},
    )
    assert (failed.kind, failed.outcome, failed.error_type, failed.provider) == (
        "token_refresh_failed",
        "failure",
        "provider_server_error",
        "amazon",
    )
    assert failed.detail == {
        "http_status": 503,
        "message": "LWA answered 503: busy",
        "attempt": 2,
        "duration_ms": 250.0,
    }
    assert integration_of(database, "u1").meta["consecutive_failures"] == 1
    assert credential_of(database, "u1").next_attempt_at is not None


def test_recording_a_failure_keeps_other_writers_out_while_it_reads_the_seller(
    sqlite_db: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    path = sqlite_db.url.removeprefix("sqlite:///")
    with writers_tried_at_reads(path, "integration_status") as tried, database.session() as session:
        record_failure(session, "u1", transient(), frontend_url=FRONTEND)
    assert tried and not any(tried)


def test_failures_in_a_batch_are_each_recorded_and_the_removed_skipped(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    add_seller(database, vault, "u2")
    with database.session() as session:
        lifecycle.create(session, "bare", "amazon", Status.active)  # its credential is gone
    failures = [
        ("u1", gone(), [Attempt(1, 0.5)]),
        ("removed", transient(), []),
        ("bare", transient(), []),
        ("u2", transient(), []),
    ]
    with database.session() as session:
        done = record_failures(session, failures, frontend_url=FRONTEND)
    assert [(d.user_id, d.outcome) for d in done] == [("u1", "revoked"), ("u2", "failed")]
    assert integration_of(database, "u1").status == Status.revoked
    assert integration_of(database, "u2").meta["consecutive_failures"] == 1
    (note,) = notifications_of(database, "user")
    assert (note.user_id, note.kind) == ("u1", "connection_lost")
    (failed,) = events_of(database, "u1", "token_refresh_failed")
    assert failed.detail["attempt"] == 1
    assert events_of(database, "bare", *REFRESH_KINDS) == []


def test_failures_in_a_batch_keep_other_writers_out_while_they_are_read(
    sqlite_db: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    path = sqlite_db.url.removeprefix("sqlite:///")
    with writers_tried_at_reads(path, "integration_status") as tried, database.session() as session:
        record_failures(session, [("u1", transient(), [])], frontend_url=FRONTEND)
    assert tried and not any(tried)
