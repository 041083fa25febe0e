"""Shared fixtures: an isolated environment per test, the CLI, and real databases.

Every test that takes ``db`` runs twice: on a fresh SQLite file and on a fresh PostgreSQL
schema (``DISCOVERY_TEST_POSTGRES_URL``). Without that variable the PostgreSQL half is left out
at collection, with one loud line at the end, except under CI, where it fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import keyring
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from keyring.backend import KeyringBackend
from typer.testing import CliRunner

from discoveryctl.cli import app
from discoveryctl.config import SETTINGS

from sandbox_fixtures import sandbox  # noqa: F401  (fixture)

POSTGRES_URL = os.environ.get("DISCOVERY_TEST_POSTGRES_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class MemoryKeyring(KeyringBackend):
    """An in-memory OS keyring."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        if self.store.pop((service, username), None) is None:
            raise PasswordDeleteError(username)


@pytest.fixture(autouse=True)
def isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MemoryKeyring]:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("LOG_FORMAT", "json")
    backend = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def cli() -> Any:
    """``cli("status", "--json")`` runs the command in-process and returns its result."""
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None) -> Result:
        result = runner.invoke(app, list(args), input=input, catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    return invoke


@dataclass
class TestDatabase:
    url: str
    kind: str
    engine: sa.Engine
    key: str

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(sa.text(sql), params)]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params).scalar()


def _postgres_schema_url(schema: str) -> str:
    assert POSTGRES_URL is not None
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"


def _engine_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestDatabase]:
    """A fresh, un-migrated database; ``DATABASE_URL`` and the key point at it."""
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    key = Fernet.generate_key().decode()
    if request.param == "sqlite":
        (tmp_path / "discovery.db").touch()  # an empty file is an empty SQLite database
        url = f"sqlite:///{tmp_path / 'discovery.db'}"
        engine = sa.create_engine(url)
        schema = None
    else:
        if POSTGRES_URL is None:
            message = "DISCOVERY_TEST_POSTGRES_URL is not set: PostgreSQL tests did not run"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(_engine_url(POSTGRES_URL))
        try:
            with admin.begin() as connection:
                connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        except sa.exc.OperationalError as error:
            admin.dispose()
            pytest.fail(f"PostgreSQL at DISCOVERY_TEST_POSTGRES_URL is unreachable: {error}")
        admin.dispose()
        url = _postgres_schema_url(schema)
        engine = sa.create_engine(_engine_url(url))
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", key)
    yield TestDatabase(url=url, kind=request.param, engine=engine, key=key)
    engine.dispose()
    if schema is not None:
        admin = sa.create_engine(_engine_url(POSTGRES_URL or ""))
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db(empty_db: TestDatabase, cli: Any) -> TestDatabase:
    """A fresh database migrated to head with ``discoveryctl db upgrade``."""
    result = cli("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    return empty_db


def _migrated_sqlite_file() -> Path:
    """One SQLite file migrated to head, named after the migrations' own content: made once
    per machine and kept in the temporary folder, so every pytest session (each mutant of
    ``make mutate`` is one, each xdist worker too) copies it instead of migrating. Written
    beside its name and renamed into place, so sessions that start together never read half
    a file."""
    from discoveryctl.db.engine import Database
    from discoveryctl.db.migrations import upgrade

    digest = hashlib.sha256()
    for revision in sorted((Path(__file__).parent.parent / "migrations").rglob("*.py")):
        digest.update(revision.name.encode() + revision.read_bytes())
    path = Path(tempfile.gettempdir()) / f"discoveryctl-migrated-{digest.hexdigest()[:16]}.db"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
        partial.touch()  # an empty file is an empty SQLite database
        database = Database(f"sqlite:///{partial}")
        upgrade(database)
        database.dispose()
        os.replace(partial, path)
    return path


@pytest.fixture(scope="session")
def _migrated_sqlite() -> Path:
    return _migrated_sqlite_file()


@pytest.fixture
def sqlite_db(
    _migrated_sqlite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestDatabase]:
    """A migrated SQLite file (a copy of one migrated once per session), for the rule tests
    ``make mutate`` runs thousands of times: a few milliseconds to set up where ``db`` takes a
    migration. Rules whose SQL differs by dialect are tested on ``db``, which runs both."""
    import shutil

    path = tmp_path / "discovery.db"
    shutil.copyfile(_migrated_sqlite, path)
    key = Fernet.generate_key().decode()
    url = f"sqlite:///{path}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", key)
    engine = sa.create_engine(url)
    yield TestDatabase(url=url, kind="sqlite", engine=engine, key=key)
    engine.dispose()


def _on_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("empty_db") == "postgres"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without PostgreSQL (and outside CI, where its absence fails the run), its half of
    the suite is left out at collection: one summary line says so, not a SKIPPED line each."""
    if POSTGRES_URL is not None or IN_CI:
        return
    left_out = [item for item in items if _on_postgres(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not _on_postgres(item)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if POSTGRES_URL is None and not IN_CI:
        terminalreporter.write_sep(
            "!",
            "DISCOVERY_TEST_POSTGRES_URL is not set: the PostgreSQL half of the suite was left "
            "out (set it to a PostgreSQL database to run it)",
            red=True,
        )
