"""`/v1/organization/projects`: create, list, read, rename and archive tenants (admin key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api.deps import AdminOnly, DatabaseDep, KeyCacheDep, json_body
from api.errors import ApiError, bad_request
from api.schemas.organization import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    ProjectCreate,
    ProjectUpdate,
    list_object,
    project_object,
)
from api.sql import in_session
from conveyor.db.pagination import UnknownCursor
from conveyor.db.project import Project
from conveyor.db.project_store import (
    ProjectNameTaken,
    archive_project,
    create_project,
    get_project,
    list_projects,
    rename_project,
)

router = APIRouter(prefix="/v1/organization/projects", dependencies=[AdminOnly])


def project_or_404(session: Session, project_id: str) -> Project:
    project = get_project(session, project_id)
    if project is None:
        raise ApiError(404, f"No project found with id '{project_id}'", param="project_id")
    return project


@router.post("")
async def create(
    body: Annotated[ProjectCreate, Depends(json_body(ProjectCreate))], database: DatabaseDep
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        try:
            return project_object(create_project(session, body.name))
        except ProjectNameTaken as exc:
            raise bad_request(str(exc), param="name") from None

    return await in_session(database, work)


@router.get("")
async def list_(
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    after: str | None = None,
    include_archived: bool = False,
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        try:
            page = list_projects(
                session, after=after, limit=limit, include_archived=include_archived
            )
        except UnknownCursor:
            raise bad_request(f"`after` names no project: {after}", param="after") from None
        return list_object(page, project_object)

    return await in_session(database, work)


@router.get("/{project_id}")
async def retrieve(project_id: str, database: DatabaseDep) -> dict[str, Any]:
    return await in_session(database, lambda s: project_object(project_or_404(s, project_id)))


@router.post("/{project_id}")
async def modify(
    project_id: str,
    body: Annotated[ProjectUpdate, Depends(json_body(ProjectUpdate))],
    database: DatabaseDep,
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        project = project_or_404(session, project_id)
        try:
            return project_object(rename_project(session, project, body.name))
        except ProjectNameTaken as exc:
            raise bad_request(str(exc), param="name") from None

    return await in_session(database, work)


@router.post("/{project_id}/archive")
async def archive(project_id: str, database: DatabaseDep, keys: KeyCacheDep) -> dict[str, Any]:
    result = await in_session(
        database, lambda s: project_object(archive_project(s, project_or_404(s, project_id)))
    )
    keys.forget_project(project_id)
    return result
