"""refresh-all's Amazon rules on real rows, the clock given (``amazon.refresh_all``):

- which sellers are due: an active Amazon integration whose access token expires within the
  margin (5 minutes) or is not cached, or whose last refresh (else its consent) is at least the
  maximum age (a day) old; not while it waits out a backoff, nor while another run leases it;
  with ``force``, every active one that is not leased;
- a claim: up to ``limit`` due sellers past ``after``, in id order, leased to the run until
  ``now + lease``, walking past ids it cannot take; with ``checks``, one SP-API check spent
  from the allowance of each seller that has one;
- a batch's write: only answers for leases still held are recorded, each refresh, check and
  failure as its verdict says (a refusal of a token replaced since is not one), the batch's
  leases let go, and the app's refusal told to the admins;
- the summary's figures, and how a run closes.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from refresh_all_seeds import FRONTEND, NOW, add_seller, database_fixture, vault_fixture  # noqa: F401

from discoveryctl.amazon.mass_revocation import Brake
from discoveryctl.amazon.refresh_all import (
    DEFAULT_MAX_AGE,
    Answer,
    Closing,
    Due,
    Summary,
    _claim_due,
    _write_batch,
    claim_batch,
    due_now,
    settle,
)
from discoveryctl.amazon.verdict import RefreshOutcome, Verdict
from discoveryctl.db.engine import Database
from discoveryctl.errors import SpApiTokenRefused, TransientProviderError
from discoveryctl.providers.lwa import TokenGrant
from discoveryctl.support.crypto import Vault

MINUTE, HOUR, SECOND = timedelta(minutes=1), timedelta(hours=1), timedelta(seconds=1)
LEASE = timedelta(seconds=60)


def fresh(**columns: Any) -> dict[str, Any]:
    """A credential refreshed an hour ago whose token has an hour left: not due."""
    return {"access_token_expires_at": NOW + HOUR, "refreshed_at": NOW - HOUR} | columns


def due_users(database: Database, **options: Any) -> list[str]:
    with database.session() as session:
        return [due.user_id for due in due_now(session, now=NOW, **options)]


def claim(database: Database, owner: str = "run-a", limit: int = 10, **options: Any) -> list[Due]:
    with database.session() as session:
        return claim_batch(session, owner, limit, now=NOW, **options)


def credential(db: Any, credential_id: int) -> dict[str, Any]:
    (row,) = db.rows("SELECT * FROM credentials WHERE id = :id", id=credential_id)
    return row


# -- which sellers are due ----------------------------------------------------------------


def test_a_token_expiring_within_the_5_minute_margin_is_due_and_one_just_past_it_is_not(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "at-margin", **fresh(access_token_expires_at=NOW + 5 * MINUTE))
    add_seller(
        database, vault, "past-margin", **fresh(access_token_expires_at=NOW + 5 * MINUTE + SECOND)
    )
    add_seller(database, vault, "expired", **fresh(access_token_expires_at=NOW - MINUTE))
    add_seller(database, vault, "no-token", **fresh(access_token_expires_at=None))
    assert due_users(database) == ["at-margin", "expired", "no-token"]


def test_a_seller_refreshed_a_day_ago_is_due_and_one_refreshed_just_after_is_not(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "a-day", **fresh(refreshed_at=NOW - DEFAULT_MAX_AGE))
    add_seller(database, vault, "not-yet", **fresh(refreshed_at=NOW - DEFAULT_MAX_AGE + SECOND))
    assert due_users(database) == ["a-day"]


def test_a_seller_never_refreshed_is_due_a_day_after_its_consent(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "old", authorized_at=NOW - 24 * HOUR, **fresh(refreshed_at=None))
    add_seller(
        database, vault, "new", authorized_at=NOW - 24 * HOUR + SECOND, **fresh(refreshed_at=None)
    )
    assert due_users(database) == ["old"]


def test_the_margin_and_the_maximum_age_are_the_run_s_to_choose(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "in-10-min", **fresh(access_token_expires_at=NOW + 10 * MINUTE))
    add_seller(database, vault, "2-hours-ago", **fresh(refreshed_at=NOW - 2 * HOUR))
    assert due_users(database) == []
    assert due_users(database, margin=10 * MINUTE) == ["in-10-min"]
    assert due_users(database, max_age=2 * HOUR) == ["2-hours-ago"]


def test_a_seller_waiting_out_its_backoff_is_not_due_until_it_ends(
    database: Database, vault: Vault
) -> None:
    expired = {"access_token_expires_at": NOW - MINUTE}
    add_seller(database, vault, "waiting", **fresh(next_attempt_at=NOW + SECOND, **expired))
    add_seller(database, vault, "ends-now", **fresh(next_attempt_at=NOW, **expired))
    add_seller(database, vault, "ended", **fresh(next_attempt_at=NOW - HOUR, **expired))
    assert due_users(database) == ["ends-now", "ended"]


def test_force_makes_every_active_seller_due_but_not_one_another_run_holds(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "fresh", **fresh())
    add_seller(database, vault, "backing-off", **fresh(next_attempt_at=NOW + HOUR))
    add_seller(database, vault, "held", **fresh(lease_owner="other", lease_expires_at=NOW + SECOND))
    add_seller(database, vault, "revoked", status="revoked")
    assert due_users(database, force=True) == ["fresh", "backing-off"]
    assert due_users(database) == []


def test_only_active_amazon_integrations_without_a_live_lease_are_due(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "active")
    add_seller(database, vault, "revoked", status="revoked")
    add_seller(database, vault, "stripe", provider="stripe")
    add_seller(database, vault, "held", lease_owner="other", lease_expires_at=NOW + SECOND)
    add_seller(database, vault, "lease-ran-out", lease_owner="other", lease_expires_at=NOW)
    assert due_users(database) == ["active", "lease-ran-out"]


def test_a_seller_gone_on_the_sp_api_s_word_alone_is_due_to_be_looked_at_again(
    database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "refused", status="revoked", refused_by_spapi_at=NOW - HOUR)
    add_seller(database, vault, "expired", status="expired", refused_by_spapi_at=NOW - HOUR)
    add_seller(database, vault, "lwa", status="revoked")  # LWA's word: final
    add_seller(
        database,
        vault,
        "waiting",
        status="revoked",
        refused_by_spapi_at=NOW - HOUR,
        next_attempt_at=NOW + SECOND,
    )
    add_seller(database, vault, "pending", status="pending", refused_by_spapi_at=NOW - HOUR)
    assert due_users(database) == ["refused", "expired"]
    with database.session() as session:
        (listed, _) = due_now(session, now=NOW)
    assert (listed.recheck, listed.wants_check) == (True, True)
    claimed = claim(database)
    assert [d.user_id for d in claimed] == ["refused", "expired"]
    assert all(d.recheck and d.wants_check and d.may_check for d in claimed)


def test_a_seller_looked_at_again_spends_a_check_even_without_verify(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    first = add_seller(database, vault, "active")
    second = add_seller(database, vault, "refused", status="revoked", refused_by_spapi_at=NOW)
    active, refused = claim(database)
    assert refused.may_check
    assert (active.wants_check, active.may_check, active.recheck) == (False, False, False)
    assert credential(db_rows, first)["check_allowance"] is None
    assert credential(db_rows, second)["check_allowance"] == 14.0


def test_a_due_seller_is_listed_with_its_stored_authorization(
    database: Database, vault: Vault
) -> None:
    first = add_seller(database, vault, "u1")
    with database.session() as session:
        (due,) = due_now(session, now=NOW)
    stored = vault.decrypt(due.refresh_token)
    assert (due.credential_id, due.user_id, stored) == (first, "u1", "Atzr|u1")
    assert (due.authorized_at, due.region, due.may_check) == (NOW - timedelta(days=10), "na", False)


def test_without_a_moment_given_due_is_asked_at_the_clock_s(
    database: Database, vault: Vault
) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    add_seller(database, vault, "soon", **fresh(access_token_expires_at=now + 4 * MINUTE))
    add_seller(
        database,
        vault,
        "later",
        **fresh(access_token_expires_at=now + 6 * MINUTE, refreshed_at=now - HOUR),
    )
    with database.session() as session:
        assert [d.user_id for d in due_now(session)] == ["soon"]


# -- claims -------------------------------------------------------------------------------


def test_a_claim_leases_up_to_its_limit_in_id_order_until_now_plus_the_lease(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    ids = [add_seller(database, vault, f"u{n}") for n in range(3)]
    taken = claim(database, "run-a", 2, lease=LEASE)
    assert [d.credential_id for d in taken] == ids[:2]
    assert [d.user_id for d in taken] == ["u0", "u1"]
    for leased in ids[:2]:
        row = credential(db_rows, leased)
        assert (row["lease_owner"], row["lease_expires_at"]) == ("run-a", _stored(NOW + LEASE))
    assert credential(db_rows, ids[2])["lease_owner"] is None
    (last,) = claim(database, "run-b", 2, lease=LEASE)
    assert last.credential_id == ids[2]
    assert claim(database, "run-c", 2) == []


def test_a_claim_starts_past_the_id_it_is_given(database: Database, vault: Vault) -> None:
    ids = [add_seller(database, vault, f"u{n}") for n in range(3)]
    assert [d.credential_id for d in claim(database, after=ids[0])] == ids[1:]


def test_a_claim_walks_past_a_batch_of_sellers_it_cannot_take(
    database: Database, vault: Vault
) -> None:
    for n in range(3):
        add_seller(database, vault, f"gone{n}", status="revoked")
    live = add_seller(database, vault, "live")
    (taken,) = claim(database, limit=2, force=True)
    assert (taken.credential_id, taken.user_id) == (live, "live")


def test_a_claim_of_one_walks_past_each_seller_it_cannot_take_one_by_one(
    database: Database, vault: Vault
) -> None:
    for n in range(2):
        add_seller(database, vault, f"gone{n}", status="revoked")
    add_seller(database, vault, "live")
    assert [due.user_id for due in claim(database, limit=1)] == ["live"]


def test_a_claim_takes_only_due_sellers_unless_forced(database: Database, vault: Vault) -> None:
    add_seller(database, vault, "fresh", **fresh())
    due = add_seller(database, vault, "due", **fresh(refreshed_at=NOW - 2 * HOUR))
    assert [d.credential_id for d in claim(database, max_age=2 * HOUR)] == [due]
    assert [d.user_id for d in claim(database, "run-b", force=True)] == ["fresh"]


def test_a_claim_uses_the_margin_it_is_given(database: Database, vault: Vault) -> None:
    add_seller(database, vault, "in-10-min", **fresh(access_token_expires_at=NOW + 10 * MINUTE))
    assert claim(database) == []
    assert [d.user_id for d in claim(database, margin=10 * MINUTE)] == ["in-10-min"]


def test_a_claim_never_takes_a_live_lease_and_takes_over_one_run_out(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "held", lease_owner="other", lease_expires_at=NOW + SECOND)
    ran_out = add_seller(database, vault, "ran-out", lease_owner="other", lease_expires_at=NOW)
    assert [d.credential_id for d in claim(database, force=True)] == [ran_out]
    assert credential(db_rows, ran_out)["lease_owner"] == "run-a"


def test_a_claim_returns_what_a_refresh_needs(database: Database, vault: Vault) -> None:
    add_seller(database, vault, "u1", authorized_at=NOW - timedelta(days=20))
    (due,) = claim(database)
    assert due.user_id == "u1"
    assert vault.decrypt(due.refresh_token) == "Atzr|u1"
    assert (due.authorized_at, due.region, due.may_check) == (NOW - timedelta(days=20), "na", False)


def test_a_verifying_claim_spends_one_check_of_each_seller_that_has_one(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    never = add_seller(database, vault, "never-checked")
    one = add_seller(database, vault, "one-left", check_allowance=1.0, check_allowance_at=NOW)
    spent = add_seller(database, vault, "spent", check_allowance=0.99, check_allowance_at=NOW)
    taken = {d.user_id: d.may_check for d in claim(database, checks=True)}
    assert taken == {"never-checked": True, "one-left": True, "spent": False}
    assert credential(db_rows, never)["check_allowance"] == 14.0  # a full burst of 15, less one
    assert credential(db_rows, one)["check_allowance"] == 0.0
    assert credential(db_rows, never)["check_allowance_at"] == _stored(NOW)
    assert credential(db_rows, spent)["check_allowance"] == 0.99  # nothing spent
    assert credential(db_rows, spent)["check_allowance_at"] == _stored(NOW)


def test_a_run_s_claim_takes_its_batch_in_a_transaction_of_its_own(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    for n in range(3):
        add_seller(database, vault, f"u{n}")
    batch = _claim_due(database.session, "run-a", 2, now=NOW, lease=LEASE)
    assert [due.user_id for due in batch] == ["u0", "u1"]
    assert leases(db_rows) == ["run-a", "run-a", None]


def test_a_claim_without_checks_spends_no_allowance(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    seller = add_seller(database, vault, "u1", check_allowance=3.0, check_allowance_at=NOW - HOUR)
    (due,) = claim(database)
    assert due.may_check is False
    row = credential(db_rows, seller)
    assert (row["check_allowance"], row["check_allowance_at"]) == (3.0, _stored(NOW - HOUR))


@pytest.fixture
def db_rows(sqlite_db: Any) -> Any:
    return sqlite_db


def _stored(moment: Any) -> str:
    """A moment as SQLite stores it (``UTCDateTime``)."""
    return str(moment.strftime("%Y-%m-%d %H:%M:%S.%f"))


# -- a batch's write ----------------------------------------------------------------------

GRANT = TokenGrant(access_token="Atza|new-access-token", refresh_token=None, expires_in=3600)


def write(
    database: Database,
    vault: Vault,
    batch: list[Due],
    answers: list[Answer],
    *,
    rejected: Verdict | None = None,
    owner: str = "run-a",
    brake: Brake | None = Brake(),
) -> Summary:
    """A batch written, then (unless ``brake`` is None) the run's end with that brake."""
    summary = Summary()
    _write_batch(database.session, vault, owner, batch, answers, rejected, FRONTEND, summary)
    if brake is not None:
        settle(database.session, vault, summary, brake, frontend_url=FRONTEND)
    return summary


