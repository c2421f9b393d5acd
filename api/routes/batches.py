"""`/v1/batches`: create, read, list and cancel batch jobs (OpenAI's Batch API).

The API only records the batch and queues its Celery task; a batch worker
validates the file and runs the lines. Batches belong to the caller's
project: another project's batch is a 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session

from api.deps import Authenticated, DatabaseDep, PrincipalDep, json_body
from api.errors import ApiError, bad_request
from api.schemas.batches import BatchCreate
from api.schemas.organization import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, list_object
from api.sql import in_session
from conveyor.db import batch_store
from conveyor.db.batch import Batch
from conveyor.db.file_store import get_file
from conveyor.db.openai_objects import batch_object
from conveyor.db.pagination import UnknownCursor

router = APIRouter(prefix="/v1/batches", dependencies=[Authenticated])


def batch_or_404(session: Session, batch_id: str, project_id: str | None) -> Batch:
    batch = batch_store.get_batch(session, batch_id, project_id=project_id)
    if batch is None:
        raise ApiError(404, f"No batch found with id '{batch_id}'", param="batch_id")
    return batch


@router.post("")
async def create(
    request: Request,
    body: Annotated[BatchCreate, Depends(json_body(BatchCreate))],
    principal: PrincipalDep,
    database: DatabaseDep,
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        stored = get_file(session, body.input_file_id, principal.project_id)
        if stored is None:
            raise ApiError(
                404, f"No file found with id '{body.input_file_id}'", param="input_file_id"
            )
        if stored.purpose != "batch":
            raise bad_request(
                f"file {stored.id} has purpose {stored.purpose!r}; a batch needs purpose 'batch'",
                param="input_file_id",
            )
        batch = batch_store.create_batch(
            session,
            project_id=principal.project_id,
            api_key_id=principal.api_key_id,
            input_file_id=stored.id,
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=body.metadata,
            output_expires_after=(
                body.output_expires_after.seconds if body.output_expires_after else None
            ),
        )
        return batch_object(batch)

    created = await in_session(database, work)
    await request.app.state.batch_dispatcher.dispatch(created["id"])
    return created


@router.get("")
async def list_(
    principal: PrincipalDep,
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    after: str | None = None,
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        try:
            page = batch_store.list_batches(
                session, project_id=principal.project_id, after=after, limit=limit
            )
        except UnknownCursor:
            raise bad_request(f"`after` names no batch: {after}", param="after") from None
        return list_object(page, batch_object)

    return await in_session(database, work)


@router.get("/{batch_id}")
async def retrieve(batch_id: str, principal: PrincipalDep, database: DatabaseDep) -> dict[str, Any]:
    return await in_session(
        database, lambda s: batch_object(batch_or_404(s, batch_id, principal.project_id))
    )


@router.post("/{batch_id}/cancel")
async def cancel(batch_id: str, principal: PrincipalDep, database: DatabaseDep) -> dict[str, Any]:
    """Marks the batch `cancelling`; its worker stops queued lines within a second."""

    def work(session: Session) -> dict[str, Any]:
        batch = batch_or_404(session, batch_id, principal.project_id)
        try:
            return batch_object(batch_store.request_cancel(session, batch))
        except batch_store.BatchNotCancellable as exc:
            raise ApiError(400, str(exc), param="batch_id", code="batch_not_cancellable") from None

    return await in_session(database, work)
