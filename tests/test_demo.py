"""`make demo` runs end to end and explains what it does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parent.parent / "scripts" / "demo.py"


def test_the_demo_explains_every_step_and_catches_the_revoked_seller() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    steps = [n for n, line in enumerate(lines) if line.startswith("== ")]
    assert len(steps) >= 10
    for n in steps:  # each step says in a line or two what it does, before its command
        assert lines[n + 1].startswith("   ") and lines[n + 1].strip(), lines[n]
    assert "The last line is broken on purpose" in done.stdout
    assert "line 9: missing field" in done.stdout  # and there it is, reported by number
    assert "1 revoked" in done.stdout  # the cron job caught the seller who revoked
    assert "is now seller" not in done.stdout  # the revoked seller came back as itself
    assert done.stdout.rstrip().endswith("demo finished")


def test_without_postgresql_the_suite_says_so_once_not_per_test() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISCOVERY_TEST_POSTGRES_URL", "CI")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_doctor.py"],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "DISCOVERY_TEST_POSTGRES_URL is not set" in done.stdout
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert not any("POSTGRES" in line for line in skipped), skipped
    assert done.stdout.count("DISCOVERY_TEST_POSTGRES_URL") == 1
