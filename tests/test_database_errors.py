"""Database failures by kind, from real failures of real databases: unavailable (try later),
conflict (another writer), a refused value (input), or a database that cannot be used as set
up (configuration). Each is what ``Database.session`` raises for that failure."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from discoveryctl.db.engine import Database
from discoveryctl.db.failures import classify
from discoveryctl.errors import (
    DatabaseConflict,
    DatabaseError,
    DatabaseUnavailable,
    DiscoveryError,
    ErrorKind,
    InvalidInput,
)

pytestmark = pytest.mark.timeout(60)


def failure_of(database: Database, sql: str, **params: Any) -> DiscoveryError:
    """What the session reports when ``sql`` fails."""
    with pytest.raises(DiscoveryError) as caught, database.session() as session:
        session.execute(sa.text(sql), params)
    return caught.value


def test_a_value_too_long_for_its_column_is_input(db: Any) -> None:
    if db.kind == "sqlite":
        pytest.skip("SQLite stores a string of any length; the user-id rule stops it first")
    database = Database(db.url)
    try:
        error = failure_of(
            database,
            "INSERT INTO integration_status (user_id, provider, status, updated_at, metadata)"
            " VALUES (:u, 'amazon', 'active', CURRENT_TIMESTAMP, '{}')",
            u="u" * 300,
        )
    finally:
        database.dispose()
    assert type(error) is InvalidInput
    assert "the database refused a value" in error.message


def test_a_duplicate_is_a_conflict(db: Any) -> None:
    database = Database(db.url)
    try:
        with database.session() as session:
            session.execute(sa.text("CREATE TABLE probe (k VARCHAR(10) PRIMARY KEY)"))
            session.execute(sa.text("INSERT INTO probe VALUES ('a')"))
        error = failure_of(database, "INSERT INTO probe VALUES ('a')")
    finally:
        database.dispose()
    assert type(error) is DatabaseConflict
    assert error.kind is ErrorKind.database_conflict


def test_a_missing_table_means_the_database_is_not_as_set_up(db: Any) -> None:
    database = Database(db.url)
    try:
        error = failure_of(database, "SELECT * FROM no_such_table")
    finally:
        database.dispose()
    assert type(error) is DatabaseError
    assert error.kind is ErrorKind.configuration
    assert error.message.startswith("cannot use the database at ")


def test_a_lock_held_by_another_writer_is_unavailable(db: Any) -> None:
    database = Database(db.url)
    holder = sa.create_engine(db.engine.url)
    try:
        with holder.connect() as other:
            if db.kind == "sqlite":
                other.exec_driver_sql("BEGIN IMMEDIATE")  # SQLite's write lock
                with (
                    pytest.raises(sa.exc.OperationalError) as caught,
                    database.engine.connect() as mine,
                ):
                    mine.exec_driver_sql("PRAGMA busy_timeout = 50")
                    mine.exec_driver_sql("BEGIN IMMEDIATE")
                error = classify(caught.value, "here")
            else:
                other.exec_driver_sql("BEGIN")
                other.exec_driver_sql("LOCK TABLE integration_status IN ACCESS EXCLUSIVE MODE")
                error = failure_of(
                    database,
                    "SET LOCAL lock_timeout = '50ms'; SELECT count(*) FROM integration_status",
                )
            other.rollback()
    finally:
        holder.dispose()
        database.dispose()
    assert type(error) is DatabaseUnavailable
    assert error.kind is ErrorKind.database_unavailable


def test_a_server_that_is_not_there_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = Database(f"postgresql://nobody@127.0.0.1:{port}/none")
    try:
        error = failure_of(database, "SELECT 1")
    finally:
        database.dispose()
    assert type(error) is DatabaseUnavailable
    assert f"127.0.0.1:{port}" in error.message


def test_a_file_that_is_not_a_database_is_not_usable(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the pages of a SQLite database" * 100)
    database = Database(f"sqlite:///{path}")
    try:
        error = failure_of(database, "SELECT 1")
    finally:
        database.dispose()
    assert type(error) is DatabaseError
    assert "file is not a database" in error.message


def test_sqlite_result_codes_decide_before_the_exception_class(tmp_path: Path) -> None:
    """SQLite reports a held lock as an OperationalError like many others; its result code
    (SQLITE_BUSY) is what says "unavailable"."""
    path = tmp_path / "busy.db"
    first = sqlite3.connect(path, timeout=0)
    first.execute("CREATE TABLE t (x)")
    first.commit()
    first.execute("BEGIN EXCLUSIVE")
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(sa.exc.OperationalError) as caught, engine.connect() as connection:
            connection.exec_driver_sql("SELECT * FROM t")
    finally:
        engine.dispose()
        first.close()
    assert getattr(caught.value.orig, "sqlite_errorname", None) == "SQLITE_BUSY"
    assert type(classify(caught.value, "here")) is DatabaseUnavailable


# -- the rule, row by row, on the drivers' own exception classes ------------------------------


def postgres_failure(sqlstate: str, text: str = "it failed\nDETAIL: more") -> sa.exc.DBAPIError:
    """What SQLAlchemy raises for a psycopg error carrying ``sqlstate``."""
    import psycopg
    from psycopg import errors as pg_errors

    orig = pg_errors.lookup(sqlstate)(text)
    return sa.exc.DBAPIError.instance("SELECT 1", None, orig, psycopg.Error)


def sqlite_failure(
    name: str | None, text: str = "it failed", cls: type[sqlite3.Error] = sqlite3.OperationalError
) -> sa.exc.DBAPIError:
    """What SQLAlchemy raises for a sqlite3 error with result code ``name``."""
    orig = cls(text)
    if name is not None:
        orig.sqlite_errorname = name
    return sa.exc.DBAPIError.instance("SELECT 1", None, orig, sqlite3.Error)


CONFLICT = "another writer changed the same rows first: it failed"
UNAVAILABLE = "cannot use the database at here: it failed"
REFUSED = "the database refused a value: it failed"


@pytest.mark.parametrize(
    ("sqlstate", "kind", "message"),
    [
        ("23505", DatabaseConflict, CONFLICT),  # unique_violation
        ("23503", DatabaseConflict, CONFLICT),  # foreign_key_violation
        ("23P01", DatabaseConflict, CONFLICT),  # exclusion_violation
        ("40001", DatabaseConflict, CONFLICT),  # serialization_failure
        ("40P01", DatabaseConflict, CONFLICT),  # deadlock_detected
        ("08006", DatabaseUnavailable, UNAVAILABLE),  # connection_failure
        ("08001", DatabaseUnavailable, UNAVAILABLE),
        ("53300", DatabaseUnavailable, UNAVAILABLE),  # too_many_connections
        ("57P01", DatabaseUnavailable, UNAVAILABLE),  # admin_shutdown
        ("57014", DatabaseUnavailable, UNAVAILABLE),  # query_canceled (statement_timeout)
        ("58030", DatabaseUnavailable, UNAVAILABLE),  # io_error
        ("55P03", DatabaseUnavailable, UNAVAILABLE),  # lock_not_available
        ("22001", InvalidInput, REFUSED),  # string_data_right_truncation
        ("22P02", InvalidInput, REFUSED),  # invalid_text_representation
        ("22003", InvalidInput, REFUSED),  # numeric_value_out_of_range
        ("23502", DatabaseError, UNAVAILABLE),  # not_null_violation: a bug of ours, not input
        ("23514", DatabaseError, UNAVAILABLE),  # check_violation: likewise
        ("42P01", DatabaseError, UNAVAILABLE),  # undefined_table: not migrated as expected
        ("55000", DatabaseError, UNAVAILABLE),  # object_not_in_prerequisite_state
        ("25P02", DatabaseError, UNAVAILABLE),  # in_failed_sql_transaction
        ("XX000", DatabaseError, UNAVAILABLE),  # internal_error
    ],
)
def test_postgres_failures_by_sqlstate(
    sqlstate: str, kind: type[DiscoveryError], message: str
) -> None:
    error = classify(postgres_failure(sqlstate), "here")
    assert type(error) is kind
    assert error.message == message


@pytest.mark.parametrize(
    ("name", "cls", "kind", "message"),
    [
        ("SQLITE_CONSTRAINT_UNIQUE", sqlite3.IntegrityError, DatabaseConflict, CONFLICT),
        ("SQLITE_CONSTRAINT_PRIMARYKEY", sqlite3.IntegrityError, DatabaseConflict, CONFLICT),
        ("SQLITE_CONSTRAINT_FOREIGNKEY", sqlite3.IntegrityError, DatabaseConflict, CONFLICT),
        ("SQLITE_CONSTRAINT_NOTNULL", sqlite3.IntegrityError, DatabaseError, UNAVAILABLE),
        ("SQLITE_CONSTRAINT_CHECK", sqlite3.IntegrityError, DatabaseError, UNAVAILABLE),
        ("SQLITE_TOOBIG", sqlite3.DataError, InvalidInput, REFUSED),
        ("SQLITE_MISMATCH", sqlite3.IntegrityError, InvalidInput, REFUSED),
        ("SQLITE_RANGE", sqlite3.ProgrammingError, InvalidInput, REFUSED),
        ("SQLITE_BUSY", sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        # Extended codes count as their primary code.
        ("SQLITE_BUSY_SNAPSHOT", sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        ("SQLITE_BUSY_RECOVERY", sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        ("SQLITE_LOCKED_SHAREDCACHE", sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        ("SQLITE_IOERR_WRITE", sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        ("SQLITE_CANTOPEN_ISDIR", sqlite3.OperationalError, DatabaseError, UNAVAILABLE),
        ("SQLITE_READONLY_DBMOVED", sqlite3.OperationalError, DatabaseError, UNAVAILABLE),
        ("SQLITE_LOCKED", sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        ("SQLITE_IOERR", sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        ("SQLITE_FULL", sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        ("SQLITE_CANTOPEN", sqlite3.OperationalError, DatabaseError, UNAVAILABLE),
        ("SQLITE_NOTADB", sqlite3.DatabaseError, DatabaseError, UNAVAILABLE),
        ("SQLITE_CORRUPT", sqlite3.DatabaseError, DatabaseError, UNAVAILABLE),
        ("SQLITE_ERROR", sqlite3.OperationalError, DatabaseError, UNAVAILABLE),  # no such table
        ("SQLITE_READONLY", sqlite3.OperationalError, DatabaseError, UNAVAILABLE),
        # Without a result code, the exception class decides.
        (None, sqlite3.IntegrityError, DatabaseConflict, CONFLICT),
        (None, sqlite3.DataError, InvalidInput, REFUSED),
        (None, sqlite3.OperationalError, DatabaseUnavailable, UNAVAILABLE),
        (None, sqlite3.InterfaceError, DatabaseUnavailable, UNAVAILABLE),
        (None, sqlite3.ProgrammingError, DatabaseError, UNAVAILABLE),
        (None, sqlite3.InternalError, DatabaseError, UNAVAILABLE),
    ],
)
def test_sqlite_failures_by_result_code(
    name: str | None, cls: type[sqlite3.Error], kind: type[DiscoveryError], message: str
) -> None:
    """The result code decides, whatever the exception class says."""
    error = classify(sqlite_failure(name, cls=cls), "here")
    assert type(error) is kind
    assert error.message == message


def test_the_reason_is_the_driver_s_first_line() -> None:
    error = classify(postgres_failure("08006", "  server closed\nthe connection  "), "db")
    assert error.message == "cannot use the database at db: server closed"


def test_a_failure_without_words_is_named_by_its_class() -> None:
    error = classify(sqlite_failure(None, text="   "), "db")
    assert error.message == "cannot use the database at db: OperationalError"
