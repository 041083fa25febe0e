"""The rules of the seller check (``amazon.check``), called directly, fast enough for
``make mutate``: each seller's allowance of checks (a burst of 15, growing back at 0.016 a
second, one spent per check, none spent when there is less than one), what each SP-API answer
means for the seller (in sync; the token refused: confirmed with a fresh token first, then
revoked or expired as a refresh would say, in the history as a refused refresh, and marked as
the SP-API's word until the SP-API takes a token again; a transient failure counted with the
refresh's backoff; anything else recorded only), and which sellers a check of everyone covers. The
command end to end: test_check.py."""

from __future__ import annotations

import sqlite3
import threading
import time
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
    integration_of,
    lwa_fixture,  # noqa: F401  (fixture)
    near,
    notifications_of,
    running_sandbox_fixture,  # noqa: F401  (fixture)
    spapi_fixture,  # noqa: F401  (fixture)
    vault_fixture,  # noqa: F401  (fixture)
    writers_tried_at_reads,
)

from discoveryctl.amazon.check import (
    Checked,
    CheckOutcome,
    _take_check,
    active_sellers,
    allowance,
    check_seller,
    record_check,
    seconds_until_check,
    settle,
    spend_check,
)
from discoveryctl.amazon.mass_revocation import Brake, Held
from discoveryctl.amazon.refresh import claim
from discoveryctl.amazon.verdict import REVOKED, RefreshOutcome, Verdict
from discoveryctl.db.engine import Database
from discoveryctl.db.leases import CREDENTIALS
from discoveryctl.db.models import Credential, IntegrationStatus
from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    SpApiTokenRefused,
    TransientProviderError,
)
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.vocabulary import Status
from discoveryctl.providers.lwa import LwaClient
from discoveryctl.providers.spapi import SpApiClient
from discoveryctl.sandbox import Sandbox
from discoveryctl.support.crypto import Vault

from helpers import app_for

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
RECONNECT_U1 = "http://localhost:3000/integrations/amazon/connect?reconnect=true&userId=u1"
CHECK_KINDS = ("seller_checked", "seller_check_failed")


def now() -> datetime:
    return datetime.now(UTC)


def participation_calls(amazon: Sandbox) -> int:
    requests = amazon.state.stats()["requests"]
    return sum(n for route, n in requests.items() if "marketplaceParticipations" in route)


WAIT = 2.0
"""Seconds a check may wait for another process's refresh: nobody else refreshes here (a broken
lease rule then fails in seconds instead of waiting the minute a lease lasts)."""


def check_u1(database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient) -> Checked:
    return check_seller(
        database.session, vault, lwa, spapi, "u1", frontend_url=FRONTEND, wait_for_lease=WAIT
    )


def sandbox_seller(
    amazon: Sandbox, database: Database, vault: Vault, user_id: str = "u1", **columns: Any
) -> Any:
    known = amazon.state.add_seller()
    add_seller(database, vault, user_id, known.refresh_token, **columns)
    return known


# -- the allowance ----------------------------------------------------------------------------


def test_a_seller_never_checked_has_the_whole_burst() -> None:
    assert allowance(None, None, NOW) == 15
    assert allowance(None, NOW, NOW) == 15
    assert allowance(3.0, None, NOW) == 15


def test_the_allowance_grows_back_at_0_016_a_second() -> None:
    assert allowance(0.0, NOW, NOW) == 0
    assert allowance(0.0, NOW - timedelta(seconds=62.5), NOW) == pytest.approx(1.0)
    assert allowance(2.0, NOW - timedelta(seconds=100), NOW) == pytest.approx(3.6)


def test_the_allowance_grows_to_the_burst_and_no_further() -> None:
    assert allowance(14.5, NOW - timedelta(hours=1), NOW) == 15
    assert allowance(14.0, NOW - timedelta(seconds=62.5), NOW) == pytest.approx(15.0)


def test_an_allowance_dated_in_the_future_has_not_grown_nor_shrunk() -> None:
    assert allowance(2.0, NOW + timedelta(minutes=1), NOW) == 2.0


def test_the_wait_for_one_check_is_what_is_missing_of_one_at_the_rate() -> None:
    assert seconds_until_check(0.0) == pytest.approx(62.5)
    assert seconds_until_check(0.5) == pytest.approx(31.25)
    assert seconds_until_check(1.0) == 0
    assert seconds_until_check(3.0) == 0


