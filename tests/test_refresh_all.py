"""`refresh-all`, the cron job, against the sandbox over real sockets: what it refreshes, what
each outcome does to the sellers, and that overlapping runs never refresh a seller twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread
from discoveryctl.support.pacing import HEADROOM

from helpers import import_sellers


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "discoveryctl", "refresh-all", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


@pytest.fixture
def amazon(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    return sandbox


def leases_held(db: Any) -> int:
    return int(db.scalar("SELECT count(*) FROM credentials WHERE lease_owner IS NOT NULL"))


def test_each_outcome_is_recorded_and_nothing_is_done_twice(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    _, gone, flaky = import_sellers(cli, amazon, tmp_path, 3)
    amazon.state.revoke(gone.selling_partner_id)
    amazon.state.set_behaviour(flaky.selling_partner_id, "flaky", status=503)
    result = cli("refresh-all", "--json")
    assert result.exit_code == 1
    summary = result.json()
    assert summary["outcomes"] == {
        "refreshed": 1,
        "revoked": 1,
        "expired": 0,
        "failed": 1,
        "app_rejected": 0,
    }
    assert "2 sellers need attention" in result.stderr
    assert summary["checks"] == {}  # no --verify, no checks
    statuses = {r["user_id"]: r for r in cli("status", "--json").json()}
    assert statuses["u0"]["status"] == "active"
    assert statuses["u1"]["status"] == "revoked"
    assert statuses["u2"]["status"] == "active"
    assert statuses["u2"]["metadata"]["consecutive_failures"] == 1
    assert leases_held(db) == 0

    again = cli("refresh-all", "--json")  # fresh token, revoked, and one backing off
    assert again.exit_code == 0, again.stderr
    assert again.json()["total"] == 0
    assert amazon.state.stats()["grants"]["refresh_token"] == 1


def test_the_app_s_credentials_refused_stop_the_run_and_touch_no_seller(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    import_sellers(cli, amazon, tmp_path, 5)
    amazon.state.rotate_client_secret("a-secret-we-do-not-have")
    result = cli("refresh-all", "--json")
    assert result.exit_code == 3
    assert result.json()["app_credentials_rejected"]
    assert "rejected the app's credentials" in result.stderr
    for row in cli("status", "--json").json():
        assert row["status"] == "active"
        assert "consecutive_failures" not in row["metadata"]
    admin = cli("notifications", "--admin", "--json").json()
    assert [n["kind"] for n in admin] == ["app_credentials_rejected"]
    assert leases_held(db) == 0
    amazon.state.rotate_client_secret(None)
    assert cli("refresh-all").exit_code == 0  # the work was left for the next run


def test_dry_run_lists_what_is_due_and_calls_nothing(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    import_sellers(cli, amazon, tmp_path, 3)
    listed = cli("refresh-all", "--dry-run", "--json")
    assert listed.exit_code == 0
    assert sorted(d["user_id"] for d in listed.json()) == ["u0", "u1", "u2"]
    assert amazon.state.stats()["grants"]["refresh_token"] == 0
    assert cli("refresh-all").exit_code == 0
    assert cli("refresh-all", "--dry-run", "--json").json() == []
    assert [d["user_id"] for d in cli("refresh-all", "--dry-run", "--force", "--json").json()] == [
        "u0",
        "u1",
        "u2",
    ]
    assert cli("refresh-all", "--force", "--json").json()["outcomes"]["refreshed"] == 3


def test_two_runs_at_once_refresh_each_seller_exactly_once(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    import_sellers(cli, amazon, tmp_path, 2000)
    runs = [start("--json", "--concurrency", "16") for _ in range(2)]
    outputs = [(r.wait(timeout=300), *r.communicate()) for r in runs]
    for code, _, stderr in outputs:
        assert code == 0, stderr
    done = [json.loads(stdout)["outcomes"]["refreshed"] for _, stdout, _ in outputs]
    assert sum(done) == 2000
    stats = amazon.state.stats()
    assert stats["grants"]["refresh_token"] == 2000
    assert set(stats["refreshes_per_seller"].values()) == {1}
    assert leases_held(db) == 0


def test_a_deadline_stops_claiming_and_leaves_the_rest_due(
    db: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_in_thread(SandboxConfig(latency_ms=400)) as slow:
        for name, value in slow.env().items():
            monkeypatch.setenv(name, value)
        import_sellers(cli, slow, tmp_path, 300)
        result = cli("refresh-all", "--deadline", "1s", "--concurrency", "2", "--json")
    summary = result.json()
    assert summary["deadline_reached"] is True
    assert 0 < summary["total"] < 300
    assert summary["seconds"] < 30
    assert len(cli("refresh-all", "--dry-run", "--json").json()) == 300 - summary["total"]
    assert leases_held(db) == 0


def test_ctrl_c_stops_soon_lets_go_of_the_leases_and_exits_130(
    db: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_in_thread(SandboxConfig(latency_ms=300)) as slow:
        for name, value in slow.env().items():
            monkeypatch.setenv(name, value)
        import_sellers(cli, slow, tmp_path, 400)
        run = start("--json", "--concurrency", "4")
        deadline = time.monotonic() + 20
        while not slow.state.stats()["grants"]["refresh_token"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        began = time.monotonic()
        code = run.wait(timeout=30)
        stopped_in = time.monotonic() - began
        stdout, stderr = run.communicate()
    assert code == 130, stderr
    assert stopped_in < 10
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    assert 0 < summary["total"] < 400
    assert "interrupted" in stderr
    assert leases_held(db) == 0


def test_bad_options_are_usage_errors(db: Any, cli: Any, amazon: Sandbox) -> None:
    assert cli("refresh-all", "--deadline", "soon").exit_code == 2
    assert cli("refresh-all", "--concurrency", "0").exit_code == 2


def test_rotated_refresh_tokens_are_stored_and_omitted_ones_kept(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    rotating, omitting, plain = import_sellers(cli, amazon, tmp_path, 3)
    amazon.state.set_behaviour(rotating.selling_partner_id, "rotate_refresh_token", times=1)
    amazon.state.set_behaviour(omitting.selling_partner_id, "omit_refresh_token", times=1)
    assert cli("refresh-all").exit_code == 0
    stored = {
        line["user_id"]: line["refresh_token"]
        for line in map(json.loads, cli("export", "--include-secrets").stdout.splitlines())
    }
    assert stored["u0"] != rotating.refresh_token
    assert stored["u1"] == omitting.refresh_token
    assert stored["u2"] == plain.refresh_token
    cached = db.rows("SELECT access_token, access_token_expires_at FROM credentials")
    assert all(r["access_token"] and r["access_token_expires_at"] for r in cached)
    assert "Atza|" not in json.dumps(cached, default=str)
    for user in ("u0", "u1", "u2"):  # every stored token still refreshes
        assert cli("refresh", "amazon", "--user", user).exit_code == 0


def test_a_success_after_failures_clears_them_and_resolves_the_alert(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    from helpers import fail_transiently

    import_sellers(cli, amazon, tmp_path, 2)
    fail_transiently(db.url, "u1", 3)
    assert [n["kind"] for n in cli("notifications", "--admin", "--json").json()] == [
        "repeated_failures"
    ]
    result = cli("refresh-all", "--force", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["outcomes"]["refreshed"] == 2
    rows = {r["user_id"]: r for r in cli("status", "--json").json()}
    assert "consecutive_failures" not in rows["u1"]["metadata"]
    assert rows["u0"]["lastSyncedAt"] and rows["u1"]["lastSyncedAt"]
    (alert,) = cli("notifications", "--admin", "--json").json()
    assert alert["resolved_at"] is not None


def test_a_killed_run_loses_nothing_once_its_leases_run_out(
    db: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_in_thread(SandboxConfig(latency_ms=100)) as slow:
        for name, value in slow.env().items():
            monkeypatch.setenv(name, value)
        import_sellers(cli, slow, tmp_path, 200)  # batches of 64
        killed = start("--concurrency", "4", "--lease", "3s")
        deadline = time.monotonic() + 20
        while not db.scalar("SELECT count(*) FROM events WHERE kind = 'token_refreshed'"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # the first batch is written; the second is claimed and in flight
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10)
        killed.communicate()
        held = leases_held(db)
        assert held > 0  # the killed run's claims, still reserved
        soon = cli("refresh-all", "--json", "--concurrency", "8")
        assert soon.exit_code == 0, soon.stderr
        time.sleep(3.5)  # the leases run out
        later = cli("refresh-all", "--json", "--concurrency", "8")
        assert later.exit_code == 0, later.stderr
        assert later.json()["outcomes"]["refreshed"] >= 1
    per_user = db.rows(
        "SELECT user_id, count(*) AS n FROM events WHERE kind = 'token_refreshed' GROUP BY user_id"
    )
    assert len(per_user) == 200
    assert {row["n"] for row in per_user} == {1}  # every seller refreshed, each exactly once
    assert leases_held(db) == 0
    assert cli("refresh-all", "--dry-run", "--json").json() == []


def test_no_token_reaches_a_log_line_at_debug(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    known = import_sellers(cli, amazon, tmp_path, 3)
    amazon.state.revoke(known[1].selling_partner_id)
    result = cli("refresh-all", "--json")
    assert result.exit_code == 1
    output = result.stdout + result.stderr
    assert "Atza|" not in output and "Atzr|" not in output
    for seller in known:
        assert seller.refresh_token not in output


def test_verify_checks_each_new_token_at_the_sp_api(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """A refusal is confirmed with a second grant and call: u3's second token is taken, u1's is
    refused again (revoked on the SP-API's word); an ambiguous 403 is recorded only."""
    _, refused, ambiguous, once = import_sellers(cli, amazon, tmp_path, 4)
    amazon.state.set_behaviour(refused.selling_partner_id, "spapi_401", times=2)
    amazon.state.set_behaviour(ambiguous.selling_partner_id, "spapi_403_ambiguous", times=1)
    amazon.state.set_behaviour(once.selling_partner_id, "spapi_401", times=1)
    result = cli("refresh-all", "--verify", "--json")
    assert result.exit_code == 1
    summary = result.json()
    assert summary["outcomes"]["refreshed"] == 4
    assert summary["checks"] == {"ok": 2, "revoked": 1, "inconclusive": 1}
    statuses = {r["user_id"]: r["status"] for r in cli("status", "--json").json()}
    assert statuses == {"u0": "active", "u1": "revoked", "u2": "active", "u3": "active"}
    checks = db.rows(
        "SELECT user_id, kind, error_type FROM events WHERE kind LIKE 'seller_check%'"
        " ORDER BY user_id, id"
    )
    assert [(r["user_id"], r["kind"], r["error_type"]) for r in checks] == [
        ("u0", "seller_checked", None),
        ("u1", "seller_check_failed", "spapi_token_refused"),
        ("u1", "seller_check_failed", "spapi_token_refused"),
        ("u2", "seller_check_failed", "spapi_forbidden"),
        ("u3", "seller_check_failed", "spapi_token_refused"),
        ("u3", "seller_checked", None),
    ]
    calls = amazon.state.stats()["requests"]["GET /sellers/v1/marketplaceParticipations"]
    assert calls == 6
    assert amazon.state.stats()["grants"]["refresh_token"] == 6  # u1 and u3: one more each


def test_a_seller_revoked_on_the_sp_api_s_word_is_looked_at_again_by_the_next_run(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """Revoked because two fresh tokens were refused, not because LWA said so: the next run
    refreshes and checks it (without --verify); while the SP-API refuses, it stays revoked and
    is left 6 hours; once the SP-API takes a token, it is active and its notice resolved."""
    _, seller = import_sellers(cli, amazon, tmp_path, 2)
    amazon.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=3)
    assert cli("refresh-all", "--verify", "--force").exit_code == 1
    assert cli("status", "--user", "u1", "--json").json()[0]["status"] == "revoked"
    (lost,) = cli("notifications", "--user", "u1", "--json").json()
    assert lost["kind"] == "connection_lost"
    first = cli("refresh-all", "--json")  # u1's third refusal: still revoked, not news
    assert first.exit_code == 0, first.stderr
    assert first.json()["checks"] == {"still_refused": 1}
    assert cli("status", "--user", "u1", "--json").json()[0]["status"] == "revoked"
    assert len(cli("notifications", "--user", "u1", "--json").json()) == 1
    (wait,) = db.rows(
        "SELECT c.next_attempt_at FROM credentials c JOIN integration_status i"
        " ON i.id = c.integration_id WHERE i.user_id = 'u1'"
    )
    assert wait["next_attempt_at"] is not None
    assert cli("refresh-all", "--json").json()["total"] == 0  # left alone for 6 hours
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE credentials SET next_attempt_at = NULL")
    again = cli("refresh-all", "--json")  # the SP-API takes its token now
    assert again.exit_code == 0, again.stderr
    assert again.json()["checks"] == {"restored": 1}
    assert cli("status", "--user", "u1", "--json").json()[0]["status"] == "active"
    (lost,) = cli("notifications", "--user", "u1", "--json").json()
    assert lost["resolved_at"] is not None
    assert cli("refresh-all", "--json").json()["total"] == 0  # an active seller, fresh


# -- what a review found: each failed before its fix -------------------------------------------


def test_a_batch_slower_than_its_lease_keeps_it(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """The run's heartbeat keeps its leases while a throttled seller holds the batch up, so a
    second run started meanwhile claims none of them."""
    known = import_sellers(cli, amazon, tmp_path, 20)
    amazon.state.set_behaviour(known[0].selling_partner_id, "throttled", retry_after=3, times=2)
    first = start("--json", "--lease", "2s")
    deadline = time.monotonic() + 20
    while amazon.state.stats()["grants"]["refresh_token"] < 19:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(2.5)  # past the lease the batch was claimed with
    second = cli("refresh-all", "--json", "--lease", "2s")
    code, stdout, stderr = first.wait(timeout=60), *first.communicate()
    assert code == 0, stderr
    assert json.loads(stdout)["outcomes"]["refreshed"] == 20
    assert second.json()["total"] == 0
    per_user = db.rows(
        "SELECT count(*) AS n FROM events WHERE kind = 'token_refreshed' GROUP BY user_id"
    )
    assert [row["n"] for row in per_user] == [1] * 20


def test_one_unreadable_credential_fails_alone(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    import_sellers(cli, amazon, tmp_path, 10)
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE credentials SET refresh_token = 'not-a-fernet-token'"
            " WHERE id = (SELECT min(id) + 4 FROM credentials)"
        )
    result = cli("refresh-all", "--json")
    assert result.exit_code == 1
    assert result.json()["outcomes"]["refreshed"] == 9
    assert result.json()["outcomes"]["failed"] == 1
    failed = db.rows("SELECT user_id, error_type FROM events WHERE kind = 'token_refresh_failed'")
    assert [r["error_type"] for r in failed] == ["credential_unreadable"]
    assert amazon.state.stats()["grants"]["refresh_token"] == 9


def test_the_app_refused_sends_no_more_of_the_batch(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    import_sellers(cli, amazon, tmp_path, 200)
    amazon.state.rotate_client_secret("a-secret-we-do-not-have")
    result = cli("refresh-all", "--json", "--concurrency", "4")
    assert result.exit_code == 3
    sent = amazon.state.stats()["requests"]["POST /auth/o2/token"]
    assert sent <= 4 * 3  # the calls already in flight (and their retries), no more


def test_the_deadline_bounds_calls_in_flight(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    known = import_sellers(cli, amazon, tmp_path, 3)
    amazon.state.set_behaviour(known[0].selling_partner_id, "throttled", retry_after=9)
    began = time.monotonic()
    result = cli("refresh-all", "--json", "--deadline", "1s")
    took = time.monotonic() - began
    assert result.exit_code == 1  # work is left for the next run
    assert "the deadline came before every due seller was refreshed" in result.stderr
    assert result.json()["deadline_reached"] is True
    assert took < 8
    assert leases_held(db) == 0


def test_leases_are_timed_by_the_database_clock(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """Several machines over one PostgreSQL: one whose clock runs ten minutes ahead does not
    take the leases another run holds, and takes them once they have run out."""
    if db.kind != "postgres":
        pytest.skip("a SQLite database lives on one machine, whose clock is the database's")
    from datetime import UTC, datetime, timedelta

    import time_machine

    from discoveryctl.amazon.refresh_all import claim_batch
    from discoveryctl.db.engine import Database

    import_sellers(cli, amazon, tmp_path, 3)
    database = Database(db.url)
    try:
        with database.session() as session:
            claimed = claim_batch(session, "run-a", 10, force=True, lease=timedelta(seconds=2))
        assert len(claimed) == 3
        with time_machine.travel(datetime.now(UTC) + timedelta(minutes=10)):
            with database.session() as session:
                assert claim_batch(session, "run-b", 10, force=True) == []
            time.sleep(2.5)  # run A's lease runs out, by the database's clock
            with database.session() as session:
                assert len(claim_batch(session, "run-b", 10, force=True)) == 3
    finally:
        database.dispose()


def test_a_batch_of_failures_notifies_each_seller_once(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """The failures of one batch are written together: a revoked seller is told how to
    reconnect, a third failure in a row alerts the admins, a fourth does not again."""
    from helpers import fail_transiently

    known = import_sellers(cli, amazon, tmp_path, 3)
    amazon.state.revoke(known[0].selling_partner_id)
    for seller in known[1:]:
        amazon.state.set_behaviour(seller.selling_partner_id, "flaky", status=503)
    fail_transiently(db.url, "u1", 2)
    fail_transiently(db.url, "u2", 3)  # already alerted
    result = cli("refresh-all", "--force", "--json")
    assert result.exit_code == 1
    assert result.json()["outcomes"] | {"refreshed": 0} == {
        "refreshed": 0,
        "revoked": 1,
        "expired": 0,
        "failed": 2,
        "app_rejected": 0,
    }
    (lost,) = cli("notifications", "--json").json()
    assert (lost["user_id"], lost["kind"]) == ("u0", "connection_lost")
    assert lost["detail"]["reconnectUrl"].endswith("userId=u0")
    alerts = cli("notifications", "--admin", "--json").json()
    assert sorted((a["user_id"], a["kind"]) for a in alerts) == [
        ("u1", "repeated_failures"),
        ("u2", "repeated_failures"),
    ]
    rows = {r["user_id"]: r for r in cli("status", "--json").json()}
    assert rows["u0"]["status"] == "revoked"
    assert [rows[u]["metadata"]["consecutive_failures"] for u in ("u1", "u2")] == [3, 4]
    created = db.rows("SELECT user_id FROM events WHERE kind = 'notification_created'")
    assert sorted(r["user_id"] for r in created) == ["u0", "u1", "u2"]  # u2's before the run


def test_a_notification_opened_meanwhile_is_not_opened_twice(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """Another process opens one of a batch's notifications between its read and its write:
    the batch writes the others, and that one stays single."""
    if db.kind != "postgres":
        pytest.skip("SQLite's write lock keeps every other writer out of the batch")
    import sqlalchemy as sa

    from discoveryctl.amazon.refresh import record_failures
    from discoveryctl.amazon.verdict import RefreshOutcome, Verdict
    from discoveryctl.db.engine import Database
    from discoveryctl.integrations import notifications
    from discoveryctl.integrations.vocabulary import message_for

    import_sellers(cli, amazon, tmp_path, 2)
    database, other = Database(db.url), Database(db.url)
    revoked = Verdict(RefreshOutcome.revoked, "oauth_token_revoked", "LWA refused the grant")
    opened: list[str] = []

    def open_u1_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if opened or not statement.startswith("INSERT INTO notifications"):
            return
        opened.append("u1")
        with other.session() as session:  # its own connection, committed at once
            notifications.notify(
                session,
                audience=notifications.USER,
                kind="connection_lost",
                title="Amazon connection lost",
                message="opened by another process",
                user_id="u1",
                provider="amazon",
            )

    try:
        with database.session() as session:
            sa.event.listen(session.connection(), "before_cursor_execute", open_u1_first)
            done = record_failures(
                session,
                [("u0", revoked, ()), ("u1", revoked, ())],
                frontend_url="http://localhost:3000",
            )
        assert [d.outcome for d in done] == ["revoked", "revoked"]
    finally:
        database.dispose()
        other.dispose()
    assert opened == ["u1"]
    notes = db.rows("SELECT user_id, message FROM notifications WHERE kind = 'connection_lost'")
    assert sorted((n["user_id"], n["message"]) for n in notes) == [
        ("u0", message_for("amazon", "revoked")),
        ("u1", "opened by another process"),
    ]
    created = db.rows("SELECT user_id FROM events WHERE kind = 'notification_created'")
    assert sorted(r["user_id"] for r in created) == ["u0", "u1"]  # u1's by the other process


def test_a_grant_is_kept_when_its_check_is_abandoned(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """Ctrl-C while --verify waits on the SP-API (throttled, Retry-After 10 s): the grant LWA
    made, with the new refresh token it rotated in (the old one revoked), is still stored."""
    (seller,) = import_sellers(cli, amazon, tmp_path, 1)
    amazon.state.set_behaviour(seller.selling_partner_id, "rotate_refresh_token", revoke_old=1)
    amazon.state.set_behaviour(seller.selling_partner_id, "spapi_429", retry_after=10)
    run = start("--verify", "--json")
    deadline = time.monotonic() + 20
    while not any("marketplaceParticipations" in r for r in amazon.state.stats()["requests"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    code = run.wait(timeout=30)
    stdout, stderr = run.communicate()
    assert code == 130, stderr
    assert json.loads(stdout)["outcomes"]["refreshed"] == 1
    amazon.state.clear_behaviour(seller.selling_partner_id)
    again = cli("refresh", "amazon", "--user", "u0")  # with the rotated token: it works
    assert again.exit_code == 0, again.stderr


def test_a_claim_walks_past_sellers_it_cannot_take(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """A whole batch's worth of revoked sellers (due by their credentials, not taken: their
    integrations are not active) ahead of the active ones does not end the run early."""
    from helpers import set_status

    import_sellers(cli, amazon, tmp_path, 70, prefix="gone")
    import_sellers(cli, amazon, tmp_path, 5, prefix="live")
    for number in range(70):
        set_status(db.url, f"gone{number}", "revoked")
    result = cli("refresh-all", "--concurrency", "16", "--json")  # batches of 64
    assert result.exit_code == 0, result.stderr
    assert result.json()["outcomes"]["refreshed"] == 5
    assert amazon.state.stats()["grants"]["refresh_token"] == 5


def test_a_seller_claimed_between_the_walk_and_the_lock_is_not_taken(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """A claim walks the due ids, then locks them: a seller another run claimed in between
    (its lease committed) is asked again under the lock, and left to that run."""
    if db.kind != "postgres":
        pytest.skip("on SQLite a claim holds the write lock from its walk to its lease")
    import sqlalchemy as sa

    from discoveryctl.amazon.refresh_all import claim_batch
    from discoveryctl.db.engine import Database

    import_sellers(cli, amazon, tmp_path, 3)
    database, other = Database(db.url), Database(db.url)
    claimed_first: list[int] = []

    def another_run_claims_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if claimed_first or "FOR UPDATE" not in statement:
            return
        with other.session() as session:  # its own connection, committed at once
            claimed_first.extend(d.credential_id for d in claim_batch(session, "run-a", 10))

    try:
        with database.session() as session:
            sa.event.listen(session.connection(), "before_cursor_execute", another_run_claims_first)
            taken = claim_batch(session, "run-b", 10)
    finally:
        database.dispose()
        other.dispose()
    assert len(claimed_first) == 3
    assert taken == []
    owners = db.rows("SELECT DISTINCT lease_owner FROM credentials")
    assert [r["lease_owner"] for r in owners] == ["run-a"]


def test_refresh_all_spreads_its_calls_over_the_time_one_takes(
    db: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four slots, eight sellers, 400 ms a call: the first four go together; once the first
    answer is in, the next four start ``HEADROOM · 400 / 4`` ms apart, so the last one ends
    no sooner than 400 + 3 · gap + 400 ms after the first start. Unpaced, the second wave
    would end at about 800 ms."""
    latency = 0.4
    with run_in_thread(SandboxConfig(latency_ms=int(latency * 1000))) as slow:
        for name, value in slow.env().items():
            monkeypatch.setenv(name, value)
        import_sellers(cli, slow, tmp_path, 8)
        result = cli("refresh-all", "--concurrency", "4", "--json")
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["outcomes"]["refreshed"] == 8
    gap = HEADROOM * latency / 4
    assert summary["seconds"] >= 2 * latency + 3 * gap


def _credential_times(db: Any, user: str, **values: Any) -> None:
    """Set columns of ``user``'s Amazon credential (times as the database stores them)."""
    import sqlalchemy as sa

    from discoveryctl.db.models import Credential, IntegrationStatus, table_of

    credential, integration = table_of(Credential), table_of(IntegrationStatus)
    of_user = (
        sa.select(integration.c.id)
        .where(integration.c.user_id == user, integration.c.provider == "amazon")
        .scalar_subquery()
    )
    with db.engine.begin() as connection:
        connection.execute(
            sa.update(credential).where(credential.c.integration_id == of_user).values(**values)
        )


def test_due_a_token_within_5_minutes_of_its_expiry_or_refreshed_over_a_day_ago(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """The due rule, at its edges: the 5-minute margin before the token expires, and a last
    refresh over a day old whatever the token has left."""
    from datetime import UTC, datetime, timedelta

    import_sellers(cli, amazon, tmp_path, 5)
    assert cli("refresh-all").exit_code == 0
    now = datetime.now(UTC)
    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    _credential_times(db, "u0", access_token_expires_at=now + 4 * minute, refreshed_at=now - hour)
    _credential_times(db, "u1", access_token_expires_at=now + 6 * minute, refreshed_at=now - hour)
    _credential_times(db, "u2", access_token_expires_at=now + hour, refreshed_at=now - 25 * hour)
    _credential_times(db, "u3", access_token_expires_at=now + hour, refreshed_at=now - 23 * hour)
    _credential_times(db, "u4", access_token_expires_at=now - minute, refreshed_at=now - hour)
    listed = cli("refresh-all", "--dry-run", "--provider", "amazon").stdout.split()
    assert [user for user in listed if user != "amazon"] == ["u0", "u2", "u4"]
    forced = cli("refresh-all", "--dry-run", "--provider", "amazon", "--force").stdout.split()
    assert [user for user in forced if user != "amazon"] == ["u0", "u1", "u2", "u3", "u4"]


def test_the_cron_run_warns_a_seller_once_30_days_before_re_authorization(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    """refresh-all's batch writes warn as a single refresh does: once an authorization is
    within 30 days of its 365-day re-authorization date, the seller is told once."""
    from datetime import UTC, datetime, timedelta

    from helpers import amazon_line, write_lines

    now = datetime.now(UTC)
    lines = []
    for user, age in (("soon", 340), ("later", 330)):
        seller = amazon.state.add_seller()
        authorized = (now - timedelta(days=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = amazon_line(user, seller.refresh_token, authorized_at=authorized)
        line["selling_partner_id"] = seller.selling_partner_id
        lines.append(line)
    assert cli("import", str(write_lines(tmp_path / "aged.jsonl", *lines))).exit_code == 0

    def warnings(user: str) -> list[dict[str, Any]]:
        notes = cli("notifications", "--user", user, "--json").json()
        return [n for n in notes if n["kind"] == "authorization_expiring"]

    assert cli("refresh-all").exit_code == 0
    (warned,) = warnings("soon")
    assert warned["detail"]["expires_at"].startswith(
        (now - timedelta(days=340) + timedelta(days=365)).date().isoformat()
    )
    assert warnings("later") == []
    assert cli("refresh-all", "--force").exit_code == 0
    assert len(warnings("soon")) == 1
    assert warnings("later") == []


# -- the brake on mass revocation -------------------------------------------------------------


def user_notices(db: Any) -> int:
    return int(db.scalar("SELECT count(*) FROM notifications WHERE audience = 'user'"))


def statuses_of(cli: Any) -> dict[str, str]:
    return {r["user_id"]: r["status"] for r in cli("status", "--json").json()}


def test_another_app_s_client_id_revokes_nobody_and_exits_3(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wrong AMAZON_LWA_CLIENT_ID (another app of the same developer): LWA takes the
    credentials but answers invalid_grant for every seller's refresh token."""
    import_sellers(cli, amazon, tmp_path, 12)
    other_id, other_secret = amazon.config.other_apps[0]
    monkeypatch.setenv("AMAZON_LWA_CLIENT_ID", other_id)
    monkeypatch.setenv("AMAZON_LWA_CLIENT_SECRET", other_secret)
    result = cli("refresh-all", "--force", "--json")
    assert result.exit_code == 3, result.stderr
    summary = result.json()
    assert summary["mass_revocation_held"] == 12
    assert summary["outcomes"]["revoked"] == 0
    assert "12 of 12 refresh answers" in result.stderr
    assert set(statuses_of(cli).values()) == {"active"}
    assert user_notices(db) == 0  # no seller told
    (alert,) = cli("notifications", "--admin", "--json").json()
    assert alert["kind"] == "mass_revocation_held"
    assert alert["detail"] == {"held": 12, "answered": 12}
    assert "AMAZON_LWA_CLIENT_ID" in alert["message"]
    assert cli("refresh-all", "--force").exit_code == 3  # held again: still one alert
    assert len(cli("notifications", "--admin", "--json").json()) == 1
    monkeypatch.setenv("AMAZON_LWA_CLIENT_ID", amazon.config.client_id)  # the setting fixed
    monkeypatch.setenv("AMAZON_LWA_CLIENT_SECRET", amazon.config.client_secret)
    fixed = cli("refresh-all", "--force", "--json")
    assert fixed.exit_code == 0, fixed.stderr
    assert fixed.json()["outcomes"]["refreshed"] == 12
    (alert,) = cli("notifications", "--admin", "--json").json()
    assert alert["resolved_at"] is not None


def test_most_sellers_revoked_at_once_are_held_until_the_operator_accepts(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    sellers = import_sellers(cli, amazon, tmp_path, 10)
    for seller in sellers[:6]:  # 6 of 10: more than half
        amazon.state.revoke(seller.selling_partner_id)
    held = cli("refresh-all", "--json")
    assert held.exit_code == 3
    assert held.json()["mass_revocation_held"] == 6
    assert held.json()["outcomes"]["refreshed"] == 4  # the grants are stored all the same
    assert set(statuses_of(cli).values()) == {"active"} and user_notices(db) == 0
    # --force: the 4 refreshed above answer again, so the brake weighs 6 of 10 once more
    assert cli("refresh-all", "--force").exit_code == 3
    accepted = cli("refresh-all", "--force", "--accept-mass-revocation", "--json")
    assert accepted.exit_code == 1  # applied: 6 sellers need attention
    assert accepted.json()["outcomes"]["revoked"] == 6
    assert accepted.json()["mass_revocation_held"] == 0
    assert sorted(u for u, s in statuses_of(cli).items() if s == "revoked") == [
        f"u{n}" for n in range(6)
    ]
    assert user_notices(db) == 6


@pytest.mark.parametrize(
    ("revoked", "sellers", "threshold", "held"),
    [
        (5, 10, None, False),  # half is not more than half
        (9, 9, None, False),  # fewer than 10 answers: too few to tell
        (4, 10, "0.3", True),  # the threshold is the operator's
    ],
)
def test_the_brake_weighs_at_least_10_answers_against_its_threshold(
    db: Any,
    cli: Any,
    amazon: Sandbox,
    tmp_path: Path,
    revoked: int,
    sellers: int,
    threshold: str | None,
    held: bool,
) -> None:
    known = import_sellers(cli, amazon, tmp_path, sellers)
    for seller in known[:revoked]:
        amazon.state.revoke(seller.selling_partner_id)
    options = [] if threshold is None else ["--mass-revocation-threshold", threshold]
    result = cli("refresh-all", *options, "--json")
    assert result.exit_code == (3 if held else 1)
    assert result.json()["mass_revocation_held"] == (revoked if held else 0)
    assert result.json()["outcomes"]["revoked"] == (0 if held else revoked)


def test_refresh_of_one_seller_is_not_braked(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_sellers(cli, amazon, tmp_path, 1)
    other_id, other_secret = amazon.config.other_apps[0]
    monkeypatch.setenv("AMAZON_LWA_CLIENT_ID", other_id)
    monkeypatch.setenv("AMAZON_LWA_CLIENT_SECRET", other_secret)
    assert cli("refresh", "amazon", "--user", "u0").exit_code == 1
    assert statuses_of(cli) == {"u0": "revoked"}
