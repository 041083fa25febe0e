"""`refresh-all` at scale against the sandbox in its own process.

Imports N integrations the sandbox knows, makes every LWA answer take L ms at the sandbox,
runs `refresh-all --concurrency C`, and prints its wall time, the ideal N·L/C, their ratio,
refreshes per CPU-second of the discoveryctl process, and its peak RSS.

Targets (issue 8), on a 2-core machine, SQLite and PostgreSQL: N=10,000, L=50 ms, C=64 →
ratio ≤ 1.25; with L=0, ≥ 600 refreshes per CPU-second; N=100,000 → peak RSS ≤ 250 MB.

For scale it also prints the floor of this setup: the same N refresh-token grants, C at a
time and paced as `refresh-all` paces them (discoveryctl.support.pacing), from a bare aiohttp client
in this process that does nothing else (no database, no classification), against the same
sandbox.

Runs on a temporary SQLite default; with DATABASE_URL set to PostgreSQL, on a throw-away
schema in that database.

    python benchmarks/refresh_all.py [--sellers 10000] [--latency-ms 50] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throwaway import database, is_postgres


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_sandbox(
    env: dict[str, str], sellers: int, latency_ms: int, seed_file: Path
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    command = [
        sys.executable,
        "-m",
        "discoveryctl",
        "sandbox",
        "--port",
        str(free_port()),
        "--latency-ms",
        str(latency_ms),
        "--seed",
        str(sellers),
        "--seed-file",
        str(seed_file),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    exports: dict[str, str] = {}
    for line in process.stdout:
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = shlex.split(value)[0] if value else ""
        if "STRIPE_API_BASE" in exports:
            return process, exports
    sys.exit("the sandbox did not start")


def measured(args: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds, peak RSS (MiB) and stdout of one discoveryctl command,
    read from its own rusage (not its siblings')."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "discoveryctl", *args], env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode not in (0, 1):
            sys.exit(f"discoveryctl {' '.join(args)} failed ({process.returncode}):\n{err.read()}")
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read()


def bare_client(exports: dict[str, str], seed_file: Path, concurrency: int) -> float:
    """Seconds for a bare aiohttp client to make every seller's grant, ``concurrency`` at
    a time, against the sandbox."""
    import asyncio
    from urllib.parse import urlencode

    import aiohttp

    from discoveryctl.support.pacing import Pacer

    tokens = [json.loads(line)["refresh_token"] for line in seed_file.open()]
    app = {
        "client_id": exports["AMAZON_LWA_CLIENT_ID"],
        "client_secret": exports["AMAZON_LWA_CLIENT_SECRET"],
    }
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    async def run() -> float:
        gate = asyncio.Semaphore(concurrency)
        pacer = Pacer(concurrency)
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def grant(token: str) -> None:
                body = urlencode({"grant_type": "refresh_token", "refresh_token": token, **app})
                async with gate:
                    wait = pacer.wait(loop.time())
                    if wait:
                        await asyncio.sleep(wait)
                    sent = loop.time()
                    async with session.post(
                        exports["AMAZON_LWA_TOKEN_URL"], data=body.encode(), headers=form
                    ) as response:
                        assert response.status == 200, response.status
                        await response.read()
                    pacer.took(loop.time() - sent)

            start = time.perf_counter()
            await asyncio.gather(*(grant(token) for token in tokens))
            return time.perf_counter() - start

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sellers", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=64)
    options = parser.parse_args()

    postgres = is_postgres()
    with tempfile.TemporaryDirectory(prefix="discoveryctl-bench-") as home, database(home) as base:
        env = {
            key: value for key, value in base.items() if not key.startswith(("AMAZON_", "STRIPE_"))
        }
        seed_file = Path(home) / "sellers.jsonl"
        sandbox, exports = start_sandbox(env, options.sellers, options.latency_ms, seed_file)
        env.update(exports)
        try:
            subprocess.run(
                [sys.executable, "-m", "discoveryctl", "import", str(seed_file)],
                env=env,
                check=True,
                capture_output=True,
            )
            wall, cpu, rss, stdout = measured(
                ["refresh-all", "--concurrency", str(options.concurrency), "--json"], env
            )
            floor = bare_client(exports, seed_file, options.concurrency)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    summary = json.loads(stdout)
    refreshed = summary["outcomes"]["refreshed"]
    ideal = options.sellers * options.latency_ms / 1000 / options.concurrency
    backend = "PostgreSQL" if postgres else "SQLite"
    print(
        f"refresh-all on {backend}, {os.cpu_count()} cores: N={options.sellers}, "
        f"L={options.latency_ms} ms, C={options.concurrency}"
    )
    print(f"  refreshed:   {refreshed} of {options.sellers} ({summary['outcomes']})")
    print(f"  wall time:   {wall:.2f} s (the command, start-up included)")
    if ideal:
        print(f"  ideal N·L/C: {ideal:.2f} s, ratio {wall / ideal:.2f} (target ≤ 1.25)")
        run = summary["seconds"]
        print(f"  the run:     {run:.2f} s, ratio {run / ideal:.2f} (its summary: no start-up)")
        paced = "a bare aiohttp client, paced"
        print(f"  the floor:   {floor:.2f} s, ratio {floor / ideal:.2f} ({paced})")
    else:
        print(f"  the floor:   {floor:.2f} s (a bare aiohttp client, paced)")
    print(f"  CPU:         {cpu:.2f} s, {refreshed / cpu:,.0f} refreshes per CPU-second")
    print(f"  peak RSS:    {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
