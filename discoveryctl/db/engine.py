"""Engine and session setup, with every way a database can be unusable turned into one line."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from discoveryctl.config import Creation
from discoveryctl.db.failures import classify
from discoveryctl.errors import DatabaseError, DiscoveryError

# The newest migration in migrations/versions; a test keeps the two in step.
HEAD_REVISION = "0008"

UPGRADE_HINT = "run `discoveryctl db upgrade`"


def parse_url(raw: str) -> URL:
    try:
        return make_url(raw)
    except (exc.ArgumentError, ValueError):
        raise DatabaseError(
            "DATABASE_URL is malformed: expected e.g. postgresql://user:pass@host:5432/db "
            "or sqlite:////path/to/file.db"
        ) from None


# libpq reads these from the query string too (?password=…): they are hidden like the
# password in user:password@. https://www.postgresql.org/docs/current/libpq-connect.html
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile"})


def describe(url: URL) -> str:
    """The URL without its password (in ``user:password@`` or the query), for messages."""
    hidden = {key: "hidden" for key in url.query if key.lower() in _SECRET_QUERY_KEYS}
    return url.update_query_dict(hidden).render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL names (not an in-memory database or a ``file:`` URI)."""
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    if url.database == ":memory:" or url.database.startswith("file:"):
        return None
    return Path(url.database)


def create_engine(
    raw_url: str, create: Creation = "never", *, autocommit: bool = False, pool: int | None = None
) -> Engine:
    """``autocommit``: each statement its own transaction (for reads alone: no ``BEGIN`` and
    ``COMMIT`` round trips around them). ``pool``: keep that many connections, and open no
    more (the default keeps 5 and opens up to 10 more, each closed again once returned: under
    steady load, a new connection every few requests)."""
    url = parse_url(raw_url)
    kwargs: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if pool is not None and not (url.get_backend_name() == "sqlite" and sqlite_file(url) is None):
        kwargs.update(pool_size=pool, max_overflow=0)  # (an in-memory SQLite has no such pool)
    if url.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            _sqlite_file(path, create)
        if "timeout" not in url.query:  # how long to wait for another writer's lock
            kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        if url.get_backend_name() == "postgresql":
            # psycopg prepares a statement after 5 runs, and PostgreSQL may then plan it
            # generically: a per-batch `user_id IN (…500 values…)` became a 200 ms scan.
            kwargs["connect_args"] = {"prepare_threshold": None}
    try:
        engine = sa.create_engine(url, **kwargs)
    except exc.NoSuchModuleError:
        raise DatabaseError(
            f"DATABASE_URL names the database driver {url.drivername!r}, which discoveryctl "
            "does not support: use sqlite:/// or postgresql://"
        ) from None
    except ImportError as error:
        raise DatabaseError(
            f"DATABASE_URL needs the Python package {error.name!r} for {url.drivername!r}, "
            "which is not installed"
        ) from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif url.get_backend_name() == "postgresql":
        from discoveryctl.db.models import for_postgresql

        for_postgresql()
    return engine


