"""The ``discoveryctl`` command line: one module per command group, registered here.

Command modules import only typer at import time; everything heavy (SQLAlchemy, httpx, stripe,
alembic) is imported inside the command body so that ``discoveryctl --help`` stays fast.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer carries its own copy of click from 0.2x on; before, it used click itself
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click import UsageError  # type: ignore[assignment]

from discoveryctl.errors import DiscoveryError, ErrorKind, Interrupted, InvalidInput

EXIT_CODES: dict[ErrorKind, int] = {
    # docs/behaviour.md §3: 1 done but needs attention, 2 usage or configuration, 3 the app's
    # credentials were refused, 130 interrupted.
    ErrorKind.configuration: 2,
    ErrorKind.database_unavailable: 2,
    ErrorKind.database_conflict: 1,
    ErrorKind.input: 2,
    ErrorKind.not_found: 2,
    ErrorKind.provider: 1,
    ErrorKind.seller: 1,
    ErrorKind.app_credentials: 3,
    ErrorKind.transient: 1,
    ErrorKind.consent: 1,
    ErrorKind.unauthenticated: 2,
    ErrorKind.attention: 1,
    ErrorKind.interrupted: 130,
}
"""The one place an error's kind becomes an exit code."""


class DiscoveryGroup(TyperGroup):
    """Root group: turns every ``DiscoveryError`` into its message and its kind's exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            try:
                _require_utf8([*getattr(ctx, "protected_args", []), *ctx.args])
                return super().invoke(ctx)
            except KeyboardInterrupt:
                raise Interrupted("interrupted") from None
            except BrokenPipeError:
                from discoveryctl.cli.application import stdout_closed, stdout_gone

                if not stdout_gone():
                    raise  # another pipe than stdout's reader: not the quiet case
                stdout_closed()
            except UsageError as error:  # a bad option or value: one line, like the rest
                raise InvalidInput(_usage_message(error)) from None
        except DiscoveryError as error:
            if ctx.obj is not None:  # the Application, closed after this
                ctx.obj.failed_with = error
            prefix = "" if error.kind in _NOT_AN_ERROR else "error: "
            typer.echo(f"{prefix}{error.message}", err=True)
            raise typer.Exit(EXIT_CODES[error.kind]) from None


_NOT_AN_ERROR = frozenset({ErrorKind.attention, ErrorKind.interrupted})


_PLAIN_WORDS = (
    (r"Value error, ", ""),
    (
        r"Input should be a valid integer, unable to parse string as an integer",
        "not a whole number",
    ),
    (r"Input should be a valid number, unable to parse string as a number", "not a number"),
    (r"Input should be less than or equal to", "must be at most"),
    (r"Input should be greater than or equal to", "must be at least"),
    (r"is not a valid (int range|integer)", "is not a whole number"),
    (r"is not a valid float( range)?", "is not a number"),
    (r"is not in the range (\S+)<=x<=(\S+)", r"must be from \1 to \2"),
    (r"is not in the range x<=(\S+)", r"must be at most \1"),
    (r"is not in the range x>=(\S+)", r"must be at least \1"),
)
"""The argument parser's phrases (typer's, pydantic's in typer 0.29), in the tool's words."""


def _usage_message(error: UsageError) -> str:
    """Click's message, in the tool's voice: lower case, plain words, and where to read
    more."""
    message = error.format_message().rstrip(".")
    import re

    for phrase, plain in _PLAIN_WORDS:
        message = re.sub(phrase, plain, message)
    message = message[:1].lower() + message[1:]
    if error.ctx is not None:
        message += f" (see {error.ctx.command_path} --help)"
    return message


def _require_utf8(args: list[str]) -> None:
    """Arguments that are not UTF-8 (a user id from a Latin-1 file, say) stop here, named."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise InvalidInput(f"the argument {shown!r} is not valid UTF-8") from None


app = typer.Typer(
    cls=DiscoveryGroup,
    name="discoveryctl",
    help="Keep every seller's Amazon and Stripe integrations healthy.\n\n\b\n"
    "Example: discoveryctl status --check",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        typer.echo(f"discoveryctl {version('discoveryctl')}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    from discoveryctl.cli.application import Application

    ctx.obj = Application()
    ctx.call_on_close(ctx.obj.close)


from discoveryctl.cli import (  # noqa: E402  (command modules import only typer)
    check,
    connect,
    database,
    doctor,
    events,
    health,
    keys,
    notifications,
    reconnect,
    refresh,
    refresh_all,
    sandbox,
    secrets,
    serve,
    status,
    stripe,
    transfer,
)

app.command("status")(status.status)
app.command("connect")(connect.connect)
app.command("reconnect")(reconnect.reconnect)
app.command("refresh")(refresh.refresh)
app.command("access-token")(refresh.access_token)
app.command("refresh-all")(refresh_all.refresh_all)
app.command("check")(check.check)
app.add_typer(notifications.group, name="notifications")
events_group = typer.Typer(
    invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None
)
events_group.callback(invoke_without_command=True)(events.events)
events_group.command("prune")(events.prune)
app.add_typer(events_group, name="events")
app.command("import")(transfer.import_integrations)
app.command("export")(transfer.export_integrations)
app.command("doctor")(doctor.doctor)
app.command("health")(health.health)
app.add_typer(database.group, name="db")
app.add_typer(secrets.group, name="secrets")
app.add_typer(keys.group, name="keys")
app.add_typer(stripe.group, name="stripe")
app.command("sandbox")(sandbox.sandbox)
app.command("serve")(serve.serve)
app.add_typer(serve.group, name="token")


def main() -> None:
    """Console-script entry point."""
    try:
        code = app(prog_name="discoveryctl")
    finally:
        # What is still alive now lives until the process ends: frozen, it is left out of
        # the interpreter's last garbage collections, which otherwise walk it all (about
        # 0.15 s of every command's exit on the benchmark machine).
        gc.freeze()
    sys.exit(code)
