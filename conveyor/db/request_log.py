"""One row per inference request: what usage and billing are computed from.

No foreign keys on purpose: logs are written in buffered batches and must
outlive the keys and projects they name. The prompt text is kept only with
`--log-prompts`.
"""

from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.db.base import Base, BigId, Timestamp


class RequestLog(Base):
    __tablename__ = "request_logs"
    __table_args__ = (Index("ix_request_logs_project_created", "project_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(80), index=True)
    # The response's `x-request-id` (the client's own X-Request-Id, else the server's
    # `req_...`): what the SDK shows as `_request_id`, quoted in a user's report.
    http_request_id: Mapped[str | None] = mapped_column(String(200), index=True)
    # The `id` of the response the client got, where it is not `request_id`'s
    # (`chatcmpl-<X-Request-Id>`, a Messages API `msg_...`).
    response_id: Mapped[str | None] = mapped_column(String(240), index=True)
    project_id: Mapped[str | None] = mapped_column(String(40))
    api_key_id: Mapped[str | None] = mapped_column(String(40))
    batch_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str | None] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    # Seconds: waiting for the engine, to the first token, and the whole request.
    queue_time: Mapped[float | None] = mapped_column(Float)
    ttft: Mapped[float | None] = mapped_column(Float)
    latency: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[int] = mapped_column(Timestamp, index=True)
    prompt: Mapped[str | None] = mapped_column(Text)
