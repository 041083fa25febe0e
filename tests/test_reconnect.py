"""`reconnect amazon`: the URL, the attempt count, and the seller's notification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from discoveryctl.integrations.vocabulary import Status

from helpers import amazon_line, set_status, write_lines


@pytest.fixture
def sellers(db: Any, cli: Any, tmp_path: Path) -> Any:
    source = write_lines(
        tmp_path / "s.jsonl", amazon_line("alice"), amazon_line("bob"), amazon_line("c d&e")
    )
    assert cli("import", str(source)).exit_code == 0
    return db


def test_reconnect_one_user_prints_the_url_and_counts_attempts(
    sellers: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRONTEND_URL", "https://app.example.com/")
    first = cli("reconnect", "amazon", "--user", "c d&e", "--json")
    assert first.exit_code == 0
    assert first.json() == [
        {
            "user_id": "c d&e",
            "provider": "amazon",
            "status": "active",
            "reconnectUrl": "https://app.example.com/integrations/amazon/connect"
            "?reconnect=true&userId=c%20d%26e",
            "attempts": 1,
            "notified": False,
            "already_notified_at": None,
        }
    ]
    second = cli("reconnect", "amazon", "--user", "c d&e")
    assert second.exit_code == 0
    assert "attempt 2" in second.stdout
    assert "https://app.example.com/integrations/amazon/connect?reconnect=true" in second.stdout
    meta = cli("status", "--user", "c d&e", "--json").json()[0]["metadata"]
    assert meta["reconnect_attempts"] == 2
    assert meta["last_reconnect_requested_at"].endswith("Z")
    assert sellers.scalar("SELECT count(*) FROM events WHERE kind = 'reconnect_requested'") == 2
    assert cli("notifications", "--json").json() == []


def test_without_user_every_revoked_or_expired_integration(sellers: Any, cli: Any) -> None:
    assert cli("reconnect", "amazon", "--json").json() == []
    set_status(sellers.url, "alice", Status.revoked)
    set_status(sellers.url, "bob", Status.expired)
    for _ in range(2):  # listing is not handing a URL to a seller: nothing is counted
        result = cli("reconnect", "amazon", "--json")
        assert [(r["user_id"], r["status"], r["attempts"]) for r in result.json()] == [
            ("alice", "revoked", 0),
            ("bob", "expired", 0),
        ]
    assert sellers.scalar("SELECT count(*) FROM events WHERE kind = 'reconnect_requested'") == 0
    notified = cli("reconnect", "amazon", "--notify", "--json").json()  # sent: counted
    assert [(r["attempts"], r["notified"]) for r in notified] == [(1, True), (1, True)]


def test_notify_creates_one_notification_with_the_url(sellers: Any, cli: Any) -> None:
    url = "http://localhost:3000/integrations/amazon/connect?reconnect=true&userId=alice"
    for _ in range(2):
        result = cli("reconnect", "amazon", "--user", "alice", "--notify", "--json")
        assert result.exit_code == 0
    assert result.json()[0]["notified"] is False  # the second one was deduplicated
    sent_at = result.json()[0]["already_notified_at"]
    assert sent_at.endswith("Z")
    text = cli("reconnect", "amazon", "--user", "alice", "--notify")
    assert f"(not notified again: the notification sent {sent_at} is still open)" in text.stdout
    inbox = cli("notifications", "--user", "alice", "--json").json()
    assert len(inbox) == 1
    assert inbox[0]["kind"] == "reconnect_requested"
    assert inbox[0]["detail"] == {"reconnectUrl": url}
    assert inbox[0]["message"] == "Redirect to this URL to reconnect your amazon integration"
    assert cli("notifications", "--user", "alice").stdout.count(url) == 1


def test_stripe_is_not_a_reconnect_provider(sellers: Any, cli: Any) -> None:
    assert cli("reconnect", "stripe").exit_code == 2
