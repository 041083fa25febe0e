"""`refresh amazon --user U` and `access-token amazon --user U` against the sandbox over real
sockets: each outcome of docs/behaviour.md §5 as the operator and the seller see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from discoveryctl.sandbox import Sandbox

from helpers import amazon_line, write_lines


@pytest.fixture
def seller(
    db: Any, cli: Any, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Any:
    """``seller("u1", authorized_days_ago=10)`` imports a seller the sandbox knows; returns
    the sandbox's seller (id and refresh token)."""
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)

    def make(user_id: str, authorized_days_ago: int | None = None) -> Any:
        known = sandbox.state.add_seller()
        extra: dict[str, str] = {}
        if authorized_days_ago is not None:
            moment = datetime.now(UTC) - timedelta(days=authorized_days_ago)
            extra["authorized_at"] = moment.isoformat().replace("+00:00", "Z")
        line = amazon_line(user_id, known.refresh_token, **extra)
        line["selling_partner_id"] = known.selling_partner_id
        result = cli("import", str(write_lines(tmp_path / f"{user_id}.jsonl", line)))
        assert result.exit_code == 0, result.stderr
        return known

    return make


def status_of(cli: Any, user: str) -> dict[str, Any]:
    (row,) = cli("status", "--user", user, "--json").json()
    return row


def utc(moment: datetime | str) -> datetime:
    """A time as read from either database (SQLite hands back naive ISO text)."""
    moment = moment if isinstance(moment, datetime) else datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def events_of(db: Any, user: str) -> list[tuple[str, str | None]]:
    return [
        (r["kind"], r["error_type"])
        for r in db.rows(
            "SELECT kind, error_type FROM events WHERE user_id = :u AND kind LIKE 'token_%'"
            " ORDER BY id",
            u=user,
        )
    ]


def test_a_refresh_caches_the_access_token_encrypted(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any
) -> None:
    seller("u1")
    result = cli("refresh", "amazon", "--user", "u1", "--json")
    assert result.exit_code == 0, result.stderr
    outcome = result.json()
    assert outcome["outcome"] == "refreshed"
    assert outcome["access_token_expires_at"].endswith("Z")
    assert events_of(db, "u1") == [("token_refreshed", None)]
    assert status_of(cli, "u1")["status"] == "active"
    assert status_of(cli, "u1")["lastSyncedAt"] is not None
    (credential,) = db.rows("SELECT access_token, lease_owner FROM credentials")
    assert credential["access_token"] and "Atza|" not in credential["access_token"]
    assert credential["lease_owner"] is None  # the lease is let go

    token = cli("access-token", "amazon", "--user", "u1")
    assert token.exit_code == 0, token.stderr
    assert token.stdout.startswith("Atza|") and token.stdout.count("\n") == 1
    assert sandbox.state.seller_of_access_token(token.stdout.strip()) is not None
    again = cli("access-token", "amazon", "--user", "u1")
    assert again.stdout == token.stdout  # cached: no second grant
    assert sandbox.state.stats()["grants"]["refresh_token"] == 1


def test_access_token_refreshes_when_nothing_is_cached(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any
) -> None:
    seller("u1")
    token = cli("access-token", "amazon", "--user", "u1")
    assert token.exit_code == 0, token.stderr
    assert sandbox.state.seller_of_access_token(token.stdout.strip()) is not None
    assert sandbox.state.stats()["grants"]["refresh_token"] == 1


def test_a_revoked_seller_is_revoked_and_told_how_to_reconnect(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any
) -> None:
    known = seller("u1")
    sandbox.state.revoke(known.selling_partner_id)
    result = cli("refresh", "amazon", "--user", "u1", "--json")
    assert result.exit_code == 1
    assert result.json()["outcome"] == "revoked"
    assert "reconnect at http://localhost:3000/integrations/amazon/connect" in result.stderr
    assert status_of(cli, "u1")["status"] == "revoked"
    assert events_of(db, "u1") == [("token_refresh_failed", "oauth_token_revoked")]
    (note,) = cli("notifications", "--user", "u1", "--json").json()
    assert note["kind"] == "connection_lost"
    assert note["detail"]["reconnectUrl"].endswith("reconnect=true&userId=u1")
    refused = cli("access-token", "amazon", "--user", "u1")
    assert refused.exit_code == 1
    assert "the Amazon authorization of 'u1' is revoked: reconnect at" in refused.stderr


