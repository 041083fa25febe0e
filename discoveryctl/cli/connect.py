"""`discoveryctl connect amazon`: a seller grants consent through a local callback server."""

from __future__ import annotations

import math
import sys
from enum import StrEnum
from pathlib import Path

import typer

from discoveryctl.cli import options
from discoveryctl.integrations.vocabulary import Region


class ConnectProvider(StrEnum):
    amazon = "amazon"


def connect(
    ctx: typer.Context,
    provider: ConnectProvider = typer.Argument(
        ..., case_sensitive=False, help="The provider to connect."
    ),
    user: str = typer.Option(
        ..., "--user", callback=options.user_id, help="The user the seller's account belongs to."
    ),
    region: Region | None = typer.Option(
        None,
        "--region",
        help="The seller's Amazon region, at its default Seller Central [default: na].",
    ),
    marketplace: str | None = typer.Option(
        None,
        "--marketplace",
        metavar="CC",
        help="The seller's marketplace (two-letter country code, e.g. AU, IN, ZA): consent "
        "at its own Seller Central; the region follows from it.",
    ),
    no_browser: bool = typer.Option(
        False, "--no-browser", help="Print the consent URL instead of opening a browser."
    ),
    paste: bool = typer.Option(
        False, "--paste", help="Paste the final address from the browser instead of listening."
    ),
    timeout: float = typer.Option(
        300, "--timeout", help="Seconds to wait for the seller (1 to 600)."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Certificate for https."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Private key for https."),
    as_json: bool = typer.Option(False, "--json", help="The result as JSON on stdout."),
) -> None:
    """Connect (or reconnect) a seller's Amazon account through Seller Central consent.

    \b
    Example: discoveryctl connect amazon --user seller-42 --marketplace DE --no-browser
    """
    from discoveryctl.amazon.connect import Flow, via_local_server, via_paste
    from discoveryctl.amazon.consent import seller_region
    from discoveryctl.cli.application import Application
    from discoveryctl.errors import InvalidInput
    from discoveryctl.providers.lwa import LwaClient, app_from

    app: Application = ctx.obj
    if math.isnan(timeout):
        raise InvalidInput("--timeout nan is not a number of seconds")
    if not 1 <= timeout <= 600:
        raise InvalidInput(f"--timeout must be from 1 to 600 seconds, not {timeout:g}")
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    where, market = seller_region(region.value if region else None, marketplace)
    amazon = app_from(app.config)
    database = app.open_database()

    def announce(url: str) -> None:
        if no_browser or paste:
            sys.stdout.write(url + "\n")
            sys.stdout.flush()
        else:
            import webbrowser

            if not webbrowser.open(url):
                sys.stdout.write(url + "\n")
                sys.stdout.flush()
        app.err.print(f"waiting for {user}'s consent on Amazon (up to {timeout:g} s)…")

    def read_pasted() -> str:
        app.err.print("paste the address the browser ended on, then press Enter:")
        line = sys.stdin.readline()
        if not line:
            raise InvalidInput("nothing was pasted")
        return line

    with LwaClient(amazon) as lwa:
        flow = Flow(database.session, app.config, amazon, lwa, user, where, market)
        if paste:
            connected = via_paste(flow, announce=announce, read_pasted=read_pasted)
        else:
            connected = via_local_server(
                flow,
                announce=announce,
                ignored=lambda error: app.err.print(
                    f"ignored a callback that is not this flow's: {error.message}"
                ),
                timeout=timeout,
                tls=tls,
            )
    if as_json:
        app.print_json(
            {
                "user_id": connected.user_id,
                "provider": "amazon",
                "selling_partner_id": connected.selling_partner_id,
                "region": connected.region,
                "reconnected": connected.reconnected,
                "previous_selling_partner_id": connected.previous_seller,
            }
        )
    else:
        verb = "reconnected" if connected.reconnected else "connected"
        app.err.print(
            f"{verb} {connected.user_id}: seller {connected.selling_partner_id} "
            f"({connected.region})"
        )
    if connected.previous_seller is not None:
        app.err.print(
            f"warning: {connected.user_id} was seller {connected.previous_seller} and is now "
            f"seller {connected.selling_partner_id} (another Seller Central account); the "
            "admins were told"
        )
