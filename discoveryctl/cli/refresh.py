"""`discoveryctl refresh amazon` and `discoveryctl access-token amazon`: one seller, now."""

from __future__ import annotations

from enum import StrEnum

import typer

from discoveryctl.cli import options


class RefreshProvider(StrEnum):
    amazon = "amazon"


def refresh(
    ctx: typer.Context,
    provider: RefreshProvider = typer.Argument(
        ..., case_sensitive=False, help="The provider to refresh."
    ),
    user: str = typer.Option(..., "--user", callback=options.user_id, help="The seller's user id."),
    as_json: bool = typer.Option(False, "--json", help="The outcome as JSON on stdout."),
) -> None:
    """Refresh one seller's Amazon access token now, and record what LWA's answer means.

    Exit 1 if the authorization is revoked or expired (the output has the reconnect URL) or
    the refresh failed for now; 3 if LWA refused the app's own credentials.

    \b
    Example: discoveryctl refresh amazon --user seller-42
    """
    from discoveryctl.amazon.refresh import raise_for, refresh_seller
    from discoveryctl.cli.application import Application
    from discoveryctl.integrations.vocabulary import isoformat
    from discoveryctl.providers.lwa import LwaClient, app_from

    app: Application = ctx.obj
    amazon = app_from(app.config)
    database = app.open_database()
    vault = app.open_vault()
    with LwaClient(amazon) as lwa:
        done = refresh_seller(
            database.session, vault, lwa, user, frontend_url=app.config.frontend_url
        )
    expires = done.access_token_expires_at
    if as_json:
        app.print_json(
            {
                "user_id": done.user_id,
                "provider": "amazon",
                "outcome": str(done.outcome),
                "access_token_expires_at": isoformat(expires) if expires else None,
                "error_type": done.error_type,
                "message": done.message,
                "reconnectUrl": done.reconnect_url if done.error_type else None,
            }
        )
    elif expires is not None:
        app.err.print(f"refreshed {done.user_id}: access token valid until {isoformat(expires)}")
    raise_for(done)


def access_token(
    ctx: typer.Context,
    provider: RefreshProvider = typer.Argument(..., case_sensitive=False, help="The provider."),
    user: str = typer.Option(..., "--user", callback=options.user_id, help="The seller's user id."),
) -> None:
    """Print a valid Amazon access token for the seller, alone on stdout, for scripts.

    The cached token is reused while it has more than 5 minutes left; otherwise it is
    refreshed first (processes asking at once share one refresh).

    \b
    Example: curl -H "x-amz-access-token: $(discoveryctl access-token amazon --user seller-42)" …
    """
    import sys

    from discoveryctl.amazon.refresh import access_token as usable_token
    from discoveryctl.cli.application import Application
    from discoveryctl.providers.lwa import LwaClient, app_from

    app: Application = ctx.obj
    amazon = app_from(app.config)
    database = app.open_database()
    vault = app.open_vault()
    with LwaClient(amazon) as lwa:
        token, _ = usable_token(
            database.session, vault, lwa, user, frontend_url=app.config.frontend_url
        )
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
