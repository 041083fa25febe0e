"""`discoveryctl keys rotate`: re-encrypt stored tokens with the current key."""

from __future__ import annotations

import typer

group = typer.Typer(
    help="Encryption keys for tokens at rest.\n\n\b\nExample: discoveryctl keys rotate",
    no_args_is_help=True,
)


@group.command("rotate")
def rotate(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="The count as JSON on stdout."),
) -> None:
    """Re-encrypt every stored token with a new key; the old one is then no longer needed.

    With DISCOVERY_ENCRYPTION_KEY: put the new key first and the old one after it
    (comma-separated), run this, then set the variable to the new key alone, everywhere.
    On the SQLite default without the variable, the key file beside the database is
    rotated: a new key is made, every token re-encrypted, and the file left holding the new
    key alone (back it up). Run it while no other discoveryctl command runs (pause the cron
    job): one started before with the old key alone would write tokens under it.

    \b
    Example: DISCOVERY_ENCRYPTION_KEY="$NEW,$OLD" discoveryctl keys rotate
    """
    from discoveryctl.amazon import credentials
    from discoveryctl.cli.application import Application

    app: Application = ctx.obj
    database = app.open_database()
    with database.session() as session:
        total = credentials.count(session)
    with app.progress("rotate", total) as show:
        done = 0

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            show(done)

        rotation = credentials.rotate_keys(app.config, database.session, progress=advance)
    key_file = str(rotation.key_file) if rotation.key_file else None
    if as_json:
        app.print_json({"rotated": rotation.rotated, "key_file": key_file})
        return
    app.err.print(
        f"re-encrypted {rotation.rotated} credential{'s' if rotation.rotated != 1 else ''}"
        + (" with a new key" if rotation.generated else "")
    )
    if key_file is not None:
        app.err.print(
            f"{key_file} now holds the new key alone: back it up (a database backup from "
            "before the rotation needs the old key)"
        )