def counted(outcomes: Any) -> dict[str, int]:
    """The outcomes a summary counted at least once."""
    return {str(outcome): n for outcome, n in outcomes.items() if n}


def statuses(db: Any) -> dict[str, str]:
    return {r["user_id"]: r["status"] for r in db.rows("SELECT * FROM integration_status")}


def events_of(db: Any, kind: str) -> list[str]:
    rows = db.rows("SELECT user_id FROM events WHERE kind = :kind ORDER BY id", kind=kind)
    return [r["user_id"] for r in rows]


def leases(db: Any) -> list[Any]:
    return [r["lease_owner"] for r in db.rows("SELECT lease_owner FROM credentials ORDER BY id")]


def test_a_batch_write_stores_each_grant_and_lets_go_of_the_batch_s_leases(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    for n in range(3):
        add_seller(database, vault, f"u{n}")
    batch = claim(database, limit=2)
    summary = write(database, vault, batch, [Answer(due, grant=GRANT) for due in batch])
    assert counted(summary.outcomes) == {"refreshed": 2}
    assert events_of(db_rows, "token_refreshed") == ["u0", "u1"]
    rows = db_rows.rows("SELECT * FROM credentials ORDER BY id")
    assert [vault.decrypt(r["access_token"]) for r in rows[:2]] == [GRANT.access_token] * 2
    assert rows[2]["access_token"] is None
    assert leases(db_rows) == [None, None, None]


def test_a_batch_write_drops_the_answers_of_leases_taken_over_meanwhile(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    _, lost = (add_seller(database, vault, f"u{n}") for n in range(2))
    batch = claim(database)
    with db_rows.engine.begin() as connection:
        connection.exec_driver_sql(
            f"UPDATE credentials SET lease_owner = 'run-b' WHERE id = {lost}"
        )
    summary = write(database, vault, batch, [Answer(due, grant=GRANT) for due in batch])
    assert counted(summary.outcomes) == {"refreshed": 1}
    assert events_of(db_rows, "token_refreshed") == ["u0"]
    assert credential(db_rows, lost)["access_token"] is None
    assert leases(db_rows) == [None, "run-b"]  # only this run's leases are let go


def test_a_batch_write_acts_on_each_failure_s_verdict(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    for user in ("revoked", "failing", "reconnected"):
        add_seller(database, vault, user)
    batch = claim(database)
    gone = Verdict(RefreshOutcome.revoked, "oauth_token_revoked", "LWA refused the grant")
    transient = Verdict(RefreshOutcome.failed, "lwa_server_error", "LWA answered 503", 503)
    with db_rows.engine.begin() as connection:  # a reconnect stored another token meanwhile
        connection.exec_driver_sql(
            f"UPDATE credentials SET refresh_token = 'another' WHERE id = {batch[2].credential_id}"
        )
    answers = [Answer(batch[0], verdict=gone), Answer(batch[1], verdict=transient)]
    summary = write(database, vault, batch, [*answers, Answer(batch[2], verdict=gone)])
    assert counted(summary.outcomes) == {"revoked": 1, "failed": 1}
    assert statuses(db_rows) == {"revoked": "revoked", "failing": "active", "reconnected": "active"}
    # the transient failure with its batch; the revocation held to the run's end
    assert events_of(db_rows, "token_refresh_failed") == ["failing", "revoked"]
    notes = db_rows.rows("SELECT user_id, kind FROM notifications ORDER BY id")
    assert [(n["user_id"], n["kind"]) for n in notes] == [("revoked", "connection_lost")]
    assert leases(db_rows) == [None, None, None]


def test_a_transient_failure_of_a_token_replaced_since_is_still_counted(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    (due,) = claim(database)
    with db_rows.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE credentials SET refresh_token = 'another'")
    transient = Verdict(RefreshOutcome.failed, "lwa_server_error", "LWA answered 503", 503)
    summary = write(database, vault, [due], [Answer(due, verdict=transient)])
    assert counted(summary.outcomes) == {"failed": 1}
    assert events_of(db_rows, "token_refresh_failed") == ["u1"]


def test_the_app_s_refusal_marks_no_seller_and_tells_the_admins(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    (due,) = claim(database)
    refused = Verdict(RefreshOutcome.app_rejected, "lwa_invalid_client", "Client authentication")
    summary = write(database, vault, [due], [Answer(due, verdict=refused)], rejected=refused)
    assert counted(summary.outcomes) == {}
    assert summary.app_rejected == "Client authentication"
    assert statuses(db_rows) == {"u1": "active"}
    assert events_of(db_rows, "token_refresh_failed") == []
    notes = db_rows.rows("SELECT audience, kind, message FROM notifications")
    assert [(n["audience"], n["kind"], n["message"]) for n in notes] == [
        ("admin", "app_credentials_rejected", "Client authentication")
    ]
    assert leases(db_rows) == [None]


def test_an_app_refusal_already_told_is_not_told_again(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1")
    (due,) = claim(database)
    refused = Verdict(RefreshOutcome.app_rejected, "lwa_invalid_client", "Client authentication")
    summary = write(database, vault, [due], [Answer(due, verdict=refused)])
    assert summary.app_rejected is None
    assert db_rows.rows("SELECT * FROM notifications") == []


def test_a_batch_write_records_each_check_as_the_sp_api_answered(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    for user in ("checked", "paced", "refused", "throttled", "unchecked"):
        add_seller(database, vault, user)
    batch = claim(database, checks=True)
    refused = SpApiTokenRefused("the SP-API refused the token", status_code=401)
    throttled = TransientProviderError("slow down", error_type="spapi_throttled", status_code=429)
    answers = [
        Answer(batch[0], grant=GRANT, checked=True),
        Answer(batch[1], grant=GRANT, paced=True),
        Answer(batch[2], grant=GRANT, check_error=refused, confirmed=True, first_refusal=refused),
        Answer(batch[3], grant=GRANT, check_error=throttled),
        Answer(batch[4], grant=GRANT),
    ]
    summary = write(database, vault, batch, answers)
    assert counted(summary.outcomes) == {"refreshed": 5}
    assert dict(summary.checks) == {"ok": 1, "paced": 1, "revoked": 1, "failed": 1}
    assert events_of(db_rows, "seller_checked") == ["checked"]
    (checked,) = db_rows.rows("SELECT provider FROM events WHERE kind = 'seller_checked'")
    assert checked["provider"] == "amazon"
    # the first refusal with the batch; the second, with the run's verdicts at its end
    assert events_of(db_rows, "seller_check_failed") == ["refused", "throttled", "refused"]
    assert statuses(db_rows)["refused"] == "revoked"


def test_a_refresh_near_the_re_authorization_date_warns_the_seller_with_its_reconnect_link(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1", authorized_at=datetime.now(UTC) - timedelta(days=350))
    batch = claim(database)
    write(database, vault, batch, [Answer(batch[0], grant=GRANT)])
    (note,) = db_rows.rows("SELECT user_id, detail FROM notifications")
    assert note["user_id"] == "u1"
    assert json.loads(note["detail"])["reconnectUrl"].startswith(FRONTEND + "/")


def test_a_run_s_summary_adds_up_its_batches(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    for user in ("a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"):
        add_seller(database, vault, user)
    batch = claim(database, checks=True)
    refused = SpApiTokenRefused("the SP-API refused the token", status_code=401)
    transient = Verdict(RefreshOutcome.failed, "lwa_server_error", "LWA answered 503", 503)
    summary = Summary()
    for first in (0, 4):
        due = batch[first : first + 4]
        answers = [
            Answer(due[0], grant=GRANT, checked=True),
            Answer(due[1], grant=GRANT, paced=True),
            Answer(due[2], grant=GRANT, check_error=refused, confirmed=True),
            Answer(due[3], verdict=transient),
        ]
        _write_batch(database.session, vault, "run-a", due, answers, None, FRONTEND, summary)
    assert counted(summary.outcomes) == {"refreshed": 6, "failed": 2}
    assert dict(summary.checks) == {"ok": 2, "paced": 2}
    # LWA's answers: 6 grants, 2 refusals over HTTP (503)
    assert summary.answered == 8 and len(summary.held) == 2  # decided at the run's end
    settle(database.session, vault, summary, Brake(), frontend_url=FRONTEND)
    assert dict(summary.checks) == {"ok": 2, "paced": 2, "revoked": 2}


def test_a_batch_without_checks_counts_none(db_rows: Any, database: Database, vault: Vault) -> None:
    add_seller(database, vault, "u1")
    batch = claim(database)
    summary = write(database, vault, batch, [Answer(batch[0], grant=GRANT)])
    assert dict(summary.checks) == {}
    assert summary.as_dict()["checks"] == {}


# -- the summary, and closing -------------------------------------------------------------


def test_the_summary_counts_every_outcome_and_the_rate() -> None:
    summary = Summary(seconds=3.14159)
    summary.outcomes.update({"refreshed": 3, "revoked": 1})
    summary.checks.update({"ok": 2})
    assert summary.total == 4
    assert summary.as_dict() == {
        "outcomes": {"refreshed": 3, "revoked": 1, "expired": 0, "failed": 0, "app_rejected": 0},
        "total": 4,
        "checks": {"ok": 2},
        "seconds": 3.142,
        "per_second": 1.3,
        "app_credentials_rejected": None,
        "interrupted": False,
        "deadline_reached": False,
        "mass_revocation_held": 0,
    }


def test_a_summary_of_no_time_has_no_rate_and_says_how_it_ended() -> None:
    summary = Summary(app_rejected="refused", interrupted=True, deadline_reached=True)
    figures = summary.as_dict()
    assert (figures["total"], figures["seconds"], figures["per_second"]) == (0, 0.0, None)
    assert figures["app_credentials_rejected"] == "refused"
    assert figures["interrupted"] is True and figures["deadline_reached"] is True


def test_a_closing_run_gives_the_calls_in_flight_their_grace_once() -> None:
    closing = Closing()
    assert not closing.is_closed() and closing.grace_ends is None
    before = time.monotonic()
    closing.close(2.0)
    after = time.monotonic()
    assert closing.is_closed()
    assert closing.grace_ends is not None and before + 2.0 <= closing.grace_ends <= after + 2.0
    ends = closing.grace_ends
    closing.close(None)  # closed already: the first grace stands
    assert closing.grace_ends == ends


def test_a_run_closed_by_the_app_s_refusal_gives_no_grace() -> None:
    closing = Closing()
    closing.close(None)
    assert closing.is_closed() and closing.grace_ends is None
    closing.close(5.0)
    assert closing.grace_ends is None


# -- the run's end: the held verdicts, and the brake --------------------------------------------

GONE = Verdict(RefreshOutcome.revoked, "oauth_token_revoked", "LWA refused the grant", 400)
REFUSED = SpApiTokenRefused("refused again", error_type="spapi_token_refused", status_code=401)


def held_run(database: Database, vault: Vault, sellers: int, gone: int) -> tuple[Summary, Any]:
    """A batch of ``sellers`` written: the first ``gone`` refused by LWA, the rest granted."""
    for n in range(sellers):
        add_seller(database, vault, f"u{n}")
    batch = claim(database, limit=sellers)
    answers = [
        Answer(due, verdict=GONE) if n < gone else Answer(due, grant=GRANT)
        for n, due in enumerate(batch)
    ]
    return write(database, vault, batch, answers, brake=None), batch


def admin_alerts(db: Any) -> list[Any]:
    return db.rows(
        "SELECT kind, title, message, detail, resolved_at FROM notifications"
        " WHERE audience = 'admin' ORDER BY id"
    )


def test_the_brake_holds_every_verdict_marks_nobody_and_tells_the_admins(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    summary, _ = held_run(database, vault, 10, 6)
    assert (summary.answered, len(summary.held)) == (10, 6)
    settle(database.session, vault, summary, Brake(), frontend_url=FRONTEND)
    assert summary.mass_revocation_held == 6
    assert counted(summary.outcomes) == {"refreshed": 4}
    assert set(statuses(db_rows).values()) == {"active"}
    assert events_of(db_rows, "token_refresh_failed") == []
    (alert,) = admin_alerts(db_rows)
    assert alert["kind"] == "mass_revocation_held"
    assert json.loads(alert["detail"]) == {"held": 6, "answered": 10}
    assert alert["title"] == (
        "Amazon: most sellers' authorizations said gone at once: nobody marked"
    )
    assert alert["message"].startswith("6 of 10 refresh answers said")


def test_verdicts_the_brake_lets_through_are_applied_and_the_alert_resolved(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    summary, _ = held_run(database, vault, 10, 6)
    settle(database.session, vault, summary, Brake(), frontend_url=FRONTEND)
    again = Summary(answered=10, held=summary.held)
    settle(database.session, vault, again, Brake(accept=True), frontend_url=FRONTEND)
    assert again.mass_revocation_held == 0
    assert counted(again.outcomes) == {"revoked": 6}
    assert dict(again.checks) == {}  # LWA's verdicts: no check recorded for them
    assert sorted(u for u, s in statuses(db_rows).items() if s == "revoked") == [
        f"u{n}" for n in range(6)
    ]
    (alert,) = admin_alerts(db_rows)
    assert alert["resolved_at"] is not None


def test_a_run_without_answers_leaves_the_alert_open(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    summary, _ = held_run(database, vault, 10, 6)
    settle(database.session, vault, summary, Brake(), frontend_url=FRONTEND)
    settle(database.session, vault, Summary(), Brake(), frontend_url=FRONTEND)
    (alert,) = admin_alerts(db_rows)
    assert alert["resolved_at"] is None


def test_a_held_verdict_on_an_authorization_replaced_since_is_dropped(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    summary, batch = held_run(database, vault, 2, 1)
    with db_rows.engine.begin() as connection:  # a reconnect stored another token meanwhile
        connection.exec_driver_sql(
            f"UPDATE credentials SET refresh_token = 'another' WHERE id = {batch[0].credential_id}"
        )
    settle(database.session, vault, summary, Brake(), frontend_url=FRONTEND)
    assert counted(summary.outcomes) == {"refreshed": 1}
    assert statuses(db_rows) == {"u0": "active", "u1": "active"}


def test_a_held_verdict_after_the_run_s_own_rotation_is_applied(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    """LWA rotated the token at the first grant (stored by the run), then refused the next
    one: the authorization is the one the run left, not a reconnect's."""
    add_seller(database, vault, "u1")
    (due,) = claim(database)
    rotated = TokenGrant("Atza|first", "Atzr|rotated", 3600)
    answer = Answer(due, grant=rotated, verdict=GONE)
    summary = write(database, vault, [due], [answer])
    assert counted(summary.outcomes) == {"refreshed": 1, "revoked": 1}
    assert statuses(db_rows) == {"u1": "revoked"}
    assert leases(db_rows) == [None]


def test_a_seller_looked_at_again_whose_token_the_sp_api_takes_is_active_again(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    for user in ("u1", "u2"):
        add_seller(database, vault, user, status="revoked", refused_by_spapi_at=NOW)
    batch = claim(database)
    answers = [Answer(due, grant=GRANT, checked=True) for due in batch]
    summary = write(database, vault, batch, answers)
    assert dict(summary.checks) == {"restored": 2}
    assert statuses(db_rows) == {"u1": "active", "u2": "active"}
    assert events_of(db_rows, "seller_checked") == ["u1", "u2"]


def test_a_seller_looked_at_again_refused_again_stays_gone_and_needs_no_attention(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    for user in ("u1", "u2"):
        add_seller(database, vault, user, status="revoked", refused_by_spapi_at=NOW)
    batch = claim(database)
    refused = SpApiTokenRefused("refused", error_type="spapi_token_refused", status_code=401)
    answers = [Answer(due, grant=GRANT, check_error=refused, confirmed=True) for due in batch]
    summary = write(database, vault, batch, answers)
    assert dict(summary.checks) == {"still_refused": 2}
    assert summary.held == [] and statuses(db_rows) == {"u1": "revoked", "u2": "revoked"}
    rows = db_rows.rows("SELECT access_token, next_attempt_at FROM credentials")
    assert all(row["next_attempt_at"] is not None for row in rows)  # left a while
    assert db_rows.rows("SELECT * FROM notifications") == []  # nothing new to tell
    throttled = TransientProviderError("slow", error_type="spapi_throttled", status_code=429)
    add_seller(database, vault, "u3", status="revoked", refused_by_spapi_at=NOW)
    (due,) = claim(database, after=batch[-1].credential_id)
    answer = Answer(due, grant=GRANT, check_error=throttled)
    assert dict(write(database, vault, [due], [answer]).checks) == {"failed": 1}


def test_a_grant_alone_does_not_bring_back_a_seller_looked_at_again(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "u1", status="revoked", refused_by_spapi_at=NOW)
    (due,) = claim(database)
    summary = write(database, vault, [due], [Answer(due, grant=GRANT, paced=True)])
    assert counted(summary.outcomes) == {"refreshed": 1}
    assert statuses(db_rows) == {"u1": "revoked"}
    (row,) = db_rows.rows("SELECT access_token FROM credentials")
    assert row["access_token"] is not None  # the grant is stored all the same


def test_a_held_verdict_after_the_run_s_rotation_and_a_reconnect_since_is_dropped(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    add_seller(database, vault, "gone")  # its credential removed before the run's end
    add_seller(database, vault, "u1")
    gone, due = claim(database)
    rotated = TokenGrant("Atza|first", "Atzr|rotated", 3600)
    summary = write(
        database,
        vault,
        [gone, due],
        [
            Answer(gone, grant=GRANT, check_error=REFUSED, confirmed=True),
            Answer(due, grant=rotated, verdict=GONE),
        ],
        brake=None,
    )
    with db_rows.engine.begin() as connection:  # a reconnect, then the other one removed
        connection.exec_driver_sql(
            "UPDATE credentials SET refresh_token = :token WHERE id = :id",
            {"token": vault.encrypt("Atzr|reconnected"), "id": due.credential_id},
        )
        connection.exec_driver_sql(f"DELETE FROM credentials WHERE id = {gone.credential_id}")
    settle(database.session, vault, summary, Brake(), frontend_url=FRONTEND)
    assert counted(summary.outcomes) == {"refreshed": 2}
    assert dict(summary.checks) == {}
    assert statuses(db_rows) == {"gone": "active", "u1": "active"}


def test_a_confirming_call_is_spent_from_the_seller_s_allowance(
    db_rows: Any, database: Database, vault: Vault
) -> None:
    for user in ("confirmed", "refused-at-lwa", "plain"):
        add_seller(database, vault, user)
    batch = claim(database, checks=True)  # one check each: 14 left
    first = SpApiTokenRefused("refused", error_type="spapi_token_refused", status_code=401)
    answers = [
        Answer(batch[0], grant=GRANT, checked=True, first_refusal=first),
        Answer(batch[1], grant=GRANT, verdict=GONE, first_refusal=first),
        Answer(batch[2], grant=GRANT, checked=True),
    ]
    write(database, vault, batch, answers)
    left = [credential(db_rows, due.credential_id)["check_allowance"] for due in batch]
    assert left == [13.0, 14.0, 14.0]
