"""One project's writes that must see each other: check a total, then add to it.

Two uploads that each read "90 of 100 bytes kept" and each add 10 would both pass a
storage limit read and written in separate steps. Under this lock, held until the
transaction ends, the second waits for the first to commit and then counts its file.
"""

from __future__ import annotations

from sqlalchemy import false, func, select, update
from sqlalchemy.orm import Session

from conveyor.db.stored_file import StoredFile


def lock_project_files(session: Session, project_id: str | None) -> None:
    """Wait until no other transaction holds this project's files lock, then hold it.

    PostgreSQL: a transaction-scoped advisory lock on the project (other projects go on).
    SQLite has one writer at a time: a write that changes nothing takes the database's
    write lock now, before the total is read, instead of at the insert after it.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = func.hashtextextended(f"conveyor.files:{project_id or ''}", 0)
        session.execute(select(func.pg_advisory_xact_lock(key)))
    else:
        session.execute(
            update(StoredFile).where(false()).values(bytes=StoredFile.bytes),
            execution_options={"synchronize_session": False},
        )
