"""A request log row's `http_request_id` and `response_id`: the `x-request-id` its
response carried (the client's own X-Request-Id, else the server's `req_...`, which the
OpenAI SDK shows as `_request_id`) and the `id` of the response its client got
(`chatcmpl-<X-Request-Id>`, `msg_...`), by which a user's report finds the row.

The indexes are built CONCURRENTLY on PostgreSQL: request_logs is the big table, and a
plain CREATE INDEX would hold every replica's log inserts for the whole build.

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

_COLUMNS = {"http_request_id": 200, "response_id": 240}


def upgrade() -> None:
    for name, length in _COLUMNS.items():
        op.add_column("request_logs", sa.Column(name, sa.String(length=length), nullable=True))
    with op.get_context().autocommit_block():
        for name in _COLUMNS:
            op.create_index(
                op.f(f"ix_request_logs_{name}"),
                "request_logs",
                [name],
                postgresql_concurrently=True,
            )


def downgrade() -> None:
    for name in _COLUMNS:
        op.drop_index(op.f(f"ix_request_logs_{name}"), table_name="request_logs")
    with op.batch_alter_table("request_logs") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
