"""Every way the configuration can be wrong ends in one line on stderr and exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from helpers import amazon_line, write_lines


def one_line_error(result: Any) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_database_url_with_a_driver_that_is_not_installed(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://user:hunter2@127.0.0.1/discovery")
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    line = one_line_error(cli("status"))
    assert "DATABASE_URL needs the Python package" in line
    assert "hunter2" not in line


def test_database_url_with_an_unknown_dialect(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "nosuchdb://host/db")
    line = one_line_error(cli("status"))
    assert "nosuchdb" in line


@pytest.mark.parametrize("url", ["not a url", "postgresql://host:notaport/db", "://"])
def test_malformed_database_url(cli: Any, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    line = one_line_error(cli("status"))
    assert "DATABASE_URL is malformed" in line


def test_unreachable_postgres_names_the_server_without_the_password(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone:hunter2@127.0.0.1:1/discovery")
    line = one_line_error(cli("status"))
    assert "cannot use the database at postgresql+psycopg://someone:***@127.0.0.1:1" in line
    assert "hunter2" not in line


def test_a_password_in_the_query_string_is_hidden_too(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "DATABASE_URL",
        "postgresql://someone@127.0.0.1:1/discovery?password=hunter2&sslpassword=s3&sslmode=disable",
    )
    line = one_line_error(cli("status"))
    assert "password=hidden" in line and "sslpassword=hidden" in line and "sslmode=disable" in line
    assert "hunter2" not in line and "s3&" not in line


def test_wrong_encryption_key_is_named_not_garbage(
    db: Any, cli: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1")))).exit_code == 0
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    for args in (
        ("export", "--include-secrets"),
        ("keys", "rotate"),
        ("import", str(write_lines(tmp_path / "b.jsonl", amazon_line("u2")))),
    ):
        line = one_line_error(cli(*args))
        assert "cannot be decrypted with DISCOVERY_ENCRYPTION_KEY: wrong key?" in line
    # Nothing was written under the wrong key.
    assert db.scalar("SELECT count(*) FROM integration_status WHERE user_id = 'u2'") == 0


def test_malformed_encryption_key(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", "not-a-fernet-key")
    line = one_line_error(cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1")))))
    assert "DISCOVERY_ENCRYPTION_KEY key #1 is malformed" in line
    assert "discoveryctl secrets generate-key" in line


def test_missing_encryption_key_outside_the_sqlite_default(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("DISCOVERY_ENCRYPTION_KEY")
    line = one_line_error(cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1")))))
    assert "DISCOVERY_ENCRYPTION_KEY is not set" in line
    assert "discoveryctl secrets set DISCOVERY_ENCRYPTION_KEY" in line


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be console or json"),
        ("FRONTEND_URL", "ftp://x", "FRONTEND_URL must be an http(s) URL"),
    ],
)
def test_malformed_settings(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    args = ("reconnect", "amazon") if name == "FRONTEND_URL" else ("status",)
    assert expected in one_line_error(cli(*args))


def test_unknown_user_is_a_usage_error(db: Any, cli: Any) -> None:
    assert "user 'nobody' has no amazon integration" in one_line_error(
        cli("reconnect", "amazon", "--user", "nobody")
    )


def test_sqlite_paths_that_cannot_be_used(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/file/inside/discovery.db")
    assert "there is no SQLite database at" in one_line_error(cli("status"))
    assert "the folder" in one_line_error(cli("db", "upgrade"))
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("these are not the tables you are looking for\n" * 100)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{not_a_database}")
    assert "file is not a database" in one_line_error(cli("status"))


def test_generated_secret_files_that_are_unreadable_or_empty(
    cli: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("status").exit_code == 0  # the SQLite default now exists and is migrated
    folder = tmp_path / "data" / "discoveryctl"
    (folder / "encryption.key").write_bytes(b"\xff\xfe\x00")
    assert "encryption.key: not UTF-8 text" in one_line_error(cli("export", "--include-secrets"))
    (folder / "encryption.key").write_text("")
    assert "encryption.key is empty" in one_line_error(cli("export", "--include-secrets"))
    (folder / "encryption.key").unlink()
    (folder / "encryption.key").mkdir()
    assert "cannot read" in one_line_error(cli("export", "--include-secrets"))


@pytest.mark.parametrize(
    "args",
    [
        ("events", "--since", "99999999999d"),
        ("events", "--limit", "-1"),
        ("notifications", "ack", "99999999999999999999"),
        ("notifications", "ack", "0"),
        ("status", "--limit", "-3"),
        ("status", "--user", "caf\udce9"),
    ],
)
def test_out_of_range_and_undecodable_arguments(db: Any, cli: Any, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr


def test_a_mistyped_sqlite_path_creates_nothing_and_db_upgrade_says_where_it_creates(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/typo/discovery.db")
    for command in (("status",), ("import", "-"), ("db", "current"), ("doctor",)):
        result = cli(*command, input="")
        assert result.exit_code in (1, 2), command
        assert "there is no SQLite database at" in result.stderr + result.stdout, command
    assert "cannot create the SQLite database" in one_line_error(cli("db", "upgrade"))
    assert list(tmp_path.iterdir()) == []  # no folder, no file
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/discovery.db")
    created = cli("db", "upgrade")
    assert created.exit_code == 0, created.stderr
    assert f"created a new SQLite database at {tmp_path}/discovery.db" in created.stderr
    assert (tmp_path / "discovery.db").stat().st_mode & 0o777 == 0o600
    again = cli("db", "upgrade")
    assert "created" not in again.stderr and again.exit_code == 0


def test_the_default_database_is_readable_by_its_owner_alone(cli: Any, tmp_path: Path) -> None:
    assert cli("status").exit_code == 0
    folder = tmp_path / "data" / "discoveryctl"
    assert (folder / "discoveryctl.db").stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o777 == 0o700
