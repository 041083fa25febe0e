"""`keys rotate` and `secrets`: rotation keeps every token readable; the keyring is a source."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from helpers import amazon_line, write_lines


def test_rotation_keeps_every_token_readable(
    db: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [amazon_line(f"u{i}", f"Atzr|token-{i}") for i in range(7)]
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", *lines))).exit_code == 0
    old, new = db.key, Fernet.generate_key().decode()
    before = db.rows("SELECT refresh_token FROM credentials ORDER BY id")

    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", f"{new},{old}")
    result = cli("keys", "rotate", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"rotated": 7, "key_file": None}
    after = db.rows("SELECT refresh_token FROM credentials ORDER BY id")
    assert all(a != b for a, b in zip(after, before, strict=True))

    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", new)  # the old key is gone
    exported = cli("export", "--include-secrets")
    assert exported.exit_code == 0, exported.stderr
    tokens = {
        json.loads(line)["user_id"]: json.loads(line)["refresh_token"]
        for line in exported.stdout.splitlines()
    }
    assert tokens == {f"u{i}": f"Atzr|token-{i}" for i in range(7)}
    assert db.scalar("SELECT count(*) FROM events WHERE kind = 'keys_rotated'") == 1


def test_secrets_set_get_delete_through_the_keyring(cli: Any, isolation: Any) -> None:
    stored = cli("secrets", "set", "stripe_api_key", input="sk_test_abcdefghijkl\n")
    assert stored.exit_code == 0, stored.stderr
    assert isolation.store[("discoveryctl", "STRIPE_API_KEY")] == "sk_test_abcdefghijkl"
    masked = cli("secrets", "get", "STRIPE_API_KEY")
    assert masked.stdout.strip() == "sk_t********kl"
    assert cli("secrets", "get", "STRIPE_API_KEY", "--show").stdout.strip() == (
        "sk_test_abcdefghijkl"
    )
    assert cli("secrets", "delete", "STRIPE_API_KEY").exit_code == 0
    missing = cli("secrets", "get", "STRIPE_API_KEY")
    assert missing.exit_code == 2
    assert "not in the keyring" in missing.stderr


def test_secrets_refuse_unknown_names_and_empty_values(cli: Any) -> None:
    unknown = cli("secrets", "set", "HOME", input="x\n")
    assert unknown.exit_code == 2
    assert "HOME is not a secret discoveryctl reads" in unknown.stderr
    empty = cli("secrets", "set", "JWT_SECRET", input="\n")
    assert empty.exit_code == 2


def test_setting_the_lwa_secret_records_its_rotation_date(cli: Any, isolation: Any) -> None:
    cli("secrets", "set", "AMAZON_LWA_CLIENT_SECRET", input="amzn1.oa2-cs.v1.abc\n")
    assert ("discoveryctl", "AMAZON_LWA_CLIENT_SECRET_ROTATED_AT") in isolation.store


def test_keyring_is_read_after_the_environment(
    db: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolation: Any
) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1", "Atzr|kr"))))
    monkeypatch.delenv("DISCOVERY_ENCRYPTION_KEY")
    isolation.store[("discoveryctl", "DISCOVERY_ENCRYPTION_KEY")] = db.key
    exported = cli("export", "--include-secrets")
    assert exported.exit_code == 0, exported.stderr
    assert json.loads(exported.stdout)["refresh_token"] == "Atzr|kr"
    # The environment wins over the keyring.
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    assert cli("export", "--include-secrets").exit_code == 2


def test_generate_key_prints_a_usable_fernet_key(cli: Any) -> None:
    key = cli("secrets", "generate-key").stdout.strip()
    Fernet(key.encode())


def test_default_database_generates_a_private_key_file_once(cli: Any, tmp_path: Path) -> None:
    result = cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1"))))
    assert result.exit_code == 0, result.stderr
    key_file = tmp_path / "data" / "discoveryctl" / "encryption.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert '"generated_secret_file"' in result.stderr
    again = cli("export", "--include-secrets")
    assert again.exit_code == 0
    assert "generated_secret_file" not in again.stderr


def _create_at_the_same_moment(path: str, barrier: Any, answers: Any) -> None:
    from discoveryctl.config import read_or_create_secret_file
    from discoveryctl.errors import DiscoveryError

    barrier.wait()
    try:
        answers.put(read_or_create_secret_file(Path(path), Fernet.generate_key().decode, "h"))
    except DiscoveryError as error:
        answers.put(f"error: {error.message}")


def test_processes_creating_the_key_file_at_once_all_read_the_one_whole_key(
    tmp_path: Path,
) -> None:
    """The file appears whole or not at all: no process reads it empty or half-written,
    and every one ends with the key the file holds."""
    context = multiprocessing.get_context("fork")
    for attempt in range(30):
        path = tmp_path / str(attempt) / "encryption.key"
        barrier, answers = context.Barrier(6), context.Queue()
        racers = [
            context.Process(target=_create_at_the_same_moment, args=(str(path), barrier, answers))
            for _ in range(6)
        ]
        for racer in racers:
            racer.start()
        keys = [answers.get(timeout=30) for _ in racers]
        for racer in racers:
            racer.join(timeout=30)
        stored = path.read_text().strip()
        assert keys == [stored] * 6, keys
        assert path.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in path.parent.iterdir()] == ["encryption.key"]  # no temporaries


def _default_database_with_tokens(cli: Any, tmp_path: Path) -> tuple[Path, str]:
    lines = [amazon_line(f"u{i}", f"Atzr|token-{i}") for i in range(3)]
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", *lines))).exit_code == 0
    key_file = tmp_path / "data" / "discoveryctl" / "encryption.key"
    return key_file, key_file.read_text().strip()


def _tokens(cli: Any) -> dict[str, str]:
    exported = cli("export", "--include-secrets")
    assert exported.exit_code == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    return {row["user_id"]: row["refresh_token"] for row in rows}


def test_rotating_the_default_database_makes_a_new_key_and_keeps_it_in_the_key_file(
    cli: Any, tmp_path: Path
) -> None:
    key_file, old = _default_database_with_tokens(cli, tmp_path)
    result = cli("keys", "rotate", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"rotated": 3, "key_file": str(key_file)}
    new = key_file.read_text().strip()
    assert new != old and "," not in new
    Fernet(new.encode())
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert _tokens(cli) == {f"u{i}": f"Atzr|token-{i}" for i in range(3)}
    assert cli("keys", "rotate").exit_code == 0  # and again, from the new key
    assert key_file.read_text().strip() not in (old, new)
    assert _tokens(cli) == {f"u{i}": f"Atzr|token-{i}" for i in range(3)}


def test_rotating_the_default_database_from_the_variable_leaves_the_new_key_in_the_file(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's steps: NEW,OLD in the variable, rotate, drop the variable. The key file
    beside the database must then hold NEW, or no token could be read again."""
    key_file, old = _default_database_with_tokens(cli, tmp_path)
    new = Fernet.generate_key().decode()
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", f"{new},{old}")
    result = cli("keys", "rotate")
    assert result.exit_code == 0, result.stderr
    assert f"{key_file} now holds the new key alone" in result.stderr
    monkeypatch.delenv("DISCOVERY_ENCRYPTION_KEY")
    assert key_file.read_text().strip() == new
    assert _tokens(cli) == {f"u{i}": f"Atzr|token-{i}" for i in range(3)}


