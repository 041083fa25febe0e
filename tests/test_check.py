"""`check amazon` against the sandbox's SP-API over real sockets: an answer marks the seller in
sync; a revoked token revokes; a 403 that says nothing is recorded, not acted on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from discoveryctl.sandbox import Sandbox

from helpers import amazon_line, import_sellers, write_lines


@pytest.fixture
def sellers(db: Any, cli: Any, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    known = [sandbox.state.add_seller() for _ in range(3)]
    lines = []
    for number, seller in enumerate(known):
        line = amazon_line(f"u{number}", seller.refresh_token)
        line["selling_partner_id"] = seller.selling_partner_id
        lines.append(line)
    assert cli("import", str(write_lines(tmp_path / "s.jsonl", *lines))).exit_code == 0
    return known


def kinds(db: Any, user: str) -> list[tuple[str, str | None]]:
    return [
        (r["kind"], r["error_type"])
        for r in db.rows(
            "SELECT kind, error_type FROM events WHERE user_id = :u AND kind LIKE 'seller_check%'"
            " ORDER BY id",
            u=user,
        )
    ]


def test_an_answer_marks_the_seller_in_sync(db: Any, cli: Any, sellers: Any) -> None:
    result = cli("check", "amazon", "--user", "u0", "--json")
    assert result.exit_code == 0, result.stderr
    (checked,) = result.json()
    assert (checked["outcome"], checked["marketplaces"]) == ("ok", 2)
    (row,) = cli("status", "--user", "u0", "--json").json()
    assert row["lastSyncedAt"] is not None
    assert kinds(db, "u0") == [("seller_checked", None)]


def test_one_refusal_proves_nothing_a_fresh_token_that_works_keeps_the_seller(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    """Amazon's "revoked, malformed or invalid" also comes back for expired and mis-signed
    tokens: the check refreshes and asks once more before it decides anything."""
    seller = sellers[1]
    assert cli("access-token", "amazon", "--user", "u1").exit_code == 0  # a cached token
    grants = sandbox.state.stats()["grants"]["refresh_token"]
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
    result = cli("check", "amazon", "--user", "u1", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()[0]["outcome"] == "ok"
    # a fresh token for the second call
    assert sandbox.state.stats()["grants"]["refresh_token"] == grants + 1
    assert participation_calls(sandbox) == 2
    (row,) = cli("status", "--user", "u1", "--json").json()
    assert row["status"] == "active"
    assert kinds(db, "u1") == [
        ("seller_check_failed", "spapi_token_refused"),  # the first refusal, on record
        ("seller_checked", None),
    ]
    assert cli("notifications", "--user", "u1", "--json").json() == []


def test_a_fresh_token_refused_again_revokes_on_the_sp_api_s_word(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    seller = sellers[1]
    assert cli("access-token", "amazon", "--user", "u1").exit_code == 0
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=2)
    result = cli("check", "amazon", "--user", "u1", "--json")
    assert result.exit_code == 1
    assert result.json()[0]["outcome"] == "revoked"
    assert participation_calls(sandbox) == 2
    (row,) = cli("status", "--user", "u1", "--json").json()
    assert row["status"] == "revoked"
    (note,) = cli("notifications", "--user", "u1", "--json").json()
    assert note["detail"]["reconnectUrl"].endswith("userId=u1")
    refused = db.rows(
        "SELECT error_type FROM events WHERE user_id = 'u1' AND kind = 'token_refresh_failed'"
    )
    assert refused == [{"error_type": "oauth_token_revoked"}]  # in the history as a refresh
    (marked,) = db.rows(REFUSED_BY_SPAPI.format(user="u1"))
    assert marked["refused_by_spapi_at"] is not None  # the SP-API's word: looked at again


def test_a_seller_revoked_at_amazon_is_revoked_on_lwa_s_word(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    """Revoked at Amazon, its access tokens die with it (403 "revoked … or invalid"); the
    refresh that follows gets LWA's invalid_grant, the authoritative answer."""
    seller = sellers[1]
    assert cli("access-token", "amazon", "--user", "u1").exit_code == 0
    sandbox.state.revoke(seller.selling_partner_id)
    result = cli("check", "amazon", "--user", "u1", "--json")
    assert result.exit_code == 1
    assert result.json()[0]["outcome"] == "revoked"
    assert participation_calls(sandbox) == 1  # no second call: LWA said it
    (row,) = cli("status", "--user", "u1", "--json").json()
    assert row["status"] == "revoked"
    (marked,) = db.rows(REFUSED_BY_SPAPI.format(user="u1"))
    assert marked["refused_by_spapi_at"] is None  # LWA's word: not looked at again


