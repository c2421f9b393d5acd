"""A request log row's `http_request_id`: the `x-request-id` its response carried (the
client's own X-Request-Id, else the `req_...` the server made), which the OpenAI SDK
shows as `_request_id` and users quote when they report a problem.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "request_logs", sa.Column("http_request_id", sa.String(length=200), nullable=True)
    )
    # An operator finds a reported request by it.
    op.create_index(op.f("ix_request_logs_http_request_id"), "request_logs", ["http_request_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_request_logs_http_request_id"), table_name="request_logs")
    with op.batch_alter_table("request_logs") as batch:
        batch.drop_column("http_request_id")
