"""`/v1/organization/projects/{id}/api_keys`: mint, list, read, limit and revoke keys (admin).

A revoked key is refused on this replica at once and on every other one
within the key cache's TTL (one second by default).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from api.deps import AdminOnly, DatabaseDep, KeyCacheDep, json_body
from api.errors import ApiError, bad_request
from api.routes.organization_projects import project_or_404
from api.schemas.organization import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    ApiKeyCreate,
    ApiKeyUpdate,
    api_key_object,
    list_object,
)
from api.sql import in_session
from conveyor.db.api_key import ApiKey
from conveyor.db.key_store import create_key, get_key, list_keys, revoke_key
from conveyor.db.pagination import UnknownCursor

router = APIRouter(
    prefix="/v1/organization/projects/{project_id}/api_keys", dependencies=[AdminOnly]
)


def key_or_404(
    session: Session, project_id: str, key_id: str, include_revoked: bool = False
) -> ApiKey:
    """The project's key; a deleted (revoked) one is gone, as OpenAI answers, unless asked
    for as the list's `include_revoked` asks (its usage history stays readable)."""
    project_or_404(session, project_id)
    key = get_key(session, key_id, project_id=project_id)
    if key is None or (key.revoked_at is not None and not include_revoked):
        raise ApiError(404, f"No API key found with id '{key_id}'", param="key_id")
    return key


@router.post("")
async def create(
    project_id: str,
    body: Annotated[ApiKeyCreate, Depends(json_body(ApiKeyCreate))],
    database: DatabaseDep,
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        project = project_or_404(session, project_id)
        if project.status != "active":
            raise bad_request(f"project {project_id} is archived", param="project_id")
        minted = create_key(session, project, body.name, rpm=body.rpm, tpm=body.tpm)
        return api_key_object(minted.key, secret=minted.secret)

    return await in_session(database, work)


@router.get("")
async def list_(
    project_id: str,
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    after: str | None = None,
    include_revoked: bool = False,
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        project_or_404(session, project_id)
        try:
            page = list_keys(
                session,
                project_id=project_id,
                after=after,
                limit=limit,
                include_revoked=include_revoked,
            )
        except UnknownCursor:
            raise bad_request(f"`after` names no API key: {after}", param="after") from None
        return list_object(page, api_key_object)

    return await in_session(database, work)


@router.get("/{key_id}")
async def retrieve(
    project_id: str, key_id: str, database: DatabaseDep, include_revoked: bool = False
) -> dict[str, Any]:
    return await in_session(
        database, lambda s: api_key_object(key_or_404(s, project_id, key_id, include_revoked))
    )


@router.post("/{key_id}")
async def modify(
    project_id: str,
    key_id: str,
    body: Annotated[ApiKeyUpdate, Depends(json_body(ApiKeyUpdate))],
    database: DatabaseDep,
    keys: KeyCacheDep,
) -> dict[str, Any]:
    def work(session: Session) -> dict[str, Any]:
        key = key_or_404(session, project_id, key_id)
        changes = body.model_dump(exclude_unset=True)
        if changes.get("name") is not None:
            key.name = changes["name"]
        for limit in ("rpm", "tpm"):
            if limit in changes:
                setattr(key, limit, changes[limit])
        return api_key_object(key)

    result = await in_session(database, work)
    keys.forget_key(key_id)
    return result


@router.delete("/{key_id}")
async def delete(
    project_id: str, key_id: str, database: DatabaseDep, keys: KeyCacheDep
) -> dict[str, Any]:
    def work(session: Session) -> None:
        revoke_key(session, key_or_404(session, project_id, key_id))

    await in_session(database, work)
    keys.forget_key(key_id)
    return {"object": "organization.project.api_key.deleted", "id": key_id, "deleted": True}
