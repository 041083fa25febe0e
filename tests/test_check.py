"""`check amazon` against the sandbox's SP-API over real sockets: an answer marks the seller in
sync; a revoked token revokes; a 403 that says nothing is recorded, not acted on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from discoveryctl.sandbox import Sandbox

from helpers import amazon_line, write_lines


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


@pytest.mark.parametrize("behaviour", ["spapi_401", "revoked_token"])
def test_a_refused_token_revokes_the_seller(
    db: Any, cli: Any, sandbox: Sandbox, sellers: Any, behaviour: str
) -> None:
    seller = sellers[1]
    assert cli("access-token", "amazon", "--user", "u1").exit_code == 0  # a cached token
    if behaviour == "spapi_401":
        sandbox.state.set_behaviour(seller.selling_partner_id, "spapi_401", times=1)
    else:  # revoked at Amazon: its access tokens die with it (403, "revoked … or invalid")
        sandbox.state.revoke(seller.selling_partner_id)
    result = cli("check", "amazon", "--user", "u1", "--json")
    assert result.exit_code == 1
    assert result.json()[0]["outcome"] == "revoked"
    (row,) = cli("status", "--user", "u1", "--json").json()
    assert row["status"] == "revoked"
    (note,) = cli("notifications", "--user", "u1", "--json").json()
    assert note["detail"]["reconnectUrl"].endswith("userId=u1")


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
