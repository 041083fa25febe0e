"""Normalise stored user ids: NFC and no surrounding spaces, the form every path now stores.

Ids stored before the one user-id rule could be NFD or padded; `--user` and the API now look
ids up in the normalised form, so such rows would be unreachable and a re-import would
duplicate them. Two ids that become the same would merge two users: the upgrade stops and
names them instead, changing nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 18:40:00
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import context, op

from discoveryctl.errors import DatabaseError

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Tables holding user ids, and the columns that, with user_id, must stay unique.
TABLES = {
    "integration_status": ("provider",),
    "stripe_customers": (),
    "oauth_states": None,
    "events": None,
    "notifications": None,
}


def normalised(user_id: str) -> str:
    """The rule's stored form, frozen here as it was when this migration was written."""
    return unicodedata.normalize("NFC", user_id).strip()


def upgrade() -> None:
    if context.is_offline_mode():  # `db sql`: DDL only, and this revision changes data only
        return
    connection = op.get_bind()
    for table_name, unique_with in TABLES.items():
        table = sa.table(table_name, sa.column("user_id"))
        stored = connection.execute(
            sa.select(table.c.user_id).where(table.c.user_id.is_not(None)).distinct()
        ).scalars()
        renames = {old: normalised(old) for old in stored if normalised(old) != old}
        if not renames:
            continue
        if unique_with is not None:
            _refuse_merges(connection, table_name, unique_with, renames)
        for old, new in renames.items():
            connection.execute(sa.update(table).where(table.c.user_id == old).values(user_id=new))


def _refuse_merges(
    connection: sa.Connection,
    table_name: str,
    unique_with: tuple[str, ...],
    renames: dict[str, str],
) -> None:
    """Stop if two rows would share a user id (and provider) once normalised."""
    columns = ("user_id", *unique_with)
    table = sa.table(table_name, *(sa.column(name) for name in columns))
    seen: dict[tuple[str, ...], str] = {}
    for row in connection.execute(sa.select(*table.c)):
        key = (renames.get(row[0], row[0]), *row[1:])
        if key in seen:
            raise DatabaseError(
                f"user ids {seen[key]!r} and {row[0]!r} in {table_name} are the same user id "
                f"{key[0]!r} once normalised (NFC, no surrounding spaces): merge or rename one "
                "of them, then run the upgrade again"
            )
        seen[key] = row[0]


def downgrade() -> None:
    pass  # the normalised ids are valid under revision 0001 too
