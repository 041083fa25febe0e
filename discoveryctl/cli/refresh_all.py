"""`discoveryctl refresh-all`: the cron job."""

from __future__ import annotations

from enum import StrEnum

import typer

from discoveryctl.cli import options


class RefreshAllProvider(StrEnum):
    amazon = "amazon"


def refresh_all(
    ctx: typer.Context,
    provider: RefreshAllProvider = typer.Option(
        RefreshAllProvider.amazon, "--provider", help="Which integrations to refresh."
    ),
    concurrency: int = typer.Option(
        32, "--concurrency", min=1, max=512, help="Calls to LWA at once."
    ),
    deadline: str | None = typer.Option(
        None,
        "--deadline",
        help="Stop claiming work after this long (e.g. 4m), to end before the next cron tick.",
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
    dry_run: bool = typer.Option(False, "--dry-run", help="List what is due; call nothing."),
    as_json: bool = typer.Option(False, "--json", help="The summary as JSON on stdout."),
) -> None:
    """Refresh every due Amazon authorization, and record what each answer means.

    Due: the cached access token expires within 5 minutes (or there is none), or the last
    refresh is over a day old; sellers whose last refresh failed wait out their backoff.
    With --verify, each new token is also checked at the SP-API (a seller it refuses is
    revoked; an ambiguous 403 is recorded only). Overlapping runs, and runs on several
    machines over one database, never refresh the same seller twice. Exit 0 all fine; 1
    something needs attention (revoked or expired sellers, failures left for the next run);
    3 LWA refused the app's own credentials (nothing was marked on any seller); 130
    interrupted (the summary so far is printed).

    Example: */5 * * * * discoveryctl refresh-all --deadline 4m
    """
    from datetime import timedelta

    from discoveryctl.cli.application import Application
    from discoveryctl.errors import AppCredentialsRejected, Interrupted, NeedsAttention
    from discoveryctl.providers.amazon import AsyncLwaClient
    from discoveryctl.providers.spapi import AsyncSpApiClient
    from discoveryctl.refresh import Outcome
    from discoveryctl.refresh_all import due_now, run

    app: Application = ctx.obj
    seconds = options.duration(deadline)
    lease_seconds = options.duration(lease)
    assert lease_seconds is not None
    amazon = app.config.amazon_app()
    database = app.open_database()
    with database.session() as session:
        vault = app.vault(session)
        if dry_run:
            due = due_now(session, force=force)
    if dry_run:
        if as_json:
            app.print_json([{"user_id": d.user_id, "provider": "amazon"} for d in due])
        else:
            for d in due:
                app.out.print(d.user_id)
            app.err.print(f"{len(due)} due")
        return

    with app.progress("refresh", None) as show:
        summary = run(
            database.session,
            vault,
            lambda: AsyncLwaClient(amazon, connections=concurrency),
            spapi_factory=(
                (lambda: AsyncSpApiClient(amazon, connections=concurrency)) if verify else None
            ),
            frontend_url=app.config.frontend_url,
            concurrency=concurrency,
            deadline=seconds,
            lease=timedelta(seconds=lease_seconds),
            force=force,
            progress=show,
        )
    if as_json:
        app.print_json(summary.as_dict())
    else:
        counts = ", ".join(f"{n} {o}" for o, n in summary.as_dict()["outcomes"].items() if n)
        if summary.checks:
            counts += "; checked: " + ", ".join(f"{n} {c}" for c, n in summary.checks.items())
        rate = f", {summary.total / summary.seconds:.1f}/s" if summary.seconds else ""
        app.err.print(
            f"refresh-all: {summary.total} in {summary.seconds:.1f} s{rate}"
            + (f" ({counts})" if counts else "")
            + (" — deadline reached" if summary.deadline_reached else "")
        )
    if summary.app_rejected is not None:
        raise AppCredentialsRejected(summary.app_rejected)
    if summary.interrupted:
        raise Interrupted("interrupted: the summary above is what was done")
    attention = sum(
        summary.outcomes[o] for o in (Outcome.revoked, Outcome.expired, Outcome.failed)
    ) + sum(summary.checks[c] for c in ("revoked", "failed", "inconclusive"))
    if summary.deadline_reached:
        raise NeedsAttention(
            f"the deadline came before every due seller was refreshed ({summary.total} done): "
            "the next run goes on"
        )
    if attention:
        raise NeedsAttention(
            f"{attention} seller{'s need' if attention != 1 else ' needs'} attention"
        )
