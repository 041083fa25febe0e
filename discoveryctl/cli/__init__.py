"""The ``discoveryctl`` command line: one module per command group, registered here.

Command modules import only typer at import time; everything heavy (SQLAlchemy, httpx, stripe,
alembic) is imported inside the command body so that ``discoveryctl --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from discoveryctl.errors import ConfigError, DiscoveryError


class DiscoveryGroup(TyperGroup):
    """Root group: turns every ``DiscoveryError`` into its message and exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            _require_utf8([*getattr(ctx, "protected_args", []), *ctx.args])
            return super().invoke(ctx)
        except DiscoveryError as error:
            typer.echo(f"error: {error.message}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


def _require_utf8(args: list[str]) -> None:
    """Arguments that are not UTF-8 (a user id from a Latin-1 file, say) stop here, named."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise ConfigError(f"the argument {shown!r} is not valid UTF-8") from None


app = typer.Typer(
    cls=DiscoveryGroup,
    name="discoveryctl",
    help="Keep every seller's Amazon and Stripe integrations healthy.\n\n"
    "Example: discoveryctl status --check",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    from discoveryctl.cli.application import Application

    ctx.obj = Application()
    ctx.call_on_close(ctx.obj.close)


from discoveryctl.cli import (  # noqa: E402  (command modules import only typer)
    connect,
    database,
    doctor,
    events,
    keys,
    notifications,
    reconnect,
    sandbox,
    secrets,
    status,
    transfer,
)

app.command("status")(status.status)
app.command("connect")(connect.connect)
app.command("reconnect")(reconnect.reconnect)
app.add_typer(notifications.group, name="notifications")
app.command("events")(events.events)
app.command("import")(transfer.import_integrations)
app.command("export")(transfer.export_integrations)
app.command("doctor")(doctor.doctor)
app.add_typer(database.group, name="db")
app.add_typer(secrets.group, name="secrets")
app.add_typer(keys.group, name="keys")
app.command("sandbox")(sandbox.sandbox)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app(prog_name="discoveryctl"))