def test_past_the_re_authorization_date_it_is_expired(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any
) -> None:
    known = seller("u1", authorized_days_ago=366)
    sandbox.state.revoke(known.selling_partner_id)
    result = cli("refresh", "amazon", "--user", "u1", "--json")
    assert result.exit_code == 1
    assert result.json()["outcome"] == "expired"
    assert status_of(cli, "u1")["status"] == "expired"
    assert events_of(db, "u1") == [("token_refresh_failed", "oauth_token_expired")]


def test_the_app_s_credentials_refused_touch_no_seller(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any
) -> None:
    seller("u1")
    sandbox.state.rotate_client_secret("a-secret-we-do-not-have")
    result = cli("refresh", "amazon", "--user", "u1")
    assert result.exit_code == 3
    assert "rejected the app's credentials" in result.stderr
    row = status_of(cli, "u1")
    assert row["status"] == "active"
    assert "consecutive_failures" not in row["metadata"]
    admin = cli("notifications", "--admin", "--json").json()
    assert [n["kind"] for n in admin] == ["app_credentials_rejected"]


def test_transient_failures_are_retried_in_the_run(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any
) -> None:
    known = seller("u1")
    sandbox.state.set_behaviour(known.selling_partner_id, "flaky", times=2)
    began = time.perf_counter()
    result = cli("refresh", "amazon", "--user", "u1")
    took_ms = (time.perf_counter() - began) * 1000
    assert result.exit_code == 0, result.stderr
    assert sandbox.state.stats()["refreshes_per_seller"][known.selling_partner_id] == 3
    assert events_of(db, "u1") == [
        ("token_refresh_retried", "provider_server_error"),
        ("token_refresh_retried", "provider_server_error"),
        ("token_refreshed", None),
    ]
    tries = [
        json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]
        for r in db.rows(
            "SELECT detail FROM events WHERE user_id = :u AND kind LIKE 'token_%' ORDER BY id",
            u="u1",
        )
    ]
    assert [(t["attempt"], t.get("http_status")) for t in tries] == [(1, 503), (2, 503), (3, None)]
    # Each try's time, in milliseconds to a tenth: the whole try, within the command's time.
    assert all(0 < t["duration_ms"] <= took_ms for t in tries), (tries, took_ms)
    assert all(t["duration_ms"] == round(t["duration_ms"], 1) for t in tries)


def test_failures_that_last_are_counted_then_alerted_then_resolved(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any
) -> None:
    known = seller("u1")
    sandbox.state.set_behaviour(known.selling_partner_id, "flaky", status=503)
    for run in range(1, 4):
        before = datetime.now(UTC)
        result = cli("refresh", "amazon", "--user", "u1")
        after = datetime.now(UTC)
        assert result.exit_code == 1
        assert "could not refresh" in result.stderr
        row = status_of(cli, "u1")
        assert row["status"] == "active"  # a transient failure never changes the status
        assert row["metadata"]["consecutive_failures"] == run
        assert row["metadata"]["last_error"]["type"] == "provider_server_error"
        # Left alone 5 minutes after the first failed run, 10 after the second, 20 after the
        # third, each give or take 20 %.
        (backoff,) = db.rows("SELECT next_attempt_at FROM credentials")
        due = utc(backoff["next_attempt_at"])
        wait = timedelta(minutes=5 * 2 ** (run - 1))
        assert due - before >= wait * 0.8 and due - after <= wait * 1.2
    admin = cli("notifications", "--admin", "--json").json()
    assert [n["kind"] for n in admin] == ["repeated_failures"]
    sandbox.state.clear_behaviour(known.selling_partner_id)
    assert cli("refresh", "amazon", "--user", "u1").exit_code == 0
    row = status_of(cli, "u1")
    assert "consecutive_failures" not in row["metadata"]
    assert cli("notifications", "--admin", "--unread", "--json").json()[0]["resolved_at"]


@pytest.mark.parametrize("rotate", [False, True])
def test_the_refresh_token_is_kept_or_replaced(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any, rotate: bool
) -> None:
    known = seller("u1")
    behaviour = "rotate_refresh_token" if rotate else "omit_refresh_token"
    sandbox.state.set_behaviour(known.selling_partner_id, behaviour, times=1)
    assert cli("refresh", "amazon", "--user", "u1").exit_code == 0
    stored = json.loads(cli("export", "--include-secrets").stdout)["refresh_token"]
    assert (stored != known.refresh_token) is rotate
    grants = sandbox.state.stats()["grants"]["refresh_token"]
    assert cli("refresh", "amazon", "--user", "u1").exit_code == 0  # the stored one works
    assert sandbox.state.stats()["grants"]["refresh_token"] == grants + 1