def test_a_403_saying_the_token_expired_refreshes_and_asks_again(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    """Our cached token outlived itself at Amazon (clocks apart): the cached token is not
    sent again; a fresh one is."""
    assert cli("access-token", "amazon", "--user", "u2").exit_code == 0
    sandbox.state.clock.advance(2 * 3600)  # past the token's hour at Amazon, not in our cache
    result = cli("check", "amazon", "--user", "u2", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()[0]["outcome"] == "ok"
    assert participation_calls(sandbox) == 2
    assert kinds(db, "u2") == [
        ("seller_check_failed", "spapi_token_expired"),
        ("seller_checked", None),
    ]


REFUSED_BY_SPAPI = (
    "SELECT c.refused_by_spapi_at, c.next_attempt_at FROM credentials c"
    " JOIN integration_status i ON i.id = c.integration_id WHERE i.user_id = '{user}'"
)


def test_an_ambiguous_403_is_recorded_not_acted_on(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    sandbox.state.set_behaviour(sellers[2].selling_partner_id, "spapi_403_ambiguous", times=1)
    result = cli("check", "amazon", "--user", "u2", "--json")
    assert result.exit_code == 1
    assert result.json()[0]["outcome"] == "inconclusive"
    (row,) = cli("status", "--user", "u2", "--json").json()
    assert row["status"] == "active"
    assert "consecutive_failures" not in row["metadata"]
    assert kinds(db, "u2") == [("seller_check_failed", "spapi_forbidden")]


def test_throttling_that_lasts_is_a_counted_failure(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    sandbox.state.set_behaviour(sellers[0].selling_partner_id, "spapi_429", retry_after=0)
    result = cli("check", "amazon", "--user", "u0", "--json")
    assert result.exit_code == 1
    assert result.json()[0]["outcome"] == "failed"
    (row,) = cli("status", "--user", "u0", "--json").json()
    assert row["status"] == "active"
    assert row["metadata"]["consecutive_failures"] == 1
    assert kinds(db, "u0") == [("seller_check_failed", "spapi_throttled")]


def test_without_a_user_every_active_seller_is_checked(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    sandbox.state.revoke(sellers[1].selling_partner_id)
    result = cli("check", "amazon", "--json")
    assert result.exit_code == 1
    outcomes = {c["user_id"]: c["outcome"] for c in result.json()}
    assert outcomes == {"u0": "ok", "u1": "revoked", "u2": "ok"}  # found by its refresh
    statuses = {r["user_id"]: r["status"] for r in cli("status", "--json").json()}
    assert statuses == {"u0": "active", "u1": "revoked", "u2": "active"}


def participation_calls(sandbox: Sandbox) -> int:
    requests = sandbox.state.stats()["requests"]
    return sum(n for route, n in requests.items() if "marketplaceParticipations" in route)


U0_ALLOWANCE = (
    "SELECT c.check_allowance FROM credentials c JOIN integration_status i"
    " ON i.id = c.integration_id WHERE i.user_id = 'u0'"
)


def set_allowance(db: Any, left: float, seconds_ago: float) -> None:
    """Every credential's SP-API check allowance: ``left`` checks, ``seconds_ago``."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from discoveryctl.db.models import Credential, table_of

    moment = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    with db.engine.begin() as connection:
        connection.execute(
            sa.update(table_of(Credential)).values(check_allowance=left, check_allowance_at=moment)
        )


def test_checks_follow_the_usage_plan_a_burst_of_15_then_one_a_minute(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    for _ in range(15):  # a seller never checked has the whole burst
        assert cli("check", "amazon", "--user", "u0", "--json").json()[0]["outcome"] == "ok"
    result = cli("check", "amazon", "--user", "u0", "--json")
    assert result.exit_code == 0  # paced is not a seller needing attention
    (paced,) = result.json()
    assert paced["outcome"] == "paced"
    # one check grows back in 1 / 0.016 = 62.5 s, less what the 15 checks took
    wait = re.search(r"possible in (\d+) s$", paced["message"])
    assert wait is not None and 40 <= int(wait.group(1)) <= 63
    assert participation_calls(sandbox) == 15
    set_allowance(db, 0.0, seconds_ago=60)  # 0.96 of a check grown back: not yet
    assert cli("check", "amazon", "--user", "u0", "--json").json()[0]["outcome"] == "paced"
    set_allowance(db, 0.0, seconds_ago=63)  # 1.008
    assert cli("check", "amazon", "--user", "u0", "--json").json()[0]["outcome"] == "ok"
    assert participation_calls(sandbox) == 16
    (left,) = db.rows(U0_ALLOWANCE)
    assert left["check_allowance"] == pytest.approx(0.008, abs=0.03)  # 2 s of slack
    set_allowance(db, 14.5, seconds_ago=3600)  # an hour's growth still stops at the burst
    assert cli("check", "amazon", "--user", "u0", "--json").json()[0]["outcome"] == "ok"
    (left,) = db.rows(U0_ALLOWANCE)
    assert left["check_allowance"] == pytest.approx(14.0)  # 15 at most, less one


def test_refresh_all_verify_spends_the_same_allowance(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    set_allowance(db, 0.5, seconds_ago=0)  # every seller: half a check left
    result = cli("refresh-all", "--verify", "--force", "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["outcomes"]["refreshed"] == 3
    assert summary["checks"] == {"paced": 3}
    assert participation_calls(sandbox) == 0
    set_allowance(db, 1.0, seconds_ago=0)
    summary = cli("refresh-all", "--verify", "--force", "--json").json()
    assert summary["checks"] == {"ok": 3}
    assert participation_calls(sandbox) == 3
    rows = db.rows("SELECT check_allowance FROM credentials")
    assert [r["check_allowance"] for r in rows] == [pytest.approx(0.0, abs=0.01)] * 3


def test_a_refused_token_past_its_reauthorization_date_is_expired_as_a_refresh_says(
    db: Any, cli: Any, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check and the refresh reach one verdict: past the 365-day re-authorization date a
    refused token means ``expired``, not ``revoked``."""
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    seller = sandbox.state.add_seller()
    line = amazon_line("old", seller.refresh_token, authorized_at="2025-11-01T00:00:00Z")
    line["selling_partner_id"] = seller.selling_partner_id
    assert cli("import", str(write_lines(tmp_path / "old.jsonl", line))).exit_code == 0
    assert cli("access-token", "amazon", "--user", "old").exit_code == 0  # a cached token
    sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=2)
    result = cli("check", "amazon", "--user", "old", "--json")
    assert result.exit_code == 1
    assert result.json()[0]["outcome"] == "expired"
    (row,) = cli("status", "--user", "old", "--json").json()
    assert row["status"] == "expired"


def test_a_failed_check_waits_out_the_backoff_a_failed_refresh_would(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any
) -> None:
    """A transient failure at the check counts as one at a refresh does, and the seller is
    left alone for the backoff: the next refresh-all does not take it."""
    sandbox.state.set_behaviour(sellers[0].selling_partner_id, "spapi_429", retry_after=0)
    assert cli("check", "amazon", "--user", "u0").exit_code == 1
    assert cli("access-token", "amazon", "--user", "u1").exit_code == 0
    with db.engine.begin() as connection:  # both tokens at the end of their hour
        connection.exec_driver_sql("UPDATE credentials SET access_token_expires_at = refreshed_at")
    due = cli("refresh-all", "--dry-run", "--provider", "amazon").stdout.split("\n")
    assert "u0 amazon" not in due
    assert "u1 amazon" in due


# -- a check of every seller weighs its revocations together ----------------------------------


def test_checking_everyone_with_another_app_s_client_id_revokes_nobody(
    db: Any, cli: Any, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    import_sellers(cli, sandbox, tmp_path, 10)  # no token cached: each check refreshes first
    other_id, other_secret = sandbox.config.other_apps[0]
    monkeypatch.setenv("AMAZON_LWA_CLIENT_ID", other_id)
    monkeypatch.setenv("AMAZON_LWA_CLIENT_SECRET", other_secret)
    result = cli("check", "amazon", "--json")
    assert result.exit_code == 3, result.stderr
    assert "10 of 10 refresh answers" in result.stderr
    statuses = {r["user_id"]: r["status"] for r in cli("status", "--json").json()}
    assert set(statuses.values()) == {"active"}
    assert db.scalar("SELECT count(*) FROM notifications WHERE audience = 'user'") == 0
    (alert,) = cli("notifications", "--admin", "--json").json()
    assert alert["kind"] == "mass_revocation_held"
    accepted = cli("check", "amazon", "--accept-mass-revocation", "--json")
    assert accepted.exit_code == 1
    statuses = {r["user_id"]: r["status"] for r in cli("status", "--json").json()}
    assert set(statuses.values()) == {"revoked"}


def test_checking_everyone_when_the_sp_api_refuses_most_revokes_nobody(
    db: Any, cli: Any, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    known = import_sellers(cli, sandbox, tmp_path, 10)
    for seller in known[:6]:  # two fresh tokens refused each: the SP-API's word, 6 of 10
        sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=2)
    result = cli("check", "amazon", "--json")
    assert result.exit_code == 3, result.stderr
    statuses = {r["user_id"]: r["status"] for r in cli("status", "--json").json()}
    assert set(statuses.values()) == {"active"}
    for seller in known[:5]:
        sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=2)
    result = cli("check", "amazon", "--json")  # 5 of 10: not more than half, applied
    assert result.exit_code == 1
    outcomes = [c["outcome"] for c in result.json()]
    assert outcomes.count("revoked") == 5
    revoked = db.rows(
        "SELECT c.refused_by_spapi_at FROM credentials c JOIN integration_status i"
        " ON i.id = c.integration_id WHERE i.status = 'revoked'"
    )
    assert len(revoked) == 5 and all(r["refused_by_spapi_at"] is not None for r in revoked)