def test_a_rotation_cut_short_leaves_both_keys_in_the_file_and_a_second_run_finishes_it(
    cli: Any, tmp_path: Path
) -> None:
    """What a crash after the new key was written and before every token was re-encrypted
    leaves: the file holds NEW,OLD. Every token is readable, and rotate finishes the job."""
    key_file, old = _default_database_with_tokens(cli, tmp_path)
    new = Fernet.generate_key().decode()
    key_file.write_text(f"{new},{old}\n")
    assert _tokens(cli) == {f"u{i}": f"Atzr|token-{i}" for i in range(3)}
    assert cli("keys", "rotate").exit_code == 0
    assert key_file.read_text().strip() == new
    assert _tokens(cli) == {f"u{i}": f"Atzr|token-{i}" for i in range(3)}


def test_a_wrong_key_file_is_refused_before_it_is_changed(cli: Any, tmp_path: Path) -> None:
    key_file, _ = _default_database_with_tokens(cli, tmp_path)
    stranger = Fernet.generate_key().decode()
    key_file.write_text(stranger + "\n")
    result = cli("keys", "rotate")
    assert result.exit_code == 2
    assert "cannot be decrypted" in result.stderr
    assert key_file.read_text().strip() == stranger


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("DISCOVERY_ENCRYPTION_KEY", "not-a-key", "key #1 is not a Fernet key"),
        ("JWT_SECRET", "short", "too short"),
        ("AMAZON_LWA_CLIENT_SECRET_ROTATED_AT", "last tuesday", "is not a date"),
        ("AMAZON_LWA_CLIENT_SECRET_ROTATED_AT", "2999-01-01", "is in the future"),
        ("STRIPE_API_KEY", "pk_test_publishable", "starts with sk_"),
    ],
)
def test_secrets_set_refuses_a_value_no_command_could_use(
    cli: Any, isolation: Any, name: str, value: str, reason: str
) -> None:
    result = cli("secrets", "set", name, input=value + "\n")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {name} not stored: ") and reason in result.stderr
    assert isolation.store == {}


