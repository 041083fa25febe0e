"""`discoveryctl stripe ensure-customer`: one user's Stripe customer, made exactly once."""

from __future__ import annotations

import typer

from discoveryctl.cli import options

group = typer.Typer(
    help="Stripe customers, one per user.\n\n\b\n"
    "Example: discoveryctl stripe ensure-customer --user u1 --email a@b.test",
    no_args_is_help=True,
)


@group.command("ensure-customer")
def ensure_customer(
    ctx: typer.Context,
    user: str = typer.Option(..., "--user", callback=options.user_id, help="The user id."),
    email: str = typer.Option(..., "--email", callback=options.email, help="The customer's email."),
    name: str | None = typer.Option(None, "--name", help="The customer's name."),
    as_json: bool = typer.Option(False, "--json", help="The customer as JSON on stdout."),
) -> None:
    """Print the user's Stripe customer id, creating the customer if there is none.

    A user who has one is answered from the database, with no call to Stripe. Otherwise an
    idempotency key is stored before the first call, and every retry (here, in another
    process, after a crash) reuses it: Stripe never makes a second customer for the user.
    A customer that exists is never changed: asked for with another email, it is printed
    with a note. Another caller's create for the same user is waited for. Exit 1 if Stripe
    kept failing (the next refresh-all tries again), 2 if the user's customer is already
    being created with another email, or if Stripe refused the parameters (run again with
    corrected ones), 3 if Stripe refused the API key.

    \b
    Example: discoveryctl stripe ensure-customer --user seller-42 --email ops@acme.test
    """
    from discoveryctl.billing.customers import ensure_customer as ensure
    from discoveryctl.cli.application import Application
    from discoveryctl.providers.stripe import StripeCustomers, account_from

    app: Application = ctx.obj
    account = account_from(app.config)
    database = app.open_database()
    with StripeCustomers(account) as customers:
        done = ensure(database.session, customers, user_id=user, email=email, name=name)
    if as_json:
        app.print_json(
            {
                "user_id": done.user_id,
                "provider": "stripe",
                "customer_id": done.customer_id,
                "how": done.how,
                "email": done.email,
            }
        )
    else:
        app.out.print(done.customer_id)
        app.err.print(f"{done.user_id}: Stripe customer {done.customer_id} ({done.how})")
    if done.email != email:
        app.err.print(
            f"note: {done.user_id}'s customer was made for {done.email}, not {email}; "
            "nothing was changed (change the email at Stripe)"
        )
