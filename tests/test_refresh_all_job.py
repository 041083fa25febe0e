"""refresh-all's orchestration and exit code (``discoveryctl.jobs.refresh_all``):

- Amazon first, then the pending Stripe customers; the Stripe half is left for the next run
  when LWA refused the app, the run was interrupted or its deadline came, and it has what is
  left of the deadline; nothing pending at Stripe, no call and no Stripe key needed; without
  the Amazon half, no Amazon setting or key is asked for;
- the plan's options reach the Amazon run (force, verify, concurrency, lease);
- ``--dry-run`` lists the due sellers and pending customers, claiming nothing;
- the exit code: the app's credentials refused (3), interrupted (130), then what needs
  attention (1: sellers, Stripe customers that failed, a deadline that left work), else 0;
- the summary lines and the JSON summary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from refresh_all_seeds import (  # noqa: F401  (fixtures)
    CHECK_CALLS,
    NOW,
    TOKEN_CALLS,
    add_seller,
    database_fixture,
    sellers,
    vault_fixture,
)

from discoveryctl.amazon.mass_revocation import Brake
from discoveryctl.amazon.refresh_all import Summary
from discoveryctl.billing.customers import PendingRun
from discoveryctl.cli import EXIT_CODES
from discoveryctl.config import Config
from discoveryctl.db.engine import Database
from discoveryctl.db.models import IntegrationStatus, StripeCustomer
from discoveryctl.errors import (
    AppCredentialsRejected,
    Interrupted,
    MassRevocationHeld,
    NeedsAttention,
)
from discoveryctl.jobs.refresh_all import (
    Plan,
    Result,
    amazon_line,
    due,
    raise_for,
    run,
    stripe_ends,
    stripe_line,
    stripe_turn,
)
from discoveryctl.sandbox import Sandbox
from discoveryctl.support.crypto import Vault


def pending_customers(database: Database, *users: str) -> None:
    """Users waiting for their Stripe customer, as ``import`` leaves them."""
    with database.session() as session:
        for user in users:
            session.add(IntegrationStatus(user_id=user, provider="stripe", status="pending"))
            session.add(StripeCustomer(user_id=user, email=f"{user}@example.com"))


def never() -> Vault:
    raise AssertionError("the vault was asked for")


def job(
    database: Database,
    vault: Vault | None,
    environ: dict[str, str],
    plan: Plan,
    **options: Any,
) -> Result:
    return run(
        database.session,
        Config(environ, keyring=None),
        (lambda: vault) if vault else never,
        plan,
        **options,
    )


def sent(sandbox: Sandbox, route: str = TOKEN_CALLS) -> int:
    return int(sandbox.state.stats()["requests"].get(route, 0))


def customers_made(sandbox: Sandbox) -> list[str]:
    return sorted(c["metadata"]["user_id"] for c in sandbox.state.customers())


# -- the run ------------------------------------------------------------------------------


def test_a_run_refreshes_the_sellers_then_creates_the_pending_customers(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 2)
    pending_customers(database, "c1", "c2")
    result = job(database, vault, sandbox.env(), Plan())
    assert result.amazon is not None and result.amazon.total == 2
    assert result.stripe is not None and result.stripe.outcomes["created"] == 2
    assert result.pending == 2
    assert customers_made(sandbox) == ["c1", "c2"]
    assert result.as_dict()["stripe"]["created"] == 2
    assert result.as_dict()["outcomes"]["refreshed"] == 2


def test_a_revoked_seller_is_told_to_reconnect_at_the_configured_front_end(
    database: Database, vault: Vault, sandbox: Sandbox, sqlite_db: Any
) -> None:
    (seller,) = sellers(database, vault, sandbox, 1)
    sandbox.state.revoke(seller.selling_partner_id)
    environ = {**sandbox.env(), "FRONTEND_URL": "https://app.example.com"}
    result = job(database, vault, environ, Plan())
    assert result.amazon is not None and result.amazon.outcomes["revoked"] == 1
    (told,) = sqlite_db.rows("SELECT message, detail FROM notifications WHERE user_id = 'u0'")
    assert "https://app.example.com/" in told["message"] + str(told["detail"])


def test_the_stripe_half_is_left_for_the_next_run_when_lwa_refuses_the_app(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 1)
    pending_customers(database, "c1")
    sandbox.state.rotate_client_secret("a-secret-we-do-not-have")
    result = job(database, vault, sandbox.env(), Plan())
    assert result.amazon is not None and result.amazon.app_rejected
    assert (result.stripe, result.pending) == (None, 1)
    assert customers_made(sandbox) == []


def test_the_stripe_half_is_left_for_the_next_run_when_the_deadline_came(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 1)
    pending_customers(database, "c1")
    result = job(database, vault, sandbox.env(), Plan(deadline=0.0))
    assert result.amazon is not None and result.amazon.deadline_reached
    assert result.stripe is None
    assert customers_made(sandbox) == []


def test_the_stripe_half_is_left_for_the_next_run_when_the_run_is_interrupted(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    """A stop (Ctrl-C) during the Amazon half: here, sent by the progress display."""
    import os
    import signal

    sellers(database, vault, sandbox, 1)
    pending_customers(database, "c1")

    @contextmanager
    def interrupting() -> Iterator[Callable[[int], None]]:
        yield lambda _: os.kill(os.getpid(), signal.SIGINT)

    result = job(database, vault, sandbox.env(), Plan(), progress=interrupting)
    assert result.amazon is not None and result.amazon.interrupted
    assert result.stripe is None
    assert customers_made(sandbox) == []


def test_the_progress_display_follows_each_batch(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    """Batches of the concurrency (64 at least): one update a batch written, one at the end."""
    sellers(database, vault, sandbox, 65)
    shown: list[int] = []

    @contextmanager
    def display() -> Iterator[Callable[[int], None]]:
        yield shown.append

    job(database, vault, sandbox.env(), Plan(stripe=False, concurrency=65), progress=display)
    assert shown == [0, 65]  # one batch of 65: the default 32 would make two, of 64 and 1


def test_the_lease_of_the_plan_is_the_one_the_sellers_are_claimed_with(
    sqlite_db: Any, database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    from datetime import UTC, datetime

    sellers(database, vault, sandbox, 65)  # a second batch is claimed while the first is shown
    lease = timedelta(minutes=30)
    seen: list[Any] = []

    @contextmanager
    def display() -> Iterator[Callable[[int], None]]:
        def look(_: int) -> None:
            seen.append(
                sqlite_db.scalar(
                    "SELECT max(lease_expires_at) FROM credentials WHERE lease_owner IS NOT NULL"
                )
            )

        yield look

    before = datetime.now(UTC).replace(tzinfo=None)
    job(database, vault, sandbox.env(), Plan(stripe=False, lease=lease), progress=display)
    held = datetime.fromisoformat(seen[0])
    assert before + lease - timedelta(minutes=1) <= held <= before + lease + timedelta(minutes=1)


def test_force_and_verify_reach_the_amazon_run(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    later = NOW + timedelta(days=3650)
    sellers(database, vault, sandbox, 2, access_token_expires_at=later, refreshed_at=later)
    plain = job(database, vault, sandbox.env(), Plan(stripe=False))
    assert plain.amazon is not None and plain.amazon.total == 0
    forced = job(database, vault, sandbox.env(), Plan(stripe=False, force=True, verify=True))
    assert forced.amazon is not None and forced.amazon.total == 2
    assert dict(forced.amazon.checks) == {"ok": 2}
    assert sent(sandbox, CHECK_CALLS) == 2


def test_without_verify_no_token_is_checked(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 1)
    result = job(database, vault, sandbox.env(), Plan(stripe=False))
    assert result.amazon is not None and dict(result.amazon.checks) == {}
    assert sent(sandbox, CHECK_CALLS) == 0


def test_without_the_amazon_half_no_amazon_setting_or_key_is_asked_for(
    database: Database, sandbox: Sandbox
) -> None:
    pending_customers(database, "c1")
    stripe_only = {k: v for k, v in sandbox.env().items() if k.startswith("STRIPE_")}
    result = job(database, None, stripe_only, Plan(amazon=False))
    assert result.amazon is None
    assert result.stripe is not None and result.stripe.outcomes["created"] == 1
    assert result.pending == 1
    assert result.as_dict() == {"stripe": result.stripe.as_dict()}
    assert customers_made(sandbox) == ["c1"]


def test_nothing_pending_at_stripe_needs_no_stripe_key_and_makes_no_call(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    amazon_only = {k: v for k, v in sandbox.env().items() if not k.startswith("STRIPE_")}
    sellers(database, vault, sandbox, 1)
    result = job(database, vault, amazon_only, Plan())
    assert result.stripe is not None and result.stripe.as_dict() == PendingRun().as_dict()
    assert result.pending == 0
    assert job(database, None, {}, Plan(amazon=False)).stripe == PendingRun()


def test_a_run_without_the_stripe_half_leaves_the_pending_customers(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    sellers(database, vault, sandbox, 1)
    pending_customers(database, "c1")
    result = job(database, vault, sandbox.env(), Plan(stripe=False))
    assert (result.stripe, result.pending) == (None, 0)
    assert customers_made(sandbox) == []


def test_the_stripe_half_has_what_is_left_of_the_deadline() -> None:
    assert stripe_ends(None, 3.0, 100.0) is None
    assert stripe_ends(10.0, 3.0, 100.0) == 107.0
    assert stripe_ends(10.0, 12.0, 100.0) == 100.0  # nothing left: it ends at once
    assert stripe_ends(10.0, 0.0, 100.0) == 110.0


def test_after_the_amazon_half_the_stripe_half_has_what_is_left_of_the_deadline() -> None:
    plan = Plan(deadline=10.0)
    assert stripe_turn(plan, Summary(seconds=3.0), 100.0) == (True, 107.0)
    assert stripe_turn(Plan(), Summary(seconds=3.0), 100.0) == (True, None)
    assert stripe_turn(plan, Summary(seconds=12.0), 100.0) == (True, 100.0)


def test_without_the_amazon_half_the_stripe_half_has_the_whole_deadline() -> None:
    assert stripe_turn(Plan(amazon=False, deadline=10.0), None, 100.0) == (True, 110.0)
    assert stripe_turn(Plan(amazon=False), None, 100.0) == (True, None)


def test_the_stripe_half_is_left_for_the_next_run_after_an_amazon_half_that_did_not_finish() -> (
    None
):
    plan = Plan(deadline=10.0)
    for ended in (
        Summary(interrupted=True),
        Summary(app_rejected="Client authentication failed"),
        Summary(deadline_reached=True),
    ):
        assert stripe_turn(plan, ended, 100.0) == (False, None)
    assert stripe_turn(Plan(stripe=False), Summary(), 100.0) == (False, None)


def test_a_stripe_half_with_no_time_left_creates_nothing_and_says_so(
    database: Database, sandbox: Sandbox
) -> None:
    pending_customers(database, "c1")
    result = job(database, None, sandbox.env(), Plan(amazon=False, deadline=0.0))
    assert result.stripe is not None and result.stripe.deadline_reached
    assert customers_made(sandbox) == []


def test_a_run_holds_a_mass_revocation_unless_its_plan_accepts_it(
    database: Database, vault: Vault, sandbox: Sandbox
) -> None:
    known = sellers(database, vault, sandbox, 10)
    for seller in known[:6]:
        sandbox.state.revoke(seller.selling_partner_id)
    held = job(database, vault, sandbox.env(), Plan(stripe=False))
    assert held.amazon is not None and held.amazon.mass_revocation_held == 6
    # forced: the 4 refreshed above answer again, so the brake weighs all 10 once more
    accepted = job(
        database, vault, sandbox.env(), Plan(stripe=False, force=True, brake=Brake(accept=True))
    )
    assert accepted.amazon is not None and accepted.amazon.outcomes["revoked"] == 6


# -- --dry-run ----------------------------------------------------------------------------


def test_a_dry_run_lists_the_due_sellers_then_the_pending_customers(
    database: Database, vault: Vault
) -> None:
    later = NOW + timedelta(days=3650)
    add_seller(database, vault, "due")
    add_seller(database, vault, "fresh", access_token_expires_at=later, refreshed_at=later)
    pending_customers(database, "c1", "c2")
    assert due(database.session, Plan()) == (
        [("due", "amazon"), ("c1", "stripe"), ("c2", "stripe")],
        1,
        2,
    )
    assert due(database.session, Plan(force=True))[1] == 2
    assert due(database.session, Plan(amazon=False)) == ([("c1", "stripe"), ("c2", "stripe")], 0, 2)
    assert due(database.session, Plan(stripe=False)) == ([("due", "amazon")], 1, 0)


# -- the exit code ------------------------------------------------------------------------


def amazon(**figures: Any) -> Summary:
    outcomes, checks = figures.pop("outcomes", {}), figures.pop("checks", {})
    summary = Summary(**figures)
    summary.outcomes.update(outcomes)
    summary.checks.update(checks)
    return summary


def stripe(**figures: Any) -> PendingRun:
    outcomes = figures.pop("outcomes", {})
    done = PendingRun(**figures)
    done.outcomes.update(outcomes)
    return done


def test_a_run_where_all_went_well_raises_nothing() -> None:
    raise_for(Result(amazon(outcomes={"refreshed": 3}, checks={"ok": 2, "paced": 1}), stripe(), 0))
    raise_for(Result(None, stripe(outcomes={"created": 2}), 2))
    raise_for(Result(None, None, 0))
    raise_for(Result(amazon(), None, 0))


def test_the_app_refused_at_lwa_exits_3_before_anything_else() -> None:
    refused = amazon(app_rejected="LWA refused", interrupted=True, outcomes={"revoked": 1})
    with pytest.raises(AppCredentialsRejected) as raised:
        raise_for(Result(refused, stripe(app_rejected="Stripe refused"), 1))
    assert raised.value.message == "LWA refused"
    assert EXIT_CODES[raised.value.kind] == 3


def test_the_app_refused_at_stripe_exits_3() -> None:
    with pytest.raises(AppCredentialsRejected) as raised:
        raise_for(Result(amazon(outcomes={"revoked": 1}), stripe(app_rejected="bad key"), 1))
    assert raised.value.message == "bad key"
    with pytest.raises(AppCredentialsRejected):
        raise_for(Result(None, stripe(app_rejected="bad key", outcomes={"failed": 1}), 1))


def test_a_held_mass_revocation_exits_3_naming_the_count_before_stripe_and_attention() -> None:
    held = amazon(mass_revocation_held=7, answered=12, outcomes={"refreshed": 5, "failed": 1})
    with pytest.raises(MassRevocationHeld) as raised:
        raise_for(Result(held, stripe(outcomes={"failed": 1}), 1))
    assert raised.value.message.startswith("7 of 12 refresh answers said")
    assert EXIT_CODES[raised.value.kind] == 3


def test_the_amazon_line_says_how_many_were_held() -> None:
    summary = amazon(seconds=1.0, mass_revocation_held=7, outcomes={"refreshed": 5})
    assert amazon_line(summary) == (
        "refresh-all: 5 in 1.0 s, 5.0/s (5 refreshed; 7 held: nobody marked)"
    )


def test_an_interrupted_run_exits_130_before_what_needs_attention() -> None:
    stopped = amazon(interrupted=True, deadline_reached=True, outcomes={"revoked": 2})
    with pytest.raises(Interrupted) as raised:
        raise_for(Result(stopped, None, 0))
    assert EXIT_CODES[raised.value.kind] == 130
    assert raised.value.message == "interrupted: the summary above is what was done"


def test_a_deadline_that_left_sellers_exits_1_saying_how_many_were_done() -> None:
    late = amazon(deadline_reached=True, outcomes={"refreshed": 4, "revoked": 1})
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(late, None, 0))
    assert EXIT_CODES[raised.value.kind] == 1
    assert raised.value.message == (
        "the deadline came before every due seller was refreshed (5 done): the next run goes on"
    )


def test_sellers_whose_refresh_or_check_needs_attention_exit_1() -> None:
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(amazon(outcomes={"refreshed": 1, "revoked": 2}), None, 0))
    assert raised.value.message == "2 sellers need attention"
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(amazon(outcomes={"refreshed": 1}, checks={"inconclusive": 1}), None, 0))
    assert raised.value.message == "1 seller needs attention"


def test_stripe_customers_refused_or_in_flight_elsewhere_exit_1_saying_what_follows() -> None:
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(None, stripe(outcomes={"refused": 1, "in_flight": 1}), 2))
    assert raised.value.message == (
        "Stripe refused the parameters of 1 customer: no run sends them again; correct each "
        "with discoveryctl stripe ensure-customer --user USER --email EMAIL (the admins' "
        "notifications name them)"
    )
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(None, stripe(outcomes={"refused": 2}), 2))
    assert raised.value.message.startswith("Stripe refused the parameters of 2 customers:")
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(None, stripe(outcomes={"in_flight": 1}, deadline_reached=True), 1))
    assert raised.value.message == (
        "1 Stripe customer was still being created by another caller: nothing failed, the "
        "next run finds the outcome"
    )
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(None, stripe(outcomes={"in_flight": 3}), 3))
    assert raised.value.message.startswith("3 Stripe customers were still being created")


def test_stripe_customers_that_failed_exit_1_before_the_sellers_do() -> None:
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(amazon(outcomes={"revoked": 1}), stripe(outcomes={"failed": 1}), 1))
    assert raised.value.message == (
        "1 Stripe customer could not be created: the next run tries again"
    )
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(None, stripe(outcomes={"failed": 2}, deadline_reached=True), 2))
    assert raised.value.message == (
        "2 Stripe customers could not be created: the next run tries again"
    )


def test_a_stripe_deadline_that_left_customers_exits_1() -> None:
    with pytest.raises(NeedsAttention) as raised:
        raise_for(Result(None, stripe(outcomes={"created": 1}, deadline_reached=True), 2))
    assert raised.value.message == (
        "the deadline came before every pending Stripe customer was created: the next run goes on"
    )


# -- what the run prints --------------------------------------------------------------------


def test_the_amazon_line_gives_the_total_the_time_the_rate_and_each_outcome() -> None:
    summary = amazon(seconds=2.0, outcomes={"refreshed": 3, "revoked": 1})
    assert amazon_line(summary) == "refresh-all: 4 in 2.0 s, 2.0/s (3 refreshed, 1 revoked)"
    summary.checks.update({"ok": 2, "paced": 1})
    summary.deadline_reached = True
    assert amazon_line(summary) == (
        "refresh-all: 4 in 2.0 s, 2.0/s (3 refreshed, 1 revoked; checked: 2 ok, 1 paced)"
        " — deadline reached"
    )


def test_an_amazon_line_of_nothing_done_has_no_rate_and_no_counts() -> None:
    assert amazon_line(amazon()) == "refresh-all: 0 in 0.0 s"


def test_the_stripe_line_gives_the_pending_and_each_outcome() -> None:
    assert stripe_line(0, stripe()) == "stripe: 0 pending"
    done = stripe(outcomes={"created": 2, "adopted": 0, "failed": 1}, deadline_reached=True)
    assert stripe_line(3, done) == "stripe: 3 pending (2 created, 1 failed) — deadline reached"


def test_the_json_summary_holds_the_amazon_figures_and_the_stripe_run() -> None:
    summary = amazon(outcomes={"refreshed": 1})
    assert Result(summary, None, 0).as_dict() == {**summary.as_dict(), "stripe": None}
    assert Result(None, None, 0).as_dict() == {"stripe": None}
    done = stripe(outcomes={"created": 1})
    assert Result(summary, done, 1).as_dict()["stripe"] == done.as_dict()
