"""`health --window 24h` over 1,000,000 events, and `events prune` of 900,000 of them.

All the events fall inside the window, the worst case for `health`: 100,000 in the last hour
and 900,000 between 2 and 23 hours ago, a mix of kinds and outcomes like a busy day's. Then
`events prune --older-than 2h` deletes the 900,000. Targets (issue 11), the whole command,
2 cores: `health --window 24h` at most 2 s, on SQLite and on PostgreSQL. It also prints
`health` on the empty database against `--help` (target: at most 4x).

Runs on a temporary SQLite default; with DATABASE_URL set to PostgreSQL, on a throw-away
schema in that database.

    python benchmarks/health_scale.py [--events 1000000]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python benchmarks/health_scale.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

from throwaway import database, is_postgres

TARGET_SECONDS = 2.0

# (kind, outcome, error_type, detail) in the proportions of a busy day
MIX = [
    ("token_refreshed", "success", None, {"attempt": 1, "duration_ms": 80.0}),
    ("token_refreshed", "success", None, {"attempt": 1, "duration_ms": 95.0}),
    ("token_refreshed", "success", None, {"attempt": 1, "duration_ms": 70.0}),
    ("token_refresh_retried", "failure", "provider_server_error", {"http_status": 503}),
    ("token_refresh_failed", "failure", "oauth_token_revoked", {"http_status": 400}),
    ("status_changed", "failure", "oauth_token_revoked", {"from": "active", "to": "revoked"}),
    ("stripe_customer_created", "success", None, {"attempt": 1}),
    ("stripe_customer_attempt", "failure", "stripe_server_error", {"http_status": 500}),
    ("oauth_callback_succeeded", "success", None, {"region": "na"}),
    ("seller_checked", "success", None, {}),
]


def run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "discoveryctl", *args], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"discoveryctl {' '.join(args)} failed:\n{done.stderr}")
    return elapsed, done.stdout


def fill(env: dict[str, str], count: int) -> None:
    """``count`` events straight into the table, in batches."""
    import sqlalchemy as sa

    from discoveryctl.config import Config
    from discoveryctl.db.engine import Database
    from discoveryctl.db.models import Event, table_of

    os.environ.update(env)  # the data directory is found from this process's environment
    database_ = Database(Config(env, keyring=None).database_url)
    now = datetime.now(UTC)
    recent = count // 10
    rows = []
    for n in range(count):
        if n < recent:
            at = now - timedelta(seconds=3600 * n / recent)
        else:
            at = now - timedelta(hours=2) - timedelta(seconds=75_600 * (n - recent) / count)
        kind, outcome, error_type, detail = MIX[n % len(MIX)]
        rows.append(
            {
                "occurred_at": at,
                "user_id": f"seller-{n % 20_000:05d}",
                "provider": "stripe" if kind.startswith("stripe") else "amazon",
                "kind": kind,
                "outcome": outcome,
                "error_type": error_type,
                "detail": detail,
            }
        )
        if len(rows) == 50_000:
            with database_.engine.begin() as connection:
                connection.execute(sa.insert(table_of(Event)), rows)
            rows = []
    if rows:
        with database_.engine.begin() as connection:
            connection.execute(sa.insert(table_of(Event)), rows)
    if database_.dialect == "postgresql":
        with database_.engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE events")
    database_.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    backend = "PostgreSQL" if is_postgres() else "SQLite"
    print(f"health on {backend}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as home, database(home) as env:
        env["COLUMNS"] = "120"
        run(["status"], env)  # the SQLite default created and migrated
        helps = [run(["--help"], env)[0] for _ in range(15)]
        empty = [run(["health"], env)[0] for _ in range(15)]
        ratio = statistics.median(empty) / statistics.median(helps)
        print(
            f"health, empty database: {statistics.median(empty) * 1000:.0f} ms, "
            f"{ratio:.2f}x --help ({'meets' if ratio <= 4 else 'MISSES'} the 4x target)"
        )
        start = time.perf_counter()
        fill(env, args.events)
        print(f"filled {args.events:,} events in {time.perf_counter() - start:.1f} s")
        times = []
        for _ in range(args.runs):
            elapsed, stdout = run(["health", "--window", "24h", "--json"], env)
            times.append(elapsed)
        figures = json.loads(stdout)
        counted = figures["calls"] + figures["revoked"]
        median = statistics.median(times)
        verdict = "meets" if median <= TARGET_SECONDS else "MISSES"
        print(
            f"health --window 24h over {args.events:,} events: {median:.2f} s "
            f"({verdict} the {TARGET_SECONDS:g} s target; "
            f"{counted:,} calls and revocations counted)"
        )
        elapsed, stdout = run(["events", "prune", "--older-than", "2h", "--json"], env)
        pruned = json.loads(stdout)["events"]
        print(f"events prune --older-than 2h: {pruned:,} events in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
