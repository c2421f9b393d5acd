"""A stored Responses API object: what `previous_response_id` and GET /v1/responses/{id} read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from conveyor.db.base import Base, Timestamp, now


class StoredResponse(Base):
    __tablename__ = "responses"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # None when tenancy is off: the response belongs to the deployment, not a project.
    project_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # Not a foreign key: deleting a response leaves the ones that continued it readable.
    previous_response_id: Mapped[str | None] = mapped_column(String(40), default=None)
    model: Mapped[str] = mapped_column(String(200))
    # This request's own input items, normalised (typed, with ids), in order.
    input_items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # The response object as the client received it (a background one: as it is now).
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    # body["status"], as a column: a background run ends with one compare-and-set update
    # (queued/in_progress -> its outcome) that a concurrent cancel cannot be undone by.
    # NULL for rows stored before the column existed (all of them finished).
    status: Mapped[str | None] = mapped_column(String(20), default=None)
    # Set for a response kept only so a background run can be polled (store false): it
    # is deleted then, and never continued (as if it had not been stored).
    expires_at: Mapped[int | None] = mapped_column(Timestamp, default=None, index=True)
    created_at: Mapped[int] = mapped_column(Timestamp, default=now, index=True)
