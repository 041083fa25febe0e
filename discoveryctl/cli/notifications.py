"""`discoveryctl notifications`: what users and admins have been told."""

from __future__ import annotations

import typer

from discoveryctl.cli import options

group = typer.Typer(
    help="List user or admin notifications; `notifications ack ID…` marks them read.\n\n\b\n"
    "Example: discoveryctl notifications --admin --unread",
    invoke_without_command=True,
    no_args_is_help=False,
)


@group.callback()
def notifications(
    ctx: typer.Context,
    user: str | None = typer.Option(
        None, "--user", callback=options.user_id, help="Only this user's."
    ),
    admin: bool = typer.Option(False, "--admin", help="Admin notifications instead of users'."),
    unread: bool = typer.Option(False, "--unread", help="Only those not yet acknowledged."),
    as_json: bool = typer.Option(False, "--json", help="JSON list on stdout."),
) -> None:
    """List user or admin notifications, newest first.

    \b
    Example: discoveryctl notifications --admin --unread
    """
    if ctx.invoked_subcommand is not None:
        return
    from discoveryctl.cli.application import Application, relative_time
    from discoveryctl.integrations import notifications as inbox

    app: Application = ctx.obj
    with app.session() as session:
        if admin:
            found = inbox.admin_inbox(session, about_user=user, unread=unread)
        elif user is not None:
            found = inbox.inbox(session, user_id=user, unread=unread)
        else:
            found = inbox.all_user_notifications(session, unread=unread)
        views = [inbox.view(n) for n in found]
    if as_json:
        app.print_json(views)
        return
    if not views:
        app.err.print("no notifications")
        return
    for view in views:
        state = "resolved" if view["resolved_at"] else "read" if view["read_at"] else "unread"
        who = f"user {view['user_id']}" if view["user_id"] else view["audience"]
        app.out.print(
            f"#{view['id']}  {state}  {relative_time(view['created_at'])}  {who}  {view['kind']}",
            soft_wrap=True,
        )
        app.out.print(f"    {view['message']}", soft_wrap=True)
        url = view["detail"].get("reconnectUrl")
        if url:
            app.out.print(f"    {url}", soft_wrap=True)


@group.command("ack")
def acknowledge(
    ctx: typer.Context,
    ids: list[int] = typer.Argument(..., min=1, max=2**63 - 1, help="Notification ids."),
) -> None:
    """Mark notifications as read.

    \b
    Example: discoveryctl notifications ack 12 13
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.integrations import notifications as inbox

    app: Application = ctx.obj
    with app.session() as session:
        done = inbox.acknowledge_any(session, ids)
    app.err.print(f"acknowledged {len(done)} notification{'s' if len(done) != 1 else ''}")


@group.command("deliver")
def deliver(
    ctx: typer.Context,
    test: bool = typer.Option(
        False, "--test", help="Post a test message instead (nothing from the outbox)."
    ),
    as_json: bool = typer.Option(False, "--json", help="The outcome as JSON on stdout."),
) -> None:
    """Post the admin alerts waiting in the outbox to DISCOVERY_ADMIN_WEBHOOK_URL.

    Each admin notification is posted when it opens and again when it resolves, once each,
    signed with DISCOVERY_ADMIN_WEBHOOK_SECRET. The commands that raise alerts post them as
    they end, for a few seconds at most; this posts whatever they left (a webhook that was
    down). A post that fails on a 5xx or the network is tried again later, for a day; at the
    first such failure the rest waits too. Exit 0 nothing is left waiting after a failure;
    1 a post failed (to be tried again, or given up).

    \b
    Example: */5 * * * * discoveryctl notifications deliver
    """
    from discoveryctl.alerts import delivery
    from discoveryctl.cli.application import Application
    from discoveryctl.config import how_to_set
    from discoveryctl.errors import ConfigurationError, NeedsAttention
    from discoveryctl.integrations import outbox

    app: Application = ctx.obj
    webhook = delivery.webhook_from(app.config)
    if webhook is None:
        raise ConfigurationError(
            "DISCOVERY_ADMIN_WEBHOOK_URL is not set: " + how_to_set("DISCOVERY_ADMIN_WEBHOOK_URL")
        )
    if test:
        posted = delivery.post_test(webhook)
        if as_json:
            app.print_json(
                {
                    "delivered": posted.outcome == outbox.DELIVERED,
                    "http_status": posted.http_status,
                    "error": posted.reason or None,
                    "webhook": webhook.where,
                }
            )
        if posted.outcome != outbox.DELIVERED:
            raise NeedsAttention(
                f"the test message was not delivered to {webhook.where}: {posted.reason}"
            )
        if not as_json:
            app.err.print(f"delivered a test message to {webhook.where}", soft_wrap=True)
        return
    database = app.open_database()
    drained = delivery.deliver(database.session, webhook)
    with database.session() as session:
        left, last_error, _ = outbox.backlog(session)
    for line in drained.errors:
        app.err.print(line, soft_wrap=True)
    if as_json:
        app.print_json({**drained.as_dict(), "waiting": left, "webhook": webhook.where})
    else:
        app.err.print(
            f"delivered {drained.delivered} alert{'s' if drained.delivered != 1 else ''} "
            f"to {webhook.where}"
            + (f", {drained.given_up} given up" if drained.given_up else "")
            + (f", {drained.skipped} too old to post" if drained.skipped else "")
            + (f", {left} waiting" if left else ""),
            soft_wrap=True,
        )
    if drained.given_up or drained.later or (left and last_error):
        raise NeedsAttention(
            f"{drained.given_up} alert deliver{'ies' if drained.given_up != 1 else 'y'} "
            f"given up, {left} waiting"
            + (
                f" after a failed post (last error: {last_error}): the next drain tries again"
                if left and last_error
                else ""
            )
        )
