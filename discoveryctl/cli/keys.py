"""`discoveryctl keys rotate`: re-encrypt stored tokens with the current key."""

from __future__ import annotations

import typer

group = typer.Typer(
    help="Encryption keys for tokens at rest.\n\nExample: discoveryctl keys rotate",
    no_args_is_help=True,
)


@group.command("rotate")
def rotate(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="The count as JSON on stdout."),
) -> None:
    """Re-encrypt every stored token with the first key of DISCOVERY_ENCRYPTION_KEY.

    To rotate: put the new key first and keep the old one after it (comma-separated), run
    this, then drop the old key.

    Example: DISCOVERY_ENCRYPTION_KEY="$NEW,$OLD" discoveryctl keys rotate
    """
    from discoveryctl import credentials
    from discoveryctl.cli.application import Application

    app: Application = ctx.obj
    with app.session() as session:
        vault = app.vault(session)
        total = credentials.count(session)
        with app.progress("rotate", total) as show:
            done = 0

            def advance(rows: int) -> None:
                nonlocal done
                done += rows
                show(done)

            rotated = credentials.rotate_all(session, vault, progress=advance)
    if as_json:
        app.print_json({"rotated": rotated})
    else:
        app.err.print(f"re-encrypted {rotated} credential{'s' if rotated != 1 else ''}")
