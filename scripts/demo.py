"""`make demo`: the tool's job so far, on the embedded SQLite default, against the sandbox.

Everything happens in a throw-away data directory and on 127.0.0.1; each step prints the
command it runs, as an operator would type it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SELLERS = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def step(title: str, *why: str) -> None:
    """A step's title, then in a few plain lines what it does and what to look for."""
    print(f"\n== {title}", flush=True)
    for line in why:
        print(f"   {line}")


def discoveryctl(env: dict[str, str], *args: str, expect: tuple[int, ...] = (0,)) -> str:
    print(f"$ discoveryctl {shlex.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "discoveryctl", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stdout.write(done.stdout)
    for line in done.stderr.splitlines():
        print(f"  {line}")
    print(f"  (exit {done.returncode})", flush=True)
    if done.returncode not in expect:
        raise SystemExit(f"demo failed: discoveryctl {' '.join(args)} exited {done.returncode}")
    return done.stdout


def start_sandbox(
    env: dict[str, str], seed_file: Path
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "discoveryctl",
        "sandbox",
        "--port",
        str(port),
        "--seed",
        str(SELLERS),
        "--seed-file",
        str(seed_file),
    ]
    print(f"$ discoveryctl sandbox --port {port} --seed {SELLERS} --seed-file {seed_file.name} &")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    exports: dict[str, str] = {}
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = shlex.split(value)[0] if value else ""
            print(f"  export {name}=…")
        if "STRIPE_API_BASE" in exports and "AMAZON_LWA_TOKEN_URL" in exports:
            break
    if not exports:
        process.kill()
        raise SystemExit("demo failed: the sandbox did not start")
    return process, exports


def connect_in_browser(env: dict[str, str], user: str, seller: str | None = None) -> None:
    """`connect amazon` as a seller would live it: the consent page, then the redirect back.
    ``seller``: the Seller Central account that consents (else the sandbox makes one)."""
    args = ["connect", "amazon", "--user", user, "--no-browser", "--timeout", "30"]
    print(f"$ discoveryctl {shlex.join(args)}", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "discoveryctl", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    print(f"  consent URL: {url[:80]}…")
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        # Seller Central approves and sends the browser back
        page = browser.get(f"{url}&selling_partner_id={seller}" if seller else url)
    print(f"  the browser shows: {page.status_code} {page.text.split('<h1>')[1].split('<')[0]}")
    _, stderr = process.communicate(timeout=30)
    for line in stderr.splitlines():
        print(f"  {line}")
    print(f"  (exit {process.returncode})", flush=True)
    if process.returncode != 0:
        raise SystemExit("demo failed: connect did not complete")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="discoveryctl-demo-") as home:
        env = {
            key: value
            for key, value in os.environ.items()
            if key != "DATABASE_URL" and not key.startswith(("AMAZON_", "STRIPE_", "DISCOVERY_"))
        }
        env.update(
            {"XDG_DATA_HOME": home, "LOG_FORMAT": "console", "NO_COLOR": "1", "COLUMNS": "120"}
        )
        seed_file = Path(home) / "sellers.jsonl"

        step(
            "Start the sandbox (Seller Central, LWA, SP-API and Stripe on 127.0.0.1)",
            "Amazon and Stripe are not reached from here: the sandbox stands in for both, with",
            f"their rules, and knows {SELLERS} sellers whose tokens it writes to a file.",
        )
        sandbox, exports = start_sandbox(env, seed_file)
        env.update(exports)
        try:
            step(
                "Is this installation ready?",
                "doctor checks the database (and its integrity), the encryption key, and each",
                "setting. The LWA secret's age is unknown here: a warning, not a failure.",
            )
            discoveryctl(env, "doctor", expect=(0, 1))

            step(
                "Two sellers connect their Amazon accounts through Seller Central consent",
                "connect prints the consent URL, listens on 127.0.0.1 for Amazon's redirect,",
                "trades the code for tokens and stores the refresh token encrypted.",
            )
            connect_in_browser(env, "acme-outdoor")
            connect_in_browser(env, "blue-kettle")

            step(
                "Import the sandbox's other sellers, and their Stripe customers to be",
                "One JSON object a line. The last line is broken on purpose (an Amazon line with",
                "no token, seller or region): it is reported by its number, the others are",
                "stored, and the command exits 1 so a script notices.",
            )
            sellers = [json.loads(line) for line in seed_file.read_text().splitlines()]
            with seed_file.open("a") as handle:
                for seller in sellers:
                    user = seller["user_id"]
                    handle.write(
                        json.dumps(
                            {"user_id": user, "provider": "stripe", "email": f"{user}@example.com"}
                        )
                        + "\n"
                    )
                handle.write('{"user_id": "broken", "provider": "amazon"}\n')
            discoveryctl(env, "import", str(seed_file), expect=(1,))
            step(
                "Importing the same file again changes nothing",
                "Every good line is now 'unchanged'; the broken one is reported again.",
            )
            discoveryctl(env, "import", str(seed_file), "--json", expect=(1,))

            step(
                "A seller revokes access in Seller Central",
                "From now on Amazon answers invalid_grant for that seller's refresh token.",
            )
            revoked = sellers[0]
            print(
                f"$ curl -X POST $AMAZON_SELLER_CENTRAL_URL/_sandbox/sellers/"
                f"{revoked['selling_partner_id']}/revoke"
            )
            response = httpx.post(
                f"{exports['AMAZON_SELLER_CENTRAL_URL']}/_sandbox/sellers/"
                f"{revoked['selling_partner_id']}/revoke"
            )
            response.raise_for_status()

            step(
                "The cron job refreshes every due token, catches the revoked seller, and "
                "creates the pending Stripe customers",
                "refresh-all tells the revoked seller (invalid_grant: revoked, the seller is",
                "told how to reconnect) from a passing failure; exit 1 says a seller needs",
                "attention. Each pending Stripe customer is made under a stored key.",
            )
            discoveryctl(env, "refresh-all", expect=(1,))
            discoveryctl(env, "status", "stripe")
            step(
                "A user signs up: their Stripe customer, exactly once however often asked",
                "The first call creates it; the second answers from the database, no call.",
            )
            for _ in range(2):
                discoveryctl(
                    env,
                    "stripe",
                    "ensure-customer",
                    "--user",
                    "new-user",
                    "--email",
                    "new-user@example.com",
                )
            step(
                "A second run right after finds nothing due",
                "Tokens are refreshed when they near expiry, not every run.",
            )
            discoveryctl(env, "refresh-all", "--json")

            step(
                "Integration health",
                "Unhealthy first. --check exits 1 while anything needs attention, for alerts.",
            )
            discoveryctl(env, "status")
            discoveryctl(env, "status", "--check", expect=(1,))
            step(
                "The last hour's rates and alerts",
                "From the events: success rates, errors, a mark per hour of failures, and the",
                "alerts; one revoked seller of a handful is over the 5 % an hour, so exit 1.",
            )
            discoveryctl(env, "health", expect=(0, 1))

            step(
                "Send a seller back through consent",
                "reconnect prints the URL the seller follows and, with --notify, puts it in",
                "their notifications.",
            )
            discoveryctl(env, "reconnect", "amazon", "--user", revoked["user_id"], "--notify")
            discoveryctl(env, "notifications", "--user", revoked["user_id"])
            step(
                "The seller consents again: active, and the alerts are resolved",
                "The same Seller Central account consents (another one would be warned about).",
            )
            connect_in_browser(env, revoked["user_id"], revoked["selling_partner_id"])
            discoveryctl(env, "status", "--user", revoked["user_id"])

            step(
                "The audit history and an export without secrets",
                "Every attempt, outcome and transition is an event; export leaves tokens out",
                "unless asked (--include-secrets).",
            )
            discoveryctl(env, "events", "--user", revoked["user_id"])
            discoveryctl(env, "export")
        finally:
            sandbox.send_signal(signal.SIGINT)
            sandbox.wait(timeout=10)
    print("\ndemo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
