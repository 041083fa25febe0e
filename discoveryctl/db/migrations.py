"""Alembic, driven from the CLI: upgrade, current revision, offline DDL."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import exc

from discoveryctl.db.engine import Database, lock_connection


def migrations_dir() -> Path:
    """Inside the wheel the migrations sit in the package; in a checkout, beside it."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the migrations directory is missing from this installation")


def alembic_config(url: str, stdout: TextIO | None = None) -> AlembicConfig:
    config = AlembicConfig(stdout=stdout) if stdout is not None else AlembicConfig()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None
    return head


def upgrade(database: Database, revision: str = "head") -> bool:
    """Migrate to ``revision`` in one transaction, holding the migration lock; True when
    this process changed the schema.

    Processes that start at once on a fresh database (the SQLite default's first use, two
    cron jobs) take turns: the first migrates, the others then find the schema at head and
    do nothing. A database failure is reported by kind, like any other.
    """
    from alembic.runtime.migration import MigrationContext

    config = alembic_config(database.url.render_as_string(hide_password=False))
    try:
        with database.engine.begin() as connection:
            lock_connection(connection, "migrations")
            before = MigrationContext.configure(connection).get_current_revision()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            after = MigrationContext.configure(connection).get_current_revision()
    except exc.DBAPIError as error:
        raise database.unreachable(error) from None
    return before != after


def offline_sql(url: str, stdout: TextIO) -> None:
    """Print the DDL from empty to head for the dialect of ``url``."""
    command.upgrade(alembic_config(url, stdout=stdout), "head", sql=True)
