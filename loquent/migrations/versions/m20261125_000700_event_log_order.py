"""Event-log order for readers without serializing writers.

No schema change: on PostgreSQL an event's id now carries its writer's transaction id
(``pg_current_xact_id() << 16`` plus a count within the transaction, see
loquent/realtime/log.py) and readers stop below the snapshot's xmin. Ids written before this
revision came from the sequence and are far below any such id, so existing cursors stay
valid and order is kept. SQLite keeps its AUTOINCREMENT ids.

Revision ID: m20261125_000700
Revises: m20261125_000600
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision: str = "m20261125_000700"
down_revision: str | None = "m20261125_000600"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass  # ids are computed by the writer; the column and its indexes are unchanged


def downgrade() -> None:
    pass
