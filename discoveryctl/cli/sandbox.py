"""`discoveryctl sandbox`: serve the local emulator of Seller Central, LWA, SP-API and Stripe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from discoveryctl.sandbox.state import Seller


def sandbox(
    port: int = typer.Option(8790, min=0, max=65535, help="Port on 127.0.0.1 (0: any free one)."),
    latency_ms: int = typer.Option(0, min=0, help="Delay every LWA, SP-API and Stripe answer."),
    fail_rate: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Share of LWA, SP-API and Stripe requests that fail (5xx)."
    ),
    redirect_uri: list[str] = typer.Option(
        ["http://127.0.0.1:8765/callback"],
        "--redirect-uri",
        help="A redirect URI registered on the app (repeat for more); the first is exported.",
    ),
    login_uri: str | None = typer.Option(
        None, help="Run consent in login-URI mode, sending sellers to this URI first."
    ),
    amazon_callback_base: str = typer.Option(
        "https://amazon.com",
        help="Where login-URI mode sends sellers back, as Amazon does"
        " (<base>/apps/authorize/confirm/<app id>); give the sandbox's own URL to finish the"
        " flow in a real browser.",
    ),
    draft: bool = typer.Option(
        True, "--draft/--no-draft", help="A draft app is only authorized with version=beta."
    ),
    seed: int = typer.Option(0, min=0, help="Create N sellers at start (needs --seed-file)."),
    seed_file: Path | None = typer.Option(
        None,
        dir_okay=False,
        help="Write the seeded sellers here (mode 0600) as `discoveryctl import` JSON lines.",
    ),
) -> None:
    """Run a local emulator of Seller Central, LWA, SP-API and Stripe.

    Prints the `export` lines that point discoveryctl at it, then serves until Ctrl-C (or
    SIGTERM).

    \b
    Example: discoveryctl sandbox --port 8790
    """
    import shlex
    import signal
    import sys

    from discoveryctl.errors import ConfigurationError, InvalidInput
    from discoveryctl.sandbox import SandboxConfig, run_in_thread

    if (seed > 0) != (seed_file is not None):
        raise InvalidInput("--seed N and --seed-file F go together (refresh tokens go to the file)")
    config = SandboxConfig(
        redirect_uris=tuple(redirect_uri),
        login_uri=login_uri,
        amazon_callback_base=amazon_callback_base,
        draft=draft,
        latency_ms=latency_ms,
        fail_rate=fail_rate,
    )
    # Both signals stop the server cleanly, even where the parent started us with them ignored;
    # installed before anything is printed, so a caller may signal as soon as it has read them.
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {
        number: signal.signal(number, signal.default_int_handler) for number in stop_signals
    }
    try:
        try:
            emulator = run_in_thread(config, port)
        except OSError as error:
            raise ConfigurationError(
                f"cannot listen on 127.0.0.1:{port}: {error.strerror}"
            ) from None
        with emulator:
            if seed_file is not None:
                _write_seed_file(seed_file, [emulator.state.add_seller() for _ in range(seed)])
                typer.echo(f"seeded {seed} sellers into {seed_file}", err=True)
            for name, value in emulator.env().items():
                sys.stdout.write(f"export {name}={shlex.quote(value)}\n")
            sys.stdout.flush()
            typer.echo(f"sandbox listening on {emulator.url} (Ctrl-C to stop)", err=True)
            emulator.wait()
        raise ConfigurationError("the sandbox server stopped unexpectedly")
    except KeyboardInterrupt:
        return
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _write_seed_file(path: Path, sellers: list[Seller]) -> None:
    """The sellers as `discoveryctl import` lines, readable by the operator only."""
    import json
    import os

    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with open(descriptor, "w", encoding="utf-8") as file:
        for number, seller in enumerate(sellers, start=1):
            line = {
                "user_id": f"seller-{number}",
                "provider": "amazon",
                "refresh_token": seller.refresh_token,
                "selling_partner_id": seller.selling_partner_id,
                "region": "na",
            }
            file.write(json.dumps(line) + "\n")
