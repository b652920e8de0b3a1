"""message.source: which platform a message came through (loquent | external | import).

Rows that exist before this revision keep source NULL: nobody knows where they came from,
and guessing would be worse than saying so.

Revision ID: m20260310_000000
Revises: m20260301_000000
Create Date: 2026-03-10 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "m20260310_000000"
down_revision: str | None = "m20260301_000000"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("message") as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message") as batch_op:
        batch_op.drop_column("source")
