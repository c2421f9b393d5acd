"""File metadata (OpenAI's file objects): create, find, list and delete, scoped to a project.

Shared by the Files API and the batch workers. Every lookup takes the
caller's project: a file of another project is simply not found, and a
caller without a project (tenancy off, or the static `--api-key`) sees only
the files that belong to no project. The bytes live in file storage under
`storage_key`; these functions never touch them.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.orm import Session

from conveyor.db.base import now
from conveyor.db.batch import Batch
from conveyor.db.batch_store import ACTIVE
from conveyor.db.ids import created_second, new_id
from conveyor.db.pagination import Page, paginate
from conveyor.db.scoping import owned_by
from conveyor.db.stored_file import StoredFile

FILE_ID_PREFIX = "file-"
FILENAME_MAX_CHARS = 512  # the column's width


STORAGE_KEY_PREFIX = "obj-"


def new_file_id() -> str:
    """Made as the file's row is written (its time is the file's `created_at`)."""
    return new_id(FILE_ID_PREFIX)


def new_storage_key() -> str:
    """A name for a file's bytes, made before they are stored; the file's id comes later,
    when its row is written, so that an upload's or a batch output's `created_at` (and
    the expiry counted from it) is when the file came to exist, not when it began."""
    return new_id(STORAGE_KEY_PREFIX)


def create_file(
    session: Session,
    project_id: str | None,
    filename: str,
    purpose: str,
    bytes: int,
    storage_key: str,
    *,
    file_id: str | None = None,
    expires_after: int | None = None,
) -> StoredFile:
    """`expires_after`: seconds the file lives after it is made (None: until deleted).
    `file_id`: one `new_file_id` made just now (in this transaction), if the caller must
    know it first; made here otherwise.

    `created_at` is the second in the file's id: a list resumed after a deleted file (or
    another project's) finds its place by that id's time, which must order it exactly as
    its row did.
    """
    file_id = file_id or new_file_id()
    created = created_second(file_id, FILE_ID_PREFIX)
    if created is None:
        raise ValueError(f"{file_id!r} is not an id new_file_id made")
    stored = StoredFile(
        id=file_id,
        project_id=project_id,
        filename=filename[:FILENAME_MAX_CHARS],
        purpose=purpose,
        bytes=bytes,
        status="processed",
        storage_key=storage_key,
        created_at=created,
        expires_at=None if expires_after is None else created + expires_after,
    )
    session.add(stored)
    session.flush()
    return stored


def stored_bytes(session: Session, project_id: str | None) -> int:
    """Bytes of every file the project keeps, expired ones the purge has not yet deleted
    included (they are still on disk)."""
    total = session.scalar(
        select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(
            owned_by(StoredFile.project_id, project_id)
        )
    )
    return int(total or 0)


def get_file(
    session: Session, file_id: str, project_id: str | None, *, expired_too: bool = False
) -> StoredFile | None:
    """The file if it belongs to `project_id` (None: to no project) and has not expired;
    otherwise None. `expired_too`: also one past its expiry that the purge has left (the
    input of a batch under way, resumed after its input's lifetime ended)."""
    stored = session.get(StoredFile, file_id)
    if stored is None or stored.project_id != project_id:
        return None
    if _expired(stored) and not expired_too:
        return None
    return stored


def _expired(stored: StoredFile) -> bool:
    """Past its `expires_at`: gone to every caller, before the purge deletes it."""
    return stored.expires_at is not None and stored.expires_at <= now()


def _live() -> ColumnElement[bool]:
    return or_(StoredFile.expires_at.is_(None), StoredFile.expires_at > now())


def list_files(
    session: Session,
    project_id: str | None,
    *,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> Page[StoredFile]:
    """Newest first by default, as OpenAI lists files; raises UnknownCursor for a bad `after`."""
    scope = select(StoredFile).where(owned_by(StoredFile.project_id, project_id))
    live = scope.where(_live())
    query = live if purpose is None else live.where(StoredFile.purpose == purpose)
    return paginate(
        session,
        query,
        created_at=StoredFile.created_at,
        id_column=StoredFile.id,
        after=after,
        limit=limit,
        descending=order == "desc",
        cursor_scope=scope,
        id_prefix=FILE_ID_PREFIX,
    )


def delete_file(session: Session, stored: StoredFile) -> str | None:
    """Drop the row; returns its storage key so the caller deletes the bytes after commit.

    The input of a batch under way is only hidden (it expires now: gone to every caller,
    as if deleted) and None is returned: the batch reads it again when it resumes after
    a restart, and deleting the input right after creating the batch is a common
    clean-up, which failed the batch and dropped the lines it had finished. The purge
    deletes it once the batch has ended, as it does an input whose lifetime ran out."""
    in_use = session.scalar(
        select(Batch.id).where(Batch.input_file_id == stored.id, Batch.status.in_(ACTIVE)).limit(1)
    )
    if in_use is not None:
        stored.expires_at = min(stored.expires_at or now(), now())
        session.flush()
        return None
    session.delete(stored)
    session.flush()
    return stored.storage_key


def purge_expired_files(session: Session, *, limit: int = 1000) -> list[str]:
    """Drop up to `limit` files past their `expires_at`; returns their storage keys, for
    the caller to delete the bytes of once this is committed. Bounded, so one purge never
    holds a long transaction over a big backlog."""
    # A batch under way may read its input again (it resumes from the file after a
    # restart): that file goes once the batch has ended.
    in_use = select(Batch.input_file_id).where(Batch.status.in_(ACTIVE))
    expired = select(StoredFile.id, StoredFile.storage_key).where(
        StoredFile.expires_at <= now(), StoredFile.id.not_in(in_use)
    )
    rows = list(session.execute(expired.limit(limit)))
    if rows:
        session.execute(delete(StoredFile).where(StoredFile.id.in_([row.id for row in rows])))
    return [row.storage_key for row in rows]