def credential_with(left: float | None, as_of: datetime | None) -> Credential:
    return Credential(check_allowance=left, check_allowance_at=as_of)


def test_a_check_spends_one_of_the_allowance() -> None:
    credential = credential_with(1.0, NOW)
    assert spend_check(credential, NOW) is None
    assert (credential.check_allowance, credential.check_allowance_at) == (0.0, NOW)
    never = credential_with(None, None)
    assert spend_check(never, NOW) is None
    assert (never.check_allowance, never.check_allowance_at) == (14.0, NOW)
    grown = credential_with(0.5, NOW - timedelta(seconds=62.5))
    assert spend_check(grown, NOW) is None
    assert grown.check_allowance == pytest.approx(0.5)


def test_less_than_one_check_left_spends_nothing_and_says_how_long_to_wait() -> None:
    credential = credential_with(0.5, NOW - timedelta(seconds=10))
    assert spend_check(credential, NOW) == pytest.approx((1 - 0.66) / 0.016)
    assert credential.check_allowance == 0.5
    assert credential.check_allowance_at == NOW - timedelta(seconds=10)


def test_the_allowance_is_spent_from_the_row_as_it_is_now_under_the_lock(
    sqlite_db: Any, database: Database, vault: Vault
) -> None:
    """A check spends what the row holds when it takes the lock, not what the session read
    a moment before: another process may have spent the last check meanwhile."""
    credential_id = add_seller(database, vault, "u1")
    path = sqlite_db.url.removeprefix("sqlite:///")
    with database.session() as session:
        read = session.get(Credential, credential_id)  # kept: the session's copy stays
        assert read is not None and read.check_allowance is None  # read: a full burst
        other = sqlite3.connect(path)
        other.execute(
            "UPDATE credentials SET check_allowance = 0, check_allowance_at = ?",
            (datetime.now(UTC).isoformat(),),
        )
        other.commit()
        other.close()
        with writers_tried_at_reads(path, "credentials") as tried:
            wait = _take_check(session, credential_id)
    assert wait is not None and wait > 60
    assert tried == [False]
    assert credential_of(database, "u1").check_allowance == 0


# -- one seller's check against the SP-API -----------------------------------------------------


