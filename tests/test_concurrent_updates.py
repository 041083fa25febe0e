"""Two writers of one integration at once: neither loses the other's change (issue 8:
status and metadata are read-modify-written under a lock, never blindly)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from discoveryctl.db.engine import Database
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.vocabulary import Status

from helpers import amazon_line, set_status, write_lines


def start_reconnect(user: str) -> subprocess.Popen[str]:
    """``reconnect amazon --user`` in a process of its own (it counts an attempt)."""
    return subprocess.Popen(
        [sys.executable, "-m", "discoveryctl", "reconnect", "amazon", "--user", user],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def test_a_reconnect_during_a_refresh_failure_keeps_both_counts(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1")))).exit_code == 0
    set_status(db.url, "u1", Status.revoked)
    database = Database(db.url)
    try:
        with database.session() as session:
            integration = lifecycle.find(session, "u1", "amazon", for_update=True)
            assert integration is not None
            lifecycle.record_transient_failure(
                session, integration, error_type="provider_timeout", message="timed out"
            )
            session.flush()
            # While this transaction holds the integration, another process asks for a
            # reconnect, which counts its attempt in the same metadata.
            other = start_reconnect("u1")
            time.sleep(1.5)  # it reads (and, unlocked, would write) in the meantime
            assert other.poll() is None, other.communicate()  # it waits for us
        code = other.wait(timeout=60)
        _, stderr = other.communicate()
    finally:
        database.dispose()
    assert code == 0, stderr
    (row,) = cli("status", "--user", "u1", "--json").json()
    assert row["metadata"]["consecutive_failures"] == 1  # ours survived theirs
    assert row["metadata"]["reconnect_attempts"] == 1  # and theirs ours


def test_a_reconnect_during_a_batch_of_refreshes_keeps_both(
    db: Any, cli: Any, tmp_path: Path
) -> None:
    """refresh-all's bulk write (record_refreshes) reads the integrations' metadata, then
    rewrites it: a reconnect counted in between must wait for it, or one change is lost."""
    import sqlalchemy as sa

    from discoveryctl.amazon.refresh import record_refreshes
    from discoveryctl.providers.lwa import TokenGrant
    from discoveryctl.support.crypto import Vault

    assert cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("u1")))).exit_code == 0
    credential_id = db.scalar("SELECT id FROM credentials")
    database = Database(db.url)
    reconnects: list[subprocess.Popen[str]] = []

    def reconnect_before_the_rewrite(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if reconnects or not statement.startswith("UPDATE integration_status"):
            return
        other = start_reconnect("u1")
        reconnects.append(other)
        # Unlocked, it reads, writes and commits now, under the batch's feet; locked out,
        # it is still waiting when this gives up.
        with contextlib.suppress(subprocess.TimeoutExpired):
            other.wait(timeout=4)

    try:
        with database.session() as session:
            sa.event.listen(
                session.connection(), "before_cursor_execute", reconnect_before_the_rewrite
            )
            grant = TokenGrant(access_token="Atza|fresh", refresh_token=None, expires_in=3600)
            (done,) = record_refreshes(
                session,
                Vault([db.key]),
                [(credential_id, grant, ())],
                frontend_url="http://localhost:3000",
            )
            assert done.outcome == "refreshed"
        (other,) = reconnects
        code = other.wait(timeout=60)
        _, stderr = other.communicate()
    finally:
        database.dispose()
    assert code == 0, stderr
    (row,) = cli("status", "--user", "u1", "--json").json()
    assert row["lastSyncedAt"] is not None  # ours survived theirs
    assert row["metadata"]["reconnect_attempts"] == 1  # and theirs ours
