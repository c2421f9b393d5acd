"""`GET /v1/organization/usage/completions` and `.../embeddings`: OpenAI's usage buckets
from the request logs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import AdminOnly, DatabaseDep
from api.errors import bad_request
from api.sql import in_session
from conveyor.db.usage import (
    COMPLETIONS,
    EMBEDDINGS,
    UsageQuery,
    UsageQueryError,
    UsageReport,
    usage_report,
)

router = APIRouter(prefix="/v1/organization/usage", dependencies=[AdminOnly])


def list_param(request: Request, name: str) -> tuple[str, ...]:
    """Arrays as clients send them: repeated, `name[]=`, or comma-separated."""
    values: list[str] = []
    for raw in (*request.query_params.getlist(name), *request.query_params.getlist(f"{name}[]")):
        values.extend(part.strip() for part in raw.split(",") if part.strip())
    return tuple(values)


@router.get("/completions")
async def completions(
    request: Request,
    database: DatabaseDep,
    start_time: Annotated[int, Query(ge=0)],
    end_time: Annotated[int | None, Query(ge=0)] = None,
    bucket_width: str = "1d",
    batch: bool | None = None,
    limit: int | None = None,
    page: str | None = None,
) -> dict[str, Any]:
    query = _query(request, start_time, end_time, bucket_width, limit, page, batch=batch)
    return await _report(database, query, COMPLETIONS)


@router.get("/embeddings")
async def embeddings(
    request: Request,
    database: DatabaseDep,
    start_time: Annotated[int, Query(ge=0)],
    end_time: Annotated[int | None, Query(ge=0)] = None,
    bucket_width: str = "1d",
    batch: bool | None = None,
    limit: int | None = None,
    page: str | None = None,
) -> dict[str, Any]:
    query = _query(request, start_time, end_time, bucket_width, limit, page, batch=batch)
    return await _report(database, query, EMBEDDINGS)


def _query(
    request: Request,
    start_time: int,
    end_time: int | None,
    bucket_width: str,
    limit: int | None,
    page: str | None,
    batch: bool | None = None,
) -> UsageQuery:
    return UsageQuery(
        start_time=start_time,
        end_time=end_time,
        bucket_width=bucket_width,  # type: ignore[arg-type]  # validated by the query
        group_by=list_param(request, "group_by"),
        project_ids=list_param(request, "project_ids"),
        api_key_ids=list_param(request, "api_key_ids"),
        models=list_param(request, "models"),
        batch=batch,
        limit=limit,
        page=page,
    )


async def _report(database: Any, query: UsageQuery, report: UsageReport) -> dict[str, Any]:
    def work(session: Any) -> dict[str, Any]:
        try:
            return usage_report(session, query, report)
        except UsageQueryError as exc:
            raise bad_request(exc.message, param=exc.param) from None

    return await in_session(database, work)
