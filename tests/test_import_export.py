"""`import` and `export`: line-numbered rejects, idempotence, secrets encrypted at rest."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from discoveryctl.db.models import Credential, StripeCustomer, table_of
from discoveryctl.errors import DatabaseConflict
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.vocabulary import Provider, Status
from discoveryctl.support.crypto import Vault
from discoveryctl.transfer.store import import_lines

from helpers import amazon_line, fail_transiently, set_status, stripe_line, write_lines


def test_good_lines_are_stored_and_bad_lines_reported_by_number(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    source = write_lines(
        tmp_path / "sellers.jsonl",
        amazon_line("u1"),
        "this is not json",
        stripe_line("u2"),
        amazon_line("u3", region="mars"),
        "",
        {"user_id": "u4", "provider": "shopify"},
        stripe_line("u5", customer_id="cus_Q1w2E3r4"),
        amazon_line("u6", colour="blue"),
        {"provider": "stripe", "email": "x@example.com"},
        stripe_line("u7", email="not-an-email"),
        amazon_line("u8", authorized_at="2026-01-02T03:04:05"),
        "[1, 2]",
    )
    result = cli("import", str(source))
    assert result.exit_code == 1
    rejects = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert rejects == [
        "line 2: not valid JSON (Expecting value at column 1)",
        "line 4: region must be one of na, eu, fe, not 'mars'",
        "line 6: provider must be amazon or stripe, not 'shopify'",
        "line 8: unknown field colour",
        "line 9: missing field user_id",
        "line 10: email 'not-an-email' is not an email address",
        "line 11: authorized_at needs a timezone, e.g. 2026-01-02T03:04:05Z",
        "line 12: expected a JSON object",
    ]
    assert "imported 3 lines: 3 created, 0 updated, 0 unchanged; 8 rejected" in result.stdout
    rows = db.rows("SELECT user_id, provider, status FROM integration_status ORDER BY user_id")
    assert rows == [
        {"user_id": "u1", "provider": "amazon", "status": "active"},
        {"user_id": "u2", "provider": "stripe", "status": "pending"},
        {"user_id": "u5", "provider": "stripe", "status": "active"},
    ]
    assert db.scalar("SELECT customer_id FROM stripe_customers WHERE user_id = 'u5'") == (
        "cus_Q1w2E3r4"
    )


def test_reimport_creates_no_duplicates(db: Any, cli: Any, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "s.jsonl", amazon_line("u1"), stripe_line("u2"), amazon_line("u1")
    )
    first = cli("import", str(source), "--json")
    assert first.exit_code == 0
    assert first.json() == {
        "created": 2,
        "updated": 0,
        "unchanged": 1,
        "rejected": [],
        "switched": [],
    }
    events_after_first = db.scalar("SELECT count(*) FROM events")

    second = cli("import", str(source), "--json")
    assert second.exit_code == 0
    assert second.json() == {
        "created": 0,
        "updated": 0,
        "unchanged": 3,
        "rejected": [],
        "switched": [],
    }
    assert db.scalar("SELECT count(*) FROM integration_status") == 2
    assert db.scalar("SELECT count(*) FROM credentials") == 1
    assert db.scalar("SELECT count(*) FROM stripe_customers") == 1
    assert db.scalar("SELECT count(*) FROM events") == events_after_first


def test_a_new_refresh_token_updates_the_authorization_and_reactivates(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1", "Atzr|old-token"))))
    with db.engine.begin() as connection:
        import sqlalchemy as sa

        connection.execute(sa.text("UPDATE integration_status SET status = 'revoked'"))
    result = cli(
        "import",
        str(write_lines(tmp_path / "b.jsonl", amazon_line("u1", "Atzr|new-token"))),
        "--json",
    )
    assert result.json()["updated"] == 1
    assert db.scalar("SELECT status FROM integration_status") == "active"
    exported = cli("export", "--include-secrets")
    assert json.loads(exported.stdout)["refresh_token"] == "Atzr|new-token"
    changes = db.rows("SELECT detail FROM events WHERE kind = 'status_changed' ORDER BY id")
    detail = changes[-1]["detail"]
    detail = json.loads(detail) if isinstance(detail, str) else detail
    assert detail == {"from": "revoked", "to": "active", "reason": "imported"}


def test_refresh_token_is_never_stored_in_plain_text(db: Any, cli: Any, tmp_path: Path) -> None:
    token = "Atzr|IwEBIPlainTextMustNeverAppear0123456789"
    result = cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1", token))))
    assert result.exit_code == 0
    assert token not in result.stdout + result.stderr
    if db.kind == "sqlite":
        db.engine.dispose()
        database = Path(db.url.removeprefix("sqlite:///"))
        files = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
        assert files
        for path in files:
            assert token.encode() not in path.read_bytes(), path
            assert b"PlainTextMustNeverAppear" not in path.read_bytes(), path
    for table in ("integration_status", "credentials", "events", "notifications"):
        for row in db.rows(f"SELECT * FROM {table}"):
            assert "PlainTextMustNeverAppear" not in json.dumps(row, default=str), table


def test_export_leaves_secrets_out_unless_asked(db: Any, cli: Any, tmp_path: Path) -> None:
    token = "Atzr|export-me-only-when-asked"
    cli(
        "import",
        str(
            write_lines(
                tmp_path / "a.jsonl",
                amazon_line("u1", token, authorized_at="2026-03-04T05:06:07Z"),
                stripe_line("u2", customer_id="cus_abc"),
            )
        ),
    )
    plain = cli("export")
    assert plain.exit_code == 0
    assert token not in plain.stdout
    lines = [json.loads(line) for line in plain.stdout.splitlines()]
    assert lines == [
        {
            "user_id": "u1",
            "provider": "amazon",
            "selling_partner_id": amazon_line("u1")["selling_partner_id"],
            "region": "na",
            "authorized_at": "2026-03-04T05:06:07Z",
        },
        {
            "user_id": "u2",
            "provider": "stripe",
            "email": "u2@example.com",
            "customer_id": "cus_abc",
        },
    ]
    out = tmp_path / "backup.jsonl"
    with_secrets = cli("export", "--include-secrets", "-o", str(out))
    assert with_secrets.exit_code == 0
    assert "refresh tokens in plain text" in with_secrets.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text().splitlines()[0])["refresh_token"] == token


def test_export_with_secrets_round_trips_through_import(db: Any, cli: Any, tmp_path: Path) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1"), stripe_line("u2"))))
    out = tmp_path / "backup.jsonl"
    cli("export", "--include-secrets", "-o", str(out))
    again = cli("import", str(out), "--json")
    assert again.exit_code == 0
    assert again.json() == {
        "created": 0,
        "updated": 0,
        "unchanged": 2,
        "rejected": [],
        "switched": [],
    }


def test_import_reads_stdin(db: Any, cli: Any) -> None:
    text = json.dumps(stripe_line("u1")) + "\n" + "{" + "\n"
    result = cli("import", "-", input=text)
    assert result.exit_code == 1
    assert "line 2: not valid JSON" in result.stderr
    assert db.scalar("SELECT count(*) FROM stripe_customers") == 1


def test_stripe_customer_conflicts_are_rejected(db: Any, cli: Any, tmp_path: Path) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", stripe_line("u1", customer_id="cus_A"))))
    result = cli(
        "import",
        str(
            write_lines(
                tmp_path / "b.jsonl",
                stripe_line("u1", customer_id="cus_B"),
                stripe_line("u2", customer_id="cus_A"),
            )
        ),
    )
    assert result.exit_code == 1
    assert "line 1: user u1 already has Stripe customer cus_A" in result.stderr
    assert "line 2: Stripe customer cus_A belongs to user u1" in result.stderr
    assert db.scalar("SELECT count(*) FROM stripe_customers") == 1


def test_missing_file_is_a_usage_error(db: Any, cli: Any, tmp_path: Path) -> None:
    result = cli("import", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_invalid_utf8_and_huge_lines_are_rejected_not_fatal(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(
        b"\xff\xfe garbage\n"
        + json.dumps(stripe_line("u1")).encode()
        + b"\n"
        + b'{"user_id": "'
        + b"x" * 70000
        + b'"}\n'
    )
    result = cli("import", str(source))
    assert result.exit_code == 1
    assert "line 1: not valid UTF-8" in result.stderr
    assert "line 3: line is longer than 65536 bytes" in result.stderr
    assert db.scalar("SELECT count(*) FROM stripe_customers") == 1


def test_a_byte_order_mark_before_the_first_line_is_dropped(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    source = tmp_path / "bom.jsonl"
    source.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(stripe_line("u1")).encode()
        + b"\r\n"
        + json.dumps(stripe_line("u2")).encode()
        + b"\r\n"
    )
    result = cli("import", str(source), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["created"] == 2 and result.json()["rejected"] == []


def test_a_huge_line_is_read_past_without_holding_it(tmp_path: Path) -> None:
    """A 20 MB line costs at most the limit in memory: only that much of it is kept."""
    from discoveryctl.transfer.parse import MAX_LINE_BYTES, count_lines, read_lines

    source = tmp_path / "huge.jsonl"
    source.write_bytes(b"first\n" + b"x" * (20 * 1024 * 1024) + b"\nlast\n")
    with source.open("rb") as stream:
        assert count_lines(stream) == 3
        assert stream.tell() == 0
        lengths = [len(line) for line in read_lines(stream)]
    assert lengths == [6, MAX_LINE_BYTES + 1, 5]


def test_deeply_nested_json_and_lone_surrogates_are_rejected_lines(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    source = write_lines(
        tmp_path / "odd.jsonl",
        stripe_line("good-1"),
        "[" * 5000,
        '{"user_id": "bad\\ud800", "provider": "stripe", "email": "x@example.com"}',
        stripe_line("good-2"),
    )
    result = cli("import", str(source))
    assert result.exit_code == 1
    assert "line 2: not valid JSON (nested too deeply)" in result.stderr
    assert (
        "line 3: user_id is not acceptable: it contains a lone surrogate (U+D800)" in result.stderr
    )
    assert db.scalar("SELECT count(*) FROM stripe_customers") == 2


def test_concurrent_imports_of_the_same_file_store_each_integration_once(
    db: Any, tmp_path: Path
) -> None:
    import os
    import random

    lines = [amazon_line(f"u{i}") for i in range(300)] + [stripe_line(f"u{i}") for i in range(300)]
    sources = []
    for seed in range(4):  # the same lines in a different order for each process
        random.Random(seed).shuffle(lines)
        sources.append(write_lines(tmp_path / f"many-{seed}.jsonl", *lines))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "discoveryctl", "import", str(source), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for source in sources
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    for code, stdout, stderr in outcomes:
        assert code == 0, stderr
        assert "Traceback" not in stderr
        assert json.loads(stdout)["rejected"] == []
    retried = [line for _, _, stderr in outcomes for line in retries_logged(stderr)]
    assert retried == []  # the write lock serialized the imports: no batch met a conflict
    assert sum(json.loads(stdout)["created"] for _, stdout, _ in outcomes) == 600
    assert db.scalar("SELECT count(*) FROM integration_status") == 600
    assert db.scalar("SELECT count(*) FROM credentials") == 300
    assert db.scalar("SELECT count(*) FROM stripe_customers") == 300


def test_an_import_waits_for_another_import_to_commit_before_it_reads(
    db: Any, tmp_path: Path
) -> None:
    """A second import of the same line, started while a first one holds the write lock with
    the line stored but not committed, waits; then it finds the line stored (unchanged)
    without meeting a conflict to retry."""
    line = stripe_line("u1")
    with sessionmaker(db.engine)() as first:
        held = import_lines(
            [json.dumps(line).encode()],
            lambda: written_not_committed(first),
            Vault([db.key]),
            frontend_url="http://localhost:3000",
        )
        assert held.created == 1
        code, stdout, stderr = import_once_blocked_by(
            first, db, write_lines(tmp_path / "one.jsonl", line)
        )
    assert code == 0, stderr
    assert json.loads(stdout) == {
        "created": 0,
        "updated": 0,
        "unchanged": 1,
        "rejected": [],
        "switched": [],
    }
    assert retries_logged(stderr) == []
    assert db.scalar("SELECT count(*) FROM integration_status") == 1
    assert db.scalar("SELECT count(*) FROM stripe_customers") == 1


def test_a_conflict_with_a_writer_outside_the_import_lock_is_retried(
    db: Any, tmp_path: Path
) -> None:
    """A writer that takes no import lock (a connect, say) stores the same user while an
    import runs. PostgreSQL lets the import read past the uncommitted row, so its insert
    conflicts and the batch is retried; SQLite's write lock makes the import wait instead."""
    with sessionmaker(db.engine)() as writer:
        lifecycle.create(writer, "u1", Provider.stripe, Status.pending)
        writer.add(StripeCustomer(user_id="u1", email="u1@example.com", attempts=0))
        writer.flush()
        code, stdout, stderr = import_once_blocked_by(
            writer, db, write_lines(tmp_path / "one.jsonl", stripe_line("u1"))
        )
    assert code == 0, stderr
    assert json.loads(stdout) == {
        "created": 0,
        "updated": 0,
        "unchanged": 1,
        "rejected": [],
        "switched": [],
    }
    retried = retries_logged(stderr)
    if db.kind == "postgres":
        assert [(r["first_line"], r["last_line"], r["attempt"]) for r in retried] == [(1, 1, 1)]
    else:
        assert retried == []
    assert db.scalar("SELECT count(*) FROM integration_status") == 1


