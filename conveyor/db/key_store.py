"""Project API keys: minted from `secrets`, stored as SHA-256, shown in full exactly once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.db.api_key import ApiKey
from conveyor.db.base import now
from conveyor.db.batch_store import cancel_key_batches
from conveyor.db.ids import new_id
from conveyor.db.pagination import Page, paginate
from conveyor.db.project import Project

SECRET_PREFIX = "sk-proj-"


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def redact(secret: str) -> str:
    """Enough to recognise a key in a list, never enough to use it."""
    return f"{secret[: len(SECRET_PREFIX) + 4]}...{secret[-4:]}"


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str


@dataclass(frozen=True)
class KeyGrant:
    """What a request's key is allowed: resolved once, cached by the API for a second."""

    key_id: str
    project_id: str
    rpm: int | None
    tpm: int | None
    active: bool


def create_key(
    session: Session, project: Project, name: str, *, rpm: int | None, tpm: int | None
) -> NewKey:
    secret = SECRET_PREFIX + secrets.token_urlsafe(36)
    key = ApiKey(
        id=new_id("key_"),
        project_id=project.id,
        name=name,
        secret_digest=secret_digest(secret),
        redacted_value=redact(secret),
        created_at=now(),
        rpm=rpm,
        tpm=tpm,
    )
    session.add(key)
    session.flush()
    return NewKey(key=key, secret=secret)


def get_key(session: Session, key_id: str, *, project_id: str | None = None) -> ApiKey | None:
    key = session.get(ApiKey, key_id)
    if key is None or (project_id is not None and key.project_id != project_id):
        return None
    return key


def list_keys(
    session: Session,
    *,
    project_id: str | None,
    after: str | None,
    limit: int,
    include_revoked: bool = False,
) -> Page[ApiKey]:
    scope = select(ApiKey)
    if project_id is not None:
        scope = scope.where(ApiKey.project_id == project_id)
    query = scope if include_revoked else scope.where(ApiKey.revoked_at.is_(None))
    return paginate(
        session,
        query,
        created_at=ApiKey.created_at,
        id_column=ApiKey.id,
        after=after,
        limit=limit,
        cursor_scope=scope,
    )


def revoke_key(session: Session, key: ApiKey) -> ApiKey:
    """The key stops working (every API replica within the key cache's TTL), and the
    batches it created stop as if cancelled (answered lines keep their results)."""
    if key.revoked_at is None:
        key.revoked_at = now()
    cancel_key_batches(session, key.id)
    return key


def inactive_keys(session: Session, key_ids: set[str]) -> set[str]:
    """Those of `key_ids` that may no longer be used: revoked, their project archived, or
    gone altogether (one query, however many)."""
    if not key_ids:
        return set()
    active = session.scalars(
        select(ApiKey.id)
        .join(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.id.in_(key_ids), ApiKey.revoked_at.is_(None), Project.status == "active")
    )
    return key_ids - set(active)


def grant_for_digest(session: Session, digest: str) -> KeyGrant | None:
    """The key behind a presented secret, with whether it may still be used."""
    row = session.execute(
        select(ApiKey, Project.status)
        .join(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.secret_digest == digest)
    ).first()
    if row is None:
        return None
    key, project_status = row
    return KeyGrant(
        key_id=key.id,
        project_id=key.project_id,
        rpm=key.rpm,
        tpm=key.tpm,
        active=key.revoked_at is None and project_status == "active",
    )
