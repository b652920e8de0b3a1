"""History import and catch-up after downtime.

Revision ID: m20261125_000500
Revises: m20261125_000400
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "m20261125_000500"
down_revision: str | None = "m20261125_000400"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_RUNNING = sa.text("state = 'running'")


def upgrade() -> None:
    op.create_table(
        "message_import",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_page_uri", sa.Text(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("imported", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organization.id"],
            name=op.f("fk_message_import_organization_id_organization"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_import")),
    )
    with op.batch_alter_table("message_import", schema=None) as batch_op:
        batch_op.create_index(
            "uq_message_import_running",
            ["organization_id", "kind"],
            unique=True,
            sqlite_where=_RUNNING,
            postgresql_where=_RUNNING,
        )
        batch_op.create_index(
            "ix_message_import_org_created", ["organization_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_message_import_state_lease", ["state", "lease_until"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("message_import", schema=None) as batch_op:
        batch_op.drop_index("ix_message_import_state_lease")
        batch_op.drop_index("ix_message_import_org_created")
        batch_op.drop_index("uq_message_import_running")
    op.drop_table("message_import")
