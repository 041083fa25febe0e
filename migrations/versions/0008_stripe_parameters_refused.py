"""A pending Stripe customer whose parameters Stripe refused: when, so that no run sends them
again until the operator corrects them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 03:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stripe_customers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("parameters_refused_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("stripe_customers", schema=None) as batch_op:
        batch_op.drop_column("parameters_refused_at")
