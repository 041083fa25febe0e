"""The commands an operator types, at scale, on the SQLite default (or DATABASE_URL if set).

Targets (issues 2 and 10), wall time of the whole command on a 2-core machine:
- `status` on an empty database: at most 4x `discoveryctl --help`;
- 10,000 integrations: `status --json` at most 0.5 s, `status --limit 0` (the whole table)
  at most 1.5 s, `status` (the first 50) at most 1.0 s;
- 100,000 integrations: `status --summary` at most 0.5 s.

    python benchmarks/status_scale.py [--integrations 10000] [--summary-integrations 100000]
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
from pathlib import Path

TARGET_SECONDS = 1.0


def run(args: list[str], env: dict[str, str], stdin: bytes | None = None) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "discoveryctl", *args],
        input=stdin,
        capture_output=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"discoveryctl {' '.join(args)} failed:\n{done.stderr.decode()}")
    return elapsed, done.stdout


def seller_line(i: int, provider: str) -> dict[str, str]:
    """Seller ``i``'s import line for ``provider``, the same in every benchmark."""
    user = f"seller-{i:05d}"
    if provider == "stripe":
        return {"user_id": user, "provider": "stripe", "email": f"{user}@example.com"}
    return {
        "user_id": user,
        "provider": "amazon",
        "refresh_token": f"Atzr|IwEBI-benchmark-{i:05d}",
        "selling_partner_id": f"A{i:013d}",
        "region": "na",
    }


def seed_lines(count: int) -> bytes:
    """``count`` sellers, every other one on Amazon, the rest on Stripe."""
    lines = (seller_line(i, "stripe" if i % 2 else "amazon") for i in range(count))
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def median_run(command: list[str], env: dict[str, str], runs: int) -> tuple[float, bytes]:
    times, stdout = [], b""
    for _ in range(runs):
        elapsed, stdout = run(command, env)
        times.append(elapsed)
    return statistics.median(times), stdout


def verdict(seconds: float, target: float) -> str:
    return f"({'meets' if seconds <= target else 'MISSES'} the {target:g} s target)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=10_000)
    parser.add_argument("--summary-integrations", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "XDG_DATA_HOME": home, "LOG_LEVEL": "warning", "NO_COLOR": "1"}
        env["COLUMNS"] = "120"
        run(["status"], env)  # the empty database, created and migrated
        help_, _ = median_run(["--help"], env, args.runs * 3)
        empty, _ = median_run(["status"], env, args.runs * 3)
        ratio = empty / help_
        print(
            f"status, empty database       {empty * 1000:.0f} ms; --help {help_ * 1000:.0f} ms: "
            f"{ratio:.2f}x ({'meets' if ratio <= 4 else 'MISSES'} the 4x target)"
        )

        source = Path(home) / "sellers.jsonl"
        source.write_bytes(seed_lines(args.integrations))
        elapsed, _ = run(["import", str(source)], env)
        print(f"import {args.integrations} integrations: {elapsed:.2f} s")
        for label, command, target in (
            ("status --json", ["status", "--json"], 0.5),
            ("status --limit 0 (table)", ["status", "--limit", "0"], 1.5),
            ("status (first 50)", ["status"], 1.0),
            ("status --summary", ["status", "--summary"], 0.5),
        ):
            median, stdout = median_run(command, env, args.runs)
            if command[-1] == "--json":
                assert len(json.loads(stdout)) == args.integrations
            print(f"{label:28} {median:.3f} s at {args.integrations:,} {verdict(median, target)}")

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "XDG_DATA_HOME": home, "LOG_LEVEL": "warning", "NO_COLOR": "1"}
        source = Path(home) / "sellers.jsonl"
        source.write_bytes(seed_lines(args.summary_integrations))
        run(["import", str(source)], env)
        median, _ = median_run(["status", "--summary"], env, args.runs)
        count = f"{args.summary_integrations:,}"
        print(f"{'status --summary':28} {median:.3f} s at {count} {verdict(median, 0.5)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
