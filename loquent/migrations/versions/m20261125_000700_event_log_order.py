"""Event-log order for readers without serializing writers.

On PostgreSQL an event's id now carries its writer's transaction id
(``pg_current_xact_id() << 16`` plus a count within the transaction, see
loquent/realtime/log.py) and readers stop below the snapshot's xmin; the id column itself is
unchanged. Ids written before this revision came from the sequence and are far below any
such id, so existing cursors stay valid and order is kept. SQLite keeps AUTOINCREMENT ids.

Ids are no longer dense, so "below the oldest retained id" no longer proves that pruning
removed something a client missed: ``event_log_watermark`` records the newest pruned id.
It starts just below the oldest retained row, which is what the old check assumed.

Revision ID: m20261125_000700
Revises: m20261125_000600
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "m20261125_000700"
down_revision: str | None = "m20261125_000600"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_log_watermark",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_log_watermark")),
    )
    op.execute(
        "INSERT INTO event_log_watermark (id, pruned_through) "
        "SELECT 1, COALESCE(MIN(id) - 1, 0) FROM event_log"
    )


def downgrade() -> None:
    op.drop_table("event_log_watermark")
