"""Batches in SQL: created by the API, advanced through OpenAI's statuses by a batch worker.

Every transition is a guarded UPDATE (`WHERE status IN ...`), so the API's
cancel and a worker's progress can race safely: whichever commits first
wins and the other sees it on its next check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from conveyor.db.base import now
from conveyor.db.batch import Batch
from conveyor.db.batch_result import BatchResult
from conveyor.db.ids import new_id
from conveyor.db.pagination import Page, paginate
from conveyor.db.scoping import owned_by

COMPLETION_WINDOWS = {"24h": 24 * 3600}
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
CANCELLABLE = ("validating", "in_progress")
TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchNotCancellable(ValueError):
    """Only a batch that is still validating or running can be cancelled."""


def create_batch(
    session: Session,
    *,
    project_id: str | None,
    api_key_id: str | None,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    output_expires_after: int | None = None,
) -> Batch:
    created = now()
    batch = Batch(
        id=new_id("batch_"),
        project_id=project_id,
        api_key_id=api_key_id,
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        status="validating",
        metadata_=metadata,
        output_expires_after=output_expires_after,
        created_at=created,
        expires_at=created + COMPLETION_WINDOWS[completion_window],
        total=0,
        completed=0,
        failed=0,
    )
    session.add(batch)
    session.flush()
    return batch


def get_batch(session: Session, batch_id: str, *, project_id: str | None) -> Batch | None:
    """Scoped: another project's batch (or a project's, seen without a project) is None."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.project_id != project_id:
        return None
    return batch


def list_batches(
    session: Session, *, project_id: str | None, after: str | None, limit: int
) -> Page[Batch]:
    query = select(Batch).where(owned_by(Batch.project_id, project_id))
    return paginate(
        session,
        query,
        created_at=Batch.created_at,
        id_column=Batch.id,
        after=after,
        limit=limit,
        descending=True,
    )


def request_cancel(session: Session, batch: Batch) -> Batch:
    """A guarded UPDATE like every transition: `batch` may be stale by the time it is
    written, and a worker that finished meanwhile must not be dragged back to cancelling."""
    if batch.status in CANCELLABLE:
        transition(session, batch.id, from_=CANCELLABLE, to="cancelling")
        session.refresh(batch)
    if batch.status in ("cancelling", "cancelled"):
        return batch
    raise BatchNotCancellable(f"a batch that is {batch.status} cannot be cancelled")


def cancel_project_batches(session: Session, project_id: str) -> list[str]:
    """Move every batch of a project that is still validating or running to cancelling.

    For an archived project: its keys stop working, and its batches stop as if each
    were cancelled (the worker stops queued lines; answered lines keep their results).
    Returns the ids that moved.
    """
    return _cancel_where(session, Batch.project_id == project_id)


def cancel_key_batches(session: Session, api_key_id: str) -> list[str]:
    """The same for the batches a revoked key created: they would otherwise run on for up
    to their 24 hours, billed to the project, whoever had the key."""
    return _cancel_where(session, Batch.api_key_id == api_key_id)


def _cancel_where(session: Session, owned: ColumnElement[bool]) -> list[str]:
    ids = session.scalars(select(Batch.id).where(owned, Batch.status.in_(CANCELLABLE)))
    return [i for i in list(ids) if transition(session, i, from_=CANCELLABLE, to="cancelling")]


def active_batch_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Batch.id).where(Batch.status.in_(ACTIVE))))


def status_of(session: Session, batch_id: str) -> str | None:
    return session.scalar(select(Batch.status).where(Batch.id == batch_id))


def transition(
    session: Session, batch_id: str, *, from_: tuple[str, ...], to: str, **values: Any
) -> bool:
    """Move to `to` (stamping `<to>_at`) only from one of `from_`; False if the batch moved on."""
    stamp = f"{to}_at"
    if hasattr(Batch, stamp):
        values.setdefault(stamp, now())
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(from_))
        .values(status=to, **values)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LineResult:
    line: int
    custom_id: str
    succeeded: bool
    payload: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


def record_result(session: Session, batch_id: str, result: LineResult) -> bool:
    """Store a line's result and count it, atomically; False if it was already recorded.

    INSERT ... ON CONFLICT DO NOTHING (both SQLite and PostgreSQL have it) keeps
    the transaction usable when the line is a duplicate. Whether a row went in is
    read from RETURNING, not rowcount: an ORM insert on PostgreSQL returns the new
    id, and its rowcount is then -1, which counted no line at all.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    inserted = session.execute(
        insert(BatchResult)
        .values(
            batch_id=batch_id,
            line=result.line,
            custom_id=result.custom_id,
            succeeded=result.succeeded,
            payload=json.dumps(result.payload, ensure_ascii=False),
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cached_tokens=result.cached_tokens,
            created_at=now(),
        )
        .on_conflict_do_nothing(index_elements=["batch_id", "custom_id"])
        .returning(BatchResult.id)
    )
    if inserted.first() is None:
        return False
    counter = Batch.completed if result.succeeded else Batch.failed
    session.execute(update(Batch).where(Batch.id == batch_id).values({counter.key: counter + 1}))
    return True


def recorded_custom_ids(session: Session, batch_id: str) -> set[str]:
    return set(
        session.scalars(select(BatchResult.custom_id).where(BatchResult.batch_id == batch_id))
    )


def iter_results(session: Session, batch_id: str, *, succeeded: bool) -> Iterator[str]:
    """The recorded lines in input order, as serialized JSON, fetched in chunks."""
    query = (
        select(BatchResult.payload)
        .where(BatchResult.batch_id == batch_id, BatchResult.succeeded.is_(succeeded))
        .order_by(BatchResult.line)
        .execution_options(yield_per=500)
    )
    yield from session.scalars(query)


def usage_totals(session: Session, batch_id: str) -> dict[str, Any]:
    prompt, completion, cached = session.execute(
        select(
            func.coalesce(func.sum(BatchResult.prompt_tokens), 0),
            func.coalesce(func.sum(BatchResult.completion_tokens), 0),
            func.coalesce(func.sum(BatchResult.cached_tokens), 0),
        ).where(BatchResult.batch_id == batch_id)
    ).one()
    return {
        "input_tokens": int(prompt),
        "input_tokens_details": {"cached_tokens": int(cached)},
        "output_tokens": int(completion),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(prompt) + int(completion),
    }


def drop_results(session: Session, batch_id: str) -> None:
    """The output and error files hold the results now; the checkpoint rows can go."""
    session.execute(delete(BatchResult).where(BatchResult.batch_id == batch_id))
