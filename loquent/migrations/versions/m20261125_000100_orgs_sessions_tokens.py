"""Sessions and API tokens: pruning, last use, revocation.

``api_token`` already has ``last_used_at`` and ``revoked_at``; expired browser sessions are
now pruned periodically, which wants an index on ``user_session.expires_at``.

Revision ID: m20261125_000100
Revises: m20260310_000000
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "m20261125_000100"
down_revision: str | None = "m20260310_000000"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user_session", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_user_session_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("user_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_session_expires_at"))
