"""Event-log order for readers without serializing writers.

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
    pass


def downgrade() -> None:
    pass
