"""How many LWA refresh-token grants a second the sandbox serves.

The sandbox runs in a process of its own (``run_in_thread``). The grants come from
``--clients`` other processes over HTTP/1.1 keep-alive connections, ``--concurrency`` requests
in flight in all. By default each connection is a bare asyncio socket writing the form and
reading the answer (``--client raw``, the way wrk would): an httpx client spends about a
millisecond of CPU a request, so with ``--client httpx`` on a small machine the clients, not
the sandbox, are the limit. The script also reports the sandbox's own CPU time per grant, and
the rate one core of it would sustain.

Target: the sandbox sustains at least 2,000 grants/s on a 2-core machine.

Example: python benchmarks/sandbox_throughput.py --grants 5000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from urllib.parse import urlencode

import httpx

from discoveryctl.sandbox import SandboxConfig, run_in_thread

CONFIG = SandboxConfig()


def serve(conn: Connection, sellers: int) -> None:
    """The sandbox process: send its URL and the sellers' refresh tokens, answer "cpu" with
    its CPU time so far, stop on anything else."""
    with run_in_thread(CONFIG) as sandbox:
        tokens = [sandbox.state.add_seller().refresh_token for _ in range(sellers)]
        conn.send((sandbox.url, tokens))
        while conn.recv() == "cpu":
            conn.send(time.process_time())


def fire(
    url: str,
    tokens: list[str],
    grants: int,
    lanes: int,
    start: Barrier,
    conn: Connection,
    client: str,
) -> None:
    """A client process: send (latencies, failures) of ``grants`` grants over ``lanes``
    connections, fired once every process is warmed up."""
    runner = _fire_raw if client == "raw" else _fire
    conn.send(asyncio.run(runner(url, tokens, grants, lanes, start)))


async def _fire_raw(
    url: str, tokens: list[str], grants: int, lanes: int, start: Barrier
) -> tuple[list[float], int]:
    host, port = url.removeprefix("http://").split(":")
    connections = [await asyncio.open_connection(host, int(port)) for _ in range(lanes)]
    try:
        for reader, writer in connections:
            await _raw_grant(reader, writer, host, tokens[0])
        await asyncio.get_running_loop().run_in_executor(None, start.wait)
        results = await asyncio.gather(
            *(
                _raw_lane(reader, writer, host, tokens, range(i, grants, lanes))
                for i, (reader, writer) in enumerate(connections)
            )
        )
    finally:
        for _, writer in connections:
            writer.close()
    latencies = [latency for lane_latencies, _ in results for latency in lane_latencies]
    return latencies, sum(failures for _, failures in results)


async def _raw_lane(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    tokens: list[str],
    indexes: range,
) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    for i in indexes:
        began = time.perf_counter()
        ok = await _raw_grant(reader, writer, host, tokens[i % len(tokens)])
        latencies.append(time.perf_counter() - began)
        failures += not ok
    return latencies, failures


async def _raw_grant(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, refresh_token: str
) -> bool:
    body = urlencode(
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CONFIG.client_id,
            "client_secret": CONFIG.client_secret,
        }
    ).encode()
    writer.write(
        b"POST /auth/o2/token HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    answer = await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200") and b"access_token" in answer


async def _fire(
    url: str, tokens: list[str], grants: int, lanes: int, start: Barrier
) -> tuple[list[float], int]:
    # One client per lane: httpcore's pool spends time proportional to its size on every
    # request, so one pool of 32 connections is several times slower than 32 pools of one.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, limits=limits))
            for _ in range(lanes)
        ]
        await asyncio.gather(*(_grant(client, tokens[0]) for client in clients))
        await asyncio.get_running_loop().run_in_executor(None, start.wait)
        results = await asyncio.gather(
            *(_lane(client, tokens, range(i, grants, lanes)) for i, client in enumerate(clients))
        )
    latencies = [latency for lane_latencies, _ in results for latency in lane_latencies]
    return latencies, sum(failures for _, failures in results)


async def _lane(
    client: httpx.AsyncClient, tokens: list[str], indexes: range
) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    for i in indexes:
        began = time.perf_counter()
        ok = await _grant(client, tokens[i % len(tokens)])
        latencies.append(time.perf_counter() - began)
        failures += not ok
    return latencies, failures


async def _grant(client: httpx.AsyncClient, refresh_token: str) -> bool:
    response = await client.post(
        "/auth/o2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": CONFIG.client_id,
            "client_secret": CONFIG.client_secret,
        },
    )
    return response.status_code == 200 and "access_token" in response.json()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grants", type=int, default=5000, help="grants to fire in all")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight in all")
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--sellers", type=int, default=100, help="sellers whose tokens rotate")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="what fires the grants"
    )
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    server_conn, server_end = context.Pipe()
    server = context.Process(target=serve, args=(server_end, args.sellers))
    server.start()
    url, tokens = server_conn.recv()

    start = context.Barrier(args.clients + 1)
    clients = []
    for _ in range(args.clients):
        conn, client_end = context.Pipe()
        share = (args.grants // args.clients, args.concurrency // args.clients)
        process = context.Process(
            target=fire, args=(url, tokens, *share, start, client_end, args.client)
        )
        process.start()
        clients.append((process, conn))

    start.wait()
    server_conn.send("cpu")
    cpu_before: float = server_conn.recv()
    began = time.perf_counter()
    results = [conn.recv() for _, conn in clients]
    elapsed = time.perf_counter() - began
    server_conn.send("cpu")
    server_cpu = server_conn.recv() - cpu_before
    server_conn.send("stop")
    for process, _ in clients:
        process.join()
    server.join()

    latencies = sorted(latency for lane_latencies, _ in results for latency in lane_latencies)
    failures = sum(failed for _, failed in results)
    count = len(latencies)
    p50, p99 = statistics.median(latencies), latencies[int(count * 0.99)]
    print(
        f"grants:      {count} ({failures} failed), {args.concurrency} in flight, "
        f"{args.clients} client processes ({args.client} client)"
    )
    print(f"throughput:  {count / elapsed:,.0f} grants/s")
    print(f"latency:     p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(
        f"sandbox CPU: {server_cpu / count * 1e6:.0f} µs a grant "
        f"(one core of it: ~{count / server_cpu:,.0f} grants/s)"
    )


if __name__ == "__main__":
    main()
