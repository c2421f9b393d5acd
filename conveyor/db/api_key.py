"""A project's API key: only the secret's SHA-256 is stored, with a short visible hint."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.db.base import Base, Timestamp, now


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    # hex SHA-256 of the secret: looked up on every cache miss, so indexed.
    secret_digest: Mapped[str] = mapped_column(String(64), unique=True)
    redacted_value: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[int] = mapped_column(Timestamp, default=now)
    last_used_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    revoked_at: Mapped[int | None] = mapped_column(Timestamp, default=None)
    # Requests and tokens per minute; None means unlimited.
    rpm: Mapped[int | None] = mapped_column(Integer, default=None)
    tpm: Mapped[int | None] = mapped_column(Integer, default=None)