def test_an_answer_puts_the_seller_in_sync_and_spends_a_check(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    sandbox_seller(amazon, database, vault, meta={"consecutive_failures": 2})
    before = now()
    checked = check_u1(database, vault, lwa, spapi)
    assert checked == Checked("u1", CheckOutcome.ok, marketplaces=2)
    assert checked.outcome == "ok"
    (event,) = events_of(database, "u1", *CHECK_KINDS)
    assert (event.kind, event.outcome, event.provider, event.detail) == (
        "seller_checked",
        "success",
        "amazon",
        {"marketplaces": 2},
    )
    integration = integration_of(database, "u1")
    assert "consecutive_failures" not in integration.meta
    assert integration.meta["last_synced_at"]
    credential = credential_of(database, "u1")
    assert credential.check_allowance == 14
    assert near(credential.check_allowance_at, before)
    assert participation_calls(amazon) == 1


class RegionsAsked(SpApiClient):
    """The SP-API client, noting the region of each call (the sandbox answers for all)."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.regions: list[str] = []

    def marketplace_participations(self, region: str, access_token: str) -> int:
        self.regions.append(region)
        return super().marketplace_participations(region, access_token)


def test_a_seller_is_checked_in_its_own_region(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient
) -> None:
    known = amazon.state.add_seller()
    add_seller(database, vault, "u1", known.refresh_token, region="eu")
    with RegionsAsked(app_for(amazon)) as spapi:
        assert check_u1(database, vault, lwa, spapi).outcome == CheckOutcome.ok
    assert spapi.regions == ["eu"]


def test_a_seller_without_a_whole_check_left_is_not_called(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    sandbox_seller(  # a cached token: no refresh first, so the wait is read at once
        amazon,
        database,
        vault,
        access_token="Atza|cached",
        expires_at=NOW,
        check_allowance=0.5,
        check_allowance_at=now(),
    )
    checked = check_u1(database, vault, lwa, spapi)
    assert checked == Checked(
        "u1",
        CheckOutcome.paced,
        message=(
            "not checked: the SP-API allows each seller this call about once a minute "
            "(bursts of 15); the next is possible in 32 s"
        ),
    )
    assert checked.outcome.value == "paced"
    assert participation_calls(amazon) == 0
    assert events_of(database, "u1", *CHECK_KINDS) == []
    assert credential_of(database, "u1").check_allowance == 0.5


@pytest.mark.parametrize(
    ("days_ago", "outcome"), [(10, CheckOutcome.revoked), (366, CheckOutcome.expired)]
)
def test_a_seller_whose_refresh_is_refused_is_gone_without_a_call(
    amazon: Sandbox,
    database: Database,
    vault: Vault,
    lwa: LwaClient,
    spapi: SpApiClient,
    days_ago: int,
    outcome: CheckOutcome,
) -> None:
    known = sandbox_seller(amazon, database, vault, authorized_at=now() - timedelta(days=days_ago))
    amazon.state.revoke(known.selling_partner_id)
    checked = check_u1(database, vault, lwa, spapi)
    assert checked == Checked(
        "u1",
        outcome,
        message=f"the Amazon authorization of 'u1' is {outcome}: reconnect at {RECONNECT_U1}",
        reconnect_url=RECONNECT_U1,
    )
    assert checked.outcome.value == str(outcome)
    assert integration_of(database, "u1").status == str(outcome)
    assert participation_calls(amazon) == 0
    assert credential_of(database, "u1").check_allowance is None  # nothing spent


def test_a_check_waits_for_another_s_refresh_only_as_long_as_it_is_told(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    credential_id = add_seller(database, vault, "u1")
    with database.session() as session:
        assert claim(session, credential_id, "another-process", datetime.now(UTC))
    letting_go = threading.Timer(0.5, lambda: release(database, "another-process"))
    letting_go.start()
    try:
        with pytest.raises(TransientProviderError) as raised:
            check_seller(
                database.session, vault, lwa, spapi, "u1", frontend_url=FRONTEND, wait_for_lease=0.1
            )
    finally:
        letting_go.join()
    assert raised.value.error_type == "refresh_in_progress"
    assert participation_calls(amazon) == 0


def test_the_confirming_refresh_waits_for_another_s_only_as_long_as_the_check_is_told(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    """The cached token is refused; another process holds the lease meanwhile: the confirming
    refresh waits ``wait_for_lease`` for it, not the minute a lease may last."""
    sandbox_seller(amazon, database, vault, access_token="Atza|never-issued", expires_at=NOW)
    credential_id = credential_of(database, "u1").id
    with database.session() as session:
        assert claim(session, credential_id, "another-process", datetime.now(UTC))
    started = time.monotonic()
    try:
        with pytest.raises(TransientProviderError) as raised:
            check_u1(database, vault, lwa, spapi)
    finally:
        release(database, "another-process")
    assert raised.value.error_type == "refresh_in_progress"
    assert time.monotonic() - started < WAIT + 5
    assert participation_calls(amazon) == 1


def release(database: Database, owner: str) -> None:
    with database.session() as session:
        CREDENTIALS.release(session, owner)


def test_a_refused_token_revokes_the_seller_and_shows_the_way_back(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.set_behaviour(known.selling_partner_id, "spapi_401", times=2)
    checked = check_u1(database, vault, lwa, spapi)
    assert checked == Checked(
        "u1", CheckOutcome.revoked, message=checked.message, reconnect_url=RECONNECT_U1
    )
    assert participation_calls(amazon) == 2  # the second with a fresh token
    assert checked.message is not None and checked.message.startswith(
        "SP-API refused the seller's token (401)"
    )
    assert integration_of(database, "u1").status == Status.revoked


def test_one_refusal_is_confirmed_with_a_fresh_token_before_anything_is_decided(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    # a cached token the SP-API refuses (it never issued it); LWA hands out a fresh one
    sandbox_seller(amazon, database, vault, access_token="Atza|never-issued", expires_at=NOW)
    checked = check_u1(database, vault, lwa, spapi)
    assert checked == Checked("u1", CheckOutcome.ok, marketplaces=2)
    assert participation_calls(amazon) == 2
    assert amazon.state.stats()["grants"]["refresh_token"] == 1  # the fresh token
    assert credential_of(database, "u1").check_allowance == pytest.approx(13, abs=0.01)  # two
    assert [e.kind for e in events_of(database, "u1", *CHECK_KINDS)] == [
        "seller_check_failed",
        "seller_checked",
    ]


@pytest.mark.parametrize(
    ("days_ago", "outcome"), [(10, CheckOutcome.revoked), (365, CheckOutcome.expired)]
)
def test_lwa_refusing_the_confirming_refresh_decides_without_a_second_call(
    amazon: Sandbox,
    database: Database,
    vault: Vault,
    lwa: LwaClient,
    spapi: SpApiClient,
    days_ago: int,
    outcome: CheckOutcome,
) -> None:
    known = sandbox_seller(
        amazon,
        database,
        vault,
        access_token="Atza|never-issued",  # the SP-API refuses it
        expires_at=NOW,
        authorized_at=now() - timedelta(days=days_ago),
    )
    amazon.state.revoke(known.selling_partner_id)
    checked = check_u1(database, vault, lwa, spapi)
    assert checked.outcome == outcome and checked.reconnect_url == RECONNECT_U1
    assert participation_calls(amazon) == 1
    assert integration_of(database, "u1").status == str(outcome)
    assert credential_of(database, "u1").refused_by_spapi_at is None  # LWA's word


def test_a_transient_failure_at_the_confirming_refresh_is_counted_and_decides_nothing(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    known = sandbox_seller(
        amazon, database, vault, access_token="Atza|never-issued", expires_at=NOW
    )
    amazon.state.set_behaviour(known.selling_partner_id, "flaky", status=503)
    checked = check_u1(database, vault, lwa, spapi)
    assert checked.outcome == CheckOutcome.failed and checked.reconnect_url is None
    assert checked.user_id == "u1"
    assert checked.message is not None and checked.message.startswith("LWA answered 503")
    integration = integration_of(database, "u1")
    assert integration.status == Status.active
    assert integration.meta["consecutive_failures"] == 1
    assert credential_of(database, "u1").next_attempt_at is not None  # the refresh's backoff


def test_the_app_refused_at_the_confirming_refresh_is_the_command_s_error(
    amazon: Sandbox, database: Database, vault: Vault, spapi: SpApiClient
) -> None:
    sandbox_seller(amazon, database, vault, access_token="Atza|never-issued", expires_at=NOW)
    refused_app = LwaClient(app_for(amazon, client_secret="wrong"))
    with refused_app, pytest.raises(AppCredentialsRejected):
        check_u1(database, vault, refused_app, spapi)
    assert integration_of(database, "u1").status == Status.active


def test_no_allowance_left_for_the_confirming_call_decides_nothing(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    sandbox_seller(
        amazon,
        database,
        vault,
        access_token="Atza|never-issued",
        expires_at=NOW,
        check_allowance=1.0,
        check_allowance_at=now(),
    )
    checked = check_u1(database, vault, lwa, spapi)
    assert checked.outcome == CheckOutcome.paced
    assert participation_calls(amazon) == 1
    assert integration_of(database, "u1").status == Status.active


def test_an_answer_that_proves_nothing_is_recorded_only(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.set_behaviour(known.selling_partner_id, "spapi_403_ambiguous", times=1)
    checked = check_u1(database, vault, lwa, spapi)
    assert checked == Checked("u1", CheckOutcome.inconclusive, message=checked.message)
    assert checked.outcome.value == "inconclusive"
    assert checked.message is not None and checked.message.startswith("SP-API answered 403")
    integration = integration_of(database, "u1")
    assert integration.status == Status.active and "consecutive_failures" not in integration.meta


def test_throttling_that_lasts_is_a_counted_failure(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    known = sandbox_seller(amazon, database, vault)
    amazon.state.set_behaviour(known.selling_partner_id, "spapi_429", retry_after=0)
    checked = check_u1(database, vault, lwa, spapi)
    assert checked == Checked("u1", CheckOutcome.failed, message=checked.message)
    assert checked.outcome.value == "failed"
    assert checked.message is not None and checked.message.startswith("SP-API answered 429")
    assert integration_of(database, "u1").meta["consecutive_failures"] == 1
    assert participation_calls(amazon) == 3  # tried again in the run
    assert credential_of(database, "u1").check_allowance == 14  # one check, however many tries


# -- what an answer means, recorded -----------------------------------------------------------


def refused(status: int = 401) -> SpApiTokenRefused:
    return SpApiTokenRefused(
        "SP-API refused the seller's token (401): gone",
        error_type="spapi_token_refused",
        status_code=status,
    )


def test_an_answer_is_recorded_as_the_seller_in_sync(database: Database, vault: Vault) -> None:
    add_seller(database, vault, "u1", meta={"consecutive_failures": 3})
    with database.session() as session:
        failing = lifecycle.find(session, "u1", "amazon")
        assert failing is not None
        lifecycle.record_transient_failure(session, failing, error_type="x", message="m")
    with database.session() as session:
        outcome = record_check(session, "u1", None, frontend_url=FRONTEND, marketplaces=4)
    assert outcome == CheckOutcome.ok
    (event,) = events_of(database, "u1", *CHECK_KINDS)
    assert (event.kind, event.outcome, event.error_type, event.detail) == (
        "seller_checked",
        "success",
        None,
        {"marketplaces": 4},
    )
    assert "consecutive_failures" not in integration_of(database, "u1").meta
    (alert,) = notifications_of(database, "admin")
    assert alert.resolved_at is not None


def test_a_failed_check_is_an_event_with_what_the_sp_api_said(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    error = ProviderError(
        "SP-API answered 403: nope", error_type="spapi_forbidden", status_code=403
    )
    with database.session() as session:
        outcome = record_check(session, "u1", error, frontend_url=FRONTEND)
    assert outcome == CheckOutcome.inconclusive
    (event,) = events_of(database, "u1", *CHECK_KINDS)
    assert (event.kind, event.outcome, event.provider, event.error_type) == (
        "seller_check_failed",
        "failure",
        "amazon",
        "spapi_forbidden",
    )
    assert event.detail == {"http_status": 403, "message": "SP-API answered 403: nope"}
    integration = integration_of(database, "u1")
    assert (integration.status, integration.meta) == (Status.active, {})
    assert credential_of(database, "u1").next_attempt_at is None


@pytest.mark.parametrize(
    ("days_ago", "outcome"), [(10, CheckOutcome.revoked), (365, CheckOutcome.expired)]
)
def test_a_refused_token_is_recorded_as_a_refused_refresh(
    database: Database, vault: Vault, days_ago: int, outcome: CheckOutcome
) -> None:
    authorized = now() - timedelta(days=days_ago)
    add_seller(
        database, vault, "u1", authorized_at=authorized, access_token="Atza|x", expires_at=NOW
    )
    with database.session() as session:
        decided = record_check(session, "u1", refused(), frontend_url=FRONTEND, confirmed=True)
    assert decided == outcome
    assert integration_of(database, "u1").status == str(outcome)
    (failed,) = events_of(database, "u1", "token_refresh_failed")
    expected_type = (
        "oauth_token_expired" if outcome == CheckOutcome.expired else "oauth_token_revoked"
    )
    assert (failed.error_type, failed.detail["http_status"]) == (expected_type, 401)
    assert failed.detail["message"] == "SP-API refused the seller's token (401): gone"
    (checked,) = events_of(database, "u1", *CHECK_KINDS)
    assert checked.error_type == "spapi_token_refused"
    credential = credential_of(database, "u1")
    assert credential.access_token is None
    assert near(credential.refused_by_spapi_at, now())  # the SP-API's word: looked at again
    assert credential.next_attempt_at is None  # by the next run
    (note,) = notifications_of(database, "user")
    assert note.detail["reconnectUrl"] == RECONNECT_U1


def test_a_refusal_not_confirmed_with_a_fresh_token_is_recorded_only(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1", access_token="Atza|x", expires_at=NOW)
    with database.session() as session:
        decided = record_check(session, "u1", refused(), frontend_url=FRONTEND)
    assert decided == CheckOutcome.inconclusive
    assert integration_of(database, "u1").status == Status.active
    (checked,) = events_of(database, "u1", *CHECK_KINDS)
    assert (checked.kind, checked.error_type) == ("seller_check_failed", "spapi_token_refused")
    assert events_of(database, "u1", "token_refresh_failed") == []
    credential = credential_of(database, "u1")
    assert credential.refused_by_spapi_at is None and credential.access_token is not None


def test_a_seller_refused_again_when_looked_at_again_waits_before_the_next_look(
    database: Database, vault: Vault
) -> None:
    before = now()
    add_seller(database, vault, "u1", status=Status.revoked, refused_by_spapi_at=before)
    with database.session() as session:
        decided = record_check(session, "u1", refused(), frontend_url=FRONTEND, confirmed=True)
    assert decided == CheckOutcome.revoked
    credential = credential_of(database, "u1")
    assert credential.refused_by_spapi_at is not None and credential.refused_by_spapi_at > before
    assert credential.next_attempt_at is not None
    assert near(credential.next_attempt_at, now() + timedelta(hours=6))
    assert notifications_of(database, "user") == []  # already told: revoked is no news


def test_an_answer_brings_back_a_seller_the_sp_api_refused(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    with database.session() as session:  # revoked on the SP-API's word: the seller was told
        record_check(session, "u1", refused(), frontend_url=FRONTEND, confirmed=True)
    (lost,) = notifications_of(database, "user")
    assert lost.resolved_at is None
    with database.session() as session:
        assert record_check(session, "u1", None, frontend_url=FRONTEND) == CheckOutcome.ok
    assert integration_of(database, "u1").status == Status.active
    (lost,) = notifications_of(database, "user")
    assert lost.resolved_at is not None
    credential = credential_of(database, "u1")
    assert credential.refused_by_spapi_at is None and credential.next_attempt_at is None
    back = events_of(database, "u1", "status_changed")[-1]
    assert (back.detail["to"], back.detail["reason"]) == ("active", "spapi_accepted")


def test_an_answer_does_not_bring_back_a_seller_lwa_refused(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1", status=Status.revoked)
    with database.session() as session:
        assert record_check(session, "u1", None, frontend_url=FRONTEND) == CheckOutcome.ok
    assert integration_of(database, "u1").status == Status.revoked


def test_a_transient_failure_is_counted_and_waits_the_refresh_s_backoff(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    error = TransientProviderError("SP-API answered 503", error_type="spapi_server_error")
    before = now()
    with database.session() as session:
        assert record_check(session, "u1", error, frontend_url=FRONTEND) == CheckOutcome.failed
    after = now()
    integration = integration_of(database, "u1")
    assert integration.status == Status.active
    assert integration.meta["consecutive_failures"] == 1
    assert integration.meta["last_error"]["type"] == "provider_server_error"
    credential = credential_of(database, "u1")
    assert credential.next_attempt_at is not None
    assert before + timedelta(minutes=4) <= credential.next_attempt_at
    assert credential.next_attempt_at <= after + timedelta(minutes=6)
    assert events_of(database, "u1", "token_refresh_failed") == []  # not a refresh
    for _ in range(2):
        with database.session() as session:
            record_check(session, "u1", error, frontend_url=FRONTEND)
    (alert,) = notifications_of(database, "admin")
    assert (alert.kind, alert.detail) == (
        "repeated_failures",
        {"consecutive_failures": 3, "error_type": "provider_server_error"},
    )


@pytest.mark.parametrize(
    "error",
    [None, refused(), TransientProviderError("busy", error_type="spapi_server_error")],
    ids=["answer", "refused", "transient"],
)
def test_recording_a_check_keeps_other_writers_out_while_it_reads_the_seller(
    sqlite_db: Any, database: Database, vault: Vault, error: ProviderError | None
) -> None:
    add_seller(database, vault, "u1")
    path = sqlite_db.url.removeprefix("sqlite:///")
    with writers_tried_at_reads(path, "integration_status") as tried, database.session() as s:
        record_check(s, "u1", error, frontend_url=FRONTEND, confirmed=True)
    assert tried and not any(tried)


# -- who a check of everyone covers -----------------------------------------------------------


def test_every_active_amazon_seller_is_checked_in_order(database: Database, vault: Vault) -> None:
    for user_id in ("u2", "u1"):
        add_seller(database, vault, user_id)
    add_seller(database, vault, "gone", status=Status.revoked)
    add_seller(database, vault, "late", status=Status.expired)
    with database.session() as session:
        lifecycle.create(session, "payer", "stripe", Status.active)
    with database.session() as session:
        assert active_sellers(session) == ["u1", "u2"]


# -- a check of every seller: held verdicts, weighed at the end ---------------------------------


def test_a_fresh_token_refused_again_is_held_when_asked(
    amazon: Sandbox, database: Database, vault: Vault, lwa: LwaClient, spapi: SpApiClient
) -> None:
    known = sandbox_seller(amazon, database, vault, authorized_at=now() - timedelta(days=365))
    amazon.state.set_behaviour(known.selling_partner_id, "spapi_401", times=2)
    held: list[Held] = []
    checked = check_seller(
        database.session, vault, lwa, spapi, "u1", frontend_url=FRONTEND, held=held
    )
    assert (checked.user_id, checked.outcome, checked.reconnect_url) == (
        "u1",
        CheckOutcome.expired,  # the verdict a refresh would reach, past 365 days
        RECONNECT_U1,
    )
    assert checked.message is not None and checked.message.startswith("SP-API refused")
    (kept,) = held
    assert (kept.user_id, kept.verdict) == ("u1", None)
    assert isinstance(kept.refusal, SpApiTokenRefused)
    assert kept.authorized_at == credential_of(database, "u1").authorized_at  # the one refused
    assert integration_of(database, "u1").status == Status.active
    assert credential_of(database, "u1").refused_by_spapi_at is None


def held_for(database: Database, vault: Vault, users: int, gone: int) -> list[Held]:
    for n in range(users):
        add_seller(database, vault, f"u{n}")
    lwa_said = Verdict(RefreshOutcome.revoked, REVOKED, "LWA refused the grant", 400)
    given = {n: credential_of(database, f"u{n}").authorized_at for n in range(gone)}
    return [
        Held(f"u{n}", lwa_said, authorized_at=given[n])
        if n % 2
        else Held(f"u{n}", refusal=refused(), authorized_at=given[n])
        for n in range(gone)
    ]


def test_held_verdicts_that_are_most_of_the_answers_mark_nobody(
    database: Database, vault: Vault
) -> None:
    held = held_for(database, vault, 10, 6)
    assert settle(database.session, held, 10, Brake(), frontend_url=FRONTEND)
    with database.session() as session:
        statuses = {i.user_id: i.status for i in session.scalars(sa.select(IntegrationStatus))}
    assert set(statuses.values()) == {Status.active}
    (alert,) = notifications_of(database, "admin")
    assert (alert.kind, alert.detail) == ("mass_revocation_held", {"held": 6, "answered": 10})


def test_held_verdicts_the_brake_lets_through_are_applied_each_as_its_own(
    database: Database, vault: Vault
) -> None:
    held = held_for(database, vault, 10, 5)
    with database.session() as session:  # u0 removed since: nothing to record on
        session.delete(lifecycle.find(session, "u0", "amazon"))
    assert not settle(database.session, held, 10, Brake(), frontend_url=FRONTEND)
    for user in ("u1", "u3"):  # LWA's word
        assert integration_of(database, user).status == Status.revoked
        assert credential_of(database, user).refused_by_spapi_at is None
    for user in ("u2", "u4"):  # the SP-API's word
        assert integration_of(database, user).status == Status.revoked
        assert credential_of(database, user).refused_by_spapi_at is not None
    assert integration_of(database, "u5").status == Status.active


@pytest.mark.parametrize("cached", [False, True], ids=["at-the-first-refresh", "confirming"])
def test_lwa_s_verdict_is_held_when_asked_whichever_refresh_reaches_it(
    amazon: Sandbox,
    database: Database,
    vault: Vault,
    lwa: LwaClient,
    spapi: SpApiClient,
    cached: bool,
) -> None:
    """No token cached: the refresh before the call meets invalid_grant; a cached token the
    SP-API refuses: the confirming refresh does. Either way the verdict is held, not recorded."""
    token = {"access_token": "Atza|never-issued", "expires_at": NOW} if cached else {}
    known = sandbox_seller(amazon, database, vault, **token)
    amazon.state.revoke(known.selling_partner_id)
    held: list[Held] = []
    checked = check_seller(
        database.session, vault, lwa, spapi, "u1", frontend_url=FRONTEND, held=held
    )
    assert checked.outcome == CheckOutcome.revoked
    (kept,) = held
    assert kept.verdict is not None and kept.refusal is None
    assert kept.authorized_at == credential_of(database, "u1").authorized_at
    assert integration_of(database, "u1").status == Status.active
    assert participation_calls(amazon) == (1 if cached else 0)


def test_a_held_verdict_about_an_authorization_replaced_since_is_not_applied(
    database: Database, vault: Vault
) -> None:
    held = held_for(database, vault, 10, 2)  # u0 the SP-API's, u1 LWA's
    with database.session() as session:  # both reconnected while the check went on
        for credential in session.scalars(sa.select(Credential)):
            credential.authorized_at = credential.authorized_at + timedelta(days=1)
    assert not settle(database.session, held, 10, Brake(), frontend_url=FRONTEND)
    assert integration_of(database, "u0").status == Status.active
    assert integration_of(database, "u1").status == Status.active
