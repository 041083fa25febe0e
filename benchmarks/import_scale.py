"""`import` at scale: 10,000 and 100,000 lines (half Amazon, half Stripe), lines/s and peak RSS.

Target: at least 10,000 lines/s on the SQLite default, wall time of the whole command, on a
2-core machine. Each size is imported into a fresh database, then imported again (every line
unchanged: the re-run path decrypts every stored token to compare). Beside the figures: the
start-up of the command (an empty import), and what encrypting and decrypting the Amazon tokens
alone costs, since every Amazon line pays it.

Runs on a temporary SQLite default; with DATABASE_URL set to PostgreSQL, each run uses a
throw-away schema in that database instead.

    python benchmarks/import_scale.py [--lines 10000 100000] [--runs 1]
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python benchmarks/import_scale.py
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

from status_scale import seed_lines  # the same sellers: half Amazon, half Stripe
from throwaway import database, is_postgres

TARGET_LINES_PER_SECOND = 10_000


def run_import(
    source: Path, env: dict[str, str], exits: int = 0
) -> tuple[float, int, dict[str, object]]:
    """Wall seconds, peak RSS in MiB, and the JSON report of one `discoveryctl import`
    (which must exit ``exits``)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "discoveryctl", "import", str(source), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != exits:
        sys.exit(f"discoveryctl import exited {process.returncode}")
    return elapsed, usage.ru_maxrss // 1024, json.loads(stdout)


def encryption_seconds(count: int) -> tuple[float, float]:
    """Seconds to encrypt, then decrypt, ``count`` refresh tokens with the vault."""
    from cryptography.fernet import Fernet

    from discoveryctl.support.crypto import Vault

    vault = Vault([Fernet.generate_key().decode()])
    lines = (json.loads(line) for line in seed_lines(count * 2).splitlines())
    tokens = [line["refresh_token"] for line in lines if line["provider"] == "amazon"]
    start = time.perf_counter()
    sealed = [vault.encrypt(token) for token in tokens]
    encrypted = time.perf_counter() - start
    start = time.perf_counter()
    for ciphertext in sealed:
        vault.decrypt(ciphertext)
    return encrypted, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=1, help="fresh databases per size (median)")
    args = parser.parse_args()
    postgres = is_postgres()
    print(f"import on {'PostgreSQL' if postgres else 'the SQLite default'}, {os.cpu_count()} cores")
    for count in args.lines:
        runs: dict[str, list[tuple[float, int]]] = {"first": [], "again": [], "start-up": []}
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as home, database(home) as env:
                source = Path(home) / "sellers.jsonl"
                source.write_bytes(seed_lines(count))
                for label, expected in (("first", "created"), ("again", "unchanged")):
                    elapsed, rss, report = run_import(source, env)
                    assert report[expected] == count, report
                    runs[label].append((elapsed, rss))
                empty = Path(home) / "empty.jsonl"
                empty.write_bytes(b"")
                runs["start-up"].append(run_import(empty, env)[:2])
        startup = statistics.median(elapsed for elapsed, _ in runs["start-up"])
        for label in ("first", "again"):
            elapsed = statistics.median(elapsed for elapsed, _ in runs[label])
            rss = max(rss for _, rss in runs[label])
            rate = count / elapsed
            verdict = "meets" if rate >= TARGET_LINES_PER_SECOND else "MISSES"
            print(
                f"{count:>7} lines, {label}: {elapsed:6.2f} s, {rate:>7,.0f} lines/s "
                f"({verdict} the {TARGET_LINES_PER_SECOND:,} target; "
                f"{count / (elapsed - startup):,.0f} lines/s after start-up), peak RSS {rss} MiB"
            )
        encrypt, decrypt = encryption_seconds(count // 2)
        print(
            f"{count:>7} lines: start-up (an empty import) {startup:.2f} s; encrypting the "
            f"{count // 2} Amazon tokens alone takes {encrypt:.2f} s, "
            f"decrypting them {decrypt:.2f} s"
        )
    huge_line()
    return 0


HUGE_LINE_MB = 200
TARGET_HUGE_LINE_RSS_MB = 250


def huge_line() -> None:
    """Peak RSS of an import whose second line is HUGE_LINE_MB long: it is rejected, and only
    the line limit of it is ever held (target: flat, under TARGET_HUGE_LINE_RSS_MB)."""
    with tempfile.TemporaryDirectory() as home, database(home) as env:
        source = Path(home) / "huge.jsonl"
        with source.open("wb") as file:
            file.write(seed_lines(1))
            file.write(b'{"user_id": "')
            for _ in range(HUGE_LINE_MB):  # a MB at a time: this process's RSS is the
                file.write(b"x" * (1 << 20))  # child's too, up to its exec (Linux maxrss)
            file.write(b'"}\n')
            file.write(seed_lines(1))
        elapsed, rss, report = run_import(source, env, exits=1)
    rejected = report["rejected"]
    assert isinstance(rejected, list) and len(rejected) == 1, report
    verdict = "meets" if rss <= TARGET_HUGE_LINE_RSS_MB else "MISSES"
    print(
        f"a {HUGE_LINE_MB} MB line: rejected in {elapsed:.2f} s, peak RSS {rss} MiB "
        f"({verdict} the {TARGET_HUGE_LINE_RSS_MB} MB target)"
    )


if __name__ == "__main__":
    sys.exit(main())
