"""An uploaded or generated file (OpenAI's file object); the bytes live in file storage."""

from __future__ import annotations

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.db.base import Base, Timestamp, now


class StoredFile(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # None when tenancy is off: the file belongs to the deployment, not a project.
    project_id: Mapped[str | None] = mapped_column(String(40), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(Timestamp, default=now, index=True)
    # Past it the file is gone to every call, and the purge deletes it (api/retention.py).
    expires_at: Mapped[int | None] = mapped_column(Timestamp, default=None, index=True)
