"""Connecting a Twilio account, its numbers and its event sink.

Revision ID: m20261125_000300
Revises: m20261125_000200
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "m20261125_000300"
down_revision: str | None = "m20261125_000200"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("organization") as batch:
        batch.add_column(
            sa.Column("sink_created_here", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column(
                "subscription_created_here", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("organization") as batch:
        batch.drop_column("subscription_created_here")
        batch.drop_column("sink_created_here")
