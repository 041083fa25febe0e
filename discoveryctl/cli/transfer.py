"""`discoveryctl import` and `discoveryctl export`: integrations as JSON lines."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO, TextIO

import typer

from discoveryctl.errors import InvalidInput, NeedsAttention


def import_integrations(
    ctx: typer.Context,
    source: str = typer.Argument(..., metavar="FILE|-", help="JSON lines file, or - for stdin."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON on stdout."),
) -> None:
    """Import integrations from JSON lines; bad lines are reported by number, the rest stored.

    One integration a line: {"user_id","provider":"amazon","refresh_token","selling_partner_id",
    "region","authorized_at"?} or {"user_id","provider":"stripe","email","customer_id"?}.
    Importing the same line twice changes nothing. Exit 1 if any line was rejected.

    \b
    Example: discoveryctl import sellers.jsonl
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.transfer.parse import count_lines, read_lines
    from discoveryctl.transfer.store import import_lines

    app: Application = ctx.obj
    database = app.open_database()
    with database.session() as session:
        vault = app.vault(session)
    stream = _open_source(source)
    try:
        # A pipe (stdin, or a path like <(zcat x.gz)) is read once: no count beforehand.
        total = count_lines(stream) if stream.seekable() else None
        with app.progress("import", total) as show:
            result = import_lines(
                read_lines(stream),
                database.session,
                vault,
                frontend_url=app.config.frontend_url,
                progress=show,
            )
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()

    if as_json:
        app.print_json(result.as_dict())
    else:
        for number, reason in result.rejected:
            app.err.print(f"line {number}: {reason}")
        for number, user, before, now in result.switched:
            app.err.print(
                f"line {number}: warning: {user} was seller {before} and is now seller {now}"
            )
        app.out.print(
            f"imported {result.accepted} line{'s' if result.accepted != 1 else ''}: "
            f"{result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged; {len(result.rejected)} rejected"
        )
    if result.rejected:
        rejected = len(result.rejected)
        raise NeedsAttention(f"{rejected} line{'s' if rejected != 1 else ''} rejected")


def _open_source(source: str) -> BinaryIO:
    if source == "-":
        return sys.stdin.buffer
    path = Path(source)
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {source}") from None
    except IsADirectoryError:
        raise InvalidInput(f"{source} is a directory, not a JSON lines file") from None
    except PermissionError:
        raise InvalidInput(f"cannot read {source}: permission denied") from None


def export_integrations(
    ctx: typer.Context,
    include_secrets: bool = typer.Option(
        False, "--include-secrets", help="Include refresh tokens in plain text (handle with care)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to this file (mode 0600) instead of stdout."
    ),
) -> None:
    """Export every integration as JSON lines, in the format `import` reads.

    Refresh tokens are left out unless --include-secrets is given.

    \b
    Example: discoveryctl export --include-secrets -o backup.jsonl
    """
    import json

    from discoveryctl.cli.application import Application
    from discoveryctl.transfer.export import export_lines

    app: Application = ctx.obj
    count = 0
    with app.session() as session:
        vault = app.vault(session) if include_secrets else None
        if include_secrets:
            app.err.print("warning: the export contains refresh tokens in plain text")
        handle = _open_output(output) if output is not None else sys.stdout
        try:
            for line in export_lines(session, vault):
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                count += 1
        finally:
            if handle is not sys.stdout:
                handle.close()
            else:
                handle.flush()
    app.err.print(f"exported {count} integration{'s' if count != 1 else ''}")


def _open_output(path: Path) -> TextIO:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise InvalidInput(f"cannot write {path}: {error.strerror}") from None
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    return os.fdopen(fd, "w", encoding="utf-8")
