"""Two writers of one integration at once: neither loses the other's change (issue 8:
status and metadata are read-modify-written under a lock, never blindly)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from discoveryctl.db.engine import Database
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.health import Status

from helpers import amazon_line, set_status, write_lines


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
            other = subprocess.Popen(
                [sys.executable, "-m", "discoveryctl", "reconnect", "amazon", "--user", "u1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ),
            )
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
