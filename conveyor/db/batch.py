"""A batch job (OpenAI's batch object): its status, counts and timestamps."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.db.base import Base, Timestamp, now


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # The key that created the batch: its lines are billed to it.
    api_key_id: Mapped[str | None] = mapped_column(String(40), default=None)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="validating")
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    output_file_id: Mapped[str | None] = mapped_column(String(40), default=None)
    error_file_id: Mapped[str | None] = mapped_column(String(40), default=None)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # `metadata` is reserved on declarative classes, hence the attribute name.
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(Timestamp, default=now, index=True)
    in_progress_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    expires_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    finalizing_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    completed_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    failed_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    expired_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    cancelling_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    cancelled_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    # Seconds the output and error files live after they are written (None: until deleted).
    output_expires_after: Mapped[int | None] = mapped_column(Integer, default=None)
