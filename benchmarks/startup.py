"""Start-up time: `discoveryctl --help` against `python -c "import typer, rich"`.

Target: the ratio of the medians is at most 1.6 (issue 2). Prints both medians and the ratio.

    python benchmarks/startup.py [--runs 21]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET_RATIO = 1.6


def median_seconds(command: list[str], runs: int) -> float:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env)  # warm the caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    help_time = median_seconds([sys.executable, "-m", "discoveryctl", "--help"], args.runs)
    baseline = median_seconds([sys.executable, "-c", "import typer, rich"], args.runs)
    ratio = help_time / baseline
    print(f"discoveryctl --help        median {help_time * 1000:7.1f} ms over {args.runs} runs")
    print(f"import typer, rich         median {baseline * 1000:7.1f} ms over {args.runs} runs")
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"ratio {ratio:.2f} ({verdict} the target of {TARGET_RATIO}) on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
