"""Encrypted seller credentials: the vault, checked against what is already stored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.config import Config, new_fernet_key, replace_secret_file
from discoveryctl.db.engine import SessionScope
from discoveryctl.db.models import Credential, IntegrationStatus, table_of, utcnow
from discoveryctl.integrations import events
from discoveryctl.support.crypto import Vault


def open_vault(config: Config, session: Session) -> Vault:
    """The vault for the configured keys, refused if it cannot read the newest credential.

    Checking first means a wrong key stops a command before it writes anything, instead of
    leaving tokens encrypted under two unrelated keys.
    """
    keys, path = config.encryption_keys()
    vault = Vault(keys, source=str(path) if path else config.named("DISCOVERY_ENCRYPTION_KEY"))
    newest = session.execute(
        sa.select(Credential.refresh_token).order_by(Credential.id.desc()).limit(1)
    ).scalar()
    if newest is not None:
        vault.decrypt(newest, what="the stored refresh tokens")
    return vault


def for_integration(session: Session, integration: IntegrationStatus) -> Credential | None:
    return session.scalars(
        sa.select(Credential).where(Credential.integration_id == integration.id)
    ).first()


def store_authorization(
    session: Session,
    integration: IntegrationStatus,
    vault: Vault,
    *,
    selling_partner_id: str,
    region: str,
    refresh_token: str,
    authorized_at: datetime,
    access_token: str | None = None,
    expires_in: int | None = None,
    credential: Credential | None = None,
) -> Credential:
    """Store a seller's (new) authorization, encrypted, replacing whatever was there.

    ``credential`` is the integration's current one (see ``for_integration``), or None to add
    the first. A new authorization starts a new 365-day term: the expiry warning is re-armed
    and any cached access token from the old one is dropped unless a new one is given.
    """
    now = utcnow()
    if credential is None:
        credential = Credential(integration_id=integration.id, created_at=now)
        session.add(credential)
    credential.selling_partner_id = selling_partner_id
    credential.region = region
    credential.refresh_token = vault.encrypt(refresh_token)
    credential.access_token = vault.encrypt(access_token) if access_token else None
    credential.access_token_expires_at = (
        now + timedelta(seconds=expires_in) if access_token and expires_in else None
    )
    credential.refreshed_at = now if access_token else None
    credential.authorized_at = authorized_at
    credential.expiry_warned_at = None
    credential.refused_by_spapi_at = None  # a new consent: whatever the SP-API said is past
    credential.next_attempt_at = None
    credential.updated_at = now
    return credential


def rotate_all(
    session: Session,
    vault: Vault,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Re-encrypt every stored token with the current key; returns how many rows changed."""
    table = table_of(Credential)
    done = 0
    last_id = 0
    while True:
        rows = session.execute(
            sa.select(table.c.id, table.c.refresh_token, table.c.access_token)
            .where(table.c.id > last_id)
            .order_by(table.c.id)
            .limit(batch_size)
        ).all()
        if not rows:
            break
        session.execute(
            sa.update(table).where(table.c.id == sa.bindparam("row_id")),
            [
                {
                    "row_id": row.id,
                    "refresh_token": vault.rotate(row.refresh_token),
                    "access_token": vault.rotate(row.access_token) if row.access_token else None,
                    "updated_at": utcnow(),
                }
                for row in rows
            ],
        )
        done += len(rows)
        last_id = rows[-1].id
        if progress is not None:
            progress(len(rows))
    events.record(session, events.Kind.keys_rotated, outcome=events.SUCCESS, credentials=done)
    return done


@dataclass(frozen=True)
class Rotation:
    """What ``rotate_keys`` did."""

    rotated: int  # credentials re-encrypted
    key_file: Path | None  # the SQLite default's key file, now holding the new key alone
    generated: bool  # the new key was made here (the key file held only the old one)


def rotate_keys(
    config: Config, session_scope: SessionScope, progress: Callable[[int], None] | None = None
) -> Rotation:
    """Re-encrypt every stored token with the newest key, and leave the keys so that the old
    one is no longer needed.

    With DISCOVERY_ENCRYPTION_KEY the newest key is its first. On the SQLite default without
    it, the keys are in the key file: one key there gets a new one in front of it, written
    before any token is re-encrypted (a crash leaves both, every token readable). Either
    way, once every token is re-encrypted, the SQLite default's key file (if there is one)
    holds the new key alone: the variable, or the old key, can then go."""
    keys, from_file = config.encryption_keys()
    with session_scope() as session:
        open_vault(config, session)  # a wrong key stops here, before anything is written
    generated = from_file is not None and len(keys) == 1
    if from_file is not None and generated:
        keys = [new_fernet_key(), *keys]
        replace_secret_file(from_file, ",".join(keys))
    vault = Vault(
        keys, source=str(from_file) if from_file else config.named("DISCOVERY_ENCRYPTION_KEY")
    )
    with session_scope() as session:
        if session.get_bind().dialect.name == "sqlite":
            # Durable at commit, before the old key goes: in WAL mode with synchronous=NORMAL
            # a power cut can undo the last commits, which would leave the tokens under a key
            # the file no longer holds.
            session.execute(sa.text("PRAGMA synchronous=FULL"))
        rotated = rotate_all(session, vault, progress=progress)
    key_file = from_file
    if key_file is None and config.uses_default_database and config.key_file.exists():
        key_file = config.key_file
    if key_file is not None:
        replace_secret_file(key_file, keys[0])
    return Rotation(rotated, key_file, generated)


def count(session: Session) -> int:
    return session.execute(sa.select(sa.func.count()).select_from(Credential)).scalar_one()