def test_a_seller_is_warned_once_30_days_before_re_authorization(
    db: Any, cli: Any, seller: Any
) -> None:
    seller("soon", authorized_days_ago=340)
    seller("later", authorized_days_ago=300)
    for _ in range(2):
        assert cli("refresh", "amazon", "--user", "soon").exit_code == 0
        assert cli("refresh", "amazon", "--user", "later").exit_code == 0
    warnings = cli("notifications", "--json").json()
    assert [(n["user_id"], n["kind"]) for n in warnings] == [("soon", "authorization_expiring")]
    assert "expires on" in warnings[0]["message"]


def test_an_unknown_user_is_a_usage_error(db: Any, cli: Any, seller: Any) -> None:
    result = cli("refresh", "amazon", "--user", "nobody")
    assert result.exit_code == 2
    assert result.stderr == "error: user 'nobody' has no Amazon authorization\n"


def test_two_callers_at_once_share_one_refresh(db: Any, sandbox: Sandbox, seller: Any) -> None:
    known = seller("u1")
    sandbox.state.set_behaviour(known.selling_partner_id, "slow", ms=700, times=1)
    callers = [
        subprocess.Popen(
            [sys.executable, "-m", "discoveryctl", "access-token", "amazon", "--user", "u1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(2)
    ]
    outputs = [(c.wait(timeout=60), *c.communicate()) for c in callers]
    assert [code for code, _, _ in outputs] == [0, 0], outputs
    assert outputs[0][1] == outputs[1][1]  # the same token
    assert sandbox.state.stats()["grants"]["refresh_token"] == 1


def test_a_refresh_made_between_reading_the_cache_and_taking_the_lease_is_used(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any
) -> None:
    """The moment two callers race on: this one read no usable token, then another process
    refreshed and let go of its lease before this one asked for the lease. The lease is
    free, but the token is fresh: use it, do not spend a second grant."""
    seller("u1")
    others: list[subprocess.CompletedProcess[str]] = []

    def refresh_elsewhere(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not others and statement.lstrip().startswith("SELECT credentials.id,"):
            others.append(
                subprocess.run(
                    [sys.executable, "-m", "discoveryctl", "refresh", "amazon", "--user", "u1"],
                    capture_output=True,
                    text=True,
                    env=dict(os.environ),
                    timeout=60,
                )
            )

    sa.event.listen(sa.Engine, "after_cursor_execute", refresh_elsewhere)
    try:
        token = cli("access-token", "amazon", "--user", "u1")
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", refresh_elsewhere)
    (other,) = others
    assert other.returncode == 0, other.stderr
    assert token.exit_code == 0, token.stderr
    assert sandbox.state.stats()["grants"]["refresh_token"] == 1
    assert sandbox.state.seller_of_access_token(token.stdout.strip()) is not None


def test_no_token_reaches_a_log_line(
    db: Any, cli: Any, sandbox: Sandbox, seller: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    known = seller("u1")
    sandbox.state.set_behaviour(known.selling_partner_id, "rotate_refresh_token", times=1)
    result = cli("refresh", "amazon", "--user", "u1", "--json")
    assert result.exit_code == 0, result.stderr
    stored = json.loads(cli("export", "--include-secrets").stdout)["refresh_token"]
    for secret in (known.refresh_token, stored, "Atza|", "Atzr|"):
        assert secret not in result.stderr + result.stdout
    rows = json.dumps(
        db.rows("SELECT * FROM events") + db.rows("SELECT * FROM credentials"), default=str
    )
    assert "Atza|" not in rows and "Atzr|" not in rows


def test_a_token_shorter_lived_than_the_margin_is_still_handed_out(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Refreshing must not loop when LWA grants less time than the 5-minute margin."""
    from discoveryctl.sandbox import SandboxConfig, run_in_thread

    with run_in_thread(SandboxConfig(access_token_ttl=120)) as short:
        for name, value in short.env().items():
            monkeypatch.setenv(name, value)
        known = short.state.add_seller()
        line = amazon_line("u1", known.refresh_token)
        line["selling_partner_id"] = known.selling_partner_id
        assert cli("import", str(write_lines(tmp_path / "u1.jsonl", line))).exit_code == 0
        token = cli("access-token", "amazon", "--user", "u1")
        assert token.exit_code == 0, token.stderr
        assert short.state.seller_of_access_token(token.stdout.strip()) is not None
        assert short.state.stats()["grants"]["refresh_token"] == 1
