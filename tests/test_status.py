"""`status`: the health table, its JSON, and the --check exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from discoveryctl.integrations.vocabulary import Status

from helpers import SEED_FIELDS, amazon_line, fail_transiently, set_status, stripe_line, write_lines


def seed(cli: Any, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "seed.jsonl",
        amazon_line("alice"),
        amazon_line("bob"),
        amazon_line("carol"),
        stripe_line("alice", customer_id="cus_alice"),
        stripe_line("dave"),
    )
    assert cli("import", str(source)).exit_code == 0


def test_json_is_shaped_like_the_seed_api(db: Any, cli: Any, tmp_path: Path) -> None:
    seed(cli, tmp_path)
    set_status(db.url, "bob", Status.revoked)
    result = cli("status", "--json")
    assert result.exit_code == 0
    data = result.json()
    assert [(d["user_id"], d["provider"]) for d in data] == [
        ("alice", "amazon"),
        ("alice", "stripe"),
        ("bob", "amazon"),
        ("carol", "amazon"),
        ("dave", "stripe"),
    ]
    for item in data:
        assert set(item) == SEED_FIELDS
        assert len(item["id"]) == 36
        assert item["updated_at"].endswith("Z")
        assert isinstance(item["metadata"], dict)
    by_user = {(d["user_id"], d["provider"]): d for d in data}
    # Imported, never refreshed: not known to work yet.
    assert by_user[("alice", "amazon")]["message"] == (
        "Your amazon integration has not been checked yet"
    )
    assert by_user[("alice", "amazon")]["lastSyncedAt"] is None
    assert by_user[("bob", "amazon")]["status"] == "revoked"
    assert "reconnect" in by_user[("bob", "amazon")]["message"]
    assert by_user[("dave", "stripe")]["status"] == "pending"
    assert result.stderr.count("\n") <= 1  # nothing else on stdout, at most a log line


def test_filters(db: Any, cli: Any, tmp_path: Path) -> None:
    seed(cli, tmp_path)
    set_status(db.url, "bob", Status.expired)
    assert [d["user_id"] for d in cli("status", "stripe", "--json").json()] == ["alice", "dave"]
    assert [d["provider"] for d in cli("status", "--user", "alice", "--json").json()] == [
        "amazon",
        "stripe",
    ]
    assert [d["user_id"] for d in cli("status", "--status", "expired", "--json").json()] == ["bob"]
    bad = cli("status", "--status", "sleeping")
    assert bad.exit_code == 2


def test_check_exit_codes(db: Any, cli: Any, tmp_path: Path) -> None:
    seed(cli, tmp_path)
    assert cli("status", "--check").exit_code == 0
    fail_transiently(db.url, "carol", 1)
    failing = cli("status", "--check")
    assert failing.exit_code == 1
    assert cli("status", "stripe", "--check").exit_code == 0
    set_status(db.url, "bob", Status.revoked)
    assert cli("status", "--check", "--json").exit_code == 1
    assert cli("status", "--user", "alice", "--check").exit_code == 0


def test_table_shows_unhealthy_first_with_failures_and_summary(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    seed(cli, tmp_path)
    set_status(db.url, "bob", Status.revoked)
    fail_transiently(db.url, "carol", 2)
    result = cli("status")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "user",
        "provider",
        "status",
        "last",
        "synced",
        "failures",
        "message",
    ]
    assert lines[1].split()[:3] == ["bob", "amazon", "revoked"]
    assert lines[2].split()[:5] == ["carol", "amazon", "active", "never", "2"]
    assert "lwa_timeout: timed out after 10s" in lines[2]
    assert lines[-1] == ("5 integrations: 3 active, 1 revoked, 1 pending; 2 need attention")
    summary = cli("status", "--summary")
    assert summary.stdout.strip() == lines[-1]


def test_table_is_limited_but_says_so(db: Any, cli: Any, tmp_path: Path) -> None:
    seed(cli, tmp_path)
    result = cli("status", "--limit", "2")
    assert "… 3 more not shown" in result.stdout
    assert len(cli("status", "--limit", "0").stdout.splitlines()) == 1 + 5 + 1


def test_user_data_is_not_read_as_markup(db: Any, cli: Any, tmp_path: Path) -> None:
    write_lines(tmp_path / "m.jsonl", stripe_line("[red]mallory[/red]"))
    cli("import", str(tmp_path / "m.jsonl"))
    assert "[red]mallory[/red]" in cli("status").stdout


def test_empty_database(db: Any, cli: Any) -> None:
    result = cli("status")
    assert result.exit_code == 0
    assert result.stdout.strip() == "no integrations"
    assert cli("status", "--json").json() == []


@pytest.mark.parametrize("command", [["status", "--limit", "0"], ["status", "--json"], ["export"]])
def test_a_reader_that_stops_early_ends_the_command_quietly_with_0(
    db: Any, cli: Any, tmp_path: Path, command: list[str]
) -> None:
    """`status | head -1`: the rest of the output has nowhere to go, which is no error."""
    lines = [stripe_line(f"user-{n}") for n in range(3000)]
    assert cli("import", str(write_lines(tmp_path / "s.jsonl", *lines))).exit_code == 0
    reader = subprocess.Popen(
        [sys.executable, "-m", "discoveryctl", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline()
    reader.stdout.close()  # as head does after its line
    errors = reader.stderr.read()
    reader.stderr.close()
    assert reader.wait(timeout=60) == 0, errors
    assert errors == b""


def test_the_summary_as_json(db: Any, cli: Any, tmp_path: Path) -> None:
    seed(cli, tmp_path)
    set_status(db.url, "bob", Status.revoked)
    summary = cli("status", "--summary", "--json")
    assert summary.exit_code == 0
    assert summary.json() == {
        "total": 5,
        "by_status": {"active": 3, "revoked": 1, "pending": 1},
        "need_attention": 1,
    }
    only = cli("status", "amazon", "--summary", "--json").json()
    assert only == {"total": 3, "by_status": {"active": 2, "revoked": 1}, "need_attention": 1}


def test_a_very_long_user_id_is_cut_and_the_other_columns_stay(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    long_id = "seller-" + "x" * 248
    lines = [amazon_line(long_id), amazon_line("short")]
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", *lines))).exit_code == 0
    table = cli("status").stdout.splitlines()
    row = next(line for line in table if line.startswith("seller-x"))
    assert "…" in row and long_id not in row
    assert "amazon" in row and "active" in row and "Your amazon integration" in row
    assert next(line for line in table if line.startswith("short ")).split()[1:3] == [
        "amazon",
        "active",
    ]


def test_a_synced_integration_works_properly_one_never_synced_is_not_checked_yet(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1")))).exit_code == 0
    assert "has not been checked yet" in cli("status").stdout
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            'UPDATE integration_status SET metadata = \'{"last_synced_at": '
            '"2026-01-01T00:00:00Z"}\''
        )
    (row,) = cli("status", "--json").json()
    assert row["message"] == "Your amazon integration is working properly"


def test_one_unhealthy_rule_for_the_table_the_summary_and_check(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    """Revoked, expired, or failing right now: the rows the table puts first, the summary's
    ``need_attention`` (counted in SQL) and ``--check`` (counted row by row) agree on each
    combination of status and failures."""
    users = {
        "a-fine": (Status.active, 0),
        "b-failing": (Status.active, 2),
        "c-revoked": (Status.revoked, 0),
        "d-expired": (Status.expired, 0),
        "e-revoked-failing": (Status.revoked, 1),
        "f-pending": (Status.pending, 0),
        "g-pending-failing": (Status.pending, 1),
    }
    source = write_lines(tmp_path / "all.jsonl", *(amazon_line(user) for user in users))
    assert cli("import", str(source)).exit_code == 0
    for user, (status, failures) in users.items():
        if status != Status.active:
            set_status(db.url, user, status)
        fail_transiently(db.url, user, failures)
    unhealthy = {"b-failing", "c-revoked", "d-expired", "e-revoked-failing", "g-pending-failing"}

    summary = cli("status", "--summary", "--json").json()
    assert summary["need_attention"] == len(unhealthy)
    table = cli("status").stdout.splitlines()
    first = [line.split()[0] for line in table[1 : 1 + len(unhealthy)]]
    assert set(first) == unhealthy
    for user in users:
        as_json = cli("status", "--user", user, "--json", "--check")
        summed = cli("status", "--user", user, "--summary", "--json", "--check")
        expected = 1 if user in unhealthy else 0
        assert (as_json.exit_code, summed.exit_code) == (expected, expected), user
    listed = {item["user_id"] for item in cli("reconnect", "amazon", "--json").json()}
    assert listed == {"c-revoked", "d-expired", "e-revoked-failing"}
