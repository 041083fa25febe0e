"""`refresh-all --provider stripe` over N pending Stripe customers, fault-free and with a share
F of Stripe's answers failing (5xx) at random.

Prints each run's wall time, how many users end with exactly one customer at the sandbox, how
many with more (never, if exactly-once holds), how many rows are still pending, and the ratio
of the two times. Target (issue 9): N=1,000, F=20 % → exactly N customers, every row active,
in under twice the fault-free time.

The sandbox runs in a thread of this process with Stripe's rate limits off. Each run has a
database of its own: a temporary SQLite default, or, with DATABASE_URL set to PostgreSQL, a
throw-away schema in that database.

    python benchmarks/stripe_pending.py [--customers 1000] [--fail-rate 0.2]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python benchmarks/stripe_pending.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throwaway import database, is_postgres

from discoveryctl.sandbox import SandboxConfig, run_in_thread


def one_run(customers: int, fail_rate: float) -> float:
    with tempfile.TemporaryDirectory(prefix="discoveryctl-bench-") as home, database(home) as base:
        env = {k: v for k, v in base.items() if not k.startswith(("AMAZON_", "STRIPE_"))}
        config = SandboxConfig(fail_rate=fail_rate, stripe_rate_limits=False)
        with run_in_thread(config) as sandbox:
            env.update(sandbox.env())
            users = [f"user-{n}" for n in range(customers)]
            lines = Path(home) / "pending.jsonl"
            lines.write_text(
                "".join(
                    json.dumps({"user_id": u, "provider": "stripe", "email": f"{u}@example.com"})
                    + "\n"
                    for u in users
                )
            )
            command = [sys.executable, "-m", "discoveryctl"]
            subprocess.run(
                [*command, "import", str(lines)], env=env, check=True, capture_output=True
            )
            start = time.perf_counter()
            done = subprocess.run(
                [*command, "refresh-all", "--provider", "stripe", "--json"],
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            made = [len(sandbox.state.customers_for(u)) for u in users]
            pending = subprocess.run(
                [*command, "status", "stripe", "--status", "pending", "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
    print(
        f"fail rate {fail_rate:.0%}: {wall:.1f} s, exit {done.returncode}; "
        f"one customer: {made.count(1)}, more than one: {sum(1 for n in made if n > 1)}, "
        f"none: {made.count(0)}; rows still pending: {len(json.loads(pending.stdout))}"
    )
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--fail-rate", type=float, default=0.2)
    options = parser.parse_args()
    backend = "PostgreSQL" if is_postgres() else "SQLite"
    print(
        f"refresh-all --provider stripe on {backend}, N={options.customers}, {os.cpu_count()} cores"
    )
    clean = one_run(options.customers, 0.0)
    faulty = one_run(options.customers, options.fail_rate)
    print(f"ratio {faulty / clean:.2f} (target < 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
