"""``discoveryctl export``: every integration as an import line (``transfer.parse``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.models import (
    Credential,
    IntegrationStatus,
    StripeCustomer,
    table_of,
)
from discoveryctl.integrations.vocabulary import Provider
from discoveryctl.support.crypto import Vault


def export_lines(
    session: Session, vault: Vault | None, *, batch_size: int = 1000
) -> Iterator[dict[str, Any]]:
    """Every integration as an import line; refresh tokens only when a vault is given."""
    table, credential, customer = (
        table_of(IntegrationStatus),
        table_of(Credential),
        table_of(StripeCustomer),
    )
    query = (
        sa.select(
            table.c.user_id,
            table.c.provider,
            credential.c.selling_partner_id,
            credential.c.region,
            credential.c.authorized_at,
            credential.c.refresh_token,
            customer.c.email,
            customer.c.customer_id,
        )
        .select_from(table)
        .outerjoin(credential, credential.c.integration_id == table.c.id)
        .outerjoin(
            customer,
            sa.and_(customer.c.user_id == table.c.user_id, table.c.provider == Provider.stripe),
        )
        .order_by(table.c.user_id, table.c.provider)
        .execution_options(yield_per=batch_size)
    )
    for row in session.execute(query):
        if row.provider == Provider.amazon and row.selling_partner_id is not None:
            line: dict[str, Any] = {
                "user_id": row.user_id,
                "provider": row.provider,
                "selling_partner_id": row.selling_partner_id,
                "region": row.region,
                "authorized_at": row.authorized_at.isoformat().replace("+00:00", "Z"),
            }
            if vault is not None:
                line["refresh_token"] = vault.decrypt(row.refresh_token)
            yield line
        elif row.provider == Provider.stripe and row.email is not None:
            line = {"user_id": row.user_id, "provider": row.provider, "email": row.email}
            if row.customer_id:
                line["customer_id"] = row.customer_id
            yield line
