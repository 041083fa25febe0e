"""`discoveryctl refresh-all`: the cron job."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING

import typer

from discoveryctl.cli import options

if TYPE_CHECKING:
    from discoveryctl.billing.customers import PendingRun
    from discoveryctl.cli.application import Application
    from discoveryctl.db.engine import Database


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
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the due sellers and pending customers; call nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="The summary as JSON on stdout."),
) -> None:
    """Refresh every due Amazon authorization and create every pending Stripe customer.

    Due: the cached access token expires within 5 minutes (or there is none), or the last
    refresh is over a day old; sellers whose last refresh failed wait out their backoff.
    With --verify, each new token is also checked at the SP-API (a seller it refuses is
    revoked; an ambiguous 403 is recorded only). Then every user still waiting for a Stripe
    customer gets one, under the idempotency key stored for it (see stripe ensure-customer).
    Overlapping runs, and runs on several machines over one database, never work on the same
    seller twice. Exit 0 all fine; 1 something needs attention (revoked or expired sellers,
    failures left for the next run); 3 LWA or Stripe refused the app's own credentials
    (nothing was marked on any seller); 130 interrupted (the summary so far is printed).

    \b
    Example: */5 * * * * discoveryctl refresh-all --deadline 4m
    """
    from datetime import timedelta

    from discoveryctl.amazon.refresh import Outcome
    from discoveryctl.amazon.refresh_all import due_now, run
    from discoveryctl.billing.customers import pending_count, pending_users
    from discoveryctl.errors import AppCredentialsRejected, Interrupted, NeedsAttention
    from discoveryctl.providers.lwa import AsyncLwaClient
    from discoveryctl.providers.spapi import AsyncSpApiClient

    app: Application = ctx.obj
    seconds = options.duration(deadline)
    lease_seconds = options.duration(lease)
    assert lease_seconds is not None
    with_amazon = provider in (RefreshAllProvider.all, RefreshAllProvider.amazon)
    with_stripe = provider in (RefreshAllProvider.all, RefreshAllProvider.stripe)
    database = app.open_database()
    if dry_run:
        with database.session() as session:
            due = due_now(session, force=force) if with_amazon else []
            waiting = pending_users(session) if with_stripe else []
        listed = [(d.user_id, "amazon") for d in due] + [(u, "stripe") for u in waiting]
        if as_json:
            app.print_json([{"user_id": user, "provider": p} for user, p in listed])
        else:
            for user, p in listed:
                app.out.print(f"{user} {p}")
        app.err.print(
            f"{len(due)} Amazon authorizations due, {len(waiting)} Stripe customers pending"
        )
        return
    with database.session() as session:
        pending = pending_count(session) if with_stripe else 0
    if not with_amazon:
        only = _stripe(app, database, pending, seconds, lease_seconds)
        if as_json:
            app.print_json({"stripe": only.as_dict()})
        else:
            app.err.print(_stripe_line(pending, only))
        _raise_for_stripe(only)
        return
    from discoveryctl.providers.lwa import app_from as amazon_app_from

    amazon = amazon_app_from(app.config)
    with database.session() as session:
        vault = app.vault(session)

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
    stripe_run: PendingRun | None = None
    if with_stripe and not (
        summary.interrupted or summary.app_rejected or summary.deadline_reached
    ):
        ends = None if seconds is None else seconds - summary.seconds
        stripe_run = _stripe(app, database, pending, ends, lease_seconds)
    if as_json:
        app.print_json(
            {**summary.as_dict(), "stripe": stripe_run.as_dict() if stripe_run else None}
        )
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
        if stripe_run is not None:
            app.err.print(_stripe_line(pending, stripe_run))
    if summary.app_rejected is not None:
        raise AppCredentialsRejected(summary.app_rejected)
    if stripe_run is not None:
        _raise_for_stripe(stripe_run)
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


def _stripe(
    app: Application, database: Database, pending: int, seconds: float | None, lease: float
) -> PendingRun:
    """Create the pending Stripe customers (none pending: no call, no key needed)."""
    from datetime import timedelta

    from discoveryctl.billing.customers import PendingRun, retry_pending
    from discoveryctl.db.leases import new_owner
    from discoveryctl.providers.stripe import StripeCustomers

    if not pending:
        return PendingRun()
    from discoveryctl.providers.stripe import account_from as stripe_account_from

    account = stripe_account_from(app.config)
    done = retry_pending(
        database.session,
        lambda: StripeCustomers(account),
        owner=new_owner("stripe-pending"),
        concurrency=STRIPE_CONCURRENCY,
        lease=timedelta(seconds=lease),
        ends=None if seconds is None else time.monotonic() + max(seconds, 0.0),
    )
    return done


def _stripe_line(pending: int, done: PendingRun) -> str:
    counts = ", ".join(f"{n} {how}" for how, n in done.outcomes.items() if n)
    return (
        f"stripe: {pending} pending"
        + (f" ({counts})" if counts else "")
        + (" — deadline reached" if done.deadline_reached else "")
    )


STRIPE_CONCURRENCY = 8
"""Customers created at once: Stripe allows 25 writes a second in test mode ("Rate limits")."""


def _raise_for_stripe(done: PendingRun) -> None:
    from discoveryctl.errors import AppCredentialsRejected, NeedsAttention

    if done.app_rejected is not None:
        raise AppCredentialsRejected(done.app_rejected)
    if done.outcomes["failed"]:
        failed = done.outcomes["failed"]
        raise NeedsAttention(
            f"{failed} Stripe customer{'s' if failed != 1 else ''} could not be created: "
            "the next run tries again"
        )
    if done.deadline_reached:
        raise NeedsAttention(
            "the deadline came before every pending Stripe customer was created: "
            "the next run goes on"
        )
