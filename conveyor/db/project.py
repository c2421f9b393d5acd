"""A project: the tenant that API keys, request logs, files and batches belong to."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.db.base import Base, Timestamp, now


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[int] = mapped_column(Timestamp, default=now)
    archived_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
