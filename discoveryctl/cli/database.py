"""`discoveryctl db`: migrations."""

from __future__ import annotations

import typer

group = typer.Typer(
    help="Database migrations: upgrade, show the current revision, print the DDL.\n\n\b\n"
    "Example: discoveryctl db upgrade",
    no_args_is_help=True,
)


@group.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Migrate the database to the newest schema.

    A SQLite file named by DATABASE_URL that is not there yet is created (in a folder that
    must exist), and the command says where.

    \b
    Example: DATABASE_URL=postgresql://… discoveryctl db upgrade
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.db.engine import describe, parse_url, sqlite_file
    from discoveryctl.db.migrations import upgrade as run_upgrade

    app: Application = ctx.obj
    path = sqlite_file(parse_url(app.config.database_url))
    new_file = path.resolve() if path is not None and not path.exists() else None
    database = app.open_database(at_head=False, create=True)
    if new_file is not None:
        app.err.print(f"created a new SQLite database at {new_file}")
    before = database.current_revision()
    run_upgrade(database)
    after = database.current_revision()
    where = describe(database.url)
    if before == after:
        app.err.print(f"{where} is already at {after}")
    else:
        app.err.print(f"upgraded {where} from {before or 'empty'} to {after}")


@group.command("current")
def current(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
) -> None:
    """Show the database's revision and whether it is the newest.

    \b
    Example: discoveryctl db current
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.db.engine import HEAD_REVISION, describe

    app: Application = ctx.obj
    database = app.open_database(at_head=False)
    revision = database.current_revision()
    if as_json:
        app.print_json(
            {
                "database": describe(database.url),
                "revision": revision,
                "head": HEAD_REVISION,
                "at_head": revision == HEAD_REVISION,
            }
        )
        return
    state = "(head)" if revision == HEAD_REVISION else f"(head is {HEAD_REVISION})"
    app.out.print(f"{revision or 'empty'} {state}")


@group.command("sql")
def sql(ctx: typer.Context) -> None:
    """Print the DDL that brings an empty database to the newest schema, for a DBA.

    \b
    Example: DATABASE_URL=postgresql://… discoveryctl db sql > schema.sql
    """
    import sys

    from discoveryctl.cli.application import Application
    from discoveryctl.db.engine import parse_url
    from discoveryctl.db.migrations import offline_sql

    app: Application = ctx.obj
    url = parse_url(app.config.database_url)
    offline_sql(url.render_as_string(hide_password=True), sys.stdout)
