"""The HTTP API under load: `GET /api/v1/integrations/status` over 10,000 users' integrations,
and the cost of 200 idle event streams.

Starts `discoveryctl serve` (one uvicorn worker) on a throw-away database, imports 10,000 users
with an Amazon and a Stripe integration each, then for ``--seconds`` sends requests from
``--connections`` keep-alive connections at once, each with the bearer token of a random user,
and prints requests a second, p50/p99 latency and the server's CPU a request. Target: at least
500 requests a second on PostgreSQL with one worker on a 2-core machine. Then it opens 200 event
streams, lets them sit idle, and prints the server's CPU over that time (target: at most 1 % of
a core). The server logs each request, as it does when served.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python benchmarks/api_load.py
    python benchmarks/api_load.py            # the SQLite default
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import jwt
from status_scale import seller_line
from throwaway import database, is_postgres

SECRET = "benchmark-jwt-secret-" + "x" * 20
TARGET_RPS = 500
TARGET_IDLE_CPU = 0.01


def seed(users: int) -> bytes:
    """``users`` sellers, each with a Stripe and an Amazon integration."""
    lines = (seller_line(i, provider) for i in range(users) for provider in ("stripe", "amazon"))
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(base: str, tokens: list[str], connections: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    ends = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while time.perf_counter() < ends:
                headers = {"Authorization": f"Bearer {random.choice(tokens)}"}
                began = time.perf_counter()
                async with session.get(f"{base}/api/v1/integrations/status", headers=headers) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise SystemExit(f"HTTP {r.status}: {body[:200]!r}")
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(client() for _ in range(connections)))
    return latencies


async def idle_streams(base: str, tokens: list[str], count: int, seconds: float, pid: int) -> float:
    """The server's CPU share of one core while ``count`` streams sit idle for ``seconds``."""
    connector = aiohttp.TCPConnector(limit=count)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        responses = []
        for token in tokens[:count]:
            response = await session.get(
                f"{base}/api/v1/integrations/events", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status == 200, response.status
            responses.append(response)
        await asyncio.sleep(2)  # settled
        before, began = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(seconds)
        used = cpu_seconds(pid) - before
        share = used / (time.perf_counter() - began)
        for response in responses:
            response.close()
    return share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument(
        "--idle-seconds", type=float, default=30, help="how long the idle streams are measured"
    )
    args = parser.parse_args()
    backend = "PostgreSQL" if is_postgres() else "SQLite"
    print(f"API on {backend}, {os.cpu_count()} cores, one uvicorn worker")
    with tempfile.TemporaryDirectory() as home, database(home) as env:
        env["JWT_SECRET"] = SECRET
        source = Path(home) / "users.jsonl"
        source.write_bytes(seed(args.users))
        subprocess.run(
            [sys.executable, "-m", "discoveryctl", "import", str(source)],
            env=env,
            check=True,
            capture_output=True,
        )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "discoveryctl", "serve", "--port", str(port)],
            env={**env, "LOG_LEVEL": "info"},  # access logs on, as served
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            now = int(time.time())
            tokens = [
                jwt.encode({"sub": f"seller-{i:05d}", "exp": now + 3600}, SECRET, "HS256")
                for i in range(args.users)
            ]
            asyncio.run(load(base, tokens, args.connections, 2))  # warm up
            before = cpu_seconds(server.pid)
            latencies = asyncio.run(load(base, tokens, args.connections, args.seconds))
            per_request = (cpu_seconds(server.pid) - before) / len(latencies)
            rate = len(latencies) / args.seconds
            cuts = statistics.quantiles(latencies, n=100)
            verdict = "meets" if rate >= TARGET_RPS else "MISSES"
            print(
                f"GET /api/v1/integrations/status, {args.users:,} users, {args.connections} "
                f"connections: {rate:.0f} requests/s ({verdict} the {TARGET_RPS}/s target), "
                f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms; the server's "
                f"CPU {per_request * 1e6:.0f} µs a request"
            )
            share = asyncio.run(
                idle_streams(base, tokens, args.streams, args.idle_seconds, server.pid)
            )
            verdict = "meets" if share <= TARGET_IDLE_CPU else "MISSES"
            print(
                f"{args.streams} idle event streams for {args.idle_seconds:g} s: the server used "
                f"{share:.2%} of a core "
                f"({verdict} the {TARGET_IDLE_CPU:.0%} target)"
            )
        finally:
            server.terminate()
            server.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
