"""`doctor`: each check says what to fix."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet

from helpers import amazon_line, write_lines


def checks(result: Any) -> dict[str, tuple[str, str]]:
    return {c["check"]: (c["state"], c["detail"]) for c in result.json()}


def configure_providers(monkeypatch: pytest.MonkeyPatch, rotated_days_ago: int) -> None:
    for name in (
        "AMAZON_LWA_CLIENT_ID",
        "AMAZON_LWA_CLIENT_SECRET",
        "AMAZON_SPAPI_APP_ID",
        "STRIPE_API_KEY",
    ):
        monkeypatch.setenv(name, f"value-of-{name}")
    monkeypatch.setenv("JWT_SECRET", "j" * 40)
    rotated = datetime.now(UTC).date() - timedelta(days=rotated_days_ago)
    monkeypatch.setenv("AMAZON_LWA_CLIENT_SECRET_ROTATED_AT", rotated.isoformat())


def test_healthy_installation(
    db: Any, cli: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("a"), amazon_line("b"))))
    configure_providers(monkeypatch, rotated_days_ago=10)
    result = cli("doctor", "--json")
    assert result.exit_code == 0, result.stdout
    found = checks(result)
    assert found["database"][0] == "ok"
    assert found["database integrity"][0] == "ok"
    assert found["encryption key"] == ("ok", "decrypts all 2 stored credentials")
    assert found["LWA secret age"] == ("ok", "10 days old")
    assert found["Stripe API version"] == ("ok", "2026-10-28.endive, sent on every request")


def test_problems_are_named(
    db: Any, cli: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("a"))))
    configure_providers(monkeypatch, rotated_days_ago=200)
    monkeypatch.delenv("STRIPE_API_KEY")
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    result = cli("doctor", "--json")
    assert result.exit_code == 1
    found = checks(result)
    assert found["encryption key"][0] == "fail"
    assert "wrong key" in found["encryption key"][1]
    assert found["STRIPE_API_KEY"][0] == "fail"
    assert found["LWA secret age"][0] == "fail"
    assert "200 days old" in found["LWA secret age"][1]
    table = cli("doctor")
    assert "STRIPE_API_KEY" in table.stdout


def test_unmigrated_database(empty_db: Any, cli: Any) -> None:
    result = cli("doctor", "--json")
    assert result.exit_code == 1
    state, detail = checks(result)["database"]
    assert state == "fail"
    assert "discoveryctl db upgrade" in detail


def test_first_use_of_the_sqlite_default(cli: Any) -> None:
    result = cli("doctor", "--json")
    found = checks(result)
    assert found["database"][0] == "ok"
    assert "upgraded to" in found["database"][1]
    assert found["encryption key"] == ("ok", "decrypts all 0 stored credentials")


def test_a_corrupted_sqlite_file_is_reported_as_corruption(
    db: Any, cli: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.kind != "sqlite":
        pytest.skip("pages are overwritten in a SQLite file")
    lines = [amazon_line(f"seller-{n}") for n in range(300)]
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", *lines))).exit_code == 0
    path = db.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'integration_status'"
        ).fetchone()[0]
    with open(path, "r+b") as file:  # the cells of a page overwritten, as a bad disk might
        file.seek(root * page_size - 1200)
        file.write(b"\xff" * 1200)
    assert db.scalar("SELECT count(*) FROM integration_status") == 300  # plain reads pass
    configure_providers(monkeypatch, rotated_days_ago=10)
    result = cli("doctor", "--json")
    assert result.exit_code == 1
    state, detail = checks(result)["database integrity"]
    assert state == "fail"
    assert detail.startswith("corrupted: ") and "invalid page number" in detail
    assert "\n" not in detail
    assert "database integrity" in result.stderr


def test_a_rotation_date_in_the_future_is_refused(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_providers(monkeypatch, rotated_days_ago=-30)
    result = cli("doctor", "--json")
    assert result.exit_code == 1
    state, detail = checks(result)["LWA secret age"]
    assert state == "fail" and "is in the future" in detail


def test_a_table_postgresql_cannot_read_is_reported(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.kind != "postgres":
        pytest.skip("SQLite's check is quick_check, above")
    with db.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE oauth_states")
    configure_providers(monkeypatch, rotated_days_ago=10)
    result = cli("doctor", "--json")
    assert result.exit_code == 1
    state, detail = checks(result)["database integrity"]
    assert state == "fail" and detail.startswith("corrupted: oauth_states: ")
