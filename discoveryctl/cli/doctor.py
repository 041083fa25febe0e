"""`discoveryctl doctor`: is this installation ready to run the cron job?"""

from __future__ import annotations

import typer


def doctor(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="The checks as JSON on stdout."),
) -> None:
    """Check the database, the encryption key, the secrets and the LWA secret's age.

    Exit 1 if any check fails.

    \b
    Example: discoveryctl doctor
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.jobs.doctor import FAIL, run_checks

    app: Application = ctx.obj
    checks = run_checks(app.config)
    if as_json:
        app.print_json([{"check": c.name, "state": c.state, "detail": c.detail} for c in checks])
    else:
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        table.add_column("check", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("detail", ratio=1)
        for check in checks:
            table.add_row(check.name, check.state, check.detail)
        app.out.print(table)
    failed = [check.name for check in checks if check.state == FAIL]
    if failed:
        from discoveryctl.errors import NeedsAttention

        raise NeedsAttention(f"doctor: failed: {', '.join(failed)}")