def test_a_batch_that_keeps_meeting_another_writer_is_given_up_after_three_tries(
    db: Any,
) -> None:
    """Each try stores the batch and is beaten to the commit by another writer: three
    transactions, none committed, then the operator is told to run the import again."""
    tries: list[int] = []

    @contextmanager
    def always_beaten() -> Iterator[Session]:
        with sessionmaker(db.engine)() as session:
            tries.append(len(tries) + 1)
            yield session
            session.flush()
            session.rollback()
            raise DatabaseConflict("duplicate key value violates unique constraint")

    with pytest.raises(DatabaseConflict) as raised:
        import_lines(
            [json.dumps(stripe_line("u1")).encode()],
            always_beaten,
            Vault([db.key]),
            frontend_url="http://localhost:3000",
        )
    assert str(raised.value) == (
        "another process keeps writing the same integrations: run the import again"
    )
    assert tries == [1, 2, 3]
    assert db.scalar("SELECT count(*) FROM integration_status") == 0


def retries_logged(stderr: str) -> list[dict[str, Any]]:
    """The ``import_batch_retried`` log lines among an import's JSON log lines."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "import_batch_retried"]


@contextmanager
def written_not_committed(session: Session) -> Iterator[Session]:
    """A transaction scope that writes what it was given and stays open for the caller."""
    yield session
    session.flush()


def import_once_blocked_by(holder: Session, db: Any, source: Path) -> tuple[int, str, str]:
    """Run `discoveryctl import FILE --json` in another process; once it waits for a lock
    that ``holder``'s open transaction holds, commit that transaction. Returns the import's
    exit code, stdout and stderr."""
    importing = subprocess.Popen(
        [sys.executable, "-m", "discoveryctl", "import", str(source), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_blocked(importing, db, holder)
    except BaseException:
        importing.kill()
        importing.communicate()
        raise
    finally:
        holder.commit()
    stdout, stderr = importing.communicate(timeout=60)
    return importing.returncode, stdout, stderr


def wait_until_blocked(process: subprocess.Popen[str], db: Any, holder: Session) -> None:
    """Return once ``process`` waits for a lock that ``holder``'s transaction holds."""
    if db.kind == "postgres":
        holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

        def blocked() -> bool:
            waiting = db.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))",
                pid=holder_pid,
            )
            return bool(waiting)
    else:
        wchan = Path(f"/proc/{process.pid}/wchan")
        if not wchan.exists():
            pytest.skip("needs /proc/<pid>/wchan to see a process wait for SQLite's lock")

        def blocked() -> bool:
            # SQLite's busy handler sleeps between attempts to take the lock; nothing else in
            # the import sleeps before its first write.
            return "nanosleep" in wchan.read_text()

    deadline = time.monotonic() + 60
    while not blocked():
        assert process.poll() is None, "the import finished without waiting for the lock"
        assert time.monotonic() < deadline, "the import never waited for the lock"
        time.sleep(0.02)


