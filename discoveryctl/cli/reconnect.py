"""`discoveryctl reconnect amazon`: send sellers back through consent."""

from __future__ import annotations

from enum import StrEnum

import typer

from discoveryctl.cli import options
from discoveryctl.errors import InvalidInput
from discoveryctl.integrations.vocabulary import Region


class ReconnectProvider(StrEnum):
    amazon = "amazon"


def reconnect(
    ctx: typer.Context,
    provider: ReconnectProvider = typer.Argument(
        ..., case_sensitive=False, help="The provider to reconnect."
    ),
    user: str | None = typer.Option(
        None,
        "--user",
        callback=options.user_id,
        help="This user (default: every revoked or expired integration).",
    ),
    notify: bool = typer.Option(False, "--notify", help="Also notify the seller with the URL."),
    local: bool = typer.Option(
        False, "--local", help="Run `connect` here instead (needs --user): consent in a browser."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON list on stdout."),
) -> None:
    """Print reconnect URLs; --notify tells the seller too.

    An attempt is counted when a URL goes to a seller: with --user (for you to hand over) or
    --notify. Without either, the revoked and expired are only listed. A seller whose
    reconnect notification is still open is not sent another; the output says since when. With
    --local --user U, run the consent flow on this machine instead (as `connect`).

    \b
    Example: discoveryctl reconnect amazon --user seller-42 --notify
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.integrations import reconnect as reconnects

    app: Application = ctx.obj
    if local:
        if user is None:
            raise InvalidInput("--local needs --user: it connects one seller")
        from discoveryctl.cli.connect import ConnectProvider, connect

        with app.session() as session:
            known = reconnects.for_user(session, provider.value, user)
            region = Region(known.meta.get("region", Region.na))
        connect(
            ctx,
            ConnectProvider.amazon,
            user=user,
            region=region,
            no_browser=False,
            paste=False,
            timeout=300,
            tls_cert=None,
            tls_key=None,
            as_json=as_json,
        )
        return
    frontend_url = app.config.frontend_url
    with app.session() as session:
        if user is not None:
            targets = [reconnects.for_user(session, provider.value, user)]
        else:
            targets = list(reconnects.needing_reconnect(session, provider.value))
        count = user is not None or notify
        results = [
            reconnects.request(
                session, target, frontend_url=frontend_url, notify=notify, count=count
            )
            for target in targets
        ]

    if as_json:
        app.print_json(results)
        return
    if not results:
        app.err.print(f"no {provider.value} integration is revoked or expired")
        return
    for result in results:
        note = "  (notified)" if result["notified"] else ""
        if result["already_notified_at"]:
            since = result["already_notified_at"]
            note = f"  (not notified again: the notification sent {since} is still open)"
        app.out.print(
            f"{result['user_id']}  {result['status']}  attempt {result['attempts']}  "
            f"{result['reconnectUrl']}{note}",
            soft_wrap=True,
        )
