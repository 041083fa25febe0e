"""The object every command receives (as hatch's ``Application``): settings, database,
consoles and output helpers."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from discoveryctl.config import Config

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy.orm import Session

    from discoveryctl.db.engine import Database
    from discoveryctl.errors import DiscoveryError
    from discoveryctl.support.crypto import Vault


class Application:
    def __init__(self) -> None:
        from discoveryctl.support import logging

        self.config = Config()
        logging.setup(
            level=self.config.log_level,
            fmt=self.config.log_format,
            colors=sys.stderr.isatty() and "NO_COLOR" not in os.environ,
        )
        self._database: Database | None = None
        self._database_ready = False  # at head: its outbox may be drained
        self.failed_with: DiscoveryError | None = None  # the error the command ended with

    # -- database ---------------------------------------------------------------------------

    def open_database(self, *, at_head: bool = True, create: bool = False) -> Database:
        """The database, upgraded when it is the SQLite default, else checked to be at head.
        The SQLite default is created on first use; a SQLite file named by DATABASE_URL only
        with ``create`` (``db upgrade``), and never its folders."""
        if self._database is None:
            from discoveryctl.db.engine import Database

            if self.config.uses_default_database:
                self.config.check_default_database()
            self._database = Database(self.config.database_url, self.config.sqlite_creation(create))
            if at_head:
                self._ensure_head(self._database)
                self._database_ready = True
        return self._database

    def _ensure_head(self, database: Database) -> None:
        if database.ensure_head(may_upgrade=self.config.uses_default_database):
            from discoveryctl.support.logging import get_logger

            get_logger().info("database_upgraded", database=str(self.config.default_database_path))

    def session(self) -> AbstractContextManager[Session]:
        return self.open_database().session()

    def open_vault(self) -> Vault:
        """The vault, checked against the stored credentials in a session of its own."""
        with self.session() as session:
            return self.vault(session)

    def vault(self, session: Session) -> Vault:
        from discoveryctl.amazon.credentials import open_vault

        return open_vault(self.config, session)

    def close(self) -> None:
        if self._database is not None:
            if self._database_ready and _may_deliver(self.failed_with):
                self._deliver_alerts(self._database)
            self._database.dispose()

    def _deliver_alerts(self, database: Database) -> None:
        """Post the admin alerts this command raised or resolved (and any others due) to the
        admin webhook, within ``CLOSING_BUDGET``. Never fails the command: what cannot be
        posted now is logged and left for the next drain (``notifications deliver``)."""
        outbox = sys.modules.get("discoveryctl.integrations.outbox")
        if outbox is None or not outbox.take_queued_here():
            return  # nothing was raised here: commands pay nothing for others' alerts
        from discoveryctl.support.logging import get_logger

        log = get_logger()
        try:
            from discoveryctl.alerts import delivery

            webhook = delivery.webhook_from(self.config)
            if webhook is None:
                return
            drained = delivery.deliver(database.session, webhook, budget=delivery.CLOSING_BUDGET)
        except Exception as error:  # a bad setting, the database gone: the command's result stands
            from sqlalchemy.exc import DBAPIError

            from discoveryctl.errors import DiscoveryError

            if isinstance(error, DBAPIError):
                error = database.unreachable(error)
            why = error.message if isinstance(error, DiscoveryError) else type(error).__name__
            log.warning("alert_delivery_failed", error=why)
            return
        if drained.delivered or drained.given_up or drained.later:
            log.info("alerts_delivered", webhook=webhook.where, **drained.as_dict())

    # -- output -----------------------------------------------------------------------------

    @cached_property
    def out(self) -> Console:
        """stdout for people: user data is never read as markup."""
        from rich.console import Console

        console = Console(markup=False, highlight=False, emoji=False)
        console.on_broken_pipe = stdout_closed  # type: ignore[method-assign]
        return console

    @cached_property
    def err(self) -> Console:
        from rich.console import Console

        # A message to a file or a pipe is one line, however long: not wrapped at 80 columns.
        return Console(
            stderr=True,
            markup=False,
            highlight=False,
            emoji=False,
            soft_wrap=not sys.stderr.isatty(),
        )

    def print_json(self, data: Any) -> None:
        indent = 2 if sys.stdout.isatty() else None
        sys.stdout.write(json.dumps(data, indent=indent, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()

    @property
    def width(self) -> int:
        """stdout's width in cells, as rich would take it: COLUMNS, else the terminal's, else
        80 (without loading rich)."""
        import shutil

        return shutil.get_terminal_size((80, 24)).columns

    def print_text(self, text: str) -> None:
        """Plain text on stdout as it is: no markup, no wrapping."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    @contextmanager
    def progress(self, task: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """Report progress: a bar on a terminal, ``progress`` log lines otherwise.

        Yields ``report(done)``, to call with how much is done so far (of ``total``).
        """
        if self.err.is_terminal:
            from rich.progress import Progress

            with Progress(console=self.err, transient=True) as bar:
                bar_task = bar.add_task(task, total=total)
                yield lambda done: bar.update(bar_task, completed=done)
            return
        import time

        from discoveryctl.support.logging import get_logger

        log = get_logger()
        next_log, logged = 0.0, -1

        def report(done: int) -> None:
            nonlocal next_log, logged
            now = time.monotonic()
            if done != logged and (now >= next_log or done == total):
                log.info("progress", task=task, done=done, total=total)
                next_log, logged = now + PROGRESS_LOG_SECONDS, done

        yield report


def _may_deliver(ending: DiscoveryError | None) -> bool:
    """Whether a command ending with ``ending`` (None: it went well) still drains the admin
    webhook's outbox: not when the operator stopped it (Ctrl-C, SIGTERM)."""
    from discoveryctl.errors import ErrorKind

    return ending is None or ending.kind != ErrorKind.interrupted


def stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def stdout_closed() -> NoReturn:
    """The reader of stdout went away (``status | head -1``): stop quietly with 0, and
    send whatever is still buffered nowhere."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(0)


PROGRESS_LOG_SECONDS = 5.0
"""Without a terminal, at most one progress line this often (and the last one)."""


def relative_time(moment: datetime | str | None, now: datetime | None = None) -> str:
    """``3m ago``, ``2d ago``, ``never``."""
    if moment is None:
        return "never"
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return "unknown"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
