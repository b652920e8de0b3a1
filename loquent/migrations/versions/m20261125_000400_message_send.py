"""Replies sent from the inbox: idempotent sends and the send race.

Revision ID: m20261125_000400
Revises: m20261125_000300
Create Date: 2026-11-25 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "m20261125_000400"
down_revision: str | None = "m20261125_000300"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_send",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("inflight_line_id", sa.Integer(), nullable=True),
        sa.Column("inflight_to", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organization.id"],
            name="fk_message_send_organization_id_organization",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["message.id"],
            name="fk_message_send_message_id_message",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["inflight_line_id"],
            ["phone_number.id"],
            name="fk_message_send_inflight_line_id_phone_number",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_message_send"),
        sa.UniqueConstraint("message_id", name="uq_message_send_message_id"),
        sa.UniqueConstraint(
            "organization_id",
            "idempotency_key",
            name="uq_message_send_organization_id_idempotency_key",
        ),
        sa.UniqueConstraint(
            "inflight_line_id", "inflight_to", name="uq_message_send_inflight_line_id_inflight_to"
        ),
    )


def downgrade() -> None:
    op.drop_table("message_send")