def _sqlite_file(path: Path, create: Creation) -> None:
    """Make sure the SQLite file is there, or create it as allowed: readable by its owner
    alone (it holds every seller's history; SQLite gives its -wal and -shm files the same
    mode)."""
    if path.exists():
        return
    if create == "never":
        raise DatabaseError(
            f"there is no SQLite database at {path}: check DATABASE_URL, or create one there "
            "with `discoveryctl db upgrade`"
        )
    folder = path.parent
    if create == "file and folders":
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise DatabaseError(
                f"cannot create the folder {folder} for the SQLite database: {error.strerror}"
            ) from None
    elif not folder.is_dir():
        raise DatabaseError(
            f"cannot create the SQLite database {path}: the folder {folder} does not exist "
            "(check DATABASE_URL, or create the folder first)"
        )
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # another process created it meanwhile
    except OSError as error:
        raise DatabaseError(f"cannot create the SQLite database {path}: {error.strerror}") from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        _write_ahead_log(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


WAL_SWITCH_WAIT = 30.0
"""Seconds to keep trying to switch a database to WAL (as long as the busy timeout)."""


def _write_ahead_log(cursor: Any) -> None:
    """Put the database in WAL mode, which the file keeps: the first process to open it
    switches it. The switch needs the database to itself, and while another connection
    writes (two commands on a fresh database) SQLite answers "database is locked" at once
    instead of waiting as it does for other locks: wait here, and try again."""
    import sqlite3
    import time

    gives_up = time.monotonic() + WAL_SWITCH_WAIT
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= gives_up:
                raise
            time.sleep(0.05)


def lock_for_writing(session: Session, name: str) -> None:
    """Serialize one kind of write transaction across processes, until it commits.

    PostgreSQL takes a transaction-level advisory lock; SQLite starts the transaction with
    ``BEGIN IMMEDIATE`` (its write lock), so either way what the transaction reads next is
    what it will write over, with no other writer of the same kind in between. Call it
    first in the transaction.
    """
    lock_connection(session.connection(), name)


def database_now(session: Session) -> datetime:
    """The clock every process agrees on, for leases: PostgreSQL's (several machines over one
    database may disagree by minutes, and a lease read by a clock running ahead looks
    expired); a SQLite database lives on one machine, whose clock is this one."""
    if session.get_bind().dialect.name == "postgresql":
        moment = session.scalar(sa.select(sa.func.statement_timestamp()))
        assert isinstance(moment, datetime)
        return moment.astimezone(UTC)
    return datetime.now(UTC)


def lock_connection(connection: sa.Connection, name: str) -> None:
    """``lock_for_writing`` for a Core connection (migrations run on one)."""
    if connection.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif connection.dialect.name == "sqlite":
        sqlite_write_lock(connection)


def sqlite_write_lock(connection: sa.Connection) -> None:
    """SQLite's write lock, the whole database's, held until the transaction ends: taken now
    (``BEGIN IMMEDIATE``) unless the transaction has written, and so holds it already."""
    dbapi = connection.connection.dbapi_connection
    if dbapi is not None and not getattr(dbapi, "in_transaction", False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


READERS = 16
"""Connections a process keeps for ``Database.reading``: as many as the API's threads."""

SessionScope = Callable[[], AbstractContextManager[Session]]
"""Opens a unit of work: ``with scope() as session`` commits on success, rolls back on error
(``Database.session`` is one)."""


class Database:
    """One database: its engine, sessions, and its migration revision."""

    def __init__(self, raw_url: str, create: Creation = "never") -> None:
        self.engine = create_engine(raw_url, create)
        self.url = self.engine.url
        self._raw_url = raw_url
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers: Engine | None = None
        self._opening = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def current_revision(self) -> str | None:
        try:
            with self.engine.connect() as connection:
                if not self._has_version_table(connection):
                    return None
                value = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
                return value.scalar()
        except (exc.OperationalError, exc.DatabaseError) as error:
            raise self.unreachable(error) from None

    def _has_version_table(self, connection: sa.Connection) -> bool:
        """Whether Alembic's table is there, asked of the catalogue directly (SQLAlchemy's
        inspector costs every command its import, about 20 ms)."""
        if self.dialect == "sqlite":
            query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        else:  # the first schema of the search path, as the migrations use it
            query = "SELECT to_regclass('alembic_version') IS NOT NULL"
        found = connection.exec_driver_sql(query).scalar()
        return bool(found)

    def unreachable(self, error: exc.DBAPIError) -> DiscoveryError:
        """The error to report for a failed database call, by kind (see ``classify``)."""
        return classify(error, describe(self.url))

    def ensure_head(self, *, may_upgrade: bool) -> bool:
        """Make sure the schema is the newest: upgrade it when allowed (the SQLite default,
        on first use), else stop with the hint. Returns True when this process upgraded it."""
        revision = self.current_revision()
        if revision == HEAD_REVISION:
            return False
        if not may_upgrade:
            state = "is not migrated" if revision is None else f"is at revision {revision}"
            raise DatabaseError(
                f"the database at {describe(self.url)} {state} (this discoveryctl needs "
                f"{HEAD_REVISION}): {UPGRADE_HINT}"
            )
        from discoveryctl.db.migrations import upgrade  # alembic: only when needed

        return upgrade(self)  # False when another process upgraded it meanwhile

    def integrity_problems(self, tables: list[sa.Table], most: int = 5) -> list[str]:
        """What is wrong inside the database, empty when nothing is: SQLite's own check of
        every page and index (``PRAGMA quick_check``); on PostgreSQL, a read of every row of
        each table, which fails on a damaged page."""
        try:
            with self.engine.connect() as connection:
                if self.dialect == "sqlite":
                    rows = connection.exec_driver_sql(f"PRAGMA quick_check({int(most)})")
                    found = [
                        line.strip()
                        for row in rows
                        for line in str(row[0]).splitlines()
                        if line.strip() and not line.startswith("***")  # "*** in database main"
                    ]
                    return [] if found == ["ok"] else found[:most]
                problems = []
                for table in tables:
                    try:
                        connection.execute(sa.select(sa.func.count()).select_from(table))
                    except exc.DBAPIError as error:
                        connection.rollback()
                        problems.append(f"{table.name}: {str(error.orig).strip()}")
                return problems[:most]
        except exc.DBAPIError as error:
            return [str(error.orig).strip()]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error; a failed database
        call is raised as the ``DiscoveryError`` of its kind (``db.failures.classify``)."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except exc.DBAPIError as error:
            session.rollback()
            raise self.unreachable(error) from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A connection for reads alone, each statement committed by itself: a read costs
        the API one round trip to PostgreSQL instead of three (``BEGIN``, the read,
        ``COMMIT``). Its own pool of ``READERS`` connections, opened on first use. A failed
        database call is raised as the ``DiscoveryError`` of its kind."""
        try:
            with self._reader_engine().connect() as connection:
                yield connection
        except exc.DBAPIError as error:
            raise self.unreachable(error) from None

    def _reader_engine(self) -> Engine:
        if self._readers is None:
            with self._opening:  # two first reads at once open one pool, not two
                if self._readers is None:
                    self._readers = create_engine(self._raw_url, autocommit=True, pool=READERS)
        return self._readers

    def dispose(self) -> None:
        self.engine.dispose()
        if self._readers is not None:
            self._readers.dispose()
