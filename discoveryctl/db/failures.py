"""What a failed database call means, decided once for every backend (see ``errors.py``)."""

from __future__ import annotations

from sqlalchemy import exc

from discoveryctl.errors import (
    DatabaseConflict,
    DatabaseError,
    DatabaseUnavailable,
    DiscoveryError,
    InvalidInput,
)

# What a failed database call means, by SQLSTATE class (PostgreSQL, psycopg's ``sqlstate``;
# https://www.postgresql.org/docs/current/errcodes-appendix.html) and by SQLite result code
# (``sqlite_errorname``, read by its primary code: SQLITE_BUSY_SNAPSHOT is a SQLITE_BUSY;
# https://www.sqlite.org/rescode.html). Unlisted codes fall back on SQLAlchemy's exception
# class, and failing that mean the database cannot be used as set up. A NOT NULL or CHECK
# violation is this program's bug, not the operator's input: it is not "input".
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57", "58")  # connection, resources, shutdown, I/O
_CONFLICT_SQLSTATES = ("23505", "23503", "23P01", "40001", "40P01")  # unique, FK, serialization
_UNAVAILABLE_SQLSTATES = ("55P03",)  # lock_not_available
_INPUT_SQLSTATE_CLASSES = ("22",)  # data exceptions: a value too long, malformed, out of range
_UNAVAILABLE_SQLITE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL")
_CONFLICT_SQLITE = (
    "SQLITE_CONSTRAINT_UNIQUE",
    "SQLITE_CONSTRAINT_PRIMARYKEY",
    "SQLITE_CONSTRAINT_FOREIGNKEY",
)
_INPUT_SQLITE = ("SQLITE_TOOBIG", "SQLITE_MISMATCH", "SQLITE_RANGE")


def classify(error: exc.DBAPIError, where: str) -> DiscoveryError:
    """One rule for every failed database call: is the database unavailable (try later),
    did another writer get there first (conflict), was a value refused (input), or can the
    database not be used as configured?"""
    orig = error.orig
    reason = (
        str(orig).strip().splitlines()[0] if orig and str(orig).strip() else type(error).__name__
    )
    message = f"cannot use the database at {where}: {reason}"
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:  # a SQLSTATE is five characters
        if sqlstate in _CONFLICT_SQLSTATES:
            return DatabaseConflict(f"another writer changed the same rows first: {reason}")
        if sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
            return DatabaseUnavailable(message)
        if sqlstate[:2] in _INPUT_SQLSTATE_CLASSES:
            return InvalidInput(f"the database refused a value: {reason}")
        return DatabaseError(message)
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        primary = "_".join(name.split("_")[:2])
        if name in _CONFLICT_SQLITE:
            return DatabaseConflict(f"another writer changed the same rows first: {reason}")
        if primary in _UNAVAILABLE_SQLITE:
            return DatabaseUnavailable(message)
        if primary in _INPUT_SQLITE:
            return InvalidInput(f"the database refused a value: {reason}")
        return DatabaseError(message)
    if isinstance(error, exc.IntegrityError):
        return DatabaseConflict(f"another writer changed the same rows first: {reason}")
    if isinstance(error, exc.DataError):
        return InvalidInput(f"the database refused a value: {reason}")
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        return DatabaseUnavailable(message)
    return DatabaseError(message)
