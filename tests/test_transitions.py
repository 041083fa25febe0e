"""Status transitions: an event for each, notifications with dedupe keys, resolution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from discoveryctl.integrations.vocabulary import Status

from helpers import amazon_line, fail_transiently, set_status, write_lines


def detail(row: dict[str, Any]) -> Any:
    value = row["detail"]
    return json.loads(value) if isinstance(value, str) else value


def test_revocation_notifies_the_seller_once_and_recovery_resolves_it(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("alice"))))
    set_status(db.url, "alice", Status.revoked)
    set_status(db.url, "alice", Status.revoked)  # no change: no event, no notification
    set_status(db.url, "alice", Status.expired)

    changes = db.rows("SELECT * FROM events WHERE kind = 'status_changed' ORDER BY id")
    assert [(detail(r)["from"], detail(r)["to"]) for r in changes] == [
        ("active", "revoked"),
        ("revoked", "expired"),
    ]
    assert {r["outcome"] for r in changes} == {"failure"}

    inbox = cli("notifications", "--user", "alice", "--json").json()
    assert len(inbox) == 1
    assert inbox[0]["kind"] == "connection_lost"
    assert inbox[0]["resolved_at"] is None
    assert inbox[0]["detail"]["reconnectUrl"].endswith(
        "/integrations/amazon/connect?reconnect=true&userId=alice"
    )

    set_status(db.url, "alice", Status.active)
    inbox = cli("notifications", "--user", "alice", "--json").json()
    assert inbox[0]["resolved_at"] is not None

    set_status(db.url, "alice", Status.revoked)  # a new loss is a new notification
    assert len(cli("notifications", "--user", "alice", "--json").json()) == 2


def test_repeated_transient_failures_alert_the_admin_once(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("bob"))))
    fail_transiently(db.url, "bob", 2)
    assert cli("notifications", "--admin", "--json").json() == []
    fail_transiently(db.url, "bob", 3)
    admin = cli("notifications", "--admin", "--json").json()
    assert len(admin) == 1
    assert admin[0]["kind"] == "repeated_failures"
    assert admin[0]["detail"] == {"consecutive_failures": 3, "error_type": "lwa_timeout"}
    status = cli("status", "--user", "bob", "--json").json()[0]
    assert status["status"] == "active"  # transient failures never change the status
    assert status["metadata"]["consecutive_failures"] == 5
    assert status["metadata"]["last_error"]["type"] == "lwa_timeout"


def test_notifications_show_the_operators_each_audience_apart(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    """Without --user every user's, with it one user's (never the admins' about them);
    --admin the admins' (with --user: those about that user)."""
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("alice"), amazon_line("bob"))))
    for user in ("alice", "bob"):
        fail_transiently(db.url, user, 3)  # an admin alert about the user
        set_status(db.url, user, Status.revoked)  # and the user's own notification

    def shown(*options: str) -> list[tuple[str, str]]:
        found = cli("notifications", *options, "--json").json()
        return sorted((n["audience"], n["user_id"]) for n in found)

    assert shown() == [("user", "alice"), ("user", "bob")]
    assert shown("--user", "alice") == [("user", "alice")]
    assert shown("--admin") == [("admin", "alice"), ("admin", "bob")]
    assert shown("--admin", "--user", "bob") == [("admin", "bob")]


def test_acknowledge(db: Any, cli: Any, tmp_path: Path) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("a"), amazon_line("b"))))
    set_status(db.url, "a", Status.revoked)
    set_status(db.url, "b", Status.revoked)
    ids = [n["id"] for n in cli("notifications", "--json").json()]
    assert len(ids) == 2
    result = cli("notifications", "ack", str(ids[0]))
    assert result.exit_code == 0
    assert [n["id"] for n in cli("notifications", "--unread", "--json").json()] == [ids[1]]
    missing = cli("notifications", "ack", str(ids[1]), "999999")
    assert missing.exit_code == 2
    assert "no notification with id 999999" in missing.stderr
    # All or nothing: the known id was not acknowledged either.
    assert len(cli("notifications", "--unread", "--json").json()) == 1


def test_events_filters_and_since(db: Any, cli: Any, tmp_path: Path) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("a"), amazon_line("b"))))
    history = cli("events", "--user", "a", "--json").json()
    assert {e["kind"] for e in history} == {"integration_created", "credentials_imported"}
    assert all(e["user_id"] == "a" for e in history)
    assert cli("events", "--provider", "stripe", "--json").json() == []
    assert cli("events", "--since", "2999-01-01T00:00:00Z", "--json").json() == []
    bad = cli("events", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "--since 'yesterday'" in bad.stderr
    table = cli("events", "--user", "b")
    assert "credentials_imported" in table.stdout
