"""`discoveryctl check amazon`: call the SP-API as the seller, and act on the answer."""

from __future__ import annotations

from enum import StrEnum

import typer

from discoveryctl.cli import options


class CheckProvider(StrEnum):
    amazon = "amazon"


def check(
    ctx: typer.Context,
    provider: CheckProvider = typer.Argument(
        ..., case_sensitive=False, help="The provider to check."
    ),
    user: str | None = typer.Option(
        None,
        "--user",
        callback=options.user_id,
        help="This seller (default: every active Amazon integration).",
    ),
    accept_mass_revocation: bool = typer.Option(
        False,
        "--accept-mass-revocation",
        help="Apply the revocations even when most of the sellers checked are revoked.",
    ),
    mass_revocation_threshold: float = typer.Option(
        0.5,
        "--mass-revocation-threshold",
        min=0.0,
        max=1.0,
        help="Hold every revocation when more than this share of at least 10 sellers are.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One object per seller on stdout."),
) -> None:
    """Check sellers' authorizations live with SP-API getMarketplaceParticipations.

    An answer marks the seller in sync. A refusal (401, or 403 saying the token is revoked,
    malformed, invalid or expired) is confirmed first: the token is refreshed (LWA's
    invalid_grant decides there) and the SP-API asked once more; only a fresh token refused
    again marks the seller revoked, or expired past its re-authorization date, as a refresh
    would (the seller is told how to reconnect; refresh-all looks at it again). A transient
    failure is counted with the same backoff as a failed refresh; any other 403 is recorded
    only.
    Checking every seller, the revocations are held to the end, as refresh-all's are: when
    more than half of at least 10 sellers answered say "gone", nobody is marked, the admins
    are told and the command exits 3 (--accept-mass-revocation applies them).
    Checks follow the call's SP-API usage plan per seller (about one a minute, bursts of
    15): a seller checked too often is "paced", not called. Exit 1 if any seller needs
    attention (a paced seller does not).

    \b
    Example: discoveryctl check amazon --user seller-42
    """
    from discoveryctl.amazon import mass_revocation
    from discoveryctl.amazon.check import (
        Checked,
        CheckOutcome,
        active_sellers,
        check_seller,
        settle,
    )
    from discoveryctl.amazon.mass_revocation import Brake, Held
    from discoveryctl.cli.application import Application
    from discoveryctl.errors import (
        AppCredentialsRejected,
        MassRevocationHeld,
        NeedsAttention,
        ProviderError,
    )
    from discoveryctl.jobs import attention
    from discoveryctl.providers.lwa import LwaClient, app_from
    from discoveryctl.providers.spapi import SpApiClient

    app: Application = ctx.obj
    amazon = app_from(app.config)
    database = app.open_database()
    vault = app.open_vault()
    if user is not None:
        users = [user]
    else:
        with database.session() as session:
            users = active_sellers(session)
    results = []
    # Everyone: the verdicts that an authorization is gone are weighed together at the end
    held: list[Held] | None = None if user is not None else []
    with LwaClient(amazon) as lwa, SpApiClient(amazon) as spapi:
        for user_id in users:
            try:
                checked = check_seller(
                    database.session,
                    vault,
                    lwa,
                    spapi,
                    user_id,
                    frontend_url=app.config.frontend_url,
                    held=held,
                )
            except AppCredentialsRejected:
                raise  # the app's problem: no point asking for the next seller
            except ProviderError as error:
                if user is not None:
                    raise  # one seller: its error, with its exit code
                checked = Checked(user_id, CheckOutcome.failed, message=error.message)
            results.append(checked)
            if not as_json:
                detail = (
                    f"{checked.marketplaces} marketplaces"
                    if checked.outcome == CheckOutcome.ok
                    else checked.message
                )
                app.out.print(f"{user_id}: {checked.outcome} ({detail})")
    if as_json:
        app.print_json(
            [
                {
                    "user_id": c.user_id,
                    "provider": "amazon",
                    "outcome": c.outcome,
                    "marketplaces": c.marketplaces,
                    "message": c.message,
                    "reconnectUrl": c.reconnect_url,
                }
                for c in results
            ]
        )
    if held is not None:
        answered = sum(1 for c in results if c.outcome not in (CheckOutcome.paced, "failed"))
        brake = Brake(threshold=mass_revocation_threshold, accept=accept_mass_revocation)
        if settle(database.session, held, answered, brake, frontend_url=app.config.frontend_url):
            raise MassRevocationHeld(mass_revocation.message(answered, len(held)))
    needing = attention.count(c.outcome for c in results)
    if needing:
        raise NeedsAttention(attention.sellers_need(needing))
