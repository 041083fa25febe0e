"""``refresh-all``, the cron job: every due Amazon authorization, then every pending Stripe
customer, and what the run's outcome means for its exit code.

Amazon first: when LWA refuses the app's credentials, the run is interrupted or its deadline
comes, the Stripe half is left for the next run. The Stripe half has what is left of the
deadline. Nothing pending at Stripe: no call, no Stripe key needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from discoveryctl.amazon import mass_revocation
from discoveryctl.amazon import refresh_all as amazon_run
from discoveryctl.amazon.mass_revocation import Brake
from discoveryctl.amazon.refresh import LEASE
from discoveryctl.billing import customers
from discoveryctl.billing.customers import PendingRun
from discoveryctl.config import Config
from discoveryctl.db.engine import SessionScope
from discoveryctl.db.leases import new_owner
from discoveryctl.errors import (
    AppCredentialsRejected,
    Interrupted,
    MassRevocationHeld,
    NeedsAttention,
)
from discoveryctl.jobs import attention
from discoveryctl.providers.lwa import AsyncLwaClient, app_from
from discoveryctl.providers.spapi import AsyncSpApiClient
from discoveryctl.support.crypto import Vault

STRIPE_CONCURRENCY = 8
"""Customers created at once: Stripe allows 25 writes a second in test mode ("Rate limits")."""


@dataclass(frozen=True)
class Plan:
    """What one run is asked to do (the command's options)."""

    amazon: bool = True
    stripe: bool = True
    concurrency: int = amazon_run.DEFAULT_CONCURRENCY
    deadline: float | None = None  # seconds from the start; past it nothing more is claimed
    lease: timedelta = LEASE
    force: bool = False
    verify: bool = False
    brake: Brake = field(default_factory=Brake)


@dataclass(frozen=True)
class Result:
    """What a run did: the Amazon summary (None when not asked for), the Stripe run (None
    when not asked for or left for the next run), and how many customers were pending."""

    amazon: amazon_run.Summary | None
    stripe: PendingRun | None
    pending: int

    def as_dict(self) -> dict[str, Any]:
        stripe = self.stripe.as_dict() if self.stripe else None
        if self.amazon is None:
            return {"stripe": stripe}
        return {**self.amazon.as_dict(), "stripe": stripe}


def due(session_scope: SessionScope, plan: Plan) -> tuple[list[tuple[str, str]], int, int]:
    """``--dry-run``: the due sellers and pending customers (user, provider), and the two
    counts; nothing is claimed or called."""
    with session_scope() as session:
        sellers = amazon_run.due_now(session, force=plan.force) if plan.amazon else []
        waiting = customers.pending_users(session) if plan.stripe else []
    listed = [(d.user_id, "amazon") for d in sellers] + [(u, "stripe") for u in waiting]
    return listed, len(sellers), len(waiting)


def run(
    session_scope: SessionScope,
    config: Config,
    vault: Callable[[], Vault],
    plan: Plan,
    *,
    progress: Callable[[], AbstractContextManager[Callable[[int], None]]] | None = None,
) -> Result:
    """Run the job as ``plan`` says. ``vault`` is asked for only when there is Amazon work to
    do, the Stripe key only when customers are pending; ``progress`` is shown while the
    Amazon run goes on."""
    with session_scope() as session:
        pending = customers.pending_count(session) if plan.stripe else 0
    summary = None
    if plan.amazon:
        amazon = app_from(config)
        keys = vault()
        with progress() if progress else nullcontext(None) as show:
            summary = amazon_run.run(
                session_scope,
                keys,
                lambda: AsyncLwaClient(
                    amazon,
                    connections=plan.concurrency,  # pragma: no mutate  (pool size: speed)
                ),
                # --verify, and the sellers marked gone on the SP-API's word: looked at again
                spapi_factory=lambda: AsyncSpApiClient(
                    amazon,
                    connections=plan.concurrency,  # pragma: no mutate  (pool size: speed)
                ),
                verify=plan.verify,
                brake=plan.brake,
                frontend_url=config.frontend_url,
                concurrency=plan.concurrency,
                deadline=plan.deadline,
                lease=plan.lease,
                force=plan.force,
                progress=show,
            )
    goes_on, ends = stripe_turn(plan, summary, time.monotonic())
    stripe_run = _stripe(session_scope, config, pending, plan, ends) if goes_on else None
    return Result(summary, stripe_run, pending)


def stripe_turn(
    plan: Plan, amazon: amazon_run.Summary | None, now: float
) -> tuple[bool, float | None]:
    """Whether the Stripe half runs once the Amazon half is done (``amazon``: its summary,
    None when not asked for), and when it must end (``stripe_ends``, ``now`` on the monotonic
    clock). After the Amazon half, it is left for the next run when not asked for, when LWA
    refused the app, the run was interrupted or its deadline came."""
    if amazon is None:
        return True, stripe_ends(plan.deadline, 0.0, now)
    if not plan.stripe or amazon.interrupted or amazon.app_rejected or amazon.deadline_reached:
        return False, None
    return True, stripe_ends(plan.deadline, amazon.seconds, now)


def stripe_ends(deadline: float | None, spent: float, now: float) -> float | None:
    """When the Stripe half must end (on the monotonic clock, read at ``now``): what is left
    of the run's ``deadline`` once the Amazon half has ``spent`` its seconds, and never
    before ``now``; no deadline, no end."""
    if deadline is None:
        return None
    return now + max(deadline - spent, 0.0)


def _stripe(
    session_scope: SessionScope, config: Config, pending: int, plan: Plan, ends: float | None
) -> PendingRun:
    """Create the pending Stripe customers (none pending: no call, no key needed)."""
    if not pending:
        return PendingRun()
    from discoveryctl.providers.stripe import StripeCustomers, account_from

    account = account_from(config)
    return customers.retry_pending(
        session_scope,
        lambda: StripeCustomers(account),
        owner=new_owner("stripe-pending"),  # pragma: no mutate  (a name for people reading leases)
        concurrency=STRIPE_CONCURRENCY,
        lease=plan.lease,
        ends=ends,
    )


def raise_for(result: Result) -> None:
    """The run's exit code, as the error that carries it (nothing raised: exit 0): the app's
    credentials refused or a mass revocation held (3), interrupted (130), then what needs
    attention (1)."""
    amazon = result.amazon
    if amazon is not None and amazon.app_rejected is not None:
        raise AppCredentialsRejected(amazon.app_rejected)
    if amazon is not None and amazon.mass_revocation_held:
        raise MassRevocationHeld(
            mass_revocation.message(amazon.answered, amazon.mass_revocation_held)
        )
    if result.stripe is not None:
        _raise_for_stripe(result.stripe)
    if amazon is None:
        return
    if amazon.interrupted:
        raise Interrupted("interrupted: the summary above is what was done")
    if amazon.deadline_reached:
        raise NeedsAttention(
            f"the deadline came before every due seller was refreshed ({amazon.total} done): "
            "the next run goes on"
        )
    needing = attention.count_tallied(amazon.outcomes, amazon.checks)
    if needing:
        raise NeedsAttention(attention.sellers_need(needing))


def _raise_for_stripe(done: PendingRun) -> None:
    if done.app_rejected is not None:
        raise AppCredentialsRejected(done.app_rejected)
    failed = done.outcomes["failed"]
    if failed:
        raise NeedsAttention(
            f"{failed} Stripe customer{'s' if failed != 1 else ''} could not be created: "
            "the next run tries again"
        )
    refused = done.outcomes["refused"]
    if refused:
        raise NeedsAttention(
            f"Stripe refused the parameters of {refused} customer{'s' if refused != 1 else ''}: "
            "no run sends them again; correct each with discoveryctl stripe ensure-customer "
            "--user USER --email EMAIL (the admins' notifications name them)"
        )
    in_flight = done.outcomes["in_flight"]
    if in_flight:
        raise NeedsAttention(
            f"{in_flight} Stripe customer{'s were' if in_flight != 1 else ' was'} still being "
            "created by another caller: nothing failed, the next run finds the outcome"
        )
    if done.deadline_reached:
        raise NeedsAttention(
            "the deadline came before every pending Stripe customer was created: "
            "the next run goes on"
        )


def amazon_line(summary: amazon_run.Summary) -> str:
    """The Amazon half's one-line summary."""
    counts = ", ".join(f"{n} {o}" for o, n in summary.as_dict()["outcomes"].items() if n)
    if summary.checks:
        counts += "; checked: " + ", ".join(f"{n} {c}" for c, n in summary.checks.items())
    if summary.mass_revocation_held:
        counts += f"; {summary.mass_revocation_held} held: nobody marked"
    rate = f", {summary.total / summary.seconds:.1f}/s" if summary.seconds else ""
    return (
        f"refresh-all: {summary.total} in {summary.seconds:.1f} s{rate}"
        + (f" ({counts})" if counts else "")
        + (" — deadline reached" if summary.deadline_reached else "")
    )


def stripe_line(pending: int, done: PendingRun) -> str:
    """The Stripe half's one-line summary."""
    counts = ", ".join(f"{n} {how}" for how, n in done.outcomes.items() if n)
    return (
        f"stripe: {pending} pending"
        + (f" ({counts})" if counts else "")
        + (" — deadline reached" if done.deadline_reached else "")
    )
