"""Finding the request a user reports: by the id the OpenAI SDK showed them
(`_request_id`, the response's x-request-id), by the response's `id`, or by the id the
request was queued under."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from conveyor.db.request_log import RequestLog

# Columns shown, in this order (the prompt only where --log-prompts kept it).
_FIELDS = (
    "request_id",
    "http_request_id",
    "response_id",
    "created_at",
    "endpoint",
    "model",
    "status_code",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "queue_time",
    "ttft",
    "latency",
    "project_id",
    "api_key_id",
    "batch_id",
    "prompt",
)


def find_request_logs(session: Session, identifier: str, limit: int = 20) -> list[dict[str, Any]]:
    """The rows `identifier` names, newest first (a client's X-Request-Id may name many).
    An empty one names none (refused requests are logged with an empty `request_id`)."""
    if not identifier.strip():
        return []
    rows = session.scalars(
        select(RequestLog)
        .where(
            or_(
                RequestLog.http_request_id == identifier,
                RequestLog.response_id == identifier,
                RequestLog.request_id == identifier,
            )
        )
        .order_by(RequestLog.created_at.desc(), RequestLog.id.desc())
        .limit(limit)
    )
    return [{field: getattr(row, field) for field in _FIELDS} for row in rows]
