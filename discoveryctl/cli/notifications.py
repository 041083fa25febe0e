"""`discoveryctl notifications`: what users and admins have been told."""

from __future__ import annotations

from typing import Any

import typer

group = typer.Typer(
    help="List user or admin notifications; `notifications ack ID…` marks them read.\n\n"
    "Example: discoveryctl notifications --admin --unread",
    invoke_without_command=True,
    no_args_is_help=False,
)


@group.callback()
def notifications(
    ctx: typer.Context,
    user: str | None = typer.Option(None, "--user", help="Only this user's."),
    admin: bool = typer.Option(False, "--admin", help="Admin notifications instead of users'."),
    unread: bool = typer.Option(False, "--unread", help="Only those not yet acknowledged."),
    as_json: bool = typer.Option(False, "--json", help="JSON list on stdout."),
) -> None:
    """List user or admin notifications, newest first.

    Example: discoveryctl notifications --admin --unread
    """
    if ctx.invoked_subcommand is not None:
        return
    from discoveryctl import notifications as inbox
    from discoveryctl.cli.application import Application, relative_time
    from discoveryctl.integrations.health import isoformat

    app: Application = ctx.obj
    with app.session() as session:
        found = inbox.inbox(session, user_id=user, admin=admin, unread=unread)
        views: list[dict[str, Any]] = [
            {
                "id": n.id,
                "audience": n.audience,
                "user_id": n.user_id,
                "provider": n.provider,
                "kind": n.kind,
                "title": n.title,
                "message": n.message,
                "detail": n.detail,
                "created_at": isoformat(n.created_at),
                "read_at": isoformat(n.read_at) if n.read_at else None,
                "resolved_at": isoformat(n.resolved_at) if n.resolved_at else None,
            }
            for n in found
        ]
    if as_json:
        app.print_json(views)
        return
    if not views:
        app.err.print("no notifications")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("id", "created", "user", "kind", "message", "state"):
        table.add_column(column, overflow="fold")
    for view in views:
        state = "resolved" if view["resolved_at"] else "read" if view["read_at"] else "unread"
        url = view["detail"].get("reconnectUrl")
        table.add_row(
            str(view["id"]),
            relative_time(view["created_at"]),
            view["user_id"] or "",
            view["kind"],
            view["message"] + (f"\n{url}" if url else ""),
            state,
        )
    app.out.print(table)


@group.command("ack")
def acknowledge(
    ctx: typer.Context,
    ids: list[int] = typer.Argument(..., help="Notification ids."),
) -> None:
    """Mark notifications as read.

    Example: discoveryctl notifications ack 12 13
    """
    from discoveryctl import notifications as inbox
    from discoveryctl.cli.application import Application

    app: Application = ctx.obj
    with app.session() as session:
        done = inbox.acknowledge(session, ids)
    app.err.print(f"acknowledged {len(done)} notification{'s' if len(done) != 1 else ''}")
