"""Stored responses: save, find, delete, and the conversation a response continues.

Scoped to a project like files: another project's response is not found.
Each row holds its own input and output; the history behind
`previous_response_id` is rebuilt by walking the chain back, so a long
conversation costs one row per turn, not the whole history each time.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from conveyor.db.stored_response import StoredResponse

# A background response's statuses while it runs; any other is final.
RUNNING = ("queued", "in_progress")


class MissingResponse(LookupError):
    """A response in the chain is not stored (never was, deleted, or another project's)."""


class UnfinishedResponse(ValueError):
    """A response in the chain is still running (background), so it has no output yet."""


def save_response(
    session: Session,
    project_id: str | None,
    body: dict[str, Any],
    input_items: list[dict[str, Any]],
    expires_at: int | None = None,
) -> StoredResponse:
    stored = StoredResponse(
        expires_at=expires_at,
        id=body["id"],
        project_id=project_id,
        previous_response_id=body.get("previous_response_id"),
        model=body["model"],
        input_items=input_items,
        body=body,
        status=body.get("status"),
        created_at=body["created_at"],
    )
    session.add(stored)
    session.flush()
    return stored


def get_response(
    session: Session, response_id: str, project_id: str | None
) -> StoredResponse | None:
    stored = session.get(StoredResponse, response_id)
    if stored is None or stored.project_id != project_id:
        return None
    return stored


def finish_response(session: Session, body: dict[str, Any]) -> bool:
    """Store a background response's final object, unless it was cancelled, deleted or
    already finished meanwhile (one atomic update); True if stored."""
    result = session.execute(
        update(StoredResponse)
        .where(StoredResponse.id == body["id"], StoredResponse.status.in_(RUNNING))
        .values(body=body, status=body["status"])
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def mark_in_progress(session: Session, response_id: str) -> bool:
    """A queued background response's generation started: `in_progress`, unless it has
    moved on meanwhile (finished, cancelled, deleted); True if this call moved it."""
    stored = session.get(StoredResponse, response_id)
    if stored is None or stored.status != "queued":
        return False
    result = session.execute(
        update(StoredResponse)
        .where(StoredResponse.id == response_id, StoredResponse.status == "queued")
        .values(body={**stored.body, "status": "in_progress"}, status="in_progress")
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def end_running(
    session: Session, stored: StoredResponse, status: str, error: dict[str, Any] | None = None
) -> bool:
    """Move a running response to `status` ("cancelled", or "failed" with `error`) if it
    still runs (one atomic update); True if this call ended it."""
    body = {**stored.body, "status": status}
    if error is not None:
        body["error"] = error
    result = session.execute(
        update(StoredResponse)
        .where(StoredResponse.id == stored.id, StoredResponse.status.in_(RUNNING))
        .values(body=body, status=status)
        # Not copied onto `stored`: if the run ended it first, no row changed, and the
        # object must then show the row as it is, not this call's wish.
        .execution_options(synchronize_session=False)
    )
    session.refresh(stored)
    return bool(result.rowcount)


def delete_response(session: Session, response_id: str, project_id: str | None) -> bool:
    stored = get_response(session, response_id, project_id)
    if stored is None:
        return False
    session.delete(stored)
    return True


def conversation(
    session: Session, response_id: str, project_id: str | None
) -> list[dict[str, Any]]:
    """Every item the response saw and said, oldest first: for each response in the chain,
    its input items then its output items. Raises MissingResponse naming a missing link."""
    turns: list[list[dict[str, Any]]] = []
    next_id: str | None = response_id
    while next_id is not None:
        stored = get_response(session, next_id, project_id)
        if stored is None or stored.expires_at is not None:  # kept for polling only
            raise MissingResponse(next_id)
        if stored.status in RUNNING:
            raise UnfinishedResponse(next_id)
        turns.append(_turn_items(stored))
        next_id = stored.previous_response_id
    return [item for turn in reversed(turns) for item in turn]


def input_history(stored: StoredResponse, session: Session) -> list[dict[str, Any]]:
    """The items `stored` was generated from, oldest first: each earlier turn's input and
    output (through `previous_response_id`), then its own input. A turn deleted since
    ends the history there (what it said is gone; the turns before it are not reached)."""
    turns = [stored.input_items]
    next_id = stored.previous_response_id
    while next_id is not None:
        earlier = get_response(session, next_id, stored.project_id)
        if earlier is None or earlier.expires_at is not None:
            break
        turns.append(_turn_items(earlier))
        next_id = earlier.previous_response_id
    return [item for turn in reversed(turns) for item in turn]


def _turn_items(stored: StoredResponse) -> list[dict[str, Any]]:
    return stored.input_items + list(stored.body.get("output") or [])


def purge_responses(
    session: Session, created_before: int | None, now: int, *, limit: int = 1000
) -> int:
    """Delete up to `limit` responses created before `created_before` (None: keep them
    all), or kept for polling only and past their `expires_at`; how many went. Bounded,
    so one purge never holds a long transaction over a big backlog."""
    expired = StoredResponse.expires_at < now
    condition = (
        expired
        if created_before is None
        else or_(StoredResponse.created_at < created_before, expired)
    )
    ids = list(session.scalars(select(StoredResponse.id).where(condition).limit(limit)))
    if ids:
        session.execute(delete(StoredResponse).where(StoredResponse.id.in_(ids)))
    return len(ids)
