"""SP-API pacing: each credential's allowance of seller checks (a token bucket), so that no
run or command calls getMarketplaceParticipations faster than its usage plan allows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("check_allowance", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("check_allowance_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_column("check_allowance_at")
        batch_op.drop_column("check_allowance")
