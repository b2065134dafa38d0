"""Frequency caps: the sends that count toward them; why a participant waits at a message step

Revision ID: dc04ab32ecb2
Revises: f2455dc317fb
Create Date: 2026-11-30 07:29:57.714309
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "dc04ab32ecb2"
down_revision: str | Sequence[str] | None = "f2455dc317fb"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "counted_sends",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_counted_sends")),
    )
    with op.batch_alter_table("counted_sends", schema=None) as batch_op:
        batch_op.create_index(
            "ix_counted_sends_contact_id_channel_counted_at",
            ["contact_id", "channel", "counted_at"],
            unique=False,
        )

    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting_for", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.drop_column("waiting_for")

    with op.batch_alter_table("counted_sends", schema=None) as batch_op:
        batch_op.drop_index("ix_counted_sends_contact_id_channel_counted_at")

    op.drop_table("counted_sends")
