"""A stored response's status as a column, so a background run's end is one atomic update;
and when a response kept only for polling (background with store false) goes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for rows stored before: those were always finished when saved.
    op.add_column("responses", sa.Column("status", sa.String(20), nullable=True))
    op.add_column("responses", sa.Column("expires_at", sa.BigInteger(), nullable=True))
    op.create_index(op.f("ix_responses_expires_at"), "responses", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_responses_expires_at"), table_name="responses")
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("status")