def test_export_over_an_existing_file_makes_it_private(db: Any, cli: Any, tmp_path: Path) -> None:
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1"))))
    out = tmp_path / "old.jsonl"
    out.write_text("old\n")
    out.chmod(0o644)
    assert cli("export", "--include-secrets", "-o", str(out)).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "elsewhere.jsonl")
    refused = cli("export", "--include-secrets", "-o", str(link))
    assert refused.exit_code == 2
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_progress_is_logged_as_json_when_not_on_a_terminal(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    from discoveryctl.transfer.store import BATCH_SIZE

    lines = [stripe_line(f"u{i}") for i in range(2 * BATCH_SIZE + 200)]
    source = write_lines(tmp_path / "s.jsonl", *lines)
    result = cli("import", str(source))
    assert result.exit_code == 0
    progress = [
        json.loads(line)
        for line in result.stderr.splitlines()
        if line.startswith("{") and '"progress"' in line
    ]
    # Lines, not bytes; the first batch, then (within five seconds) only the end.
    assert [(p["task"], p["done"], p["total"]) for p in progress] == [
        ("import", BATCH_SIZE, len(lines)),
        ("import", len(lines), len(lines)),
    ]


def event_rows(db: Any, kind: str) -> list[dict[str, Any]]:
    rows = db.rows(
        "SELECT user_id, provider, outcome, detail FROM events WHERE kind = :kind ORDER BY id",
        kind=kind,
    )
    for row in rows:
        if isinstance(row["detail"], str):
            row["detail"] = json.loads(row["detail"])
    return rows


def test_every_line_of_a_large_import_is_stored_with_its_events(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    """1,200 lines (three batches): one integration_created event per integration and one
    credentials_imported per Amazon line, as when lines were stored one by one."""
    lines = [amazon_line(f"a{i:04d}") for i in range(600)] + [
        stripe_line(f"s{i:04d}", **({"customer_id": f"cus_{i:04d}"} if i % 3 == 0 else {}))
        for i in range(600)
    ]
    source = write_lines(tmp_path / "many.jsonl", *lines)
    result = cli("import", str(source), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {
        "created": 1200,
        "updated": 0,
        "unchanged": 0,
        "rejected": [],
        "switched": [],
    }
    assert db.rows(
        "SELECT provider, status, count(*) AS n FROM integration_status "
        "GROUP BY provider, status ORDER BY provider, status"
    ) == [
        {"provider": "amazon", "status": "active", "n": 600},
        {"provider": "stripe", "status": "active", "n": 200},
        {"provider": "stripe", "status": "pending", "n": 400},
    ]
    assert db.scalar("SELECT count(*) FROM credentials") == 600
    assert db.scalar("SELECT count(*) FROM stripe_customers WHERE customer_id IS NOT NULL") == 200

    created = event_rows(db, "integration_created")
    assert len(created) == 1200
    assert {(e["user_id"], e["provider"]) for e in created} == {
        (line["user_id"], line["provider"]) for line in lines
    }
    by_user = {e["user_id"]: e for e in created}
    assert by_user["a0001"]["detail"] == {"status": "active"}
    assert by_user["s0001"]["detail"] == {"status": "pending"}
    assert by_user["s0003"]["detail"] == {"status": "active"}
    imported = event_rows(db, "credentials_imported")
    assert [e["user_id"] for e in imported] == [f"a{i:04d}" for i in range(600)]
    assert imported[7] == {
        "user_id": "a0007",
        "provider": "amazon",
        "outcome": "success",
        "detail": {
            "selling_partner_id": amazon_line("a0007")["selling_partner_id"],
            "region": "na",
        },
    }
    exported = cli("export", "--include-secrets").stdout.splitlines()
    assert [
        {k: v for k, v in json.loads(line).items() if k != "authorized_at"} for line in exported
    ] == sorted(lines, key=lambda line: line["user_id"])


def test_lines_for_the_same_user_in_one_batch_build_on_each_other(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    """Within one batch, a later line sees what an earlier one stored: a Stripe customer id
    arriving later activates the pending integration; an id taken earlier is refused."""
    source = write_lines(
        tmp_path / "same.jsonl",
        stripe_line("u1"),
        amazon_line("u2", "Atzr|first"),
        stripe_line("u1", customer_id="cus_One"),
        amazon_line("u2", "Atzr|second"),
        stripe_line("u3", customer_id="cus_One"),
        amazon_line("u2", "Atzr|second"),
    )
    result = cli("import", str(source), "--json")
    assert result.exit_code == 1
    assert result.json() == {
        "created": 2,
        "updated": 2,
        "unchanged": 1,
        "rejected": [{"line": 5, "reason": "Stripe customer cus_One belongs to user u1"}],
        "switched": [],
    }
    assert db.rows("SELECT user_id, provider, status FROM integration_status ORDER BY user_id") == [
        {"user_id": "u1", "provider": "stripe", "status": "active"},
        {"user_id": "u2", "provider": "amazon", "status": "active"},
    ]
    assert db.rows("SELECT user_id, customer_id FROM stripe_customers") == [
        {"user_id": "u1", "customer_id": "cus_One"}
    ]
    assert [e["detail"] for e in event_rows(db, "status_changed")] == [
        {"from": "pending", "to": "active", "reason": "imported"}
    ]
    assert [e["user_id"] for e in event_rows(db, "credentials_imported")] == ["u2", "u2"]
    exported = [json.loads(line) for line in cli("export", "--include-secrets").stdout.splitlines()]
    assert [line.get("refresh_token") for line in exported] == [None, "Atzr|second"]
    assert db.scalar("SELECT count(*) FROM credentials") == 1


def test_a_new_authorization_starts_a_new_term_and_keeps_the_refresh_lease(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    """Importing a new refresh token over one that has been refreshed since drops the cached
    access token and re-arms the expiry warning, as a new consent does; a refresh holding the
    lease keeps it. The new token is stored encrypted."""
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1", "Atzr|old"))))
    vault = Vault([db.key])
    later = datetime(2026, 1, 5, tzinfo=UTC)
    with db.engine.begin() as connection:
        connection.execute(
            sa.update(table_of(Credential)).values(
                access_token=vault.encrypt("Atza|cached"),
                access_token_expires_at=later,
                refreshed_at=later,
                expiry_warned_at=later,
                lease_owner="refresh-worker-1",
                lease_expires_at=later,
            )
        )
    result = cli(
        "import",
        str(
            write_lines(
                tmp_path / "b.jsonl",
                amazon_line("u1", "Atzr|new", authorized_at="2026-01-06T07:08:09Z"),
            )
        ),
        "--json",
    )
    assert result.json() == {
        "created": 0,
        "updated": 1,
        "unchanged": 0,
        "rejected": [],
        "switched": [],
    }
    with db.engine.connect() as connection:
        row = connection.execute(sa.select(table_of(Credential))).one()
    assert (row.access_token, row.access_token_expires_at, row.refreshed_at) == (None,) * 3
    assert row.expiry_warned_at is None
    assert (row.lease_owner, row.lease_expires_at) == ("refresh-worker-1", later)
    assert row.authorized_at == datetime(2026, 1, 6, 7, 8, 9, tzinfo=UTC)
    assert "Atzr|new" not in row.refresh_token
    assert vault.decrypt(row.refresh_token) == "Atzr|new"


def test_a_reimported_authorization_clears_failures_and_resolves_the_alerts(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    """A revoked integration with repeated failures, imported again with a new token, is
    active with its failures forgotten, and its seller and admin alerts are resolved."""
    cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1", "Atzr|old"))))
    fail_transiently(db.url, "u1", 3)
    set_status(db.url, "u1", Status.revoked)
    open_alerts = "SELECT kind FROM notifications WHERE resolved_at IS NULL ORDER BY kind"
    assert [row["kind"] for row in db.rows(open_alerts)] == [
        "connection_lost",
        "repeated_failures",
    ]
    result = cli(
        "import",
        str(write_lines(tmp_path / "b.jsonl", amazon_line("u1", "Atzr|new"))),
        "--json",
    )
    assert result.json()["updated"] == 1
    assert db.rows(open_alerts) == []
    status = cli("status", "--json").json()
    assert [(s["user_id"], s["status"], s["message"]) for s in status] == [
        ("u1", "active", "Your amazon integration has not been checked yet")  # new token
    ]
    metadata = status[0]["metadata"]
    assert "consecutive_failures" not in metadata and "last_error" not in metadata


def test_a_large_import_refreshes_the_planners_statistics(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    """PostgreSQL plans refresh-all's claims from table statistics: after an import of
    thousands of rows they describe those rows, not the empty table (reltuples -1)."""
    if db.kind != "postgres":
        pytest.skip("SQLite keeps no planner statistics unless asked")
    from discoveryctl.transfer.store import ANALYZE_AFTER

    lines = [amazon_line(f"u{i}") for i in range(ANALYZE_AFTER)]
    assert cli("import", str(write_lines(tmp_path / "s.jsonl", *lines))).exit_code == 0
    counted = db.scalar(
        "SELECT reltuples FROM pg_class WHERE relname = 'credentials'"
        " AND relnamespace = current_schema()::regnamespace"
    )
    assert counted == ANALYZE_AFTER


def test_an_import_that_gives_a_user_another_sellers_account_says_so(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    first = amazon_line("u1")
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", first))).exit_code == 0
    other = amazon_line("u1", "Atzr|other", selling_partner_id="AOTHERSELLER01")
    same = amazon_line("u2")
    result = cli("import", str(write_lines(tmp_path / "b.jsonl", same, other)))
    assert result.exit_code == 0
    before = first["selling_partner_id"]
    assert f"line 2: warning: u1 was seller {before} and is now seller AOTHERSELLER01" in (
        result.stderr
    )
    again = cli("import", str(write_lines(tmp_path / "b.jsonl", same, other)), "--json")
    assert again.json()["switched"] == []  # nothing switched this time
    switched = event_rows(db, "seller_switched")
    assert [(e["user_id"], e["detail"]["previous_selling_partner_id"]) for e in switched] == [
        ("u1", before)
    ]


def test_an_import_from_a_pipe_path_reads_it_once(db: Any, cli: Any, tmp_path: Path) -> None:
    """`import <(zcat sellers.jsonl.gz)`: a named pipe cannot be counted first, only read."""
    import os
    import threading

    fifo = tmp_path / "lines.fifo"
    os.mkfifo(fifo)
    payload = "".join(json.dumps(stripe_line(f"u{n}")) + "\n" for n in range(3))

    def feed() -> None:
        with fifo.open("w") as writer:
            writer.write(payload)

    feeder = threading.Thread(target=feed)
    feeder.start()
    result = cli("import", str(fifo), "--json")
    feeder.join(timeout=10)
    assert result.exit_code == 0, result.stderr
    assert result.json()["created"] == 3
