"""`discoveryctl refresh-all`: the cron job."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from discoveryctl.cli.application import Application


class RefreshAllProvider(StrEnum):
    all = "all"
    amazon = "amazon"
    stripe = "stripe"


def refresh_all(
    ctx: typer.Context,
    provider: RefreshAllProvider = typer.Option(
        RefreshAllProvider.all,
        "--provider",
        case_sensitive=False,
        help="Amazon authorizations, pending Stripe customers, or both.",
    ),
    concurrency: int = typer.Option(
        32, "--concurrency", min=1, max=512, help="Calls to LWA at once."
    ),
    deadline: str | None = typer.Option(
        None,
        "--deadline",
        help="Stop claiming work after this long (4m, 1h30m), to end before the next cron tick.",
    ),
    lease: str = typer.Option(
        "60s",
        "--lease",
        help="How long a claimed seller stays this run's; a killed run's sellers are free after.",
    ),
    force: bool = typer.Option(False, "--force", help="Refresh every active one, due or not."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Also check each new token with SP-API getMarketplaceParticipations.",
    ),
    accept_mass_revocation: bool = typer.Option(
        False,
        "--accept-mass-revocation",
        help="Apply the run's revocations even when most of its refresh answers are revocations.",
    ),
    mass_revocation_threshold: float = typer.Option(
        0.5,
        "--mass-revocation-threshold",
        min=0.0,
        max=1.0,
        help="Hold every revocation when more than this share of at least 10 answers are.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the due sellers and pending customers; call nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="The summary as JSON on stdout."),
) -> None:
    """Refresh every due Amazon authorization and create every pending Stripe customer.

    Due: the cached access token expires within 5 minutes (or there is none), or the last
    refresh is over a day old; sellers whose last refresh failed wait out their backoff.
    With --verify, each new token is also checked at the SP-API (a seller it refuses is
    revoked only if a second fresh token is refused too; an ambiguous 403 is recorded only).
    Sellers revoked on the SP-API's word alone are looked at again: active once the SP-API
    takes a fresh token. When more than half of at least 10 refresh answers say the seller's
    authorization is gone, nobody is marked and the run exits 3 (a wrong
    AMAZON_LWA_CLIENT_ID looks like that); --accept-mass-revocation applies them. Then every
    user still waiting for a Stripe customer gets one, under the idempotency key stored for
    it (see stripe ensure-customer). Overlapping runs, and runs on several machines over one
    database, never work on the same seller twice. Exit 0 all fine; 1 something needs
    attention (revoked or expired sellers, failures left for the next run); 3 LWA or Stripe
    refused the app's own credentials, or a mass revocation was held (nothing was marked on
    any seller); 130 interrupted (the summary so far is printed).

    \b
    Example: */5 * * * * discoveryctl refresh-all --deadline 4m
    """

    from discoveryctl.amazon.mass_revocation import Brake
    from discoveryctl.jobs import refresh_all as job
    from discoveryctl.support import durations

    app: Application = ctx.obj
    seconds = None if deadline is None else durations.parse(deadline, "--deadline").total_seconds()
    plan = job.Plan(
        amazon=provider in (RefreshAllProvider.all, RefreshAllProvider.amazon),
        stripe=provider in (RefreshAllProvider.all, RefreshAllProvider.stripe),
        concurrency=concurrency,
        deadline=seconds,
        lease=durations.parse(lease, "--lease"),
        force=force,
        verify=verify,
        brake=Brake(threshold=mass_revocation_threshold, accept=accept_mass_revocation),
    )
    database = app.open_database()
    if dry_run:
        listed, sellers, waiting = job.due(database.session, plan)
        if as_json:
            app.print_json([{"user_id": user, "provider": p} for user, p in listed])
        else:
            for user, p in listed:
                app.out.print(f"{user} {p}")
        app.err.print(f"{sellers} Amazon authorizations due, {waiting} Stripe customers pending")
        return
    result = job.run(
        database.session,
        app.config,
        app.open_vault,
        plan,
        progress=lambda: app.progress("refresh", None),
    )
    if as_json:
        app.print_json(result.as_dict())
    else:
        if result.amazon is not None:
            app.err.print(job.amazon_line(result.amazon))
        if result.stripe is not None:
            app.err.print(job.stripe_line(result.pending, result.stripe))
    job.raise_for(result)
