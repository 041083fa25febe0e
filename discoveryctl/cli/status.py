"""`discoveryctl status`: the integration health table."""

from __future__ import annotations

from collections import Counter
from typing import Any

import typer

from discoveryctl.integrations.health import Provider, Status


def status(
    ctx: typer.Context,
    provider: Provider | None = typer.Argument(None, help="Only this provider."),
    user: str | None = typer.Option(None, "--user", help="Only this user."),
    status: Status | None = typer.Option(None, "--status", help="Only this status."),
    check: bool = typer.Option(
        False, "--check", help="Exit 1 if any integration is revoked, expired or failing."
    ),
    summary: bool = typer.Option(False, "--summary", help="Only the counts by status."),
    limit: int = typer.Option(50, "--limit", min=0, help="Rows in the table (0 for all)."),
    as_json: bool = typer.Option(False, "--json", help="JSON list on stdout."),
) -> None:
    """Show the health of every integration, the unhealthy ones first.

    Example: discoveryctl status amazon --status revoked
    """
    from discoveryctl.cli.application import Application, relative_time
    from discoveryctl.integrations import lifecycle
    from discoveryctl.integrations.health import (
        api_view,
        consecutive_failures,
        is_unhealthy,
        message_for,
    )

    app: Application = ctx.obj
    with app.session() as session:
        rows = lifecycle.listing(
            session,
            provider=provider.value if provider else None,
            user_id=user,
            status=status.value if status else None,
        )
    unhealthy = sum(1 for row in rows if is_unhealthy(row.status, row.metadata))

    if as_json:
        app.print_json([api_view(*row) for row in rows])
    else:
        if not summary:
            from rich.table import Table
            from rich.text import Text

            ordered = sorted(rows, key=lambda r: not is_unhealthy(r.status, r.metadata))
            shown = ordered if limit <= 0 else ordered[:limit]
            cells = []
            for row in shown:
                meta: dict[str, Any] = row.metadata
                failures = consecutive_failures(meta)
                cells.append(
                    (
                        row.user_id,
                        row.provider,
                        row.status,
                        relative_time(meta.get("last_synced_at")),
                        str(failures) if failures else "",
                        _last_error(meta) or message_for(row.provider, row.status),
                    )
                )
            table = Table(box=None, pad_edge=False)
            for header in ("user", "provider", "status", "last synced", "failures"):
                table.add_column(header, no_wrap=True)
            table.add_column("message", ratio=1)
            for *fixed, message in cells:
                table.add_row(*fixed, Text(message, no_wrap=True, overflow="ellipsis"))
            if shown:
                app.out.print(table)
            if len(shown) < len(rows):
                app.out.print(
                    f"… {len(rows) - len(shown)} more not shown (--limit 0 for all, or --json)"
                )
        app.out.print(_summary_line(rows, unhealthy))

    if check and unhealthy:
        raise typer.Exit(1)


def _last_error(meta: dict[str, Any]) -> str | None:
    error = meta.get("last_error")
    if isinstance(error, dict) and error.get("message"):
        return f"{error.get('type', 'error')}: {error['message']}"
    return None


def _summary_line(rows: Any, unhealthy: int) -> str:
    if not rows:
        return "no integrations"
    counts = Counter(row.status for row in rows)
    parts = [f"{counts[s]} {s}" for s in Status if counts[s]]
    parts += [f"{n} {s}" for s, n in sorted(counts.items()) if s not in Status.__members__]
    noun = "integration" if len(rows) == 1 else "integrations"
    return f"{len(rows)} {noun}: {', '.join(parts)}; {unhealthy} need attention"
