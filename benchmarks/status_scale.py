"""`status` at scale: import 10,000 integrations, then time `status --json` and `status --summary`.

Target (issue 2): at most 1.0 s each, wall time of the whole command, on a 2-core machine.
Runs on a temporary SQLite default (or on DATABASE_URL if set, e.g. PostgreSQL).

    python benchmarks/status_scale.py [--integrations 10000] [--runs 5]
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


def seed_lines(count: int) -> bytes:
    lines = []
    for i in range(count):
        user = f"seller-{i:05d}"
        if i % 2:
            lines.append({"user_id": user, "provider": "stripe", "email": f"{user}@example.com"})
        else:
            lines.append(
                {
                    "user_id": user,
                    "provider": "amazon",
                    "refresh_token": f"Atzr|IwEBI-benchmark-{i:05d}",
                    "selling_partner_id": f"A{i:013d}",
                    "region": "na",
                }
            )
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "XDG_DATA_HOME": home, "LOG_LEVEL": "warning", "NO_COLOR": "1"}
        source = Path(home) / "sellers.jsonl"
        source.write_bytes(seed_lines(args.integrations))
        elapsed, _ = run(["import", str(source)], env)
        print(f"import {args.integrations} integrations: {elapsed:.2f} s")

        for label, command in (
            ("status --json", ["status", "--json"]),
            ("status --summary", ["status", "--summary"]),
            ("status (table, first 50)", ["status"]),
        ):
            times = []
            for _ in range(args.runs):
                elapsed, stdout = run(command, env)
                times.append(elapsed)
            if command[-1] == "--json":
                assert len(json.loads(stdout)) == args.integrations
            median = statistics.median(times)
            verdict = "meets" if median <= TARGET_SECONDS else "MISSES"
            print(
                f"{label:26} median {median:.3f} s over {args.runs} runs "
                f"({verdict} the {TARGET_SECONDS:.1f} s target)"
            )
    print(f"machine: {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
