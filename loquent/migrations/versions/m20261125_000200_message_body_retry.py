"""Body enrichment that outlasts long Twilio outages.

``message.body_pending_since``: when the worker first took a body up; transient failures are
retried until a deadline measured from it (time, not attempts). Rows pending at upgrade keep
it NULL and get it stamped by their next claim, i.e. a full deadline from then.
``message.body_not_found``: consecutive 404 answers, so a 404 after a long outage still gets
its few retries (the attempt count no longer stays small).

Revision ID: m20261125_000200
Revises: m20261125_000100
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "m20261125_000200"
down_revision: str | None = "m20261125_000100"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("message") as batch_op:
        batch_op.add_column(
            sa.Column("body_pending_since", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("body_not_found", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("message") as batch_op:
        batch_op.drop_column("body_not_found")
        batch_op.drop_column("body_pending_since")