def test_secrets_set_says_when_the_keyring_kept_nothing(cli: Any) -> None:
    import keyring
    from keyring.backend import KeyringBackend

    class Forgetful(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def get_password(self, service: str, username: str) -> str | None:
            return None

        def set_password(self, service: str, username: str, password: str) -> None:
            pass

        def delete_password(self, service: str, username: str) -> None:
            pass

    keyring.set_keyring(Forgetful())
    result = cli("secrets", "set", "STRIPE_API_KEY", input="sk_test_abcdefghijkl\n")
    assert result.exit_code == 2
    assert "the Forgetful keyring stored nothing for STRIPE_API_KEY" in result.stderr


def test_a_bad_value_from_the_keyring_says_it_came_from_the_keyring(
    db: Any, cli: Any, isolation: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCOVERY_ENCRYPTION_KEY")
    isolation.store[("discoveryctl", "DISCOVERY_ENCRYPTION_KEY")] = "broken"
    result = cli("export", "--include-secrets")
    assert result.exit_code == 2
    assert "DISCOVERY_ENCRYPTION_KEY (from the keyring) key #1 is malformed" in result.stderr


def test_a_mistyped_keyring_backend_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHON_KEYRING_BACKEND": "keyring.backends.nosuch.Keyring",
        "XDG_DATA_HOME": str(tmp_path),
    }
    for command in (["import", "-"], ["secrets", "get", "STRIPE_API_KEY"]):  # both read it
        done = subprocess.run(
            [sys.executable, "-m", "discoveryctl", *command],
            env=env,
            capture_output=True,
            text=True,
            input="",
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[-1].startswith(
            "error: PYTHON_KEYRING_BACKEND='keyring.backends.nosuch.Keyring' cannot be used"
        )
        assert "Traceback" not in done.stderr


def test_the_database_url_is_read_from_the_environment_alone(
    cli: Any, isolation: Any, tmp_path: Path
) -> None:
    """Every command needs it, so the keyring is not asked for it. One left there by an
    earlier version stops the first use of the SQLite default, which would otherwise run,
    healthy and empty, instead of the real database."""
    isolation.store[("discoveryctl", "DATABASE_URL")] = f"sqlite:///{tmp_path}/elsewhere.db"
    refused = cli("status")
    assert refused.exit_code == 2
    assert "DATABASE_URL is in the keyring, which discoveryctl no longer reads" in refused.stderr
    assert not (tmp_path / "data" / "discoveryctl" / "discoveryctl.db").exists()
    assert cli("secrets", "get", "DATABASE_URL", "--show").stdout.startswith("sqlite:///")
    del isolation.store[("discoveryctl", "DATABASE_URL")]
    assert cli("status").exit_code == 0  # the default exists now
    isolation.store[("discoveryctl", "DATABASE_URL")] = f"sqlite:///{tmp_path}/elsewhere.db"
    checks = {c["check"]: c for c in cli("doctor", "--json").json()}
    assert checks["DATABASE_URL"]["state"] == "warn"  # said, even once the default exists
    assert "no longer reads" in checks["DATABASE_URL"]["detail"]
    assert cli("secrets", "delete", "DATABASE_URL").exit_code == 0
    assert "DATABASE_URL" not in {c["check"] for c in cli("doctor", "--json").json()}
    assert cli("status").exit_code == 0
    assert not (tmp_path / "elsewhere.db").exists()
    refused = cli("secrets", "set", "DATABASE_URL", input="sqlite:///x.db\n")
    assert refused.exit_code == 2 and "is not a secret discoveryctl reads" in refused.stderr
