"""A throw-away database for one benchmark run: the SQLite default under a temporary home, or,
with DATABASE_URL set to PostgreSQL, a fresh schema in that database, dropped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote


def is_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "sqlite").startswith("postgres")


@contextmanager
def database(home: str) -> Iterator[dict[str, str]]:
    """The environment for one run: the SQLite default under ``home``, or a fresh schema."""
    env = {**os.environ, "XDG_DATA_HOME": home, "LOG_LEVEL": "warning", "NO_COLOR": "1"}
    url = os.environ.get("DATABASE_URL")
    if not url or url.startswith("sqlite"):
        env.pop("DATABASE_URL", None)
        yield env
        return
    import sqlalchemy as sa
    from cryptography.fernet import Fernet

    engine_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(engine_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in url else "?"
    env["DATABASE_URL"] = f"{url}{separator}options={quote(f'-csearch_path={schema}')}"
    env.setdefault("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    try:
        subprocess.run(
            [sys.executable, "-m", "discoveryctl", "db", "upgrade"],
            env=env,
            check=True,
            capture_output=True,
        )
        yield env
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
