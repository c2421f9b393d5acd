"""A batch's `output_expires_after`: the lifetime, in seconds, of the output and error
files it writes (NULL: kept until deleted).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("output_expires_after", sa.Integer(), nullable=True))
    # Expired files are found by this column on every purge.
    op.create_index(op.f("ix_files_expires_at"), "files", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_files_expires_at"), table_name="files")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("output_expires_after")
