"""One finished batch line: the checkpoint that makes a batch resumable without duplicates.

A line's result is committed together with the batch's counter, and
(batch_id, custom_id) is unique, so a batch worker killed mid-batch resumes
with exactly the lines it had not recorded, and two workers racing on one
batch can never record a line twice. Rows are deleted once the output and
error files are written.
"""

from __future__ import annotations

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.db.base import Base, BigId, Timestamp, now


class BatchResult(Base):
    __tablename__ = "batch_results"
    __table_args__ = (UniqueConstraint("batch_id", "custom_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    line: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String(512))
    succeeded: Mapped[bool] = mapped_column(Boolean)
    # The output-file (or error-file) line, serialized JSON.
    payload: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(Timestamp, default=now)
