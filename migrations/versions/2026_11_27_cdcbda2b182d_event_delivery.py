"""When each event was delivered to participants and triggers

Revision ID: cdcbda2b182d
Revises: 1fde574ff854
Create Date: 2026-11-27 14:01:50.388807
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cdcbda2b182d"
down_revision: str | Sequence[str] | None = "1fde574ff854"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("crm_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crm_events", schema=None) as batch_op:
        batch_op.drop_column("delivered_at")
