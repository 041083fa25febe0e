"""refresh-all's Amazon run (``discoveryctl.amazon.refresh_all.run``) against the sandbox's LWA
and SP-API, called directly on rows written straight into SQLite:

- each due seller is refreshed once a run, batch after batch, and every lease let go;
- each answer is acted on (a refusal revokes, an unreadable credential fails alone), and with
  ``--verify`` each new token is checked at the SP-API while the seller's allowance lasts;
- the app's credentials refused: nothing more is sent, no seller is marked, the admins told;
- a stop or the deadline claims nothing more; the calls in flight have the grace period to
  end, and are abandoned after it (a check abandoned keeps its grant).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from refresh_all_seeds import (  # noqa: F401  (fixtures)
    CHECK_CALLS,
    FRONTEND,
    NOW,
    TOKEN_CALLS,
    add_seller,
    database_fixture,
    sellers,
    vault_fixture,
)

from discoveryctl.amazon.refresh_all import Summary, run
from discoveryctl.db.engine import Database
from discoveryctl.providers.lwa import AsyncLwaClient
from discoveryctl.providers.spapi import AsyncSpApiClient
from discoveryctl.sandbox import Sandbox
from discoveryctl.support.crypto import Vault

from helpers import app_for


def refresh_all(
    database: Database, vault: Vault, sandbox: Sandbox, *, verify: bool = False, **options: Any
) -> Summary:
    app = app_for(sandbox)
    return run(
        database.session,
        vault,
        lambda: AsyncLwaClient(app),
        frontend_url=FRONTEND,
        spapi_factory=lambda: AsyncSpApiClient(app),
        verify=verify,
        **options,
    )


def sent(sandbox: Sandbox, route: str = TOKEN_CALLS) -> int:
    return int(sandbox.state.stats()["requests"].get(route, 0))


def statuses(db: Any) -> dict[str, str]:
    return {r["user_id"]: r["status"] for r in db.rows("SELECT * FROM integration_status")}


def leases_held(db: Any) -> int:
    return int(db.scalar("SELECT count(*) FROM credentials WHERE lease_owner IS NOT NULL"))


def refreshed_users(db: Any) -> list[str]:
    rows = db.rows("SELECT user_id FROM events WHERE kind = 'token_refreshed' ORDER BY user_id")
    return [r["user_id"] for r in rows]


def test_a_run_refreshes_each_due_seller_once_and_lets_go_of_every_lease(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 3)
    later = NOW + timedelta(days=3650)  # a token cached for years: not due
    add_seller(database, vault, "fresh", access_token_expires_at=later, refreshed_at=later)
    shown: list[int] = []
    summary = refresh_all(database, vault, sandbox, progress=shown.append)
    assert summary.as_dict()["outcomes"]["refreshed"] == 3
    assert summary.total == 3 and summary.seconds > 0
    assert not (summary.interrupted or summary.deadline_reached or summary.app_rejected)
    assert shown[-1] == 3
    assert sent(sandbox) == 3
    assert refreshed_users(sqlite_db) == ["u0", "u1", "u2"]
    assert leases_held(sqlite_db) == 0
    again = refresh_all(database, vault, sandbox)
    assert again.total == 0 and sent(sandbox) == 3


def test_a_run_goes_on_batch_after_batch_until_no_seller_is_due(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 140)  # batches of 64
    summary = refresh_all(database, vault, sandbox, concurrency=8)
    assert summary.as_dict()["outcomes"]["refreshed"] == 140
    stats = sandbox.state.stats()
    assert stats["grants"]["refresh_token"] == 140
    assert set(stats["refreshes_per_seller"].values()) == {1}
    assert leases_held(sqlite_db) == 0


def test_force_refreshes_sellers_that_are_not_due(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    later = NOW + timedelta(days=3650)
    sellers(database, vault, sandbox, 2, access_token_expires_at=later, refreshed_at=later)
    assert refresh_all(database, vault, sandbox).total == 0
    assert refresh_all(database, vault, sandbox, force=True).total == 2
    assert sent(sandbox) == 2


def test_a_run_uses_the_margin_and_maximum_age_it_is_given(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    known = sandbox.state.add_seller()
    add_seller(
        database,
        vault,
        "u0",
        token=known.refresh_token,
        access_token_expires_at=now + timedelta(minutes=30),
        refreshed_at=now - timedelta(hours=2),
    )
    assert refresh_all(database, vault, sandbox).total == 0
    assert refresh_all(database, vault, sandbox, margin=timedelta(hours=1)).total == 1
    add_seller(
        database,
        vault,
        "u1",
        token=sandbox.state.add_seller().refresh_token,
        access_token_expires_at=now + timedelta(minutes=30),
        refreshed_at=now - timedelta(hours=2),
    )
    assert refresh_all(database, vault, sandbox, max_age=timedelta(hours=1)).total == 1
    assert refreshed_users(sqlite_db) == ["u0", "u1"]


def test_each_refusal_is_acted_on_and_an_unreadable_credential_fails_alone(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    _, gone, _ = sellers(database, vault, sandbox, 3)
    sandbox.state.revoke(gone.selling_partner_id)
    with sqlite_db.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE credentials SET refresh_token = 'not-a-fernet-token' WHERE id = 3"
        )
    summary = refresh_all(database, vault, sandbox)
    assert {k: v for k, v in summary.as_dict()["outcomes"].items() if v} == {
        "refreshed": 1,
        "revoked": 1,
        "failed": 1,
    }
    assert statuses(sqlite_db) == {"u0": "active", "u1": "revoked", "u2": "active"}
    failed = sqlite_db.rows("SELECT user_id, error_type FROM events WHERE kind LIKE '%failed'")
    assert sorted((r["user_id"], r["error_type"]) for r in failed) == [
        ("u1", "oauth_token_revoked"),
        ("u2", "credential_unreadable"),
    ]
    assert sent(sandbox) == 2  # the unreadable one is never sent
    assert leases_held(sqlite_db) == 0


def test_a_rotated_refresh_token_is_stored_and_one_sent_back_unchanged_is_kept(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    rotating, plain = sellers(database, vault, sandbox, 2)
    sandbox.state.set_behaviour(rotating.selling_partner_id, "rotate_refresh_token", times=1)
    assert refresh_all(database, vault, sandbox).total == 2
    stored = [
        vault.decrypt(r["refresh_token"]) for r in sqlite_db.rows("SELECT * FROM credentials")
    ]
    assert stored[0] != rotating.refresh_token
    assert stored[1] == plain.refresh_token
    events = sqlite_db.rows("SELECT user_id, detail FROM events WHERE kind = 'token_refreshed'")
    rotated = [(r["user_id"], json.loads(r["detail"])["refresh_token_rotated"]) for r in events]
    assert sorted(rotated) == [
        ("u0", True),
        ("u1", False),
    ]


def test_the_app_s_credentials_refused_stop_the_run_and_mark_no_seller(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 5)
    sandbox.state.rotate_client_secret("a-secret-we-do-not-have")
    summary = refresh_all(database, vault, sandbox, concurrency=1)
    assert summary.app_rejected
    assert summary.total == 0
    assert sent(sandbox) == 1  # nothing more once LWA refused the app
    assert set(statuses(sqlite_db).values()) == {"active"}
    alerts = sqlite_db.rows("SELECT kind FROM notifications WHERE audience = 'admin'")
    assert [a["kind"] for a in alerts] == ["app_credentials_rejected"]
    assert sqlite_db.rows("SELECT * FROM events WHERE kind = 'token_refresh_failed'") == []
    assert leases_held(sqlite_db) == 0


def test_verify_checks_each_new_token_while_the_seller_s_allowance_lasts(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    _, refused, _ = sellers(database, vault, sandbox, 3)
    sandbox.state.set_behaviour(refused.selling_partner_id, "spapi_401", times=2)
    with sqlite_db.engine.begin() as connection:  # u2 has checked its whole burst just now
        connection.exec_driver_sql(
            "UPDATE credentials SET check_allowance = 0, check_allowance_at = :now WHERE id = 3",
            {"now": NOW.strftime("%Y-%m-%d %H:%M:%S.%f")},
        )
    summary = refresh_all(database, vault, sandbox, verify=True)
    assert summary.as_dict()["outcomes"]["refreshed"] == 3
    assert dict(summary.checks) == {"ok": 1, "revoked": 1, "paced": 1}
    assert sent(sandbox, CHECK_CALLS) == 3  # u1's refusal confirmed with a second call
    assert statuses(sqlite_db) == {"u0": "active", "u1": "revoked", "u2": "active"}


def test_without_verify_no_token_is_checked(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 2)
    summary = refresh_all(database, vault, sandbox)
    assert dict(summary.checks) == {}
    assert sent(sandbox, CHECK_CALLS) == 0
    remaining = sqlite_db.rows("SELECT check_allowance FROM credentials")
    assert [r["check_allowance"] for r in remaining] == [None, None]


def test_a_stopped_run_claims_and_sends_nothing_more_and_lets_go_of_its_leases(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 3)
    stop = asyncio.Event()
    stop.set()
    summary = refresh_all(database, vault, sandbox, stop=stop)
    assert summary.interrupted is True and summary.deadline_reached is False
    assert summary.total == 0 and sent(sandbox) == 0
    assert leases_held(sqlite_db) == 0


def test_a_run_past_its_deadline_claims_nothing_more(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 3)
    summary = refresh_all(database, vault, sandbox, deadline=0.0)
    assert summary.deadline_reached is True and summary.interrupted is False
    assert summary.total == 0 and sent(sandbox) == 0
    assert leases_held(sqlite_db) == 0


def test_a_call_in_flight_at_the_deadline_ends_within_the_grace_and_is_recorded(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    (slow,) = sellers(database, vault, sandbox, 1)
    sandbox.state.set_behaviour(slow.selling_partner_id, "slow", ms=400)
    summary = refresh_all(database, vault, sandbox, deadline=0.1, grace=2.0)
    assert summary.deadline_reached is True
    assert summary.as_dict()["outcomes"]["refreshed"] == 1
    assert refreshed_users(sqlite_db) == ["u0"]
    assert leases_held(sqlite_db) == 0


def test_a_call_still_in_flight_after_the_grace_is_abandoned_and_its_lease_let_go(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    slow, _ = sellers(database, vault, sandbox, 2)
    sandbox.state.set_behaviour(slow.selling_partner_id, "slow", ms=1000)
    summary = refresh_all(database, vault, sandbox, deadline=0.2, grace=0.1)
    assert summary.deadline_reached is True
    assert summary.as_dict()["outcomes"]["refreshed"] == 1
    assert summary.seconds < 0.9
    assert refreshed_users(sqlite_db) == ["u1"]
    assert leases_held(sqlite_db) == 0


def test_a_check_abandoned_after_the_grace_keeps_its_grant(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    (seller,) = sellers(database, vault, sandbox, 1)
    sandbox.state.set_behaviour(seller.selling_partner_id, "rotate_refresh_token", revoke_old=1)
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_429", retry_after=10)
    summary = refresh_all(database, vault, sandbox, verify=True, deadline=0.3, grace=0.1)
    assert summary.as_dict()["outcomes"]["refreshed"] == 1
    assert dict(summary.checks) == {}
    (row,) = sqlite_db.rows("SELECT refresh_token FROM credentials")
    assert vault.decrypt(row["refresh_token"]) != seller.refresh_token  # the rotated one
    assert leases_held(sqlite_db) == 0
