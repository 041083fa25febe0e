"""Sellers written straight into a migrated database, for the rule tests of ``refresh-all``:
one integration and its credential per seller, every time given."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from discoveryctl.db.engine import Database
from discoveryctl.db.models import Credential, IntegrationStatus
from discoveryctl.sandbox import Sandbox
from discoveryctl.support.crypto import Vault

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
FRONTEND = "http://localhost:3000"
TOKEN_CALLS = "POST /auth/o2/token"
CHECK_CALLS = "GET /sellers/v1/marketplaceParticipations"


@pytest.fixture(name="database")
def database_fixture(sqlite_db: Any) -> Iterator[Database]:
    """The migrated SQLite copy, opened as the commands open it."""
    opened = Database(sqlite_db.url)
    yield opened
    opened.dispose()


@pytest.fixture(name="vault")
def vault_fixture(sqlite_db: Any) -> Vault:
    return Vault([sqlite_db.key])


def add_seller(
    database: Database,
    vault: Vault,
    user: str,
    *,
    token: str | None = None,
    status: str = "active",
    provider: str = "amazon",
    authorized_at: datetime = NOW - timedelta(days=10),
    **columns: Any,
) -> int:
    """``user``'s integration and credential (its refresh token encrypted with ``vault``,
    other credential ``columns`` as given); the credential's id."""
    with database.session() as session:
        integration = IntegrationStatus(user_id=user, provider=provider, status=status)
        credential = Credential(
            integration=integration,
            selling_partner_id=f"SP-{user}",
            region="na",
            refresh_token=vault.encrypt(token or f"Atzr|{user}"),
            authorized_at=authorized_at,
            **columns,
        )
        session.add(credential)
        session.flush()
        return credential.id


def sellers(database: Database, vault: Vault, sandbox: Sandbox, count: int, **columns: Any) -> Any:
    """``count`` sellers the sandbox knows, due (no access token cached), as u0, u1, …"""
    known = [sandbox.state.add_seller() for _ in range(count)]
    for number, seller in enumerate(known):
        add_seller(database, vault, f"u{number}", token=seller.refresh_token, **columns)
    return known
