"""`discoveryctl events`: the audit history."""

from __future__ import annotations

import json

import typer

from discoveryctl.cli import options
from discoveryctl.integrations.vocabulary import Provider


def events(
    ctx: typer.Context,
    user: str | None = typer.Option(
        None, "--user", callback=options.user_id, help="Only this user's events."
    ),
    provider: Provider | None = typer.Option(
        None, "--provider", case_sensitive=False, help="Only this provider."
    ),
    since: str = typer.Option(
        "24h", "--since", help="How far back: 30m, 24h, 7d, 1h30m, or an ISO 8601 time."
    ),
    limit: int = typer.Option(
        1000, "--limit", min=1, max=1_000_000, help="At most this many, newest first."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON list on stdout."),
) -> None:
    """Show the audit history: every attempt, outcome and transition.

    `events prune` deletes old history.

    \b
    Example: discoveryctl events --user seller-42 --since 7d
    """
    if ctx.invoked_subcommand is not None:
        return
    from discoveryctl.cli.application import Application
    from discoveryctl.integrations import events as history
    from discoveryctl.integrations.vocabulary import isoformat
    from discoveryctl.support import durations

    app: Application = ctx.obj
    start = durations.since(since, "--since")
    with app.session() as session:
        only = provider.value if provider else None
        if user is not None:
            found = history.history(session, user_id=user, provider=only, since=start, limit=limit)
        else:
            found = history.all_history(session, provider=only, since=start, limit=limit)
        views = [history.view(e) for e in found]
    if as_json:
        app.print_json(views)
        return
    if not views:
        app.err.print(f"no events since {isoformat(start)}")
        return
    for view in views:
        outcome = view["outcome"] + (f" ({view['error_type']})" if view["error_type"] else "")
        detail = " ".join(
            f"{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in view["detail"].items()
        )
        app.out.print(
            f"{view['occurred_at']}  {view['user_id'] or '-'}  {view['provider'] or '-'}  "
            f"{view['kind']}  {outcome}  {detail}".rstrip(),
            soft_wrap=True,
        )


def prune(
    ctx: typer.Context,
    older_than: str = typer.Option(
        "90d",
        "--older-than",
        help="Delete the events older than this: 90d, 12w, 48h (1h at least).",
    ),
    as_json: bool = typer.Option(False, "--json", help="The counts as JSON on stdout."),
) -> None:
    """Delete events older than a window, OAuth consent states past their expiry, and admin
    alert deliveries finished before the window (the notifications themselves stay).

    A few thousand rows a transaction, so other commands are not held up for long; safe
    to run from cron while the rest works.

    \b
    Example: discoveryctl events prune --older-than 90d
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.integrations import retention
    from discoveryctl.integrations.vocabulary import isoformat
    from discoveryctl.support import durations

    app: Application = ctx.obj
    # Minutes and seconds are refused: "90m" read as ninety months would empty the history.
    window = durations.parse(older_than, "--older-than", units="wdh")
    database = app.open_database()
    with app.progress("prune", None) as show:
        pruned = retention.prune(database.session, window, progress=show)
    if as_json:
        app.print_json(
            {
                "events": pruned.events,
                "oauth_states": pruned.oauth_states,
                "alert_deliveries": pruned.alert_deliveries,
                "before": isoformat(pruned.before),
            }
        )
        return
    app.err.print(
        f"deleted {pruned.events} event{'s' if pruned.events != 1 else ''} from before "
        f"{isoformat(pruned.before)}, {pruned.oauth_states} expired OAuth "
        f"state{'s' if pruned.oauth_states != 1 else ''} and {pruned.alert_deliveries} "
        f"finished alert deliver{'ies' if pruned.alert_deliveries != 1 else 'y'}"
    )
